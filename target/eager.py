"""Run a coroutine eagerly: to completion right away when it never has to
wait; when it does, the rest is stepped by the done-callbacks of what it
waits for, without a Task.

Most SCSI commands on page-cached data finish without waiting for anything;
creating and scheduling a Task for each costs more than the command itself.
(Python 3.12's eager task factory does the same for the whole loop.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")


class Cancellable(Protocol):
    """What a connection keeps of a command that had to wait: it cancels
    them all when it ends (an asyncio.Task or a :class:`_Resumer`)."""

    def cancel(self, msg: Any | None = None) -> bool: ...


def run_eager(coro: Coroutine[Any, Any, T], done: Callable[[T | None, BaseException | None], None],
              tasks: set[Cancellable]) -> None:
    """Run ``coro``; call ``done(result, None)`` or ``done(None, error)``.

    If the coroutine must wait, the rest runs from the done-callbacks of
    what it waits for (:class:`_Resumer`, kept in ``tasks`` so the caller
    can cancel it) until it finishes."""
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        done(stop.value, None)
        return
    except Exception as e:  # noqa: BLE001 - reported to the caller
        done(None, e)
        return
    resumer = _Resumer(coro, done, tasks)
    tasks.add(resumer)
    resumer.wait(yielded)


class _Resumer(Generic[T]):
    """The rest of a coroutine that had to wait, stepped by the
    done-callback of each future it awaits, as a Task steps it but without
    one: a command that waits for its disk (every read of an RBD LUN)
    cost a Task's creation and scheduling, about 15-20 µs of the loop's CPU
    per read (measured against tgt bs_rbd, docs/benchmarks.md "Ceph").
    Cancelled like a Task: the future it awaits is cancelled, and the
    coroutine gets CancelledError where it waits; ``done`` is then not called."""

    __slots__ = ("coro", "done", "tasks", "waiting", "must_cancel", "finished")

    def __init__(self, coro: Coroutine[Any, Any, T], done: Callable[[T | None, BaseException | None], None],
                 tasks: set[Cancellable]) -> None:
        self.coro, self.done, self.tasks = coro, done, tasks
        self.waiting: asyncio.Future[Any] | None = None
        self.must_cancel = False
        self.finished = False

    def wait(self, yielded: Any) -> None:
        """Go on once ``yielded`` (what the coroutine yielded) is done."""
        if getattr(yielded, "_asyncio_future_blocking", None):
            yielded._asyncio_future_blocking = False
            self.waiting = yielded
            yielded.add_done_callback(self._wakeup)
        elif yielded is None:  # a bare yield (asyncio.sleep(0)): again on the next turn
            asyncio.get_running_loop().call_soon(self._step, None, None)
        else:
            self._step(None, RuntimeError(f"a command awaited {yielded!r}, which is no future"))

    def _wakeup(self, future: asyncio.Future[Any]) -> None:
        self.waiting = None
        try:
            value = future.result()
        except BaseException as e:  # noqa: BLE001 - thrown into the coroutine, as a Task does
            self._step(None, e)
        else:
            self._step(value, None)

    def _step(self, value: Any, error: BaseException | None) -> None:
        if self.must_cancel and not isinstance(error, asyncio.CancelledError):
            self.must_cancel, error = False, asyncio.CancelledError()
        try:
            yielded = self.coro.send(value) if error is None else self.coro.throw(error)
        except StopIteration as stop:
            self._finish(stop.value, None)
        except asyncio.CancelledError:
            self._finish(None, None, cancelled=True)
        except Exception as e:  # noqa: BLE001 - reported to the caller
            self._finish(None, e)
        else:
            self.wait(yielded)

    def _finish(self, result: T | None, error: BaseException | None, cancelled: bool = False) -> None:
        self.finished = True
        self.tasks.discard(self)
        if not cancelled:
            self.done(result, error)

    def cancel(self, msg: Any | None = None) -> bool:
        if self.finished:
            return False
        waiting = self.waiting
        if waiting is None or not waiting.cancel(msg):  # already done: its callback is on its way
            self.must_cancel = True
        return True
