"""The lease journal (bootsvc/dhcp/journal.py): a group is read back only
whole, the journal is folded into SQLite in the background and at stop,
folding twice gives the same leases, and a second process reads the
owner's journal without writing."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

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
