"""Disks that stop answering: ``disk.stalled`` when a request to a disk has
waited ``storage.stall_after`` seconds, ``disk.unstalled`` once it no
longer waits (docs/scale-out.md "When the cluster fails").

librbd waits as long as the Ceph cluster does not answer (Ceph has no
``rados osd op timeout`` by default): a paused or lost OSD leaves a
machine's reads waiting and, without this, nothing is said until the
machine's initiator gives up. The same holds for a file on a hung disk.

One check for every disk every :func:`period` seconds, not a timer per
request: each LUN keeps its running commands oldest first
(``target.scsi.lun.Lun.running``, without a clock: sans-I/O), and the check
times how long the same command stays the oldest of those whose work is
bounded (reads, writes, flushes: ``target.scsi.cdb.BOUNDED``; a zeroing or
a copy of the whole disk may take long doing its work). A stall is said
between ``stall_after`` and ``stall_after`` + one period after the request
began, and the seconds it reports are at least what it waited.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from target import Target
from target.scsi.cdb import BOUNDED, operation
from target.scsi.lun import Lun

from .events import Bus, Kind
from .inventory import Machine

PERIOD_MAX = 5.0  # seconds between checks at most (stall_after / 4 below that)


class Watched(Protocol):
    """What the watch asks of the fleet."""

    @property
    def targets(self) -> Mapping[str, Target]: ...

    def machine_of_target(self, iqn: str) -> Machine | None: ...


@dataclass
class _Wait:
    """The oldest command of one LUN, since the check that first saw it oldest."""

    serial: int
    opcode: int
    since: float
    said: bool = False  # disk.stalled was emitted for it


def _oldest_bounded(lun: Lun) -> tuple[int, int] | None:
    """(serial, opcode) of the LUN's oldest running read, write or flush."""
    for serial, opcode in lun.running.items():
        if opcode in BOUNDED:
            return serial, opcode
    return None


def period(stall_after: float) -> float:
    return min(PERIOD_MAX, stall_after / 4)


class DiskWatch:
    """The watch over every disk the fleet serves: ``check(now)`` is the
    whole logic (tested with a fake clock); ``start``/``stop`` run it every
    :func:`period` seconds. ``stall_after`` is asked at each check, so a
    reload's new value holds at once."""

    def __init__(self, fleet: Watched, bus: Bus, stall_after: Callable[[], float],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fleet, self.bus, self.stall_after, self.clock = fleet, bus, stall_after, clock
        self._waits: dict[Lun, tuple[Target, _Wait]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(period(self.stall_after()))
            self.check(self.clock())

    def check(self, now: float) -> None:
        after = self.stall_after()
        waits: dict[Lun, tuple[Target, _Wait]] = {}
        seen: set[Lun] = set()
        for target in list(self.fleet.targets.values()):
            for lun in list(target.luns.values()):
                seen.add(lun)
                wait = self._look(target, lun, now, after)
                if wait is not None:
                    waits[lun] = target, wait
        for lun, (target, wait) in self._waits.items():
            if lun not in seen and wait.said:  # its target went (a reload, a renewal) with the command
                self._emit(Kind.DISK_UNSTALLED, target, lun, wait, now)
        self._waits = waits

    def _look(self, target: Target, lun: Lun, now: float, after: float) -> _Wait | None:
        oldest = _oldest_bounded(lun)
        known = self._waits.get(lun)
        wait = known[1] if known is not None else None
        if wait is not None and (oldest is None or oldest[0] != wait.serial):
            if wait.said:
                self._emit(Kind.DISK_UNSTALLED, target, lun, wait, now)
            wait = None
        if oldest is not None and wait is None:
            wait = _Wait(oldest[0], oldest[1], now)
        if wait is not None and not wait.said and now - wait.since >= after:
            wait.said = True
            self._emit(Kind.DISK_STALLED, target, lun, wait, now)
        return wait

    def _emit(self, kind: Kind, target: Target, lun: Lun, wait: _Wait, now: float) -> None:
        op, seconds = operation(wait.opcode), round(now - wait.since, 1)
        if kind is Kind.DISK_STALLED:
            why = f"a {op} has waited {seconds:g} s for the storage, which does not answer"
        else:
            why = f"the {op} that waited is no longer waiting, after {seconds:g} s"
        m = self.fleet.machine_of_target(target.name)
        self.bus.emit(kind, mac=m.mac if m else None, hostname=m.hostname if m else None, target=target.name,
                      lun=lun.lun_id, op=op, seconds=seconds, why=why)
