"""target/eager.py: a coroutine that never waits finishes at once; one that
waits is stepped by its futures' callbacks (no Task) and can be cancelled
as a Task can."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from target.eager import Cancellable, run_eager


def _run(scenario: Any) -> Any:
    return asyncio.run(scenario())


def test_a_command_that_never_waits_is_done_at_once() -> None:
    async def command() -> int:
        return 7

    got: list[tuple[object, object]] = []
    tasks: set[Cancellable] = set()
    run_eager(command(), lambda r, e: got.append((r, e)), tasks)
    assert got == [(7, None)] and not tasks


def test_a_waiting_command_resumes_on_its_futures_and_reports() -> None:
    async def scenario() -> list[tuple[object, object]]:
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()

        async def command() -> int:
            a = await first
            await asyncio.sleep(0)  # a bare yield: the next turn
            b = await second
            return int(a + b)

        got: list[tuple[object, object]] = []
        tasks: set[Cancellable] = set()
        run_eager(command(), lambda r, e: got.append((r, e)), tasks)
        assert len(tasks) == 1 and not got
        loop.call_soon(first.set_result, 2)
        loop.call_later(0.01, second.set_result, 3)
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.005)
        assert not tasks
        return got

    assert _run(scenario) == [(5, None)]


def test_an_error_after_waiting_goes_to_done() -> None:
    async def scenario() -> list[tuple[object, object]]:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        async def command() -> None:
            await fut

        got: list[tuple[object, object]] = []
        run_eager(command(), lambda r, e: got.append((r, e)), set())
        fut.set_exception(OSError("disk gone"))
        await asyncio.sleep(0)
        return got

    ((result, error),) = _run(scenario)
    assert result is None and isinstance(error, OSError) and str(error) == "disk gone"


@pytest.mark.parametrize("completed_first", [False, True], ids=["waiting", "future-already-done"])
def test_cancel_throws_cancelled_error_where_it_waits(completed_first: bool) -> None:
    async def scenario() -> tuple[list[object], list[str], set[Cancellable], bool]:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        seen: list[str] = []

        async def command() -> None:
            try:
                await fut
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        got: list[object] = []
        tasks: set[Cancellable] = set()
        run_eager(command(), lambda r, e: got.append((r, e)), tasks)
        if completed_first:
            fut.set_result(1)  # its callback is scheduled, not yet run
        (running,) = tasks
        assert running.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return got, seen, tasks, running.cancel()

    got, seen, tasks, again = _run(scenario)
    assert got == [] and seen == ["cancelled"] and not tasks and again is False
