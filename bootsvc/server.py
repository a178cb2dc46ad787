"""`bootsvc serve`: every configured service on one asyncio loop
(DESIGN.md "Layers", wiring). A service that cannot start is reported in
one line and the others keep serving; SIGTERM/SIGINT end them cleanly and
SIGHUP re-reads the config. Readiness goes to systemd when run under it."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import systemd

log = logging.getLogger("bootsvc.server")
SWITCH_INTERVAL = 0.0005  # seconds a busy thread may hold the GIL while another waits


@dataclass
class Service:
    name: str
    start: Callable[[], Awaitable[None]]
    stop: Callable[[], Awaitable[None] | None]
    where: str = ""


def report(line: str) -> None:
    print(f"bootsvc: {line}", file=sys.stderr, flush=True)


Reload = Callable[[], Awaitable[str]]  # re-read the config; returns a one-line summary


def run(services: list[Service], reload: Reload | None = None) -> int:
    """Start the services, serve until SIGTERM/SIGINT (SIGHUP: ``reload``);
    1 if none could start."""

    async def main() -> int:
        running: list[Service] = []
        for s in services:
            try:
                await s.start()
            except OSError as e:
                report(f"{s.name} not started: {e.strerror or e}{' on ' + s.where if s.where else ''}")
                continue
            running.append(s)
            report(f"{s.name} serving{' on ' + s.where if s.where else ''}")
        if not running:
            report("nothing could start")
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[None]] = set()
        if reload is not None:
            def on_hup() -> None:
                task = loop.create_task(_reload(reload))
                reloads.add(task)
                task.add_done_callback(reloads.discard)
            loop.add_signal_handler(signal.SIGHUP, on_hup)
        # A thread busy with work (TFTP's sender in a storm, the iSCSI I/O
        # thread) holds the GIL up to the switch interval before the loop gets
        # it: 5 ms by default, long enough for a TFTP or DHCP client to time
        # out and retransmit. 0.5 ms made a 50-client TFTP storm 15 % faster
        # (docs/benchmarks.md, TFTP).
        sys.setswitchinterval(SWITCH_INTERVAL)
        report(f"ready: {len(running)} of {len(services)} service(s) serving")
        systemd.notify("READY=1", f"STATUS={len(running)} of {len(services)} services serving")
        await stop.wait()
        systemd.notify("STOPPING=1")
        for s in reversed(running):
            result = s.stop()
            if result is not None:
                await result
        return 0

    return asyncio.run(main())


_reloading = asyncio.Lock()


async def _reload(reload: Reload) -> None:
    async with _reloading:  # two quick SIGHUPs: one reload after the other
        systemd.notify("RELOADING=1")
        try:
            report(f"reloaded: {await reload()}")
        except Exception as e:  # the running config stays; say why
            report(f"reload failed, still serving the previous config: {e}")
        systemd.notify("READY=1")
