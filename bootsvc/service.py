"""The one contract every service of ``bootsvc serve`` keeps (start, stop,
health) and the runner that serves them all on one asyncio TaskGroup
(DESIGN.md "Every service has one contract").

A service that cannot start is reported in one line and the others keep
serving; SIGTERM/SIGINT stop them in reverse order, SIGHUP runs a reload.
Readiness goes to systemd when run under it."""

from __future__ import annotations

import asyncio
import errno
import resource
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from . import systemd

SWITCH_INTERVAL = 0.0005  # seconds a busy thread may hold the GIL while another waits


class State(str, Enum):
    NOT_STARTED = "not started"
    SERVING = "serving"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass
class Service:
    """One service: how to start and stop it, and where it serves."""

    name: str
    start: Callable[[], Awaitable[None]]
    stop: Callable[[], Awaitable[None]]
    where: str = ""
    state: State = State.NOT_STARTED
    why: str = ""  # what stopped it from starting
    # False for what only accompanies the network services (the flight
    # recorder): not counted in "N of M serving", and alone it does not keep
    # the process up
    counted: bool = True
    # a service that can fail after it started (a worker process that died)
    # says why here while it does; None: serving
    trouble: Callable[[], str | None] = lambda: None

    def serving(self) -> bool:
        return self.state is State.SERVING and self.trouble() is None

    def health(self) -> str:
        trouble = self.trouble() if self.state is State.SERVING else None
        if trouble:
            return f"{State.FAILED.value}: {trouble}"
        return f"{self.state.value}: {self.why}" if self.why else self.state.value


class Health(NamedTuple):
    """What ``/healthz`` tells a load balancer or a monitor."""

    serving: bool  # every configured service serves
    states: dict[str, str]  # name -> "serving", "failed: <why>", "not started", "stopped"

    def text(self) -> str:
        """``ok`` or ``degraded``, then one line per service (a failed one
        with why), so the body alone says what is wrong."""
        return "".join(f"{line}\n" for line in ["ok" if self.serving else "degraded",
                                                 *(f"{name}: {state}" for name, state in self.states.items())])


Reload = Callable[[], Awaitable[str]]  # re-read the config; returns a one-line summary
Report = Callable[[str], None]


def report_stderr(line: str) -> None:
    print(f"bootsvc: {line}", file=sys.stderr, flush=True)


@dataclass
class Services:
    """The services of one process, started and stopped together."""

    report: Report = report_stderr
    items: list[Service] = field(default_factory=list)

    def add(self, name: str, start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]],
            where: str = "", counted: bool = True, trouble: Callable[[], str | None] | None = None) -> None:
        self.items.append(Service(name, start, stop, where, counted=counted, trouble=trouble or (lambda: None)))

    def health(self) -> Health:
        return Health(all(s.serving() for s in self.items), {s.name: s.health() for s in self.items})

    async def start(self) -> list[Service]:
        running = []
        for s in self.items:
            try:
                await s.start()
            except OSError as e:
                s.state, s.why = State.FAILED, str(e.strerror or e)
                self.report(f"{s.name} not started: {s.why}{' on ' + s.where if s.where else ''}")
                continue
            s.state = State.SERVING
            running.append(s)
            self.report(f"{s.name} serving{' on ' + s.where if s.where else ''}")
        return running

    @staticmethod
    async def stop(running: list[Service]) -> None:
        for s in reversed(running):
            await s.stop()
            s.state = State.STOPPED

    def run(self, reload: Reload | None = None) -> int:
        """Serve until SIGTERM/SIGINT (SIGHUP: ``reload``); 1 if nothing could start."""
        raise_descriptor_limit()
        return asyncio.run(self._main(reload))

    async def _main(self, reload: Reload | None) -> int:
        asyncio.get_running_loop().set_exception_handler(QuietExhaustion(self.report))
        running = await self.start()
        counted = [s for s in running if s.counted]
        if not counted:
            await self.stop(running)
            self.report("nothing could start")
            return 1
        total = sum(1 for s in self.items if s.counted)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # A thread busy with work (TFTP's sender in a storm, the iSCSI I/O
        # thread) holds the GIL up to the switch interval before the loop gets
        # it: 5 ms by default, long enough for a TFTP or DHCP client to time
        # out and retransmit. 0.5 ms made a 50-client TFTP storm 15 % faster
        # (docs/benchmarks.md, TFTP).
        sys.setswitchinterval(SWITCH_INTERVAL)
        async with asyncio.TaskGroup() as group:
            if reload is not None:  # before READY: a SIGHUP right after it must find its handler
                reloading = asyncio.Lock()  # two quick SIGHUPs: one reload after the other
                loop.add_signal_handler(signal.SIGHUP, lambda: group.create_task(self._reload(reload, reloading)))
            self.report(f"ready: {len(counted)} of {total} service(s) serving")
            systemd.notify("READY=1", f"STATUS={len(counted)} of {total} services serving")
            await stop.wait()
            loop.remove_signal_handler(signal.SIGHUP)
        systemd.notify("STOPPING=1")
        await self.stop(running)
        return 0

    async def _reload(self, reload: Reload, lock: asyncio.Lock) -> None:
        async with lock:
            systemd.notify("RELOADING=1")
            try:
                self.report(f"reloaded: {await reload()}")
            except Exception as e:  # the running config stays; say why
                self.report(f"reload failed, still serving the previous config: {e}")
            systemd.notify("READY=1")


class QuietExhaustion:
    """The loop's exception handler: asyncio reports every accept() that
    fails for want of descriptors with a traceback (21,000 lines in seconds
    under a connection flood, while it already pauses that listener for a
    second); say it in one line at most once a second. Everything else goes
    to asyncio's default handler."""

    def __init__(self, report: Report, interval: float = 1.0) -> None:
        self.report = report
        self.interval = interval
        self.last = -interval
        self.hidden = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        error = context.get("exception")
        if not (isinstance(error, OSError) and error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS,
                                                                errno.ENOMEM)):
            loop.default_exception_handler(context)
            return
        now = loop.time()
        if now - self.last < self.interval:
            self.hidden += 1
            return
        more = f" ({self.hidden} more since)" if self.hidden else ""
        self.report(f"out of descriptors or memory accepting connections: {error.strerror}{more}; "
                    "listeners pause a second and retry")
        self.last, self.hidden = now, 0


def raise_descriptor_limit() -> None:
    """Every descriptor the system lets this process have: the soft limit
    (often 1024) is what a thousand idle clients exhausted, failing every
    TCP service at once; the hard limit is the administrator's word."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
