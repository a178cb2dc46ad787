"""qcow2 host cluster management (QEMU docs/interop/qcow2.txt, "Host cluster
management"): the refcount table, refcount blocks, and the cluster allocator
built on them.

Crash safety rests on one rule, kept by the order :class:`Qcow2Backend`
calls these methods in: on disk, a cluster's refcount is raised before any
table points at it and lowered only after no table points at it any more. A
crash can then leave leaked clusters (counted, unreferenced), never a
referenced cluster with a refcount of zero. So increments are applied in
memory at once and written by :meth:`write_increments`, while frees wait in
``pending_free`` until the tables that dropped the cluster are on disk, and
only then become reusable (:meth:`apply_frees`).
"""

from __future__ import annotations

import heapq
import os
import struct
import sys
from array import array
from collections.abc import Callable, Iterable

from .backend import BackendError, pread_exact, punch_hole, pwrite_all

# refcount_order -> array type code: the orders whose entries are whole bytes
TYPECODES = {3: "B", 4: "H", 5: "I", 6: "Q"}
TABLE_OFFSET_MASK = 0xFFFFFFFFFFFFFE00


def load_be(raw: bytes, typecode: str) -> array:
    """An on-disk table of big-endian integers as a native array."""
    a = array(typecode, raw)
    if sys.byteorder == "little" and a.itemsize > 1:
        a.byteswap()
    return a


def dump_be(a: array) -> bytes:
    """A native array as its on-disk big-endian bytes."""
    if sys.byteorder == "little" and a.itemsize > 1:
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


class Refcounts:
    """The refcounts of one image file, all refcount blocks held in memory
    (one block covers 2 GiB of image file at 64 KiB clusters)."""

    def __init__(self, fd: int, cluster_bits: int, refcount_order: int, table_offset: int,
                 table_clusters: int, sync: Callable[[], None], set_table: Callable[[int, int], None]) -> None:
        if refcount_order not in TYPECODES:
            raise BackendError(f"{1 << refcount_order}-bit refcounts are readable only "
                               "(8, 16, 32 and 64 bits are writable)")
        self.fd = fd
        self.cluster_bits = cluster_bits
        self.cluster_size = 1 << cluster_bits
        self.typecode = TYPECODES[refcount_order]
        self.max_refcount = (1 << (1 << refcount_order)) - 1
        self.per_block = self.cluster_size * 8 >> refcount_order
        self._sync = sync
        self._set_table = set_table  # writes the header's (offset, clusters) of a grown table
        self.table_offset = table_offset
        self.table_clusters = table_clusters
        raw = pread_exact(fd, table_clusters * self.cluster_size, table_offset)
        self.table = [e & TABLE_OFFSET_MASK for e in struct.unpack(f">{len(raw) // 8}Q", raw)]
        self.blocks: dict[int, array] = {}
        for index, offset in enumerate(self.table):
            if offset:
                self.blocks[index] = load_be(pread_exact(fd, self.cluster_size, offset), self.typecode)
        self.dirty_blocks: set[int] = set()
        self.dirty_entries: set[int] = set()
        self.pending_free: list[int] = []
        self.rescan()

    def rescan(self) -> None:
        """Derive the allocator's state from the counts: the end of the
        counted area, the free clusters below it, the number in use."""
        self.used = 0
        self.end = 0
        for index, block in self.blocks.items():
            for i, count in enumerate(block):
                if count:
                    self.used += 1
                    self.end = max(self.end, index * self.per_block + i + 1)
        self.free: list[int] = [c for c in range(self.end) if not self.get(c)]  # a heap
        heapq.heapify(self.free)

    def set(self, cluster: int, count: int) -> None:
        """Set a count outright (leak repair); call :meth:`rescan` after."""
        self._block_for(cluster)[cluster % self.per_block] = count
        self.dirty_blocks.add(cluster // self.per_block)

    # -- reading ------------------------------------------------------------------

    def get(self, cluster: int) -> int:
        block = self.blocks.get(cluster // self.per_block)
        return 0 if block is None else block[cluster % self.per_block]

    def file_end(self) -> int:
        """Bytes the image file must span to hold every counted cluster."""
        return self.end * self.cluster_size

    # -- changing -------------------------------------------------------------------

    def alloc(self) -> int:
        """A free cluster's byte offset, counted at once (in memory)."""
        if self.free:
            cluster = heapq.heappop(self.free)
        else:
            cluster = self.end
            self.end += 1  # before counting: a new refcount block goes to the end too
        self.increment(cluster)
        return cluster << self.cluster_bits

    def increment(self, cluster: int) -> None:
        block = self._block_for(cluster)
        i = cluster % self.per_block
        if block[i] == self.max_refcount:
            raise BackendError(f"refcount overflow on cluster {cluster}")
        if not block[i]:
            self.used += 1
        block[i] += 1
        self.end = max(self.end, cluster + 1)
        self.dirty_blocks.add(cluster // self.per_block)

    def release(self, clusters: Iterable[int]) -> None:
        """Drop one reference each, once the tables no longer pointing at them
        are on disk (see the module docstring)."""
        self.pending_free.extend(clusters)

    def _block_for(self, cluster: int) -> array:
        index = cluster // self.per_block
        block = self.blocks.get(index)
        if block is not None:
            return block
        if index >= len(self.table):
            self._grow_table(index + 1)
            block = self.blocks.get(index)  # counting the new table may have made it
            if block is not None:
                return block
        # The new block lives at the end of the file; it usually covers itself.
        block = array(self.typecode, bytes(self.cluster_size))
        self.blocks[index] = block
        host = self.end
        self.end += 1
        self.table[index] = host << self.cluster_bits
        self.dirty_entries.add(index)
        self.dirty_blocks.add(index)
        self.increment(host)
        return block

    def _grow_table(self, entries: int) -> None:
        """Move the refcount table to a bigger place at the end of the file
        and switch the header to it, in an order that is safe at any crash:
        new blocks and table first, synced, then the header, synced."""
        old_offset, old_clusters = self.table_offset, self.table_clusters
        clusters = max(-(-entries * 8 // self.cluster_size), 2 * old_clusters)
        self.table.extend([0] * (clusters * self.cluster_size // 8 - len(self.table)))
        first = self.end
        self.end += clusters  # reserved before counting: counting may add blocks after it
        for c in range(first, first + clusters):
            self.increment(c)
        self._cover_file_end()
        self.write_blocks()
        pwrite_all(self.fd, struct.pack(f">{len(self.table)}Q", *self.table), first << self.cluster_bits)
        self._sync()
        self.table_offset, self.table_clusters = first << self.cluster_bits, clusters
        self._set_table(self.table_offset, clusters)
        self._sync()
        self.dirty_entries.clear()
        self.release(range(old_offset >> self.cluster_bits, (old_offset >> self.cluster_bits) + old_clusters))

    # -- writing ------------------------------------------------------------------

    def _cover_file_end(self) -> None:
        # a counted cluster whose contents are not written yet must still lie
        # inside the file, or checkers take the count for a broken one
        if os.fstat(self.fd).st_size < self.file_end():
            os.ftruncate(self.fd, self.file_end())

    def write_blocks(self) -> None:
        for index in sorted(self.dirty_blocks):
            pwrite_all(self.fd, dump_be(self.blocks[index]), self.table[index])
        self.dirty_blocks.clear()

    def write_increments(self) -> None:
        """Flush phase 1: every refcount raised so far reaches the disk (and
        the table entries of new blocks, after the blocks themselves)."""
        if not self.dirty_blocks and not self.dirty_entries:
            return
        self._cover_file_end()
        self.write_blocks()
        if self.dirty_entries:
            self._sync()
            for index in sorted(self.dirty_entries):
                pwrite_all(self.fd, struct.pack(">Q", self.table[index]), self.table_offset + 8 * index)
            self.dirty_entries.clear()

    def apply_frees(self) -> None:
        """Flush phase 3, after the tables that dropped the clusters are on
        disk: lower their refcounts and let the allocator reuse them."""
        if not self.pending_free:
            return
        emptied: list[int] = []
        for cluster in self.pending_free:
            block = self._block_for(cluster)
            i = cluster % self.per_block
            if block[i]:
                block[i] -= 1
                if not block[i]:
                    self.used -= 1
                    heapq.heappush(self.free, cluster)
                    emptied.append(cluster)
            self.dirty_blocks.add(cluster // self.per_block)
        self.pending_free.clear()
        # give the space back to the host file system too, one call per run
        # of neighbouring clusters (a wiped disk frees thousands at once, and
        # a hole punched per cluster took seconds)
        for first, count in _runs(sorted(emptied)):
            punch_hole(self.fd, first << self.cluster_bits, count << self.cluster_bits)
        self.write_blocks()

    def dirty(self) -> bool:
        return bool(self.dirty_blocks or self.dirty_entries or self.pending_free)


def _runs(clusters: list[int]) -> list[tuple[int, int]]:
    """(first, count) of each run of consecutive numbers in sorted ``clusters``."""
    runs: list[tuple[int, int]] = []
    for c in clusters:
        if runs and runs[-1][0] + runs[-1][1] == c:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        elif not runs or runs[-1][0] + runs[-1][1] < c:
            runs.append((c, 1))
    return runs
