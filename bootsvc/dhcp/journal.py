"""The lease journal: an append-only file beside the SQLite lease store
that makes a group of lease writes durable with one small append and one
fdatasync, instead of a SQLite transaction (RFC 2131 §4.3.1: the binding
is recorded before the ACK).

Why: measured on this project's machine (docs/benchmarks.md, DHCP), a
SQLite commit in WAL mode with ``synchronous=FULL`` cost about 140 µs of
CPU and 0.3–1 ms (tens of ms at a checkpoint) where an append and an
fdatasync of the same rows cost about 45 µs and 0.13 ms.

A group is its writes, one JSON line each (``[group, statement, params...]``),
then its mark (``[group, lines]``), in one ``write``. Reading back applies a
group only when its mark follows all its lines: a group cut short by a
crash or a failed write (never acknowledged) is left out, as SQLite would
roll it back. Group numbers start from the clock, so a new process never
continues an old one's cut group. Replaying a group twice gives the same result (every write sets or
deletes whole rows by key), so the file may be applied to SQLite, then
removed, with a crash in between costing nothing.

Compaction: past COMPACT_AT bytes the file is renamed to ``<name>.1`` and
a fresh one started; a thread applies ``.1`` to SQLite in one transaction
and removes it, while groups go on being appended to the new file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import orjson

from target.qcow2_create import sync_dir

COMPACT_AT = 8 << 20  # bytes of journal before it is folded into SQLite (about 60,000 leases)

Row = tuple[object, ...]
Group = list[tuple[str, Row]]  # (statement name, its parameters), in the order decided


class Journal:
    """The open journal file of a lease store (one writer: the process
    holding the store's lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.older = path.with_name(path.name + ".1")  # being folded into SQLite
        self._fd = _open(path)
        self.size = os.fstat(self._fd).st_size
        self._group = time.time_ns() // 1000  # µs: above any number an earlier process used

    def encode(self, writes: list[tuple[str, Row]]) -> bytes:
        """A group's bytes: its lines and its mark."""
        self._group += 1
        group = self._group
        lines = [orjson.dumps([group, name, *row]) for name, row in writes]
        lines.append(orjson.dumps([group, len(writes)]))
        # a newline first: a line torn before (a failed append that could not
        # be cut back) ends there instead of spoiling this group's first line
        return b"\n" + b"\n".join(lines) + b"\n"

    def append(self, data: bytes) -> None:
        """``data`` on disk when this returns (one fdatasync); on a failure
        the file is cut back to where it was, so the group is not there."""
        start = self.size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fdatasync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                pass  # its mark may be missing, or not: a group the client was never acknowledged for
            raise
        self.size = start + len(data)

    def rotate(self) -> bool:
        """Start a fresh file, the full one renamed to ``.1`` for folding;
        False (nothing done) while an older one is still there."""
        if self.older.exists():
            return False
        os.replace(self.path, self.older)
        fd = _open(self.path)
        sync_dir(self.path.parent)  # the new name durable before a group relies on it
        os.close(self._fd)
        self._fd, self.size = fd, 0
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _open(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


def groups(path: Path, names: Mapping[str, object]) -> Iterator[Group]:
    """The complete groups of a journal file, in order (none if there is no
    file). A line that is not one (cut by a crash), a group without its
    mark or short of a line, or a statement not in ``names`` (then its
    group falls short) drops its group, never the reading."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    pending: Group = []
    current = None
    for line in data.split(b"\n"):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            record = None  # a torn line (or the empty end): its group cannot count its lines any more
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
