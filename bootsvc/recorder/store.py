"""Where boots are kept: SQLite in state_dir/recorder.db, one row per boot
with its steps as JSON, readable while ``bootsvc serve`` writes (WAL), so
``bootsvc machines`` and ``bootsvc timeline`` work with serve running or
not. Bounded: ``history`` boots per machine and ``MAX_BOOTS`` in all; the
oldest go first."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .diagnosis import STALL, State, diagnose, state
from .steps import Seen, Step

HISTORY = 20  # boots kept per machine
MAX_BOOTS = 20_000  # boots kept in all (a storm of random MACs must not fill the disk)
MAX_STEPS = 200  # steps kept per boot: a machine retrying forever adds a count, not rows

_SCHEMA = """CREATE TABLE IF NOT EXISTS boots (
    id INTEGER PRIMARY KEY, mac TEXT NOT NULL, hostname TEXT NOT NULL DEFAULT '',
    started REAL NOT NULL, updated REAL NOT NULL, state TEXT NOT NULL, diagnosis TEXT NOT NULL DEFAULT '',
    duration REAL, read_bytes INTEGER NOT NULL DEFAULT 0, written_bytes INTEGER NOT NULL DEFAULT 0,
    dropped_steps INTEGER NOT NULL DEFAULT 0, steps TEXT NOT NULL)"""


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
        self.db.execute(_SCHEMA)
        self.db.execute("CREATE INDEX IF NOT EXISTS boots_by_mac ON boots (mac, started)")

    def next_id(self) -> int:
        with self._lock:
            row = self.db.execute("SELECT MAX(id) FROM boots").fetchone()
        return int(row[0] or 0) + 1

    def save(self, boots: Iterable[Boot], now: float) -> None:
        """Write these boots (new or changed) in one transaction, then prune."""
        rows = [(b.id, b.mac, b.hostname, b.started, b.updated, b.state(now).value, b.diagnosis, b.duration,
                 *b.moved(), b.dropped_steps, _encode(b.steps)) for b in boots]
        if not rows:
            return
        with self._lock, self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO boots VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            for mac in {r[1] for r in rows}:
                self.db.execute("DELETE FROM boots WHERE mac = ? AND id NOT IN (SELECT id FROM boots WHERE mac = ? "
                                "ORDER BY started DESC LIMIT ?)", (mac, mac, self.history))
            self.db.execute("DELETE FROM boots WHERE id NOT IN (SELECT id FROM boots ORDER BY started DESC "
                            "LIMIT ?)", (self.max_boots,))

    def latest(self) -> list[Boot]:
        """Each machine's latest boot."""
        with self._lock:
            rows = self.db.execute("SELECT * FROM boots WHERE id IN (SELECT MAX(id) FROM boots GROUP BY mac) "
                                   "ORDER BY hostname, mac").fetchall()
        return [_boot(r) for r in rows]

    def boots(self, mac: str, limit: int = HISTORY) -> list[Boot]:
        """A machine's boots, the latest first."""
        with self._lock:
            rows = self.db.execute("SELECT * FROM boots WHERE mac = ? ORDER BY started DESC, id DESC LIMIT ?",
                                   (mac, limit)).fetchall()
        return [_boot(r) for r in rows]

    def mac_of(self, host: str) -> str | None:
        """The MAC a host name was last recorded under."""
        with self._lock:
            row = self.db.execute("SELECT mac FROM boots WHERE hostname = ? ORDER BY started DESC LIMIT 1",
                                  (host,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        with self._lock:
            self.db.close()


def _encode(steps: list[Seen]) -> str:
    return json.dumps([[s.time, s.step.value, dict(s.detail)] for s in steps], separators=(",", ":"), default=str)


def _boot(row: tuple[Any, ...]) -> Boot:
    boot_id, mac, hostname, started, _updated, _state, diagnosis, _duration, _r, _w, dropped, steps = row
    boot = Boot(boot_id, mac, hostname, started, dropped_steps=dropped, diagnosis=diagnosis)
    for t, step, detail in json.loads(steps):
        try:
            boot.add(Seen(t, Step(step), detail))
        except ValueError:
            continue  # a step a newer bootsvc wrote: skipped, not fatal
    return boot
