"""Run an asyncio service on its own loop in a thread while a test drives
real clients against it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator


@contextlib.contextmanager
def serving(start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None] | None]) -> Iterator[None]:
    loop = asyncio.new_event_loop()
    loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        async def shutdown() -> None:
            result = stop()
            if result is not None:
                await result

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
