"""qcow2 images (QEMU docs/interop/qcow2.txt): header and header extensions,
feature bits, L1/L2 lookup with a table cache, zero and compressed clusters,
backing chains (raw or qcow2, overlay over overlay), and copy-on-write
writing for version 3 images.

Allocated clusters are returned as file extents, so an image's data leaves
by ``sendfile`` like a raw file's.

Writing keeps the image consistent at any crash (kill -9 or power loss):

- guest data goes straight to its host cluster; a cluster written for the
  first time is written whole (the rest copied from the backing file, a zero
  cluster or a compressed one) before any table points at it;
- the tables (L1, L2, refcounts) change in memory and reach the disk on
  SYNCHRONIZE CACHE, FUA or when too many are dirty, in the order
  refcount increments -> sync -> L2 tables -> sync -> L1 -> sync ->
  refcount decrements (:mod:`target.qcow2_refcount` explains why);
- the dirty bit is set while the image is open for writing, so the next
  open knows to repair leaked clusters (and QEMU does the same).

All metadata changes run on one thread per image (``_io``), so they need no
locks; the event loop only reads the tables, which that thread changes one
entry at a time.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from .backend import (Backend, BackendError, FileExtent, RawBackend, Segment, SpaceExhausted, Zeros, pread_exact,
                      pwrite_all)
from .events import EventSink, Events
from .iothread import IoThread
from .qcow2_refcount import Refcounts, dump_be, load_be

log = logging.getLogger("target.qcow2")

MAGIC = b"QFI\xfb"
HEADER_V2 = struct.Struct(">4sIQIIQIIQQIIQ")  # up to snapshots_offset (72 bytes)
HEADER_V3_EXTRA = struct.Struct(">QQQII")  # incompatible .. header_length (32 bytes)
OFFSET_REFCOUNT_TABLE = 48
OFFSET_INCOMPATIBLE = 72
OFFSET_AUTOCLEAR = 88

# "Header extensions" section
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_NAMES = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_EXTERNAL_DATA = 0x44415441
EXT_ENCRYPTION = 0x0537BE77

# incompatible feature bits ("Header", bytes 72-79)
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_EXTERNAL_DATA = 1 << 2
INCOMPAT_COMPRESSION_TYPE = 1 << 3
INCOMPAT_EXTENDED_L2 = 1 << 4
KNOWN_INCOMPAT = {
    INCOMPAT_DIRTY: "dirty bit (image not closed cleanly)",
    INCOMPAT_CORRUPT: "corrupt bit (run qemu-img check -r all)",
    INCOMPAT_EXTERNAL_DATA: "external data file",
    INCOMPAT_COMPRESSION_TYPE: "compression type other than zlib (zstd)",
    INCOMPAT_EXTENDED_L2: "extended L2 entries (subclusters)",
}
# what a reader can live with: a dirty image only has leaked clusters or
# stale refcounts, which reads never look at (and a writer repairs on open)
READABLE_INCOMPAT = INCOMPAT_DIRTY

L1_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2_OFFSET_MASK = 0x00FFFFFFFFFFFE00
OFLAG_COPIED = 1 << 63  # refcount is exactly one: may be written in place
L2_COMPRESSED = 1 << 62
L2_ZERO = 1 << 0
L2_CACHE_TABLES = 256
DIRTY_TABLES_MAX = 64  # write the tables back after this many dirty L2 tables
SPACE_WARN_FRACTION = 0.9
ATOMIC_TARGET = 1 << 20  # about this many bytes per atomic write unit (WRITE ATOMIC)

_T = TypeVar("_T")


class Qcow2Error(BackendError):
    """An image this target cannot serve; the message names what is wrong."""


@dataclass(frozen=True)
class Header:
    version: int
    backing_file: str
    backing_format: str
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    incompatible: int
    header_length: int
    refcount_table_offset: int = 0
    refcount_table_clusters: int = 0
    refcount_order: int = 4
    nb_snapshots: int = 0
    autoclear: int = 0
    extensions: frozenset[int] = frozenset()

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits


def parse_header(raw: bytes, file_size: int) -> Header:
    """Check and decode the header and its extensions ("Header", "Header
    extensions"); every refusal names the feature."""
    if len(raw) < HEADER_V2.size or raw[:4] != MAGIC:
        raise Qcow2Error("not a qcow2 image (bad magic)")
    (_, version, backing_off, backing_len, cluster_bits, size, crypt, l1_size, l1_off, rt_off, rt_clusters,
     nb_snapshots, _snap_off) = HEADER_V2.unpack_from(raw)
    if version not in (2, 3):
        raise Qcow2Error(f"qcow2 version {version} is not supported (2 and 3 are)")
    if not 9 <= cluster_bits <= 21:
        raise Qcow2Error(f"cluster size 2^{cluster_bits} is outside 512 B..2 MiB")
    if crypt:
        raise Qcow2Error("encrypted qcow2 images are not supported")
    incompatible, autoclear, refcount_order, header_length = _v3_fields(raw) if version == 3 else (
        0, 0, 4, HEADER_V2.size)
    _check_incompatible(incompatible)
    _check_tables(cluster_bits, size, l1_size, l1_off, rt_off, rt_clusters, file_size)
    backing_format, extensions = _extensions(raw, header_length)
    return Header(version, _backing_name(raw, backing_off, backing_len), backing_format, cluster_bits, size,
                  crypt, l1_size, l1_off, incompatible, header_length, rt_off, rt_clusters, refcount_order,
                  nb_snapshots, autoclear, extensions)


def _v3_fields(raw: bytes) -> tuple[int, int, int, int]:
    """incompatible, autoclear, refcount_order and header_length of a v3 header."""
    if len(raw) < HEADER_V2.size + HEADER_V3_EXTRA.size:
        raise Qcow2Error("truncated qcow2 v3 header")
    incompatible, _compat, autoclear, refcount_order, header_length = HEADER_V3_EXTRA.unpack_from(
        raw, HEADER_V2.size)
    if header_length < 104 or header_length > len(raw):
        raise Qcow2Error(f"bad header length {header_length}")
    if refcount_order > 6:
        raise Qcow2Error(f"bad refcount order {refcount_order}")
    return incompatible, autoclear, refcount_order, header_length


def _check_incompatible(incompatible: int) -> None:
    for bit, name in KNOWN_INCOMPAT.items():
        if incompatible & bit and not bit & READABLE_INCOMPAT:
            raise Qcow2Error(f"qcow2 feature not supported: {name}")
    unknown = incompatible & ~sum(KNOWN_INCOMPAT)
    if unknown:
        raise Qcow2Error(f"unknown incompatible qcow2 feature bits {unknown:#x}")


def _check_tables(cluster_bits: int, size: int, l1_size: int, l1_off: int, rt_off: int, rt_clusters: int,
                  file_size: int) -> None:
    """The L1 and refcount tables fit the virtual size and the file."""
    l2_entries = 1 << (cluster_bits - 3)
    if size and l1_size * l2_entries * (1 << cluster_bits) < size:
        raise Qcow2Error("L1 table too small for the virtual size")
    if l1_off % (1 << cluster_bits) or l1_off + 8 * l1_size > file_size or l1_size > (32 << 20) // 8:
        raise Qcow2Error("L1 table offset or size is invalid (truncated image?)")
    if rt_off % (1 << cluster_bits) or rt_off + (rt_clusters << cluster_bits) > file_size:
        raise Qcow2Error("refcount table offset or size is invalid (truncated image?)")


def _extensions(raw: bytes, pos: int) -> tuple[str, frozenset[int]]:
    """The backing format and the types of the header extensions from ``pos``."""
    backing_format = ""
    extensions: set[int] = set()
    while pos + 8 <= len(raw):
        ext_type, ext_len = struct.unpack_from(">II", raw, pos)
        if ext_type == EXT_END:
            break
        extensions.add(ext_type)
        data = raw[pos + 8:pos + 8 + ext_len]
        if ext_type == EXT_BACKING_FORMAT:
            backing_format = data.decode("utf-8", "replace")
        elif ext_type == EXT_EXTERNAL_DATA:
            raise Qcow2Error("qcow2 feature not supported: external data file")
        elif ext_type == EXT_ENCRYPTION:
            raise Qcow2Error("encrypted qcow2 images are not supported")
        pos += 8 + ext_len + (-ext_len % 8)
    return backing_format, frozenset(extensions)


def _backing_name(raw: bytes, offset: int, length: int) -> str:
    if not offset:
        return ""
    if length > 1023 or offset + length > len(raw):
        raise Qcow2Error("backing file name is out of the header cluster")
    return raw[offset:offset + length].decode("utf-8", "replace")


def writable_refusal(h: Header) -> str | None:
    """Why an image with this header cannot be opened for writing, if so."""
    if h.version != 3:
        return "qcow2 version 2 images are served read-only (qemu-img amend -o compat=1.1 upgrades them)"
    if h.nb_snapshots:
        return "images with internal snapshots are served read-only (qemu-img snapshot -d removes them)"
    if EXT_BITMAPS in h.extensions:
        return ("qcow2 feature not supported for writing: persistent dirty bitmaps, which writes would "
                "leave stale (qemu-img bitmap --remove removes them)")
    if h.refcount_order < 3:
        return f"{1 << h.refcount_order}-bit refcounts are readable only (8, 16, 32 and 64 bits are writable)"
    return None


def open_image(path: str | os.PathLike[str], read_only: bool = True, limit: int | None = None,
               on_event: EventSink | None = None) -> Qcow2Backend:
    """Open a qcow2 image (and its backing chain, always read-only).

    ``limit`` caps the bytes the image file may allocate: a warning at 90 %,
    and writes that would pass it fail with SpaceExhausted (SCSI: SPACE
    ALLOCATION FAILED WRITE PROTECT) before anything is written."""
    return Qcow2Backend(path, read_only=read_only, limit=limit, on_event=on_event)


def open_backing(path: str, fmt: str, depth: int) -> Backend:
    if depth > 16:
        raise Qcow2Error("backing chain deeper than 16 images (a loop?)")
    if not fmt:
        with open(path, "rb") as f:
            fmt = "qcow2" if f.read(4) == MAGIC else "raw"
    if fmt == "qcow2":
        return Qcow2Backend(path, depth=depth)
    if fmt == "raw":
        return RawBackend(path, read_only=True)
    raise Qcow2Error(f"backing format {fmt!r} is not supported (raw and qcow2 are)")


def resolve_backing(image: str, backing: str) -> Path:
    """QEMU resolves a relative backing file name against the image's directory."""
    p = Path(backing)
    return p if p.is_absolute() else Path(image).parent / p


class Kind(Enum):
    """What a guest cluster reads as ("Cluster mapping")."""

    DATA = 1  # an allocated host cluster
    ZERO = 2  # a zero cluster (v3), possibly with a preallocated host cluster
    COMPRESSED = 3
    BACKING = 4  # unallocated: the backing file (or zeros without one)


class Qcow2Backend(Backend):
    def __init__(self, path: str | os.PathLike[str], read_only: bool = True, depth: int = 0,
                 limit: int | None = None, on_event: EventSink | None = None) -> None:
        self.path = os.fspath(path)
        self.read_only = read_only
        self.limit = limit
        self.events = Events(on_event, log)
        self._space_warned = False
        self.backing: Backend | None = None
        self.refs: Refcounts | None = None
        self._writing = False  # open for writing and the dirty bit set: close() must clear it
        self._io = IoThread(f"qcow2 {os.path.basename(self.path)}")
        try:
            self.fd = os.open(self.path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as e:
            self._io.close()
            raise Qcow2Error(f"cannot open {self.path}: {e.strerror}") from e
        try:
            self._open(depth)
        except BaseException:
            self.close()
            raise

    def _open(self, depth: int) -> None:
        file_size = os.fstat(self.fd).st_size
        first = os.pread(self.fd, 65536, 0)
        try:
            self.header = h = parse_header(first, file_size)
        except Qcow2Error as e:
            raise Qcow2Error(f"{self.path}: {e}") from None
        self.size = h.size
        self.cluster_bits = h.cluster_bits
        self.cluster_size = h.cluster_size
        self.l2_bits = h.cluster_bits - 3
        self.zero_clusters = h.version == 3
        self.l1 = list(struct.unpack(f">{h.l1_size}Q", pread_exact(self.fd, 8 * h.l1_size, h.l1_table_offset)))
        self.l2_cache: OrderedDict[int, array] = OrderedDict()
        self._dirty_l2: set[int] = set()
        self._dirty_l1: set[int] = set()
        self.incompatible = h.incompatible
        if h.backing_file:
            self.backing = open_backing(str(resolve_backing(self.path, h.backing_file)), h.backing_format,
                                        depth + 1)
        if self.read_only:
            return
        refusal = writable_refusal(h)
        if refusal:
            raise Qcow2Error(f"{self.path}: {refusal}")
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Qcow2Error(f"{self.path} is open for writing by another process") from None
        self.refs = Refcounts(self.fd, h.cluster_bits, h.refcount_order, h.refcount_table_offset,
                              h.refcount_table_clusters, self.sync, self._set_refcount_table)
        if h.incompatible & INCOMPAT_DIRTY:
            from .qcow2_check import check  # the checker reads images through this class

            report = check(self, repair=True)
            if report.corruptions:
                raise Qcow2Error(f"{self.path} is corrupt ({report.corruptions[0]}); "
                                 "qemu-img check -r all may repair it")
            self._event("qcow2.repaired", leaks=report.leaks_fixed)
        if h.autoclear:
            # bits for features we do not keep up to date: clearing them tells
            # their owners the data is stale ("autoclear features")
            self._pwrite(OFFSET_AUTOCLEAR, bytes(8))
        self._set_incompatible(h.incompatible | INCOMPAT_DIRTY)
        self._writing = True

    # -- helpers ------------------------------------------------------------------

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await self._io.run(fn, *args)

    def _pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        pwrite_all(self.fd, data, offset)

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def _set_incompatible(self, bits: int) -> None:
        self.sync()  # everything before the flip is on disk first
        self._pwrite(OFFSET_INCOMPATIBLE, struct.pack(">Q", bits))
        self.sync()
        self.incompatible = bits

    def _set_refcount_table(self, offset: int, clusters: int) -> None:
        self._pwrite(OFFSET_REFCOUNT_TABLE, struct.pack(">QI", offset, clusters))

    # -- mapping ------------------------------------------------------------------

    def l2_table(self, l2_offset: int) -> array:
        """Blocking, on the image's thread (or in a single-threaded tool):
        the L2 table at ``l2_offset``, from the cache or disk."""
        table = self.l2_cache.get(l2_offset)
        if table is not None:
            self.l2_cache.move_to_end(l2_offset)
            return table
        table = load_be(pread_exact(self.fd, self.cluster_size, l2_offset), "Q")
        self.l2_cache[l2_offset] = table
        if len(self.l2_cache) > L2_CACHE_TABLES:
            for old in list(self.l2_cache):  # the oldest clean table goes; dirty ones stay
                if old not in self._dirty_l2:
                    del self.l2_cache[old]
                    break
        return table

    def _l1_indexes(self, offset: int, length: int) -> range:
        """The L1 entries covering a guest byte range."""
        shift = self.cluster_bits + self.l2_bits
        return range(offset >> shift, ((offset + length - 1) >> shift) + 1)

    def _missing_tables(self, offset: int, length: int) -> list[int]:
        out = []
        for l1_index in self._l1_indexes(offset, length):
            l2 = self.l1[l1_index] & L1_OFFSET_MASK if l1_index < len(self.l1) else 0
            if l2 and l2 not in self.l2_cache:
                out.append(l2)
        return out

    def _load_tables(self, offset: int, length: int) -> None:
        for table in self._missing_tables(offset, length):
            self.l2_table(table)

    def _entry(self, pos: int, on_loop: bool = False) -> int:
        """The L2 entry for a guest offset. ``on_loop``: called from the event
        loop, which only looks the cache up and never changes it (the image's
        thread owns it); a table evicted meanwhile is read without caching."""
        l1_index = pos >> (self.cluster_bits + self.l2_bits)
        if l1_index >= len(self.l1):
            return 0
        l2_offset = self.l1[l1_index] & L1_OFFSET_MASK
        if not l2_offset:
            return 0
        table = self.l2_cache.get(l2_offset) if on_loop else self.l2_table(l2_offset)
        if table is None:
            table = load_be(pread_exact(self.fd, self.cluster_size, l2_offset), "Q")
        return table[(pos >> self.cluster_bits) & ((1 << self.l2_bits) - 1)]

    def kind_at(self, pos: int) -> Kind:
        """Blocking: what the guest cluster at ``pos`` is."""
        return self.kind_of(self._entry(pos))

    def kind_of(self, entry: int) -> Kind:
        if entry & L2_COMPRESSED:
            return Kind.COMPRESSED
        if entry & L2_ZERO and self.zero_clusters:
            return Kind.ZERO
        if entry & L2_OFFSET_MASK:
            return Kind.DATA
        return Kind.BACKING

    def _extents(self, offset: int, length: int, on_loop: bool = False) -> Iterator[tuple[Kind, int, int, int]]:
        """(kind, guest offset, length, where) runs over the range: ``where``
        is the host offset for DATA, the L2 entry for COMPRESSED. Neighbouring
        clusters of one kind (and contiguous on the host) come as one run."""
        cs = self.cluster_size
        pos, end = offset, offset + length
        run: list[Any] | None = None
        while pos < end:
            in_cluster = pos & (cs - 1)
            n = min(cs - in_cluster, end - pos)
            entry = self._entry(pos, on_loop)
            kind = self.kind_of(entry)
            where = (entry & L2_OFFSET_MASK) + in_cluster if kind is Kind.DATA else entry
            if run is not None and run[0] is kind and kind is not Kind.COMPRESSED \
                    and (kind is not Kind.DATA or run[3] + run[2] == where):
                run[2] += n
            else:
                if run is not None:
                    yield run[0], run[1], run[2], run[3]
                run = [kind, pos, n, where]
            pos += n
        if run is not None:
            yield run[0], run[1], run[2], run[3]

    # -- reading ------------------------------------------------------------------

    def read_now(self, offset: int, length: int) -> Sequence[Segment] | None:
        """The common small read: one cluster whose table is cached, data
        here or in a backing file that answers at once too."""
        cs = self.cluster_size
        in_cluster = offset & (cs - 1)
        if in_cluster + length > cs:
            return None
        l1_index = offset >> (self.cluster_bits + self.l2_bits)
        l2_offset = self.l1[l1_index] & L1_OFFSET_MASK if l1_index < len(self.l1) else 0
        table = self.l2_cache.get(l2_offset) if l2_offset else None
        if table is None and l2_offset:
            return None
        entry = table[(offset >> self.cluster_bits) & ((1 << self.l2_bits) - 1)] if table else 0
        if entry & (L2_COMPRESSED | L2_ZERO):
            return None
        host = entry & L2_OFFSET_MASK
        if host:
            return (FileExtent(self.fd, host + in_cluster, length),)
        b = self.backing
        if b is None or offset >= b.size:
            return (Zeros(length),)
        return b.read_now(offset, length) if offset + length <= b.size else None

    async def read(self, offset: int, length: int) -> Sequence[Segment]:
        now = self.read_now(offset, length)
        if now is not None:
            return now
        if self._missing_tables(offset, length):  # metadata from disk: on the image's thread
            await self._run(self._load_tables, offset, length)
        out: list[Segment] = []
        for kind, pos, n, where in self._extents(offset, length, on_loop=True):
            if kind is Kind.DATA:
                _append(out, FileExtent(self.fd, where, n))
            elif kind is Kind.ZERO:
                _append(out, Zeros(n))
            elif kind is Kind.BACKING:
                for seg in await self._backing_read(pos, n):
                    _append(out, seg)
            else:
                data = await self._run(self._decompress, where)
                start = pos & (self.cluster_size - 1)
                _append(out, data[start:start + n])
        return out

    async def _backing_read(self, pos: int, n: int) -> Sequence[Segment]:
        b = self.backing
        if b is None or pos >= b.size:
            return (Zeros(n),)
        if pos + n <= b.size:
            return await b.read(pos, n)
        inside = min(n, b.size - pos)
        segs = list(await b.read(pos, inside))
        if inside < n:  # a backing file shorter than the overlay reads as zeros beyond its end
            segs.append(Zeros(n - inside))
        return segs

    def read_sync(self, offset: int, length: int) -> bytes:
        """Blocking read, for copy-on-write and the image tools."""
        self._load_tables(offset, length)
        parts: list[bytes] = []
        cs = self.cluster_size
        for kind, pos, n, where in self._extents(offset, length):
            if kind is Kind.DATA:
                parts.append(pread_exact(self.fd, n, where))
            elif kind is Kind.COMPRESSED:
                start = pos & (cs - 1)
                parts.append(self._decompress(where)[start:start + n])
            elif kind is Kind.BACKING and self.backing is not None and pos < self.backing.size:
                inside = min(n, self.backing.size - pos)
                parts.append(self.backing.read_sync(pos, inside) + bytes(n - inside))
            else:
                parts.append(bytes(n))
        return b"".join(parts)

    def _compressed_location(self, entry: int) -> tuple[int, int]:
        """(host offset, byte count) of a compressed cluster ("Compressed
        Clusters Descriptor")."""
        x = 62 - (self.cluster_bits - 8)
        host = entry & ((1 << x) - 1)
        sectors = ((entry >> x) & ((1 << (62 - x)) - 1)) + 1
        return host, sectors * 512 - (host & 511)

    def _decompress(self, entry: int) -> bytes:
        """Blocking: one compressed cluster."""
        host, count = self._compressed_location(entry)
        raw = os.pread(self.fd, count, host)
        try:
            data = zlib.decompressobj(-12).decompress(raw, self.cluster_size)
        except zlib.error as e:
            raise Qcow2Error(f"{self.path}: bad compressed cluster at {host:#x}: {e}") from e
        return data.ljust(self.cluster_size, b"\0")

    def host_clusters(self, entry: int) -> range:
        """The host clusters an L2 entry holds a reference to."""
        cb = self.cluster_bits
        if entry & L2_COMPRESSED:
            host, count = self._compressed_location(entry)
            return range(host >> cb, ((host + count - 1) >> cb) + 1)
        host = entry & L2_OFFSET_MASK
        return range(host >> cb, (host >> cb) + 1) if host else range(0)

    async def block_status(self, offset: int) -> tuple[bool, int]:
        """Mapped unless the cluster reads as zeros: a zero cluster, or an
        unallocated one with nothing behind it. (Initiators skip reading
        what GET LBA STATUS calls deallocated, since LBPRZ says it is zero.)"""
        if self._missing_tables(offset, 1):
            await self._run(self._load_tables, offset, 1)
        rest = self.cluster_size - (offset & (self.cluster_size - 1))
        kind = self.kind_of(self._entry(offset, on_loop=True))
        if kind is Kind.ZERO:
            return False, rest
        if kind is not Kind.BACKING:
            return True, rest
        if self.backing is None or offset >= self.backing.size:
            return False, rest
        mapped, n = await self.backing.block_status(offset)
        return mapped, max(1, min(n, rest))

    # -- writing ------------------------------------------------------------------

    def _writable(self) -> Refcounts:
        if self.refs is None:
            raise Qcow2Error(f"{self.path} is open read-only")
        return self.refs

    def _slot(self, pos: int, allocate: bool) -> tuple[array, int, int] | None:
        """(L2 table, index, table offset) for the guest offset; a missing
        table is made (in memory) when ``allocate``."""
        l1_index = pos >> (self.cluster_bits + self.l2_bits)
        l2_offset = self.l1[l1_index] & L1_OFFSET_MASK
        if l2_offset:
            table = self.l2_table(l2_offset)
        elif not allocate:
            return None
        else:
            l2_offset = self._writable().alloc()
            table = array("Q", bytes(self.cluster_size))
            self.l2_cache[l2_offset] = table
            self._dirty_l2.add(l2_offset)
            self.l1[l1_index] = l2_offset | OFLAG_COPIED
            self._dirty_l1.add(l1_index)
        return table, (pos >> self.cluster_bits) & ((1 << self.l2_bits) - 1), l2_offset

    def _check_space(self, offset: int, length: int) -> None:
        """Refuse a write that would allocate past the limit, before any of
        it is written; warn once the image passes 90 % of it."""
        if self.limit is None:
            return
        refs = self._writable()
        need = sum(-(-n // self.cluster_size) for kind, _, n, _ in self._extents(offset, length)
                   if kind is not Kind.DATA)
        need += len(self._missing_l1(offset, length)) if need else 0
        projected = (refs.used + need) * self.cluster_size
        if projected > self.limit:
            self._event("qcow2.space_exhausted", used=refs.used * self.cluster_size, limit=self.limit)
            raise SpaceExhausted(f"{self.path}: writing would pass its size limit of {self.limit} bytes")
        warn = projected >= SPACE_WARN_FRACTION * self.limit
        if warn and not self._space_warned:
            self._event("qcow2.space_low", used=projected, limit=self.limit)
        self._space_warned = warn

    def _missing_l1(self, offset: int, length: int) -> list[int]:
        return [i for i in self._l1_indexes(offset, length) if not self.l1[i]]

    def _event(self, what: str, **fields: object) -> None:
        self.events.emit(what, logging.WARNING, image=self.path, **fields)

    def _cluster_contents(self, pos: int, entry: int, kind: Kind) -> bytes:
        """Blocking: what the guest cluster at ``pos`` reads as now (the
        copy-on-write source)."""
        if kind is Kind.COMPRESSED:
            return self._decompress(entry)
        if kind is Kind.BACKING and self.backing is not None and pos < self.backing.size:
            inside = min(self.cluster_size, self.backing.size - pos)
            return self.backing.read_sync(pos, inside) + bytes(self.cluster_size - inside)
        return bytes(self.cluster_size)

    def write_sync(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        """Blocking write; on the image's thread (or with nothing else running)."""
        refs = self._writable()
        view = memoryview(data).cast("B")
        self._check_space(offset, len(view))
        cs = self.cluster_size
        writes: list[tuple[int, bytes | bytearray | memoryview]] = []
        updates: list[tuple[array, int, int, int]] = []
        pos, end = offset, offset + len(view)
        while pos < end:
            in_cluster = pos & (cs - 1)
            n = min(cs - in_cluster, end - pos)
            chunk = view[pos - offset:pos - offset + n]
            slot = self._slot(pos, allocate=True)
            assert slot is not None
            table, index, table_offset = slot
            entry = table[index]
            kind = self.kind_of(entry)
            if kind is Kind.DATA:
                writes.append(((entry & L2_OFFSET_MASK) + in_cluster, chunk))
            else:
                if n == cs:
                    whole: bytes | bytearray | memoryview = chunk
                else:
                    whole = bytearray(self._cluster_contents(pos - in_cluster, entry, kind))
                    whole[in_cluster:in_cluster + n] = chunk
                reuse = kind is Kind.ZERO and entry & L2_OFFSET_MASK  # a preallocated zero cluster
                host = entry & L2_OFFSET_MASK if reuse else refs.alloc()
                writes.append((host, whole))
                updates.append((table, index, table_offset, host | OFLAG_COPIED))
                if kind is Kind.COMPRESSED:
                    refs.release(self.host_clusters(entry))
            pos += n
        self._pwrite_runs(writes)
        # the tables point at the new clusters only once their data is written
        for table, index, table_offset, new in updates:
            self._dirty_l2.add(table_offset)
            table[index] = new
        if fua or len(self._dirty_l2) > DIRTY_TABLES_MAX:
            self.flush_sync()

    @property
    def atomic_unit(self) -> int:  # type: ignore[override]
        """Aligned runs of clusters whose L2 entries share one 512-byte sector
        of one table (at most 64 entries; the unit is a power of two), about
        :data:`ATOMIC_TARGET` bytes: :meth:`write_atomic_sync` switches them
        with that one sector. 0 when read-only."""
        if self.refs is None:
            return 0
        return self.cluster_size * min(64, max(1, ATOMIC_TARGET // self.cluster_size))

    def write_atomic_sync(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        """Blocking: ``data`` (inside one aligned :attr:`atomic_unit`)
        written out of place. Every cluster it touches is written whole to a
        newly allocated host cluster, then the L2 entries point at them; the
        tables reach the disk later, after a sync of the data, and the
        entries' sector is written whole: after a crash the guest reads
        either every old cluster or every new one. The old host clusters
        are freed once the new entries are durable (flush_sync)."""
        refs = self._writable()
        view = memoryview(data).cast("B")
        self._check_space(offset, len(view))
        cs = self.cluster_size
        end = offset + len(view)
        writes: list[tuple[int, bytes | bytearray | memoryview]] = []
        updates: list[tuple[array, int, int, int, int]] = []
        for pos in range(offset & ~(cs - 1), end, cs):
            slot = self._slot(pos, allocate=True)
            assert slot is not None
            table, index, table_offset = slot
            entry = table[index]
            lo, hi = max(pos, offset), min(pos + cs, end)
            if hi - lo == cs:
                whole: bytes | bytearray | memoryview = view[lo - offset:hi - offset]
            else:
                whole = bytearray(self._current_cluster(pos, entry))
                whole[lo - pos:hi - pos] = view[lo - offset:hi - offset]
            host = refs.alloc()
            writes.append((host, whole))
            updates.append((table, index, table_offset, host | OFLAG_COPIED, entry))
        self._pwrite_runs(writes)
        for table, index, table_offset, new, old in updates:
            self._dirty_l2.add(table_offset)
            table[index] = new
            refs.release(self.host_clusters(old))
        if fua or len(self._dirty_l2) > DIRTY_TABLES_MAX:
            self.flush_sync()

    def _current_cluster(self, pos: int, entry: int) -> bytes:
        kind = self.kind_of(entry)
        if kind is Kind.DATA:
            return pread_exact(self.fd, self.cluster_size, entry & L2_OFFSET_MASK)
        return self._cluster_contents(pos, entry, kind)

    def _pwrite_runs(self, writes: list[tuple[int, bytes | bytearray | memoryview]]) -> None:
        """Write pieces, host-contiguous ones in one pwritev."""
        i = 0
        while i < len(writes):
            start, first = writes[i]
            bufs = [first]
            pos = start + len(first)
            i += 1
            while i < len(writes) and writes[i][0] == pos:
                bufs.append(writes[i][1])
                pos += len(writes[i][1])
                i += 1
            total = pos - start
            done = os.pwritev(self.fd, bufs, start)
            if done < total:  # short write: finish the rest piece by piece
                self._pwrite(start + done, b"".join(bytes(b) for b in bufs)[done:])

    def zero_sync(self, offset: int, length: int) -> None:
        """Blocking: make the range read as zeros. Whole clusters become zero
        clusters (or unallocated ones when there is no backing file) and
        their host clusters are freed; partial clusters get zeros written."""
        refs = self._writable()
        cs = self.cluster_size
        pos, end = offset, offset + length
        while pos < end:
            in_cluster = pos & (cs - 1)
            n = min(cs - in_cluster, end - pos)
            whole = in_cluster == 0 and (n == cs or pos + n >= self.size)
            if not whole:
                self.write_sync(pos, bytes(n))
                pos += n
                continue
            slot = self._slot(pos, allocate=self.backing is not None)
            if slot is not None:
                table, index, table_offset = slot
                entry = table[index]
                new = L2_ZERO if self.backing is not None else 0
                if entry != new:
                    self._dirty_l2.add(table_offset)
                    table[index] = new
                    refs.release(self.host_clusters(entry))
            pos += n
        if len(self._dirty_l2) > DIRTY_TABLES_MAX:
            self.flush_sync()

    def flush_sync(self) -> None:
        """Blocking: every completed write durable, tables written back in
        the crash-safe order (module docstring)."""
        refs = self.refs
        if refs is None:
            return
        if not (refs.dirty() or self._dirty_l2 or self._dirty_l1):
            self.sync()
            return
        refs.write_increments()
        self.sync()
        for table_offset in sorted(self._dirty_l2):
            self._pwrite(table_offset, dump_be(self.l2_cache[table_offset]))
        self._dirty_l2.clear()
        if self._dirty_l1:
            self.sync()
            for i in sorted(self._dirty_l1):
                self._pwrite(self.header.l1_table_offset + 8 * i, struct.pack(">Q", self.l1[i]))
            self._dirty_l1.clear()
        self.sync()
        refs.apply_frees()

    async def write(self, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        await self._run(self.write_sync, offset, data, fua)

    async def write_atomic(self, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        await self._run(self.write_atomic_sync, offset, data, fua)

    async def write_zeroes(self, offset: int, length: int) -> None:
        await self._run(self.zero_sync, offset, length)

    async def flush(self) -> None:
        if self.refs is not None:
            await self._run(self.flush_sync)

    def refcounts(self) -> Refcounts:
        """The refcounts: the live ones when open for writing, else read now."""
        if self.refs is not None:
            return self.refs
        h = self.header
        return Refcounts(self.fd, h.cluster_bits, h.refcount_order, h.refcount_table_offset,
                         h.refcount_table_clusters, lambda: None, lambda offset, clusters: None)

    def allocated_bytes(self) -> int:
        """Bytes of the image file in use (counted clusters), as the size
        limit counts them."""
        return self.refcounts().used * self.cluster_size

    def close(self) -> None:
        if self.fd >= 0:
            try:
                if self._writing:
                    self.flush_sync()
                    self._set_incompatible(self.incompatible & ~INCOMPAT_DIRTY)
            finally:
                os.close(self.fd)
                self.fd = -1
        self._io.close()
        if self.backing is not None:
            self.backing.close()
            self.backing = None


def _append(out: list[Segment], seg: Segment) -> None:
    """Append, merging with the previous segment when they are contiguous
    (one sendfile for a run of neighbouring clusters)."""
    if out:
        last = out[-1]
        if isinstance(seg, FileExtent) and isinstance(last, FileExtent) and last.fd == seg.fd \
                and last.offset + last.length == seg.offset:
            out[-1] = FileExtent(last.fd, last.offset, last.length + seg.length)
            return
        if isinstance(seg, Zeros) and isinstance(last, Zeros):
            out[-1] = Zeros(last.length + seg.length)
            return
    out.append(seg)
