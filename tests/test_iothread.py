"""The per-image I/O thread: calls run in order, results and exceptions
reach the awaiting coroutines, close() ends the thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from target.iothread import IoThread


def test_order_results_errors_and_close() -> None:
    io = IoThread("test")
    seen: list[int] = []

    def step(i: int) -> int:
        seen.append(i)
        if i == 7:
            raise ValueError("seven")
        return i * 2

    async def main() -> list[int | BaseException]:
        return await asyncio.gather(*(io.run(step, i) for i in range(50)), return_exceptions=True)

    results = asyncio.run(main())
    assert seen == list(range(50))
    assert results[3] == 6 and isinstance(results[7], ValueError)
    names = {t.name for t in threading.enumerate()}
    assert "test" in names
    io.close()
    assert "test" not in {t.name for t in threading.enumerate()}
    io.close()  # twice is fine


def test_cancelled_waiter_does_not_break_the_thread() -> None:
    io = IoThread("test-cancel")

    async def main() -> int:
        slow = asyncio.ensure_future(io.run(lambda: sum(range(10**6))))
        await asyncio.sleep(0)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        return await io.run(lambda: 42)

    assert asyncio.run(main()) == 42
    io.close()
