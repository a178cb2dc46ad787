"""DHCP leases in SQLite under state_dir, so they survive a restart
(RFC 2131 §4.3.1: a server should keep giving a client the address it had).

All reads come from an in-memory copy. Changes are kept as a list of
writes until they are written: the responder decides without I/O, and its
adapter (bootsvc/dhcp/service.py, bootsvc/dhcp/group_commit.py) writes
what a batch of requests changed, in one transaction made durable by one
fsync (SQLite WAL, ``synchronous=FULL``), before their ACKs leave (RFC 2131
§4.3.1: an address is recorded before it is acknowledged). ``take()``
hands the pending writes over and ``write()`` may run in another thread:
one lock keeps the connection to one user at a time.
"""

from __future__ import annotations

import ipaddress
import itertools
import sqlite3
import threading
from collections.abc import Container
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

IPv4 = ipaddress.IPv4Address


class LeaseState(str, Enum):
    OFFERED = "offered"  # held for the client between OFFER and REQUEST
    BOUND = "bound"
    DECLINED = "declined"  # a client found the address in use (DHCPDECLINE): kept out of the pool


@dataclass(frozen=True)
class Lease:
    ip: IPv4
    mac: str
    state: LeaseState
    expires: float  # time.time() seconds
    hostname: str = ""


@dataclass(frozen=True)
class Statement:
    """One kind of write, made for many rows in one SQL statement: a group
    commit's thread then runs a few statements, not one per lease (each
    statement gives the GIL up and waits to get it back)."""

    template: str  # the SQL with {rows} where the rows go
    row: str  # one row's placeholders

    def sql(self, rows: int) -> str:
        return self.template.format(rows=", ".join([self.row] * rows))


PUT = Statement("INSERT OR REPLACE INTO leases VALUES {rows}", "(?, ?, ?, ?, ?)")
DROP = Statement("DELETE FROM leases WHERE ip IN ({rows})", "?")
SEEN = Statement("INSERT INTO unknown_machines VALUES {rows} ON CONFLICT(mac) DO UPDATE SET "
                 "policy = excluded.policy, last_seen = excluded.last_seen, arch = excluded.arch", "(?, ?, ?, ?, ?)")
FORGET = Statement("DELETE FROM unknown_machines WHERE mac IN ({rows})", "?")
ROWS = 500  # rows per statement at most (SQLite takes up to 32766 parameters)
Writes = list[tuple[Statement, tuple[object, ...]]]  # in the order they were decided


class LeaseStore:
    def __init__(self, path: Path | str) -> None:
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: every commit's WAL frames are fsynced before it returns, so a
        # written lease survives a power cut (NORMAL only at checkpoints)
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS leases (ip TEXT PRIMARY KEY, mac TEXT NOT NULL, "
                        "state TEXT NOT NULL, expires REAL NOT NULL, hostname TEXT NOT NULL DEFAULT '')")
        # machines not in the inventory that asked for an address (policy discover)
        # or were given the default profile (policy adopted until they first log in
        # to their disk, then default), for `bootsvc machines`
        self.db.execute("CREATE TABLE IF NOT EXISTS unknown_machines (mac TEXT PRIMARY KEY, policy TEXT NOT NULL, "
                        "first_seen REAL NOT NULL, last_seen REAL NOT NULL, arch TEXT NOT NULL DEFAULT '')")
        self.unwritten: Writes = []  # until taken and written
        self._lock = threading.Lock()  # the connection: the loop's thread and a group commit's
        self.by_ip: dict[IPv4, Lease] = {}
        self.by_mac: dict[str, Lease] = {}
        self._cursor: dict[tuple[int, int], int] = {}  # (first, last) -> where the next search starts
        for ip, mac, state, expires, hostname in self.db.execute("SELECT ip, mac, state, expires, hostname "
                                                                 "FROM leases"):
            self._remember(Lease(IPv4(ip), mac, LeaseState(state), expires, hostname))

    def _remember(self, lease: Lease) -> None:
        old = self.by_ip.get(lease.ip)
        if old is not None and self.by_mac.get(old.mac) == old:
            del self.by_mac[old.mac]
        self.by_ip[lease.ip] = lease
        if lease.state is not LeaseState.DECLINED:
            self.by_mac[lease.mac] = lease

    def put(self, lease: Lease) -> None:
        """Record a lease; the client's other lease (if any) is dropped."""
        previous = self.by_mac.get(lease.mac)
        if previous is not None and previous.ip != lease.ip:
            self.drop(previous)
        # An offer lives a minute in memory only: after a restart the client
        # simply gets the same address offered again. Half the writes per DORA.
        if lease.state is not LeaseState.OFFERED:
            self.unwritten.append((PUT, (str(lease.ip), lease.mac, lease.state.value, lease.expires, lease.hostname)))
        self._remember(lease)

    def drop(self, lease: Lease) -> None:
        self.unwritten.append((DROP, (str(lease.ip),)))
        self.by_ip.pop(lease.ip, None)
        if self.by_mac.get(lease.mac) == lease:
            del self.by_mac[lease.mac]

    def for_mac(self, mac: str) -> Lease | None:
        return self.by_mac.get(mac)

    def holder(self, ip: IPv4, now: float) -> Lease | None:
        """The unexpired lease on ``ip``, if any."""
        lease = self.by_ip.get(ip)
        return lease if lease is not None and lease.expires > now else None

    def free_address(self, first: IPv4, last: IPv4, now: float, taken: Container[IPv4]) -> IPv4 | None:
        """An address of first..last that nobody holds and nothing reserves
        (expired leases count as free). The search goes on from where the
        last one ended, round the range: one step per new client instead of
        a scan of every lease, and a released address rests before reuse."""
        lo, hi = int(first), int(last)
        size = hi - lo + 1
        start = self._cursor.get((lo, hi), lo)
        for step in range(size):
            ip = IPv4(lo + (start - lo + step) % size)
            if ip not in taken and self.holder(ip, now) is None:
                self._cursor[(lo, hi)] = int(ip) + 1 if int(ip) < hi else lo
                return ip
        return None

    def active(self, now: float) -> list[Lease]:
        return sorted((le for le in self.by_ip.values() if le.expires > now), key=lambda le: le.ip)

    def saw_unknown(self, mac: str, policy: str, now: float, arch: str = "") -> None:
        self.unwritten.append((SEEN, (mac, policy, now, now, arch)))

    def take(self) -> Writes:
        """The changes made since the last take, for :meth:`write`; the
        caller owns them now (the store forgets them)."""
        writes, self.unwritten = self.unwritten, []
        return writes

    def write(self, writes: Writes) -> None:
        """``writes`` in one transaction, durable when this returns (one
        fsync, however many leases)."""
        if writes:
            self.begin(writes)
            self.finish()

    def begin(self, writes: Writes) -> None:
        """The first half of :meth:`write`, in the caller's thread: the
        statements of a transaction left open (no fsync; the pages stay in
        memory), the store held until :meth:`finish` ends it, which may run
        in another thread (a group commit's: there the GIL is given up once,
        for the whole COMMIT, instead of once per statement)."""
        self._lock.acquire()
        try:
            self.db.execute("BEGIN")
            # consecutive writes of one kind as one statement: the order holds
            # (SQLite applies a statement's rows one after another)
            for statement, run in itertools.groupby(writes, key=lambda w: w[0]):
                rows = [params for _, params in run]
                for i in range(0, len(rows), ROWS):
                    chunk = rows[i:i + ROWS]
                    self.db.execute(statement.sql(len(chunk)), [p for row in chunk for p in row])
        except BaseException:
            self._end("ROLLBACK")
            raise

    def finish(self) -> None:
        """COMMIT what :meth:`begin` left open: durable when this returns
        (WAL, synchronous=FULL: one fsync); ROLLBACK if it fails."""
        self._end("COMMIT")

    def _end(self, how: str) -> None:
        try:
            if self.db.in_transaction:
                self.db.execute(how)
        except BaseException:
            if how == "COMMIT" and self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        finally:
            self._lock.release()

    def commit(self) -> None:
        """Write the changes made since the last take, now, in this thread."""
        self.write(self.take())

    def forget_unknown(self, mac: str) -> None:
        self.unwritten.append((FORGET, (mac,)))

    def unknown_machines(self) -> list[tuple[str, str, float, float, str]]:
        """(mac, policy, first seen, last seen, client architecture), oldest first."""
        self.commit()
        with self._lock:
            return list(self.db.execute("SELECT mac, policy, first_seen, last_seen, arch FROM unknown_machines "
                                        "ORDER BY first_seen"))

    def close(self) -> None:
        self.commit()
        with self._lock:
            self.db.close()
