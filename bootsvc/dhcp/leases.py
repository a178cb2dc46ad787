"""DHCP leases under state_dir, so they survive a restart (RFC 2131
§4.3.1: a server should keep giving a client the address it had).

All reads come from an in-memory copy. Changes are kept as a list of
writes until they are written: the responder decides without I/O, and its
adapter (bootsvc/dhcp/service.py, bootsvc/dhcp/group_commit.py) writes
what a batch of requests changed as one group made durable by one
fdatasync, before their ACKs leave (RFC 2131 §4.3.1: an address is
recorded before it is acknowledged). The group is appended to the lease
journal (bootsvc/dhcp/journal.py), which is folded into the SQLite file
(``leases.db``) in the background when it grows, and at start and stop.
``take()`` hands the pending writes over and ``write()`` may run in another
thread: one lock keeps the store to one writer at a time.

One process owns the files (``bootsvc serve``, or its DHCP worker: an
flock on ``leases.db.lock``); another that opens them meanwhile
(``bootsvc machines``, or serve's main process beside its worker) reads
the SQLite file and the journal and writes nothing. The worker's changes
reach serve's copy as the journal's own rows (:meth:`LeaseStore.replay`),
and serve's as rows the worker takes in (:meth:`LeaseStore.apply`).
A store on ``":memory:"`` (tests) writes SQLite transactions, no journal.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import os
import socket
import sqlite3
import threading
from collections.abc import Container
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .journal import COMPACT_AT, Journal, groups

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

    name: str  # in the lease journal
    template: str  # the SQL with {rows} where the rows go
    row: str  # one row's placeholders

    @property
    def width(self) -> int:
        """Parameters per row."""
        return self.row.count("?")

    def sql(self, rows: int) -> str:
        return self.template.format(rows=", ".join([self.row] * rows))


PUT = Statement("put", "INSERT OR REPLACE INTO leases VALUES {rows}", "(?, ?, ?, ?, ?)")
DROP = Statement("drop", "DELETE FROM leases WHERE ip IN ({rows})", "?")
SEEN = Statement("seen", "INSERT INTO unknown_machines VALUES {rows} ON CONFLICT(mac) DO UPDATE SET "
                 "policy = excluded.policy, last_seen = excluded.last_seen, arch = excluded.arch", "(?, ?, ?, ?, ?)")
FORGET = Statement("forget", "DELETE FROM unknown_machines WHERE mac IN ({rows})", "?")
STATEMENTS = {s.name: s for s in (PUT, DROP, SEEN, FORGET)}
ROWS = 500  # rows per statement at most (SQLite takes up to 32766 parameters)
Writes = list[tuple[Statement, tuple[object, ...]]]  # in the order they were decided
Named = list[tuple[str, tuple[object, ...]]]  # writes by statement name, as the journal and the worker's pipe carry them
Unknown = tuple[str, str, float, float, str]  # mac, policy, first seen, last seen, client architecture


class LeaseStore:
    def __init__(self, path: Path | str, reader: bool = False) -> None:
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        self.db = _connect(str(path))
        self.unwritten: Writes = []  # until taken and written
        self._lock = threading.Lock()  # the writer: the loop's thread or a group commit's
        self.by_ip: dict[IPv4, Lease] = {}
        self.by_mac: dict[str, Lease] = {}
        self.unknown: dict[str, Unknown] = {}  # by MAC, the unknown machines seen
        self._cursor: dict[tuple[int, int], int] = {}  # (first, last) -> where the next search starts
        self.journal: Journal | None = None  # None: writes are SQLite transactions (":memory:", a reader)
        self.reader = reader  # another process owns the files: nothing is written
        self.fold_error: str | None = None  # why the journal could not be folded into SQLite, if it failed
        self._encoded = b""  # the group begin() made, for finish()
        self._folding: threading.Thread | None = None
        self._lock_fd = -1
        for ip, mac, state, expires, hostname in self.db.execute("SELECT ip, mac, state, expires, hostname "
                                                                 "FROM leases"):
            self._remember(Lease(_address(ip), mac, LeaseState(state), expires, hostname))
        for row in self.db.execute("SELECT mac, policy, first_seen, last_seen, arch FROM unknown_machines"):
            self.unknown[row[0]] = row
        if str(path) != ":memory:":
            self._open_journal(Path(path))

    def _open_journal(self, path: Path) -> None:
        """The journal's writes since the last fold, into memory; the
        owner then folds them into SQLite and starts a fresh journal."""
        name = path.with_name(path.name + ".log")
        if not self.reader:
            self._lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                    0o644)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.reader = True  # bootsvc serve has it: read what it wrote, write nothing
        older = name.with_name(name.name + ".1")
        for file in (older, name):
            for group in groups(file, STATEMENTS):
                for statement, row in group:
                    self._replay(statement, row)
        if not self.reader:
            for file in (older, name):
                self._fold(self.db, file)
            self.journal = Journal(name)

    def _replay(self, statement: str, row: tuple[object, ...]) -> None:
        """One journal write, applied to the in-memory copy as SQLite applies
        it; ValueError for a row that is not one of its statement's."""
        known = STATEMENTS.get(statement)
        if known is not None and len(row) != known.width:
            raise ValueError(f"a {statement} row of {len(row)} values, not {known.width}")
        if statement == PUT.name:
            ip, mac, state, expires, hostname = row
            self._remember(Lease(_address(ip), str(mac), LeaseState(state), float(expires),  # type: ignore[arg-type]
                                 str(hostname)))
        elif statement == DROP.name:
            lease = self.by_ip.pop(_address(row[0]), None)
            if lease is not None and self.by_mac.get(lease.mac) == lease:
                del self.by_mac[lease.mac]
        elif statement == SEEN.name:
            self._seen(*row)  # type: ignore[arg-type]
        elif statement == FORGET.name:
            self.unknown.pop(str(row[0]), None)

    def replay(self, writes: Named) -> None:
        """Another process's writes (its journal rows), into this copy only."""
        for statement, row in writes:
            self._replay(statement, row)

    def apply(self, writes: Named) -> None:
        """Writes decided by another process (serve's, for its DHCP worker),
        made here as if decided here: in memory now, written with the next group."""
        for statement, row in writes:
            if statement in STATEMENTS:  # as groups() reads the journal: a name it does not know is left out
                self._replay(statement, row)
                self.unwritten.append((STATEMENTS[statement], row))

    @staticmethod
    def _fold(db: sqlite3.Connection, file: Path) -> None:
        """A journal file's complete groups into SQLite, in one durable
        transaction, then the file removed (a crash between the two: the
        next start applies it again, to the same result)."""
        writes = [(STATEMENTS[name], row) for group in groups(file, STATEMENTS) for name, row in group]
        if writes:
            db.execute("BEGIN")
            try:
                _execute(db, writes)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        file.unlink(missing_ok=True)

    def _remember(self, lease: Lease) -> None:
        old = self.by_ip.get(lease.ip)
        if old is not None and self.by_mac.get(old.mac) == old:
            del self.by_mac[old.mac]
        self.by_ip[lease.ip] = lease
        if lease.state is not LeaseState.DECLINED:
            self.by_mac[lease.mac] = lease

    def _seen(self, mac: str, policy: str, first: float, last: float, arch: str) -> None:
        old = self.unknown.get(mac)
        self.unknown[mac] = (mac, policy, old[2] if old is not None else first, last, arch)

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
        self._seen(mac, policy, now, now, arch)

    def take(self) -> Writes:
        """The changes made since the last take, for :meth:`write`; the
        caller owns them now (the store forgets them)."""
        writes, self.unwritten = self.unwritten, []
        return writes

    def write(self, writes: Writes) -> None:
        """``writes`` in one group, durable when this returns (one
        fdatasync, however many leases)."""
        if writes:
            self.begin(writes)
            self.finish()

    def begin(self, writes: Writes) -> None:
        """The first half of :meth:`write`, in the caller's thread: the
        group made ready (the journal's bytes; or, without a journal, the
        statements of a transaction left open), the store held until
        :meth:`finish` makes it durable, which may run in another thread (a
        group commit's: there the GIL is given up for the whole fdatasync)."""
        if self.reader:
            raise RuntimeError("the leases are another bootsvc serve's: this process only reads them")
        self._lock.acquire()
        try:
            if self.journal is not None:
                self._encoded = self.journal.encode([(statement.name, row) for statement, row in writes])
                return
            self.db.execute("BEGIN")
            _execute(self.db, writes)
        except BaseException:
            self._end("ROLLBACK")
            raise

    def finish(self) -> None:
        """Make durable what :meth:`begin` made ready: the journal's one
        append and fdatasync (or the transaction's COMMIT); nothing of it
        kept if that fails."""
        if self.journal is None:
            self._end("COMMIT")
            return
        try:
            self.journal.append(self._encoded)
        finally:
            self._encoded = b""
            self._lock.release()
        if self.journal.size > COMPACT_AT:
            self._fold_later()

    def _fold_later(self) -> None:
        """The full journal renamed and folded into SQLite by a thread of
        its own (with its own connection), while groups go on to a fresh one."""
        if self.journal is None or (self._folding is not None and self._folding.is_alive()):
            return
        if not self.journal.rotate():
            return
        self._folding = threading.Thread(target=self._fold_older, name="lease-fold", daemon=True)
        self._folding.start()

    def _fold_older(self) -> None:
        assert self.journal is not None
        try:
            db = _connect(str(self.journal.path.with_name(self.journal.path.name[:-len(".log")])))
            try:
                self._fold(db, self.journal.older)
            finally:
                db.close()
            self.fold_error = None
        except (OSError, sqlite3.Error) as e:  # kept in the journal; the next start folds it
            self.fold_error = str(e)

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
        self.unknown.pop(mac, None)

    def unknown_machines(self) -> list[Unknown]:
        """(mac, policy, first seen, last seen, client architecture), oldest first."""
        return sorted(self.unknown.values(), key=lambda row: row[2])

    def close(self) -> None:
        """Write what is pending; the owner folds the journal into SQLite,
        so a stopped server leaves one complete file."""
        if not self.reader:
            self.commit()
        if self._folding is not None:
            self._folding.join(timeout=60)
        with self._lock:
            if self.journal is not None:
                self.journal.close()
                with contextlib.suppress(OSError, sqlite3.Error):  # left in the journal: the next start folds it
                    for file in (self.journal.older, self.journal.path):
                        self._fold(self.db, file)
                self.journal = None
            self.db.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _address(text: object) -> IPv4:
    """A lease's address as SQLite, the journal and the worker's pipe hold
    it (a dotted quad); ValueError if it is not one. ``inet_pton`` is as
    strict as ``ipaddress`` (four decimal parts, no leading zeros) in a
    fifth of the time: serve replays every lease the DHCP worker writes."""
    try:
        return IPv4(socket.inet_pton(socket.AF_INET, str(text)))
    except OSError:
        raise ValueError(f"{text!r} is not an IPv4 address") from None


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    # FULL: every commit's WAL frames are fsynced before it returns, so a
    # folded journal (or, without one, a written lease) survives a power cut
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS leases (ip TEXT PRIMARY KEY, mac TEXT NOT NULL, "
               "state TEXT NOT NULL, expires REAL NOT NULL, hostname TEXT NOT NULL DEFAULT '')")
    # machines not in the inventory that asked for an address (policy discover)
    # or were given the default profile (policy adopted until they first log in
    # to their disk, then default), for `bootsvc machines`
    db.execute("CREATE TABLE IF NOT EXISTS unknown_machines (mac TEXT PRIMARY KEY, policy TEXT NOT NULL, "
               "first_seen REAL NOT NULL, last_seen REAL NOT NULL, arch TEXT NOT NULL DEFAULT '')")
    return db


def _execute(db: sqlite3.Connection, writes: Writes) -> None:
    """``writes`` in the open transaction: consecutive writes of one kind
    as one statement (the order holds: SQLite applies a statement's rows
    one after another)."""
    for statement, run in itertools.groupby(writes, key=lambda w: w[0]):
        rows = [params for _, params in run]
        for i in range(0, len(rows), ROWS):
            chunk = rows[i:i + ROWS]
            db.execute(statement.sql(len(chunk)), [p for row in chunk for p in row])
