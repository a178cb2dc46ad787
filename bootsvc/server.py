"""`bootsvc serve`: every configured service on one asyncio loop
(DESIGN.md "Layers", wiring). A service that cannot start is reported in
one line and the others keep serving; SIGTERM/SIGINT end them cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("bootsvc.server")


@dataclass
class Service:
    name: str
    start: Callable[[], Awaitable[None]]
    stop: Callable[[], Awaitable[None] | None]
    where: str = ""


def report(line: str) -> None:
    print(f"bootsvc: {line}", file=sys.stderr, flush=True)


def run(services: list[Service]) -> int:
    """Start the services, serve until a signal; 1 if none could start."""

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
        await stop.wait()
        for s in reversed(running):
            result = s.stop()
            if result is not None:
                await result
        return 0

    return asyncio.run(main())
