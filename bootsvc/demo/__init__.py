"""The demo base image: a small Debian cloud-kernel Linux that boots from
its iSCSI disk the way a diskless machine does (iPXE sanboot → SYSLINUX →
kernel → iBFT login with open-iscsi's ``iscsistart`` → root on the iSCSI
disk), writes a file, prints a marker and powers off. ``bootsvc image
build-demo`` builds it; ``bootsvc vm`` boots it."""

from .build import DEMO_BASE, MARKER_FAIL, MARKER_OK, RECORD, DemoImageError, build_demo

__all__ = ["DEMO_BASE", "MARKER_FAIL", "MARKER_OK", "RECORD", "DemoImageError", "build_demo"]
