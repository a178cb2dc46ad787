"""The serve log handler (bootsvc/log_handler.py): the loop's lines of one
iteration leave in one write, in order with lines from other threads and
from outside a loop; nothing is held back once the loop turns or stops."""

from __future__ import annotations

import asyncio
import logging
import threading

from bootsvc.log_handler import LoopBatchedHandler


class Stream:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass


def logger(stream: Stream) -> tuple[logging.Logger, LoopBatchedHandler]:
    log = logging.getLogger(f"test.log_handler.{id(stream)}")
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = LoopBatchedHandler(stream)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    return log, handler


def test_one_write_per_loop_iteration_in_order() -> None:
    stream = Stream()
    log, _ = logger(stream)

    async def run() -> None:
        for i in range(3):
            log.info("loop %d", i)
        assert stream.writes == []  # gathered until the iteration ends
        other = threading.Thread(target=lambda: log.info("thread"))
        other.start()
        other.join(5)
        await asyncio.sleep(0)
        log.info("next")
        await asyncio.sleep(0)

    asyncio.run(run())
    # the thread's line went at once, after those gathered before it
    assert stream.writes == ["loop 0\nloop 1\nloop 2\nthread\n", "next\n"]


def test_without_a_loop_each_line_goes_at_once_and_a_stopped_loop_holds_nothing() -> None:
    stream = Stream()
    log, handler = logger(stream)
    log.info("before")
    assert stream.writes == ["before\n"]

    async def last_words() -> None:
        log.info("last")  # the loop ends before its next iteration

    asyncio.run(last_words())
    log.info("after")  # no loop: written at once, the held line first
    assert stream.writes == ["before\n", "last\nafter\n"] or stream.writes == ["before\n", "last\n", "after\n"]

    async def again() -> None:
        log.info("new loop")
        await asyncio.sleep(0)

    asyncio.run(again())  # a line of a later loop is not stuck behind the old loop's due write
    assert stream.writes[-1] == "new loop\n"
    handler.flush()
