"""A Debian 12 base image that boots diskless from its iSCSI disk (iBFT
login in open-iscsi's initramfs) into systemd, each machine with its own
identity. ``bootsvc image build-debian`` builds it; ``bootsvc vm`` boots it."""

from .build import DEBIAN_BASE, DebianImageError, build_debian
from .tree import MARKER_OK

__all__ = ["DEBIAN_BASE", "MARKER_OK", "DebianImageError", "build_debian"]
