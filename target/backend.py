"""Block backends: where a LUN's bytes live.

A backend maps byte ranges of a virtual disk onto storage. Reads return
*segments* instead of bytes so that the iSCSI layer can send file data with
``os.sendfile`` (zero copy) while still allowing backends that must build the
data in memory (zero clusters, compressed clusters). Every method that may
touch the disk is a coroutine; implementations run blocking system calls in a
thread pool so the event loop never waits on the disk.
"""

from __future__ import annotations

import abc
import asyncio
import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from .iothread import IoThread


class BackendError(Exception):
    """A backend could not be opened or an I/O request failed."""


class MediumError(BackendError):
    """An I/O error while reading or writing the medium (SBC: MEDIUM ERROR)."""


class SpaceExhausted(BackendError):
    """A write needs space the backend may not use (thin provisioning limit)."""


class DiskElsewhere(BackendError):
    """A disk on shared storage is held by another server (its lock)."""


@dataclass(frozen=True, slots=True)
class FileExtent:
    """``length`` bytes at ``offset`` of the open file ``fd``, sendable as is."""

    fd: int
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True, slots=True)
class Zeros:
    """``length`` zero bytes that exist nowhere on disk."""

    length: int

    def __len__(self) -> int:
        return self.length


Segment: TypeAlias = FileExtent | Zeros | bytes | memoryview


def segments_length(segments: Sequence[Segment]) -> int:
    return sum(map(len, segments))


def pread_exact(fd: int, length: int, offset: int) -> bytes:
    """Blocking read of exactly ``length`` bytes; short files read as zeros."""
    data = os.pread(fd, length, offset)
    if len(data) < length:
        data += bytes(length - len(data))
    return data


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Blocking write of all of ``data`` (pwrite may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def materialize(segments: Sequence[Segment]) -> bytes:
    """Blocking: the bytes the segments stand for (for digests, compares)."""
    parts: list[bytes] = []
    for s in segments:
        if isinstance(s, FileExtent):
            parts.append(pread_exact(s.fd, s.length, s.offset))
        elif isinstance(s, Zeros):
            parts.append(bytes(s.length))
        else:
            parts.append(bytes(s))
    return b"".join(parts)


class Backend(abc.ABC):
    """A virtual disk of ``size`` bytes. Offsets and lengths are in bytes and
    always multiples of the LUN's block size, checked by the caller."""

    size: int
    read_only: bool

    @abc.abstractmethod
    async def read(self, offset: int, length: int) -> Sequence[Segment]:
        """The data at ``offset``; segments add up to exactly ``length``."""

    def read_now(self, offset: int, length: int) -> Sequence[Segment] | None:
        """What :meth:`read` would return, when that is known without
        waiting (nothing to look up on disk first), else None: the caller
        then awaits :meth:`read`. Default: never known."""
        return None

    @abc.abstractmethod
    def read_sync(self, offset: int, length: int) -> bytes:
        """Blocking read as bytes, for threads (copy-on-write) and tools."""

    @abc.abstractmethod
    async def write(self, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        """Write ``data``; with ``fua`` it is durable when this returns."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Make every completed write durable (SYNCHRONIZE CACHE)."""

    # Bytes a write may span and still be all or nothing at any crash (WRITE
    # ATOMIC, SBC-4 §4.29), at an offset that is a multiple of it; 0 where
    # the backend cannot promise that (a raw file: the file system may tear
    # a write anywhere past one sector).
    atomic_unit: int = 0

    async def write_atomic(self, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        """Write ``data`` (within one aligned :attr:`atomic_unit`) so that
        after a crash the range holds either all old or all new data."""
        raise BackendError("this disk cannot write atomically")

    async def discard(self, offset: int, length: int) -> None:
        """Deallocate the range (UNMAP); reads return zeros afterwards."""
        await self.write_zeroes(offset, length)

    async def write_zeroes(self, offset: int, length: int) -> None:
        """Make the range read as zeros (WRITE SAME with zeros)."""
        chunk = 1 << 20
        zero = bytes(min(chunk, length))
        pos = offset
        end = offset + length
        while pos < end:
            n = min(chunk, end - pos)
            await self.write(pos, memoryview(zero)[:n])
            pos += n

    async def block_status(self, offset: int) -> tuple[bool, int]:
        """(mapped, length): whether storage backs ``offset`` and for how many
        bytes that stays so (GET LBA STATUS). Default: everything is mapped."""
        return True, self.size - offset

    @functools.cached_property
    def exclusive(self) -> asyncio.Lock:
        """Held across a read-compare-write (COMPARE AND WRITE, SBC-3 §5.2)
        so that no other such sequence on this disk interleaves with it.
        The lock belongs to the I/O side: the SCSI layer stays loop-free."""
        return asyncio.Lock()

    async def read_bytes(self, offset: int, length: int) -> bytes:
        """The data at ``offset`` as bytes (for compares and digests)."""
        segments = await self.read(offset, length)
        return await asyncio.get_running_loop().run_in_executor(None, materialize, segments)

    @property
    def claimed(self) -> bool:
        """Whether this server may serve the disk now: always for a file;
        a disk on storage other servers reach must be claimed first."""
        return True

    def claim(self) -> None:
        """Take the disk for this server alone (RBD: its exclusive lock),
        so that no two servers write it. Blocking: call it off the event
        loop. Raises :class:`DiskElsewhere` while another server holds it."""

    def release(self) -> None:
        """Give the claim up while staying open (the machine stopped using
        the disk): another server may claim it; :meth:`claim` takes it
        again. Blocking: call it off the event loop."""

    def close(self) -> None:
        """Release the backend's files (and a claim); further calls are errors."""


@functools.cache
def _fallocate() -> Callable[[int, int, int, int], int]:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    fallocate = libc.fallocate
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return fallocate  # type: ignore[no-any-return]


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a file range so it reads as zeros; False where unsupported
    (block devices without discard, file systems without holes)."""
    flags = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    return _fallocate()(fd, flags, offset, length) == 0


class RawBackend(Backend):
    """A plain file or block device, read in place (sendfile-able extents)."""

    def __init__(self, path: str | os.PathLike[str], read_only: bool = False) -> None:
        self.path = os.fspath(path)
        self.read_only = read_only
        flags = os.O_RDONLY if read_only else os.O_RDWR
        try:
            self.fd = os.open(self.path, flags | os.O_CLOEXEC)
        except OSError as e:
            raise BackendError(f"cannot open {self.path}: {e.strerror}") from e
        self.size = os.lseek(self.fd, 0, os.SEEK_END)
        if self.size == 0:
            os.close(self.fd)
            raise BackendError(f"{self.path} is empty")
        # writes and flushes in order on one thread, completions in batches
        self._io = IoThread(f"raw {os.path.basename(self.path)}")

    async def read(self, offset: int, length: int) -> Sequence[Segment]:
        return (FileExtent(self.fd, offset, length),)

    def read_now(self, offset: int, length: int) -> Sequence[Segment]:
        return (FileExtent(self.fd, offset, length),)

    def read_sync(self, offset: int, length: int) -> bytes:
        return pread_exact(self.fd, length, offset)

    async def write(self, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        await self._io.run(self._write_sync, offset, data, fua)

    def _write_sync(self, offset: int, data: bytes | memoryview, fua: bool) -> None:
        try:
            pwrite_all(self.fd, data, offset)
            if fua:
                os.fdatasync(self.fd)
        except OSError as e:
            raise MediumError(f"write to {self.path} failed: {e.strerror}") from e

    async def flush(self) -> None:
        await self._io.run(os.fdatasync, self.fd)

    async def write_zeroes(self, offset: int, length: int) -> None:
        if not await self._io.run(punch_hole, self.fd, offset, length):
            await super().write_zeroes(offset, length)

    async def block_status(self, offset: int) -> tuple[bool, int]:
        """Holes in a sparse file are unmapped; SEEK_DATA/SEEK_HOLE find them."""
        try:
            data = os.lseek(self.fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole from here to the end
            return False, self.size - offset
        if data > offset:
            return False, data - offset
        hole = os.lseek(self.fd, offset, os.SEEK_HOLE)
        return True, min(hole, self.size) - offset

    def close(self) -> None:
        self._io.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
