"""The lease journal (bootsvc/dhcp/journal.py): a group is read back only
whole, the journal is folded into SQLite in the background and at stop,
folding twice gives the same leases, and a second process reads the
owner's journal without writing."""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootsvc.dhcp import journal as journal_module
from bootsvc.dhcp.leases import IPv4, Lease, LeaseState, LeaseStore

POOL = [IPv4("10.0.0.10") + i for i in range(64)]


def bound(n: int, expires: float = 2000.0) -> Lease:
    return Lease(POOL[n], f"aa:00:00:00:00:{n:02x}", LeaseState.BOUND, expires)


def sqlite_ips(db: Path) -> set[str]:
    with sqlite3.connect(db) as other:
        return {ip for ip, in other.execute("SELECT ip FROM leases")}


def test_only_whole_groups_are_read_back(tmp_path: Path) -> None:
    db = tmp_path / "leases.db"
    store = LeaseStore(db)
    store.put(bound(0))
    store.commit()
    store.put(bound(1))
    store.put(bound(2))
    store.commit()
    assert store.journal is not None
    log = store.journal.path
    end = store.journal.size
    # as if the process died while writing the second group: its mark and a line never reached the disk
    with log.open("r+b") as f:
        f.seek(end - 30)
        f.write(bytes(30))
    reader = LeaseStore(db)  # the owner still holds the lock: a reader
    assert reader.reader and set(reader.by_ip) == {POOL[0]}
    reader.close()
    # a group cut short, then a whole one after it (a failed append, then a good one)
    store.put(bound(5))
    store.commit()
    reader = LeaseStore(db)
    assert set(reader.by_ip) == {POOL[0], POOL[5]}
    reader.close()
    store.close()


def test_a_reader_sees_the_journal_and_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "leases.db"
    owner = LeaseStore(db)
    owner.put(bound(3))
    owner.saw_unknown("aa:00:00:00:00:09", "discover", 5.0, "7")
    owner.commit()
    assert sqlite_ips(db) == set()  # in the journal, not folded yet
    reader = LeaseStore(db)
    assert reader.for_mac("aa:00:00:00:00:03") == bound(3)
    assert reader.unknown_machines() == [("aa:00:00:00:00:09", "discover", 5.0, 5.0, "7")]
    reader.put(bound(4))
    with pytest.raises(RuntimeError, match="another bootsvc serve"):
        reader.commit()
    reader.unwritten.clear()
    reader.close()
    owner.close()
    assert sqlite_ips(db) == {str(POOL[3])}  # folded at stop: one complete file
    assert not (tmp_path / "leases.db.log").exists()


def test_a_full_journal_is_folded_in_the_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bootsvc.dhcp.leases as leases_module
    monkeypatch.setattr(leases_module, "COMPACT_AT", 1000)  # bytes: a few groups
    db = tmp_path / "leases.db"
    store = LeaseStore(db)
    for n in range(40):
        store.put(bound(n))
        store.commit()
    assert store._folding is not None
    store._folding.join(10)
    assert store.fold_error is None
    folded = sqlite_ips(db)
    assert folded  # the older part in SQLite (the newest may still be only in the journal)
    assert not store.journal.older.exists()  # type: ignore[union-attr]
    reader = LeaseStore(db)
    assert set(reader.by_ip) == set(POOL[:40])
    reader.close()
    store.close()
    assert sqlite_ips(db) == {str(ip) for ip in POOL[:40]}


def test_folding_twice_gives_the_same_leases(tmp_path: Path) -> None:
    """A crash after a fold's COMMIT and before the journal's removal: the
    next start applies the journal again, to the same result."""
    db = tmp_path / "leases.db"
    store = LeaseStore(db)
    store.put(bound(0))
    store.put(bound(1))
    store.commit()
    store.drop(store.by_ip[POOL[0]])
    store.put(bound(1, 3000.0))
    store.saw_unknown("aa:00:00:00:00:09", "discover", 5.0)
    store.saw_unknown("aa:00:00:00:00:09", "adopted", 6.0)
    store.commit()
    assert store.journal is not None
    kept = store.journal.path.read_bytes()
    store.close()
    (tmp_path / "leases.db.log").write_bytes(kept)  # as if its removal had not reached the disk
    again = LeaseStore(db)
    assert set(again.by_ip) == {POOL[1]} and again.by_ip[POOL[1]].expires == 3000.0
    assert again.unknown_machines() == [("aa:00:00:00:00:09", "adopted", 5.0, 6.0, "")]
    again.close()
    assert sqlite_ips(db) == {str(POOL[1])}


def test_a_failed_append_leaves_no_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "leases.db"
    store = LeaseStore(db)
    store.put(bound(0))
    store.commit()

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module.os, "fdatasync", full)
    store.put(bound(1))
    with pytest.raises(OSError):
        store.commit()
    monkeypatch.undo()
    store.put(bound(2))
    store.commit()  # the store goes on after a failed group
    reader = LeaseStore(db)
    assert set(reader.by_ip) == {POOL[0], POOL[2]}
    reader.close()
    store.close()


def test_group_numbers_of_a_new_process_follow_the_old_ones(tmp_path: Path) -> None:
    first = journal_module.Journal(tmp_path / "j")
    a = first.encode([("put", ("x",))])
    first.close()
    time.sleep(0.001)
    second = journal_module.Journal(tmp_path / "j")
    b = second.encode([("put", ("y",))])
    second.close()
    assert int(b[2:b.index(b",")]) > int(a[2:a.index(b",")])  # after the newline and "["


# -- the preallocated file itself (bootsvc/dhcp/journal.py Journal) --------------------------------

NAMES = {"put": None, "drop": None}


def written(journal: journal_module.Journal, count: int, first: int = 0) -> list[journal_module.Group]:
    """``count`` groups appended, of 1 to 3 writes each: what reading back should give."""
    made = []
    for n in range(first, first + count):
        group = [("put", (f"10.0.{n}.{k}", n, "bound")) for k in range(1 + n % 3)]
        journal.append(journal.encode(group))
        made.append(group)
    return made


def read_back(path: Path) -> list[journal_module.Group]:
    return list(journal_module.groups(path, NAMES))


def test_groups_are_written_in_place_before_a_zero_tail(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal = journal_module.Journal(path)
    assert journal.size == 0 and journal.allocated >= journal_module.FIRST  # preallocated at open
    made = written(journal, 50)
    journal.close()
    allocated = journal.allocated
    data = path.read_bytes()
    assert len(data) == allocated >= journal_module.CHUNK  # the first chunk asked for ahead; no group grew it
    assert data[journal.size:] == bytes(allocated - journal.size) and data[journal.size - 1:journal.size] == b"\n"
    assert read_back(path) == made


def test_a_torn_group_with_a_hole_is_dropped(tmp_path: Path) -> None:
    """A crash writes a group's blocks in any order: its first bytes may be
    zeros while its last ones (its mark) reached the disk."""
    path = tmp_path / "j"
    journal = journal_module.Journal(path)
    made = written(journal, 5)
    start = journal.size
    written(journal, 1, first=5)
    end = journal.size
    journal.close()
    with path.open("r+b") as f:
        f.seek(start + 3)
        f.write(bytes(20))  # inside its first line: the mark is still there
    assert read_back(path) == made
    with path.open("r+b") as f:
        f.seek(start)
        f.write(bytes(end - start - 5))  # all but the end of its mark
    assert read_back(path) == made


def test_a_restart_continues_after_the_last_group(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal = journal_module.Journal(path)
    made = written(journal, 20)
    end = journal.size
    torn = journal.encode([("put", ("10.9.9.9", 9, "bound"))])
    journal.close()
    with path.open("r+b") as f:  # a group the process died writing: its first half only
        f.seek(end)
        f.write(torn[:len(torn) // 2])
    again = journal_module.Journal(path)
    assert again.size == end + len(torn) // 2  # after it: nothing written is overwritten
    made += written(again, 20, first=20)
    again.close()
    assert read_back(path) == made


def test_the_file_grows_ahead_of_the_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "CHUNK", 4096)
    monkeypatch.setattr(journal_module, "LOW_WATER", 2048)
    monkeypatch.setattr(journal_module, "FIRST", 1024)
    path = tmp_path / "j"
    journal = journal_module.Journal(path)
    made = written(journal, 300)  # some 30 KiB: several chunks
    journal._settle()
    assert journal.extend_error is None
    assert journal.allocated % 4096 == 0 and journal.allocated - journal.size >= 2048
    assert path.stat().st_size == journal.allocated
    journal.close()
    assert read_back(path) == made


def test_a_chunk_that_cannot_be_had_fails_the_group_that_needs_it(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "CHUNK", 4096)
    monkeypatch.setattr(journal_module, "LOW_WATER", 2048)
    monkeypatch.setattr(journal_module, "FIRST", 1024)
    path = tmp_path / "j"
    journal = journal_module.Journal(path)
    made = written(journal, 5)
    real = journal_module._write_at

    def full(fd: int, data: bytes | memoryview, offset: int) -> None:
        if offset >= journal.allocated:  # only the zeros of a new chunk
            raise OSError(28, "No space left on device")
        real(fd, data, offset)

    monkeypatch.setattr(journal_module, "_write_at", full)
    with pytest.raises(OSError, match="No space"):
        for n in range(5, 200):  # bounded: 200 groups are more than a chunk
            made += written(journal, 1, first=n)
    journal._settle()
    assert isinstance(journal.extend_error, OSError)
    monkeypatch.setattr(journal_module, "_write_at", real)
    made += written(journal, 1, first=500)  # space again: the journal goes on
    journal.close()
    assert read_back(path) == made


def test_rotation_takes_the_spare_made_ready_ahead(tmp_path: Path) -> None:
    """The thread that extends the file also makes the next fresh one ready
    (a chunk of zeros): a rotation renames it into place; a spare left by
    a crash is removed at open, and none is left after close."""
    path = tmp_path / "j"
    (tmp_path / "j.next").write_bytes(bytes(100))  # as a crash leaves it
    journal = journal_module.Journal(path)
    assert not journal.spare.exists()
    old = written(journal, 3)
    journal._settle()
    assert journal.spare.stat().st_size == journal_module.CHUNK
    assert journal.rotate()
    assert not journal.rotate()  # the older one not folded yet
    assert not journal.spare.exists()
    assert journal.size == 0 and journal.allocated == path.stat().st_size == journal_module.CHUNK
    new = written(journal, 3, first=3)
    journal.close()
    assert read_back(journal.older) == old and read_back(path) == new
    assert not journal.spare.exists()


def test_rotation_without_a_spare_preallocates_in_place(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal = journal_module.Journal(path)  # no group yet: no thread, no spare
    assert journal.rotate()
    assert journal.size == 0 and journal.allocated == path.stat().st_size >= journal_module.FIRST
    made = written(journal, 3)
    journal.close()
    assert read_back(path) == made and read_back(journal.older) == []


def test_an_old_append_only_file_is_read_and_continued(tmp_path: Path) -> None:
    """A journal written by the append-only version (no zero tail) left by an
    upgrade: read as before, continued after its end."""
    path = tmp_path / "j"
    first = journal_module.Journal(path)
    made = written(first, 4)
    first.close()
    path.write_bytes(path.read_bytes().rstrip(b"\0"))
    again = journal_module.Journal(path)
    made += written(again, 4, first=4)
    again.close()
    assert read_back(path) == made


# -- the reader against damage (Hypothesis), and a writer killed -9 ---------------------------------

VALUES = st.one_of(st.text(max_size=12), st.integers(-2**40, 2**40), st.floats(allow_nan=False, allow_infinity=False))
GROUPS = st.lists(st.lists(st.tuples(st.sampled_from(sorted(NAMES)), st.lists(VALUES, max_size=4).map(tuple)),
                           min_size=1, max_size=4), min_size=1, max_size=6)


@settings(max_examples=150)
@given(data=st.binary(max_size=400), tail=st.integers(0, 600))
def test_any_bytes_read_as_groups_or_nothing(data: bytes, tail: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "j"
        path.write_bytes(data + bytes(tail))
        for group in journal_module.groups(path, NAMES):
            assert all(name in NAMES and isinstance(row, tuple) for name, row in group)


@functools.cache
def encoder() -> journal_module.Journal:
    """A closed journal: its group encoding, without a file to write (the
    reader's properties need no fdatasync per example)."""
    with tempfile.TemporaryDirectory() as tmp:
        journal = journal_module.Journal(Path(tmp) / "j")
        journal.close()
    return journal


@settings(max_examples=200)
@given(made=GROUPS, cut=st.tuples(st.floats(0, 1), st.floats(0, 1)), tail=st.integers(0, 5000))
def test_a_torn_last_group_is_dropped_and_only_it(made: list[journal_module.Group],
                                                    cut: tuple[float, float], tail: int) -> None:
    """Any bytes of the last group lost (zeros where they should be, as a
    crash leaves them), before the preallocated zeros: the groups before it
    read back exactly; it reads back only if nothing but its final newline
    was lost."""
    encoded = [encoder().encode(group) for group in made]
    data = bytearray(b"".join(encoded) + bytes(tail))
    start = len(data) - tail - len(encoded[-1])
    end = start + len(encoded[-1])
    lo = start + int(min(cut) * (end - start - 1))
    hi = max(lo + 1, start + int(max(cut) * (end - start)))
    data[lo:hi] = bytes(hi - lo)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "j"
        path.write_bytes(data)
        expected = made if (lo, hi) == (end - 1, end) else made[:-1]
        assert read_back(path) == [[(name, tuple(row)) for name, row in group] for group in expected]


WRITER = """
import sys
from pathlib import Path
from bootsvc.dhcp.journal import Journal

journal = Journal(Path(sys.argv[1]))
for n in range(int(sys.argv[2]), int(sys.argv[2]) + 100_000):
    journal.append(journal.encode([("put", ("10.0.0.%d" % (n % 250), n, "bound"))] * (1 + n % 4)))
    sys.stdout.write("%d\\n" % n)  # durable: append returned after its fdatasync
    sys.stdout.flush()
"""


def test_every_group_a_killed_writer_called_durable_is_read_back(tmp_path: Path) -> None:
    """A writer killed -9 at some point while writing groups; then a second
    one on the same file, killed too: every group either writer reported after
    its append returned is read back, in order."""
    path = tmp_path / "j"
    reported: list[int] = []
    for kill_after, first in ((300, 0), (450, 100_000)):  # groups reported in all, the child's first number
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(first)],
                                 stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent, text=True)
        assert child.stdout is not None
        try:
            deadline = time.monotonic() + 60
            for line in child.stdout:  # bounded: the child stops after 100000 groups, and by the deadline
                reported.append(int(line))
                if len(reported) >= kill_after or time.monotonic() > deadline:
                    break
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
            child.stdout.close()
    numbers = [row[1] for group in read_back(path) for _, row in group[:1]]
    assert len(reported) >= 450, "the writer reported too few groups"
    assert set(reported) <= set(numbers)
    assert numbers == sorted(numbers)  # in the order written, none twice
    assert len(set(numbers)) == len(numbers)
