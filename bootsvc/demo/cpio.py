"""A writer for the cpio "newc" format, the one the Linux kernel unpacks
as an initramfs (Documentation/driver-api/early-userspace/
buffer-format.rst). Written here rather than run through cpio(1) so the
archive's owners, modes and order do not depend on the build machine."""

from __future__ import annotations

import stat
from typing import BinaryIO

TRAILER = "TRAILER!!!"


class CpioWriter:
    """Entries appended in order; every entry is owned by root."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.ino = 0
        self.written = 0

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        self.ino += 1
        encoded = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._write(header + encoded)
        self._write(data)

    def _write(self, data: bytes) -> None:
        # header+name and data are each padded to a multiple of 4
        self.out.write(data)
        self.written += len(data)
        pad = -self.written % 4
        self.out.write(b"\0" * pad)
        self.written += pad

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def close(self) -> None:
        self._entry(TRAILER, 0)
