"""Run a coroutine eagerly: to completion right away when it never has to
wait, as a Task only when it does.

Most SCSI commands on page-cached data finish without waiting for anything;
creating and scheduling a Task for each costs more than the command itself.
(Python 3.12's eager task factory does the same for the whole loop.)
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


@types.coroutine
def _resume(coro: Coroutine[Any, Any, T], yielded: Any) -> Generator[Any, Any, T]:
    """Continue ``coro`` that has already yielded ``yielded`` to us."""
    while True:
        try:
            value = yield yielded
        except BaseException as e:  # noqa: BLE001 - forwarded into the coroutine
            try:
                yielded = coro.throw(e)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
        else:
            try:
                yielded = coro.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]


def run_eager(coro: Coroutine[Any, Any, T], done: Callable[[T | None, BaseException | None], None],
              tasks: set[asyncio.Task[None]]) -> None:
    """Run ``coro``; call ``done(result, None)`` or ``done(None, error)``.

    If the coroutine must wait, the rest runs in a Task kept in ``tasks``
    (so the caller can cancel it) until it finishes."""
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        done(stop.value, None)
        return
    except Exception as e:  # noqa: BLE001 - reported to the caller
        done(None, e)
        return

    async def finish() -> None:
        try:
            result = await _resume(coro, yielded)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            done(None, e)
        else:
            done(result, None)

    task = asyncio.ensure_future(finish())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
