"""Where boots are kept: SQLite in state_dir/recorder.db, a row per boot
and a row per step (only the steps added since the last save are
written: a storm's boots are saved every second, and rewriting each whole
boot every time grew with its length), readable while ``bootsvc serve`` writes (WAL), so
``bootsvc machines`` and ``bootsvc timeline`` work with serve running or
not. Bounded: ``history`` boots per machine and ``MAX_BOOTS`` in all; the
oldest go first."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .diagnosis import STALL, State, diagnose, state
from .steps import Seen, Step

HISTORY = 20  # boots kept per machine
MAX_BOOTS = 20_000  # boots kept in all (a storm of random MACs must not fill the disk)
SCHEMA_VERSION = 1
MAX_STEPS = 200  # steps kept per boot: a machine retrying forever adds a count, not rows

_SCHEMA = """CREATE TABLE IF NOT EXISTS boots (
    id INTEGER PRIMARY KEY, mac TEXT NOT NULL, hostname TEXT NOT NULL DEFAULT '',
    started REAL NOT NULL, updated REAL NOT NULL, state TEXT NOT NULL, diagnosis TEXT NOT NULL DEFAULT '',
    duration REAL, read_bytes INTEGER NOT NULL DEFAULT 0, written_bytes INTEGER NOT NULL DEFAULT 0,
    dropped_steps INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS steps (boot INTEGER NOT NULL, seq INTEGER NOT NULL, time REAL NOT NULL,
    step TEXT NOT NULL, detail TEXT NOT NULL, PRIMARY KEY (boot, seq));
CREATE INDEX IF NOT EXISTS boots_by_mac ON boots (mac, started)"""


@dataclass
class Boot:
    """One boot attempt of one machine, from its boot ROM's DHCP offer on."""

    id: int
    mac: str
    hostname: str
    started: float
    steps: list[Seen] = field(default_factory=list)
    logins: int = 0
    dropped_steps: int = 0  # steps past MAX_STEPS, counted only
    diagnosis: str = ""  # set once the boot has failed (or "booted")
    saved: int = 0  # steps already in the store

    @property
    def updated(self) -> float:
        return self.steps[-1].time if self.steps else self.started

    @property
    def duration(self) -> float | None:
        """Seconds from the first step to the OS reading its root."""
        done = next((s.time for s in self.steps if s.step is Step.OS_READ), None)
        return None if done is None else round(done - self.started, 3)

    def moved(self) -> tuple[int, int]:
        """Bytes read and written by the boot's sessions that ended."""
        ends = [s.detail for s in self.steps if s.step is Step.SESSION_END]
        return (sum(int(str(d.get("read_bytes", 0))) for d in ends),
                sum(int(str(d.get("written_bytes", 0))) for d in ends))

    def add(self, seen: Seen) -> None:
        if len(self.steps) >= MAX_STEPS:
            self.dropped_steps += 1
            return
        self.steps.append(seen)
        if seen.step in (Step.LOGIN, Step.OS_LOGIN):
            self.logins += 1

    def state(self, now: float, stall: float = STALL) -> State:
        return state(self.steps, now, stall)

    def summary(self, now: float, stall: float = STALL) -> dict[str, Any]:
        """What a machine table shows of it (JSON-ready)."""
        read, written = self.moved()
        return {"id": self.id, "mac": self.mac, "hostname": self.hostname, "started": self.started,
                "updated": self.updated, "state": self.state(now, stall).value,
                "diagnosis": self.diagnosis or diagnose(self.steps, now, stall), "duration": self.duration,
                "read_bytes": read, "written_bytes": written, "last_step": self.steps[-1].step.value
                if self.steps else None}

    def timeline(self, now: float, stall: float = STALL) -> dict[str, Any]:
        """The summary and every step with its time from the start."""
        out = self.summary(now, stall)
        out["steps"] = [{"at": round(s.time - self.started, 3), "time": s.time, "step": s.step.value,
                         **({"detail": dict(s.detail)} if s.detail else {})} for s in self.steps]
        out["dropped_steps"] = self.dropped_steps
        return out


@dataclass
class Rows:
    """Boots and their new steps as SQLite rows: made where the boots
    change (the event loop, a slice at a time: Python work in a worker
    thread would hold the GIL the loop needs), written by
    :meth:`BootStore.write` (anywhere)."""

    boots: list[tuple[object, ...]] = field(default_factory=list)
    steps: list[tuple[object, ...]] = field(default_factory=list)
    counts: list[tuple[Boot, int]] = field(default_factory=list)  # steps each boot had when its rows were made

    @classmethod
    def of(cls, boots: Iterable[Boot], now: float) -> Rows:
        rows = cls()
        rows.add(boots, now)
        return rows

    def add(self, boots: Iterable[Boot], now: float) -> None:
        # the steps as they are now: a step added before the write is left
        # for the next save, not marked saved unwritten
        for b in boots:
            n = len(b.steps)
            self.counts.append((b, n))
            self.boots.append((b.id, b.mac, b.hostname, b.started, b.updated, b.state(now).value, b.diagnosis,
                               b.duration, *b.moved(), b.dropped_steps))
            self.steps.extend((b.id, i, s.time, s.step.value, _encode(s.detail))
                              for i, s in enumerate(b.steps[b.saved:n], b.saved))

    def mark_saved(self) -> None:
        for b, n in self.counts:
            b.saved = n


class BootStore:
    def __init__(self, path: Path, history: int = HISTORY, max_boots: int = MAX_BOOTS) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.history = history
        self.max_boots = max_boots
        self._lock = threading.Lock()  # the recorder writes from a worker thread
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        if self.db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            # boots of a development build (steps kept as JSON in the boot's row): history, not data; gone
            self.db.executescript("DROP TABLE IF EXISTS boots; DROP TABLE IF EXISTS steps;")
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self.db.executescript(_SCHEMA)

    def next_id(self) -> int:
        with self._lock:
            row = self.db.execute("SELECT MAX(id) FROM boots").fetchone()
        return int(row[0] or 0) + 1

    def save(self, boots: Iterable[Boot], now: float) -> None:
        """Write these boots (new or changed) and their new steps in one
        transaction, then prune."""
        self.write(Rows.of(boots, now))

    def write(self, rows: Rows) -> None:
        """Write rows made by :meth:`Rows.of` in one transaction, then prune;
        their boots are marked saved. All in SQLite (executemany binds
        ready tuples): a worker thread running this holds the GIL only
        briefly, so the event loop it shares the process with is not held
        up (bench/dhcp_stalls.py, docs/benchmarks.md)."""
        if not rows.boots:
            return
        with self._lock, self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO boots VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows.boots)
            self.db.executemany("INSERT OR REPLACE INTO steps VALUES (?,?,?,?,?)", rows.steps)
            # each saved machine keeps its latest `history` boots: one statement for all of
            # them (a storm saves thousands of machines a second; a statement each was most of it)
            self.db.execute("DELETE FROM boots WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER "
                            "(PARTITION BY mac ORDER BY started DESC) AS n FROM boots WHERE mac IN "
                            "(SELECT value FROM json_each(?))) WHERE n > ?)",
                            (json.dumps(sorted({r[1] for r in rows.boots})), self.history))
            self.db.execute("DELETE FROM boots WHERE id NOT IN (SELECT id FROM boots ORDER BY started DESC "
                            "LIMIT ?)", (self.max_boots,))
            self.db.execute("DELETE FROM steps WHERE boot NOT IN (SELECT id FROM boots)")
        rows.mark_saved()

    def latest(self) -> list[Boot]:
        """Each machine's latest boot."""
        return self._read("SELECT * FROM boots WHERE id IN (SELECT MAX(id) FROM boots GROUP BY mac) "
                          "ORDER BY hostname, mac", ())

    def boots(self, mac: str, limit: int = HISTORY) -> list[Boot]:
        """A machine's boots, the latest first."""
        return self._read("SELECT * FROM boots WHERE mac = ? ORDER BY started DESC, id DESC LIMIT ?", (mac, limit))

    def _read(self, sql: str, args: tuple[object, ...]) -> list[Boot]:
        with self._lock:
            boots = [_boot(r) for r in self.db.execute(sql, args).fetchall()]
            for boot in boots:
                for t, step, detail in self.db.execute("SELECT time, step, detail FROM steps WHERE boot = ? "
                                                       "ORDER BY seq", (boot.id,)):
                    try:
                        boot.add(Seen(t, Step(step), json.loads(detail)))
                    except ValueError:
                        continue  # a step a newer bootsvc wrote: skipped, not fatal
                boot.saved = len(boot.steps)
        return boots

    def mac_of(self, host: str) -> str | None:
        """The MAC a host name was last recorded under."""
        with self._lock:
            row = self.db.execute("SELECT mac FROM boots WHERE hostname = ? ORDER BY started DESC LIMIT 1",
                                  (host,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        with self._lock:
            self.db.close()


def _encode(detail: Mapping[str, object]) -> str:
    """A step's detail as compact JSON; orjson (a storm saves thousands of
    steps a second: a tenth of json's time), json for what it refuses."""
    plain = detail if type(detail) is dict else dict(detail)
    try:
        return orjson.dumps(plain, default=str).decode()
    except TypeError:  # an int beyond 64 bits
        return json.dumps(plain, separators=(",", ":"), default=str)


def _boot(row: tuple[Any, ...]) -> Boot:
    boot_id, mac, hostname, started, _updated, _state, diagnosis, _duration, _r, _w, dropped = row
    return Boot(boot_id, mac, hostname, started, dropped_steps=dropped, diagnosis=diagnosis)
