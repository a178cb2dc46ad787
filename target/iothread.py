"""One worker thread per image for blocking disk calls, handing results back
to the event loop in batches.

``loop.run_in_executor`` wakes the event loop once per finished call (a
write to its self-pipe each); under a deep queue of small writes those
wake-ups were the largest cost in the profile. Here the worker takes every
queued call, runs them in order and resolves all their futures with one
wake-up. One thread per image also serialises an image's metadata changes
without locks (target/qcow2.py relies on it).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")
_Call = tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]
_STOP = None


class IoThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` on the image's thread, awaited from the loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._start()
        self._queue.put((loop, future, fn, args))
        return await future

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                    self._thread.start()

    def _work(self) -> None:
        while True:
            call = self._queue.get()
            batch: list[_Call] = []
            stop = False
            while True:
                if call is None:
                    stop = True
                    break
                batch.append(call)
                try:
                    call = self._queue.get_nowait()
                except queue.Empty:
                    break
            done: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
            for loop, future, fn, args in batch:
                try:
                    result, error = fn(*args), None
                except BaseException as e:  # handed to the awaiting coroutine
                    result, error = None, e
                done.setdefault(loop, []).append((future, result, error))
            for loop, results in done.items():
                try:
                    loop.call_soon_threadsafe(_resolve, results)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    pass
            if stop:
                return

    def close(self) -> None:
        """Finish the queued calls and end the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None


def _resolve(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in results:
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
