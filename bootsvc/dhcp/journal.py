"""The lease journal: a file beside the SQLite lease store that makes a
group of lease writes durable with one small write and one fdatasync,
instead of a SQLite transaction (RFC 2131 §4.3.1: the binding is recorded
before the ACK).

Why: measured on this project's machine (docs/benchmarks.md, DHCP), a
SQLite commit in WAL mode with ``synchronous=FULL`` cost about 140 µs of
CPU and 0.3–1 ms (tens of ms at a checkpoint) where a write and an
fdatasync of the same rows cost about 45 µs and 0.1 ms.

A group is its writes, one JSON line each (``[group, statement, params...]``),
then its mark (``[group, lines]``), in one ``pwrite``. Reading back applies a
group only when its mark follows all its lines: a group cut short by a
crash or a failed write (never acknowledged) is left out, as SQLite would
roll it back. Group numbers start from the clock, so a new process never
continues an old one's cut group. Replaying a group twice gives the same
result (every write sets or deletes whole rows by key), so the file may be
applied to SQLite, then removed, with a crash in between costing nothing.

Preallocated, written in place: an append changes the file's size, so
every fdatasync also commits the filesystem's journal (ext4 here: about
110–140 µs a group against 80–105 µs for the same write over blocks the
file already has; docs/benchmarks.md, ``bench/journal_sync.py``). So the
file is given its blocks ahead, CHUNK bytes of zeros at a time, made
durable (fsync) before a group may be written there (``allocated`` moves
only after that fsync); each group is a ``pwrite`` after the data, then an
fdatasync that has only data to write. The next chunk is written by a
thread of its own once less than LOW_WATER is left, so the ACK path does
not wait for it (unless a group outruns it); a file opened (a fresh one
at rotation) gets FIRST bytes at once, the rest ahead the same way.

Zeros written, not ``posix_fallocate``: its extents are "unwritten", and
the first write into each of their blocks converts one, which the
fdatasync must then commit like a size. Measured here, groups of 40
leases (a new block nearly every group) took 135–163 µs over fallocated
blocks against 94–105 µs over written zeros (one-lease groups, 40 to a
block, were alike). A chunk of zeros costs 1–2 ms against fallocate's
0.1–0.7 ms, but off the ACK path.

The end of the data is found on open by scanning back from the end of the
file over the zeros (at most a chunk and a bit), not kept in a header: a
header would be a second place to write and sync per group, and one that
a crash could leave out of step with the data. Every byte of a group is
non-zero (JSON, newlines), so the last non-zero byte ends the last group
written, whole or torn; the next group begins with a newline, so a torn
one ends there. A torn group may have zeros inside (a crash writes a
group's pages in any order): a line with a NUL byte is not JSON, so its
group falls short of its mark and is dropped; reading stops at the zero
tail. A failed write is overwritten with zeros, as the append used to be
cut back, so the group is not there.

Compaction: past COMPACT_AT bytes the file is renamed to ``<name>.1`` and
a fresh one started; a thread applies ``.1`` to SQLite in one transaction
and removes it, while groups go on being written to the new file.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import orjson

from target.qcow2_create import sync_dir

COMPACT_AT = 8 << 20  # bytes of journal before it is folded into SQLite (about 60,000 leases)
CHUNK = 1 << 20  # bytes preallocated at a time (some 10,000 groups of one lease)
LOW_WATER = CHUNK // 2  # bytes left when the next chunk is asked for, ahead of need
FIRST = 1 << 16  # bytes a file is given at once when opened (or at a rotation with no spare ready)
SCAN = 1 << 16  # bytes read at a time looking back for the end of the data

Row = tuple[object, ...]
Group = list[tuple[str, Row]]  # (statement name, its parameters), in the order decided


class Journal:
    """The open journal file of a lease store (one writer: the process
    holding the store's lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.older = path.with_name(path.name + ".1")  # being folded into SQLite
        self.spare = path.with_name(path.name + ".next")  # the next fresh file, made ready ahead of a rotation
        self.spare.unlink(missing_ok=True)  # left by a crash: zeros only (no group goes to a spare)
        self._spare_fd = -1  # open and preallocated when ready
        self._fd = _open(path)
        self.size = _data_end(self._fd)  # where the next group goes
        self.allocated = os.fstat(self._fd).st_size  # preallocated and durable, from 0
        self._extending: threading.Thread | None = None  # asking for the next chunk
        self.extend_error: OSError | None = None  # why the last chunk asked for ahead was not had
        self._group = time.time_ns() // 1000  # µs: above any number an earlier process used
        self._begin()

    def _begin(self) -> None:
        """A file opened: FIRST bytes after its data now (the rest ahead, by
        the thread, from the first group on), and its name durable; a
        failure is the first group's."""
        if self.allocated - self.size < FIRST:
            self._extend_ahead(self.size + FIRST)
        sync_dir(self.path.parent)  # the name durable before a group relies on it

    def encode(self, writes: list[tuple[str, Row]]) -> bytes:
        """A group's bytes: its lines and its mark."""
        self._group += 1
        group = self._group
        lines = [orjson.dumps([group, name, *row]) for name, row in writes]
        lines.append(orjson.dumps([group, len(writes)]))
        # a newline first: a line torn before (a group cut by a crash) ends
        # there instead of spoiling this group's first line
        return b"\n" + b"\n".join(lines) + b"\n"

    def append(self, data: bytes) -> None:
        """``data`` on disk after the data when this returns (one pwrite and
        one fdatasync over preallocated blocks); on a failure its place is
        zeroed again, so the group is not there."""
        start, end = self.size, self.size + len(data)
        if end > self.allocated:  # the chunk asked for ahead is late (or failed): wait for it here
            self._settle()
            if end > self.allocated:
                self._extend(_chunks(end + LOW_WATER))
        try:
            _write_at(self._fd, data, start)
            os.fdatasync(self._fd)
        except OSError:
            try:
                _write_at(self._fd, bytes(len(data)), start)
            except OSError:
                self.size = end  # its mark may be there, or not: a group the client was never acknowledged for
            raise
        self.size = end
        if self.allocated - end < LOW_WATER and not (self._extending and self._extending.is_alive()):
            self._extending = threading.Thread(target=self._work_ahead, args=(_chunks(end + CHUNK),),
                                               name="lease-journal-extend", daemon=True)
            self._extending.start()

    def _extend_ahead(self, to: int) -> None:
        """The file extended to ``to`` before a group needs it; a failure
        kept for the group that will (it tries again, and fails if it must)."""
        try:
            self._extend(to)
            self.extend_error = None
        except OSError as e:
            self.extend_error = e

    def _work_ahead(self, to: int) -> None:
        """The thread's work: the next chunk, and a spare for the next rotation."""
        self._extend_ahead(to)
        if self._spare_fd < 0:
            try:
                self._spare_fd = _preallocated(self.spare)
            except OSError:
                pass  # the rotation then preallocates in place, as with no spare

    def _extend(self, to: int) -> None:
        """The file's blocks given to it up to ``to`` bytes, as written zeros,
        durably: a group written there then changes no metadata."""
        if to > self.allocated:
            for offset in range(self.allocated, to, CHUNK):
                _write_at(self._fd, _ZEROS[:min(CHUNK, to - offset)], offset)
            os.fsync(self._fd)  # the new size and blocks durable before a group relies on them
            self.allocated = to

    def _settle(self) -> None:
        """The chunk being asked for ahead, there (or failed) before the file changes hands."""
        thread, self._extending = self._extending, None
        if thread is not None:
            thread.join()

    def rotate(self) -> bool:
        """Start a fresh file, the full one renamed to ``.1`` for folding;
        False (nothing done) while an older one is still there."""
        if self.older.exists():
            return False
        self._settle()
        os.replace(self.path, self.older)
        if self._spare_fd >= 0:  # made ready by the thread: a rename, and the directory synced by _begin
            os.replace(self.spare, self.path)
            fd, self._spare_fd = self._spare_fd, -1
        else:
            fd = _open(self.path)
        old, self._fd, self.size, self.allocated = self._fd, fd, 0, os.fstat(fd).st_size
        os.close(old)
        self._begin()
        return True

    def close(self) -> None:
        self._settle()
        if self._spare_fd >= 0:
            os.close(self._spare_fd)
            self._spare_fd = -1
        self.spare.unlink(missing_ok=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


_ZEROS = memoryview(bytes(CHUNK))


def _chunks(size: int) -> int:
    """``size`` rounded up to whole chunks."""
    return -(-size // CHUNK) * CHUNK


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def _preallocated(path: Path) -> int:
    """A fresh file of CHUNK zeros, durable (its name is made durable
    when it is renamed into use)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        _write_at(fd, _ZEROS[:CHUNK], 0)
        os.fsync(fd)
    except OSError:
        os.close(fd)
        raise
    return fd


def _write_at(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def _data_end(fd: int) -> int:
    """Just after the last byte that is not zero: the end of the last group
    written (whole or torn), scanning back from the end of the file."""
    end = os.fstat(fd).st_size
    while end > 0:
        start = max(0, end - SCAN)
        block = os.pread(fd, end - start, start).rstrip(b"\0")
        if block:
            return start + len(block)
        end = start
    return 0


def groups(path: Path, names: Mapping[str, object]) -> Iterator[Group]:
    """The complete groups of a journal file, in order (none if there is no
    file), up to the preallocated zeros at its end. A line that is not one
    (cut by a crash, or with zeros where a crash lost a block), a group
    without its mark or short of a line, or a statement not in ``names``
    (then its group falls short) drops its group, never the reading."""
    try:
        data = path.read_bytes().rstrip(b"\0")
    except FileNotFoundError:
        return
    pending: Group = []
    current = None
    for line in data.split(b"\n"):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            record = None  # a torn line (or an empty one): its group cannot count its lines any more
        if not isinstance(record, list) or len(record) < 2 or not isinstance(record[0], int):
            continue
        if record[0] != current:
            pending, current = [], record[0]  # a new group: what was pending had no mark
        if isinstance(record[1], int):  # the mark: the group, if every line of it was read
            if record[1] == len(pending):
                yield pending
            pending, current = [], None
        elif isinstance(record[1], str) and record[1] in names:
            pending.append((record[1], tuple(record[2:])))
