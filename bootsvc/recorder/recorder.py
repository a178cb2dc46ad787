"""The flight recorder: a subscriber of the event bus that joins each
machine's events into boots (DESIGN.md "Events").

Identities are joined by the fleet (``Fleet.mac_of``: the event's MAC, else
its initiator's or target's machine, else the machine at its address), so a
TFTP fetch, a login and a dropped session land in one boot. A boot ROM's
DHCP offer starts a new boot. The recorder keeps each machine's current
boot in memory (what the web page and the API show live) and writes the
boots that changed to the store about once a second, off the event loop.
When a boot reads its root it emits ``boot.booted`` (with its duration);
one that stalls emits ``boot.failed`` with the diagnosis: one line each in
the log, so a journal tells every machine's story.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Callable
from typing import Protocol

from ..events import Bus, Event, Kind
from ..inventory import Machine
from .diagnosis import FAILURES, STALL, State, diagnose_rule, repeating
from .steps import Seen, Step, detail_of, step_of
from .store import Boot, BootStore, Rows

TRACKED = 8192  # machines whose current boot is kept in memory (unknown MACs included)
FLUSH_INTERVAL = 1.0
ROWS_AT_ONCE = 100  # boots made into rows between two turns of the loop (~0.5 ms)


class Identities(Protocol):
    """What the recorder asks the fleet."""

    def mac_of(self, event: Event) -> str | None: ...

    def machine(self, mac: str) -> Machine | None: ...


class Recorder:
    def __init__(self, fleet: Identities, bus: Bus, store: BootStore, stall: float = STALL,
                 clock: Callable[[], float] = time.time) -> None:
        self.fleet = fleet
        self.bus = bus
        self.store = store
        self.stall = stall
        self.clock = clock
        self.current: dict[str, Boot] = {}  # by MAC, the latest boot of each machine
        self._dirty: dict[int, Boot] = {}
        # what tick() looks at, instead of every boot (16 ms a second on the
        # loop with 8192 tracked boots, docs/benchmarks.md DHCP): the boots
        # that changed since the last tick, and those whose last step grows
        # older than `stall` now (by when, in a heap). A boot's state changes
        # only with a new step or with that age.
        self._touched: dict[int, Boot] = {}
        self._due: list[tuple[float, int, Boot]] = []
        self._next_id = store.next_id()
        self._task: asyncio.Task[None] | None = None
        self.listeners: list[Callable[[Boot], None]] = []  # told of every changed boot (the web page's stream)

    # -- the bus -----------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        if event.kind in (Kind.BOOT_BOOTED, Kind.BOOT_FAILED):
            return  # ours
        mac = self.fleet.mac_of(event)
        if mac is None:
            return
        boot = self.current.get(mac)
        step = step_of(event, boot.steps if boot is not None else ())
        if step is None:
            return
        if boot is None or self._starts_anew(boot, step, event.time):
            boot = self._new_boot(mac, event)
        boot.add(Seen(event.time, step, detail_of(event)))
        if step is Step.OS_READ and not boot.diagnosis:
            boot.diagnosis = "booted"
            self.bus.emit(Kind.BOOT_BOOTED, mac=mac, hostname=boot.hostname or None, seconds=boot.duration,
                          boot=boot.id)
        self._changed(boot)

    def _starts_anew(self, boot: Boot, step: Step, now: float) -> bool:
        """A boot ROM's offer is a new boot, unless the current one has not
        gone past its own offer yet (a ROM that asks twice); after a boot
        ended, whatever comes next starts another, but for more of the
        failure it ended in (a machine retrying a refused login)."""
        if step is Step.ROM_OFFER:
            return any(s.step not in (Step.ROM_OFFER, Step.DROPPED) for s in boot.steps)
        st = boot.state(now, self.stall)
        if st is State.RUNNING or step is Step.SESSION_END:
            return False
        if st is State.FAILED and (step in FAILURES or step in repeating(boot.steps)):
            return False  # the same failure going on (a refused login or a READ retried, a loop) is the same boot
        return True

    def _new_boot(self, mac: str, event: Event) -> Boot:
        machine = self.fleet.machine(mac)
        hostname = machine.hostname if machine is not None else (event.hostname or "")
        boot = Boot(self._next_id, mac, hostname, event.time)
        self._next_id += 1
        self.current.pop(mac, None)
        self.current[mac] = boot  # most recent last: the first key is the one to forget
        while len(self.current) > TRACKED:
            del self.current[next(iter(self.current))]
        return boot

    def _changed(self, boot: Boot) -> None:
        self._dirty[boot.id] = boot
        self._touched[boot.id] = boot
        for listener in self.listeners:
            listener(boot)

    # -- time --------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Boots that stalled get their diagnosis (and ``boot.failed``)."""
        for boot in self._candidates(now):
            if self.current.get(boot.mac) is not boot:
                continue  # a newer boot of its machine took its place
            if not boot.diagnosis and boot.state(now, self.stall) is State.FAILED:
                rule, boot.diagnosis = diagnose_rule(boot.steps, now, self.stall)
                self.bus.emit(Kind.BOOT_FAILED, mac=boot.mac, hostname=boot.hostname or None,
                              diagnosis=boot.diagnosis, rule=rule, boot=boot.id, last_step=boot.steps[-1].step.value)
                self._changed(boot)

    def _candidates(self, now: float) -> list[Boot]:
        """The boots whose state may have turned since the last tick."""
        touched, self._touched = self._touched, {}
        for boot in touched.values():
            if boot.steps and not boot.diagnosis:
                heapq.heappush(self._due, (boot.steps[-1].time + self.stall, boot.id, boot))
        while self._due and self._due[0][0] <= now:
            boot = heapq.heappop(self._due)[2]
            touched[boot.id] = boot
        return list(touched.values())

    def flush(self, now: float) -> None:
        """Write what changed (in the caller's thread)."""
        dirty, self._dirty = self._dirty, {}
        self.store.save(dirty.values(), now)

    async def start(self) -> None:
        self.bus.subscribe(self.on_event)
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            now = self.clock()
            self.tick(now)
            if self._dirty:
                dirty, self._dirty = self._dirty, {}
                await asyncio.to_thread(self.store.write, await self._rows(list(dirty.values()), now))

    async def _rows(self, boots: list[Boot], now: float) -> Rows:
        """The rows of ``boots``, made on the loop ROWS_AT_ONCE boots at a
        time (a storm's thousand boots a second in one go, or in a worker
        thread holding the GIL, held DHCP up for 20-40 ms: docs/benchmarks.md)."""
        rows = Rows()
        for at in range(0, len(boots), ROWS_AT_ONCE):
            if at:
                await asyncio.sleep(0)
            rows.add(boots[at:at + ROWS_AT_ONCE], now)
        return rows

    async def stop(self) -> None:
        self.bus.unsubscribe(self.on_event)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush(self.clock())

    # -- what readers ask --------------------------------------------------------------

    def latest(self) -> dict[str, Boot]:
        """Each machine's latest boot by MAC: the live one, else the store's."""
        live = {b.mac: b for b in list(self.current.values())}  # a copy: other threads' events add boots
        return {**{b.mac: b for b in self.store.latest() if b.mac not in live}, **live}

    def machines(self, now: float) -> list[dict[str, object]]:
        """Each machine's latest boot: the live ones, then those only in the store."""
        boots = sorted(self.latest().values(), key=lambda b: (b.hostname or "~", b.mac))
        return [b.summary(now, self.stall) for b in boots]
