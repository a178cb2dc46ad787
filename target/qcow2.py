"""qcow2 images (QEMU docs/interop/qcow2.txt), read side: header and header
extensions, feature bits, L1/L2 lookup with a table cache, zero clusters,
compressed clusters, and backing chains (raw or qcow2, overlay over overlay).

Allocated clusters are returned as file extents, so an image's data leaves
by ``sendfile`` like a raw file's. Writing (copy-on-write overlays) is the
next step of the overlay issue; until then images open read-only and a
read-write open is refused with a message that says so.
"""

from __future__ import annotations

import asyncio
import os
import struct
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .backend import Backend, BackendError, FileExtent, RawBackend, Segment, Zeros, pread_exact

MAGIC = b"QFI\xfb"
HEADER_V2 = struct.Struct(">4sIQIIQIIQQIIQ")  # up to snapshots_offset (72 bytes)
HEADER_V3_EXTRA = struct.Struct(">QQQII")  # incompatible .. header_length (32 bytes)

# "Header extensions" section
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
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
# what a read-only reader can live with: a dirty image only has leaked
# clusters or stale refcounts, which reads never look at
READABLE_INCOMPAT = INCOMPAT_DIRTY

L1_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2_COMPRESSED = 1 << 62
L2_ZERO = 1 << 0
L2_CACHE_TABLES = 256


class Qcow2Error(BackendError):
    """An image bootsvc cannot serve; the message names what is wrong."""


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

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits


def parse_header(raw: bytes, file_size: int) -> Header:
    """Check and decode the header and its extensions ("Header", "Header
    extensions"); every refusal names the feature."""
    if len(raw) < HEADER_V2.size or raw[:4] != MAGIC:
        raise Qcow2Error("not a qcow2 image (bad magic)")
    (_, version, backing_off, backing_len, cluster_bits, size, crypt, l1_size, l1_off, _rt_off, _rt_clusters,
     nb_snapshots, _snap_off) = HEADER_V2.unpack_from(raw)
    if version not in (2, 3):
        raise Qcow2Error(f"qcow2 version {version} is not supported (2 and 3 are)")
    if not 9 <= cluster_bits <= 21:
        raise Qcow2Error(f"cluster size 2^{cluster_bits} is outside 512 B..2 MiB")
    if crypt:
        raise Qcow2Error("encrypted qcow2 images are not supported")
    incompatible, header_length = 0, HEADER_V2.size
    if version == 3:
        if len(raw) < HEADER_V2.size + HEADER_V3_EXTRA.size:
            raise Qcow2Error("truncated qcow2 v3 header")
        incompatible, _compat, _autoclear, _refcount_order, header_length = HEADER_V3_EXTRA.unpack_from(
            raw, HEADER_V2.size)
        if header_length < 104 or header_length > len(raw):
            raise Qcow2Error(f"bad header length {header_length}")
    for bit, name in KNOWN_INCOMPAT.items():
        if incompatible & bit and not bit & READABLE_INCOMPAT:
            raise Qcow2Error(f"qcow2 feature not supported: {name}")
    unknown = incompatible & ~sum(KNOWN_INCOMPAT)
    if unknown:
        raise Qcow2Error(f"unknown incompatible qcow2 feature bits {unknown:#x}")
    l2_entries = 1 << (cluster_bits - 3)
    if size and l1_size * l2_entries * (1 << cluster_bits) < size:
        raise Qcow2Error("L1 table too small for the virtual size")
    if l1_off % (1 << cluster_bits) or l1_off + 8 * l1_size > file_size or l1_size > (32 << 20) // 8:
        raise Qcow2Error("L1 table offset or size is invalid (truncated image?)")
    del nb_snapshots  # internal snapshots do not change what the active L1 maps
    backing_format = ""
    pos = header_length
    while pos + 8 <= len(raw):
        ext_type, ext_len = struct.unpack_from(">II", raw, pos)
        if ext_type == EXT_END:
            break
        data = raw[pos + 8:pos + 8 + ext_len]
        if ext_type == EXT_BACKING_FORMAT:
            backing_format = data.decode("utf-8", "replace")
        elif ext_type == EXT_EXTERNAL_DATA:
            raise Qcow2Error("qcow2 feature not supported: external data file")
        elif ext_type == EXT_ENCRYPTION:
            raise Qcow2Error("encrypted qcow2 images are not supported")
        pos += 8 + ext_len + (-ext_len % 8)
    backing_file = ""
    if backing_off:
        if backing_len > 1023 or backing_off + backing_len > len(raw):
            raise Qcow2Error("backing file name is out of the header cluster")
        backing_file = raw[backing_off:backing_off + backing_len].decode("utf-8", "replace")
    return Header(version, backing_file, backing_format, cluster_bits, size, crypt, l1_size, l1_off,
                  incompatible, header_length)


def open_image(path: str | os.PathLike[str], read_only: bool = True, _depth: int = 0) -> Backend:
    """Open a qcow2 image (and its backing chain) as a backend."""
    if not read_only:
        raise Qcow2Error(f"{os.fspath(path)}: qcow2 images are served read-only for now "
                         "(writable overlays come with the copy-on-write overlay work)")
    return Qcow2Backend(path, _depth)


def _open_any(path: str, fmt: str, depth: int) -> Backend:
    if depth > 16:
        raise Qcow2Error("backing chain deeper than 16 images (a loop?)")
    if not fmt:
        with open(path, "rb") as f:
            fmt = "qcow2" if f.read(4) == MAGIC else "raw"
    if fmt == "qcow2":
        return Qcow2Backend(path, depth)
    if fmt == "raw":
        return RawBackend(path, read_only=True)
    raise Qcow2Error(f"backing format {fmt!r} is not supported (raw and qcow2 are)")


class Qcow2Backend(Backend):
    def __init__(self, path: str | os.PathLike[str], depth: int = 0) -> None:
        self.path = os.fspath(path)
        self.read_only = True
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise Qcow2Error(f"cannot open {self.path}: {e.strerror}") from e
        try:
            file_size = os.fstat(self.fd).st_size
            first = os.pread(self.fd, 65536, 0)
            try:
                self.header = parse_header(first, file_size)
            except Qcow2Error as e:
                raise Qcow2Error(f"{self.path}: {e}") from None
            h = self.header
            self.size = h.size
            self.cluster_bits = h.cluster_bits
            self.cluster_size = h.cluster_size
            self.l2_bits = h.cluster_bits - 3
            raw_l1 = pread_exact(self.fd, 8 * h.l1_size, h.l1_table_offset)
            self.l1 = struct.unpack(f">{h.l1_size}Q", raw_l1)
            self.l2_cache: OrderedDict[int, tuple[int, ...]] = OrderedDict()
            self.backing: Backend | None = None
            if h.backing_file:
                bpath = Path(h.backing_file)
                if not bpath.is_absolute():
                    bpath = Path(self.path).parent / bpath
                self.backing = _open_any(str(bpath), h.backing_format, depth + 1)
        except BaseException:
            os.close(self.fd)
            raise

    # -- mapping ------------------------------------------------------------------

    def _l2_table(self, l2_offset: int) -> tuple[int, ...]:
        """Blocking: the L2 table at ``l2_offset``, from the cache or disk."""
        table = self.l2_cache.get(l2_offset)
        if table is not None:
            self.l2_cache.move_to_end(l2_offset)
            return table
        raw = pread_exact(self.fd, self.cluster_size, l2_offset)
        table = struct.unpack(f">{self.cluster_size // 8}Q", raw)
        self.l2_cache[l2_offset] = table
        if len(self.l2_cache) > L2_CACHE_TABLES:
            self.l2_cache.popitem(last=False)
        return table

    def _missing_tables(self, offset: int, length: int) -> list[int]:
        out = []
        cb, lb = self.cluster_bits, self.l2_bits
        for l1_index in range(offset >> (cb + lb), ((offset + length - 1) >> (cb + lb)) + 1):
            l2 = self.l1[l1_index] & L1_OFFSET_MASK if l1_index < len(self.l1) else 0
            if l2 and l2 not in self.l2_cache:
                out.append(l2)
        return out

    async def read(self, offset: int, length: int) -> Sequence[Segment]:
        loop = asyncio.get_running_loop()
        missing = self._missing_tables(offset, length)
        if missing:  # metadata from disk: in the thread pool, never on the loop
            await loop.run_in_executor(None, lambda: [self._l2_table(t) for t in missing])
        out: list[Segment] = []
        pos, end = offset, offset + length
        cs = self.cluster_size
        while pos < end:
            in_cluster = pos & (cs - 1)
            n = min(cs - in_cluster, end - pos)
            entry = self._l2_entry(pos)
            if entry & L2_COMPRESSED:
                data = await loop.run_in_executor(None, self._decompress, entry)
                _append(out, data[in_cluster:in_cluster + n])
            elif entry & L2_OFFSET_MASK and not (self.header.version == 3 and entry & L2_ZERO):
                _append(out, FileExtent(self.fd, (entry & L2_OFFSET_MASK) + in_cluster, n))
            elif entry & L2_ZERO and self.header.version == 3:
                _append(out, Zeros(n))
            else:
                for seg in await self._backing_read(pos, n):
                    _append(out, seg)
            pos += n
        return out

    def _l2_entry(self, pos: int) -> int:
        l1_index = pos >> (self.cluster_bits + self.l2_bits)
        if l1_index >= len(self.l1):
            return 0
        l2_offset = self.l1[l1_index] & L1_OFFSET_MASK
        if not l2_offset:
            return 0
        table = self._l2_table(l2_offset)  # cached by read() beforehand
        return table[(pos >> self.cluster_bits) & ((1 << self.l2_bits) - 1)]

    async def _backing_read(self, pos: int, n: int) -> Sequence[Segment]:
        b = self.backing
        if b is None or pos >= b.size:
            return (Zeros(n),)
        inside = min(n, b.size - pos)
        segs = list(await b.read(pos, inside))
        if inside < n:  # a backing file shorter than the overlay reads as zeros beyond its end
            segs.append(Zeros(n - inside))
        return segs

    def _decompress(self, entry: int) -> bytes:
        """Blocking: one compressed cluster ("Compressed Clusters Descriptor")."""
        x = 62 - (self.cluster_bits - 8)
        host = entry & ((1 << x) - 1)
        sectors = ((entry >> x) & ((1 << (62 - x)) - 1)) + 1
        raw = os.pread(self.fd, sectors * 512 - (host & 511), host)
        try:
            d = zlib.decompressobj(-12)
            data = d.decompress(raw, self.cluster_size)
        except zlib.error as e:
            raise Qcow2Error(f"{self.path}: bad compressed cluster at {host:#x}: {e}") from e
        return data.ljust(self.cluster_size, b"\0")

    async def write(self, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        raise Qcow2Error(f"{self.path} is open read-only")

    async def flush(self) -> None:
        return None

    async def write_zeroes(self, offset: int, length: int) -> None:
        raise Qcow2Error(f"{self.path} is open read-only")

    async def block_status(self, offset: int) -> tuple[bool, int]:
        """Mapped unless the cluster reads as zeros: a zero cluster, or an
        unallocated one with nothing behind it. (Initiators skip reading
        what GET LBA STATUS calls deallocated, since LBPRZ says it is zero.)"""
        missing = self._missing_tables(offset, 1)
        if missing:
            await asyncio.get_running_loop().run_in_executor(None, self._l2_table, missing[0])
        rest = self.cluster_size - (offset & (self.cluster_size - 1))
        entry = self._l2_entry(offset)
        if entry & L2_COMPRESSED:
            return True, rest
        if entry & L2_ZERO and self.header.version == 3:
            return False, rest
        if entry & L2_OFFSET_MASK:
            return True, rest
        if self.backing is None or offset >= self.backing.size:
            return False, rest
        mapped, n = await self.backing.block_status(offset)
        return mapped, max(1, min(n, rest))

    def close(self) -> None:
        if self.backing is not None:
            self.backing.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


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
