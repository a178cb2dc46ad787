"""The lease store: leases survive a restart, a client holds one address,
declined and held addresses stay out of the pool until they expire."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bootsvc.dhcp.leases import IPv4, Lease, LeaseState, LeaseStore

POOL = [IPv4("10.0.0.10") + i for i in range(4)]


def test_leases_survive_restart_and_move(tmp_path: Path) -> None:
    db = tmp_path / "state" / "leases.db"
    store = LeaseStore(db)
    store.put(Lease(POOL[0], "aa:00:00:00:00:01", LeaseState.BOUND, 2000.0, "node01"))
    store.put(Lease(POOL[1], "aa:00:00:00:00:02", LeaseState.OFFERED, 2000.0))
    store.put(Lease(POOL[2], "aa:00:00:00:00:02", LeaseState.BOUND, 2000.0))  # moved: the old one goes
    store.close()
    store = LeaseStore(db)
    assert store.for_mac("aa:00:00:00:00:01") == Lease(POOL[0], "aa:00:00:00:00:01", LeaseState.BOUND, 2000.0,
                                                       "node01")
    assert store.for_mac("aa:00:00:00:00:02").ip == POOL[2]  # type: ignore[union-attr]
    assert store.holder(POOL[1], 1000.0) is None
    assert [le.ip for le in store.active(1000.0)] == [POOL[0], POOL[2]]
    store.close()


def test_free_address_skips_held_declined_and_reserved() -> None:
    store = LeaseStore(":memory:")
    store.put(Lease(POOL[0], "aa:00:00:00:00:01", LeaseState.BOUND, 2000.0))
    store.put(Lease(POOL[1], "00:00:00:00:00:00", LeaseState.DECLINED, 2000.0))
    assert store.free_address(POOL[0], POOL[-1], 1000.0, taken={POOL[2]}) == POOL[3]
    # on from the last one, round the range: 0 is held, 1 declined
    assert store.free_address(POOL[0], POOL[-1], 1000.0, taken=set()) == POOL[2]
    assert store.free_address(POOL[0], POOL[-1], 3000.0, taken=set()) == POOL[3]
    assert store.free_address(POOL[0], POOL[1], 1000.0, taken=set()) is None
    assert store.free_address(POOL[0], POOL[1], 3000.0, taken=set()) == POOL[0]  # everything expired


def test_free_address_wraps_round_the_range() -> None:
    store = LeaseStore(":memory:")
    got = [store.free_address(POOL[0], POOL[2], 1000.0, taken=set()) for _ in range(3)]
    for ip in got:
        assert ip is not None
        store.put(Lease(ip, f"aa:00:00:00:00:{int(ip) & 0xff:02x}", LeaseState.BOUND, 2000.0))
    assert got == POOL[:3] and store.free_address(POOL[0], POOL[2], 1000.0, taken=set()) is None
    store.drop(store.by_ip[POOL[1]])
    assert store.free_address(POOL[0], POOL[2], 1000.0, taken=set()) == POOL[1]


def test_a_group_of_writes_is_applied_in_order(tmp_path: Path) -> None:
    """Writes of one kind in a row become one statement of many rows
    (LeaseStore.write); the result is that of applying them one by one."""
    store = LeaseStore(tmp_path / "leases.db")
    macs = [f"aa:00:00:00:00:{i:02x}" for i in range(1, 4)]
    store.put(Lease(POOL[0], macs[0], LeaseState.BOUND, 2000.0))
    store.put(Lease(POOL[1], macs[1], LeaseState.BOUND, 2000.0))
    store.put(Lease(POOL[1], macs[1], LeaseState.BOUND, 3000.0, "again"))  # the same address twice in a row
    store.put(Lease(POOL[2], macs[0], LeaseState.BOUND, 2000.0))  # moved: a drop between two puts
    store.saw_unknown(macs[2], "discover", 10.0)
    store.saw_unknown(macs[2], "adopted", 20.0, "7")  # the same MAC twice in one statement
    store.saw_unknown(macs[1], "discover", 30.0)
    store.forget_unknown(macs[1])
    assert len(store.unwritten) == 9
    store.close()
    rows = sorted(store_rows(tmp_path / "leases.db"))
    assert rows == [(str(POOL[1]), macs[1], "bound", 3000.0, "again"), (str(POOL[2]), macs[0], "bound", 2000.0, "")]
    reopened = LeaseStore(tmp_path / "leases.db")
    assert reopened.unknown_machines() == [(macs[2], "adopted", 10.0, 20.0, "7")]
    reopened.close()


def store_rows(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as other:
        return list(other.execute("SELECT ip, mac, state, expires, hostname FROM leases"))
