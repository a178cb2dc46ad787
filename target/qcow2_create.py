"""Making qcow2 images (version 3, 16-bit refcounts) and changing their
backing file: the header layout of QEMU docs/interop/qcow2.txt, "Header"
and "Header extensions".

An overlay is created in O(1): a header, one refcount table, the refcount
blocks for the metadata and an empty L1 table, written to a temporary file
and renamed into place, so a crash never leaves half an image.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

from .backend import Backend
from .qcow2 import (
    EXT_BACKING_FORMAT,
    EXT_END,
    HEADER_V2,
    HEADER_V3_EXTRA,
    MAGIC,
    Qcow2Backend,
    Qcow2Error,
    open_backing,
    parse_header,
    resolve_backing,
)

REFCOUNT_ORDER = 4
HEADER_LENGTH = HEADER_V2.size + HEADER_V3_EXTRA.size  # 104: no optional fields


def _extension(ext_type: int, data: bytes) -> bytes:
    return struct.pack(">II", ext_type, len(data)) + data + bytes(-len(data) % 8)


def _header_tail(cluster_size: int, fixed_length: int, extensions: list[tuple[int, bytes]],
                 backing: str, backing_format: str) -> tuple[bytes, int, int]:
    """Extensions, end marker and backing file name placed after the fixed
    header: (bytes, backing file offset, backing file length)."""
    exts = [(t, d) for t, d in extensions if t != EXT_BACKING_FORMAT]
    if backing and backing_format:
        exts.insert(0, (EXT_BACKING_FORMAT, backing_format.encode()))
    tail = b"".join(_extension(t, d) for t, d in exts) + _extension(EXT_END, b"")
    name = backing.encode()
    if len(name) > 1023:
        raise Qcow2Error("backing file name longer than 1023 bytes")
    offset = fixed_length + len(tail) if name else 0
    if fixed_length + len(tail) + len(name) > cluster_size:
        raise Qcow2Error("header, extensions and backing file name do not fit in the first cluster")
    return tail + name, offset, len(name)


def create_image(path: str | os.PathLike[str], size: int | None = None, backing: str | None = None,
                 backing_format: str | None = None, cluster_size: int = 65536, overwrite: bool = False) -> int:
    """Create a qcow2 v3 image, empty or over ``backing`` (a path stored as
    given; relative names resolve against the image's directory, as QEMU
    does). Returns the virtual size."""
    path = Path(path)
    if cluster_size & (cluster_size - 1) or not 512 <= cluster_size <= 2 << 20:
        raise Qcow2Error(f"cluster size {cluster_size} is not a power of two in 512 B..2 MiB")
    cluster_bits = cluster_size.bit_length() - 1
    if backing:
        base: Backend = open_backing(str(resolve_backing(str(path), backing)), backing_format or "", 1)
        try:
            backing_format = backing_format or ("qcow2" if isinstance(base, Qcow2Backend) else "raw")
            size = base.size if size is None else size
        finally:
            base.close()
    if size is None or size <= 0 or size % 512:
        raise Qcow2Error(f"virtual size {size} must be a positive multiple of 512")
    l2_span = cluster_size * (cluster_size // 8)
    l1_size = -(-size // l2_span)
    l1_clusters = -(-l1_size * 8 // cluster_size)
    per_block = cluster_size * 8 >> REFCOUNT_ORDER
    rt_clusters, blocks = 1, 1
    while True:  # the refcount structures count themselves
        total = 1 + rt_clusters + blocks + l1_clusters
        need_blocks = -(-total // per_block)
        need_rt = -(-need_blocks * 8 // cluster_size)
        if (need_blocks, need_rt) == (blocks, rt_clusters):
            break
        blocks, rt_clusters = need_blocks, need_rt
    rt_offset = cluster_size
    blocks_offset = rt_offset + rt_clusters * cluster_size
    l1_offset = blocks_offset + blocks * cluster_size
    tail, backing_offset, backing_length = _header_tail(cluster_size, HEADER_LENGTH, [], backing or "",
                                                        backing_format or "")
    header = HEADER_V2.pack(MAGIC, 3, backing_offset, backing_length, cluster_bits, size, 0, l1_size, l1_offset,
                            rt_offset, rt_clusters, 0, 0)
    header += HEADER_V3_EXTRA.pack(0, 0, 0, REFCOUNT_ORDER, HEADER_LENGTH) + tail
    table = struct.pack(f">{blocks}Q", *(blocks_offset + i * cluster_size for i in range(blocks)))
    counts = struct.pack(f">{total}H", *([1] * total))

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, (1 + rt_clusters + blocks + l1_clusters) * cluster_size)
        os.pwrite(fd, header, 0)
        os.pwrite(fd, table, rt_offset)
        os.pwrite(fd, counts, blocks_offset)
        os.fsync(fd)
        if overwrite:
            os.rename(tmp, path)
        else:
            os.link(tmp, path)  # fails if the image exists: never replace one by accident
            os.unlink(tmp)
    except FileExistsError:
        os.unlink(tmp)
        raise Qcow2Error(f"{path} exists") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    sync_dir(path.parent)
    return size


def sync_dir(directory: Path) -> None:
    """Make a directory's entries (a file created or renamed in it) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def set_backing(path: str | os.PathLike[str], backing: str, backing_format: str) -> None:
    """Point an image at another backing file (header only, like ``qemu-img
    rebase -u``; copying what differs is the caller's job). The image must
    not be open for writing anywhere."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Qcow2Error(f"{path} is open for writing by another process") from None
        raw = os.pread(fd, 65536, 0)
        h = parse_header(raw, os.fstat(fd).st_size)
        if h.version != 3:
            raise Qcow2Error(f"{path}: only qcow2 version 3 images can be rebased")
        extensions: list[tuple[int, bytes]] = []
        pos = h.header_length
        while pos + 8 <= len(raw):
            ext_type, ext_len = struct.unpack_from(">II", raw, pos)
            if ext_type == EXT_END:
                break
            extensions.append((ext_type, raw[pos + 8:pos + 8 + ext_len]))
            pos += 8 + ext_len + (-ext_len % 8)
        tail, offset, length = _header_tail(h.cluster_size, h.header_length, extensions, backing, backing_format)
        fixed = bytearray(raw[:h.header_length])
        struct.pack_into(">QI", fixed, 8, offset, length)
        new = bytes(fixed) + tail
        # one write of the first cluster; the old name past the new end stays
        # unreferenced, harmlessly
        os.pwrite(fd, new, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
