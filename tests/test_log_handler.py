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


def test_the_running_loop_is_asked_once_per_iteration(monkeypatch: object) -> None:
    """Python 3.11's accessor makes a getpid system call: once a write is
    due on this thread's loop, further lines do not ask again."""
    stream = Stream()
    log, _ = logger(stream)
    asked = []
    real = asyncio._get_running_loop

    def counted() -> asyncio.AbstractEventLoop | None:
        asked.append(1)
        return real()

    async def run() -> None:
        monkeypatch.setattr(asyncio, "_get_running_loop", counted)  # type: ignore[attr-defined]
        for i in range(5):
            log.info("line %d", i)
        await asyncio.sleep(0)
        log.info("next")
        await asyncio.sleep(0)

    asyncio.run(run())
    assert stream.writes == ["line 0\nline 1\nline 2\nline 3\nline 4\n", "next\n"]
    assert len(asked) == 2


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


def test_an_event_line_said_directly_is_the_line_logging_writes(tmp_path: object) -> None:
    """say(): without a LogRecord, the same text as logging's own path."""
    import re

    from bootsvc.log_handler import LOG_FORMAT, SecondFormatter, say

    stream = Stream()
    log = logging.getLogger("test.log_handler.say")
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = LoopBatchedHandler(stream)  # type: ignore[arg-type]
    handler.setFormatter(SecondFormatter(LOG_FORMAT))
    log.addHandler(handler)
    assert say(log, logging.WARNING, "event=dhcp.ack mac=52:54:00:00:00:01")
    log.warning("%s", "event=dhcp.ack mac=52:54:00:00:00:01")
    direct, usual = stream.writes
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    assert re.fullmatch(stamp + r"WARNING test\.log_handler\.say event=dhcp\.ack mac=52:54:00:00:00:01\n", direct)
    assert direct[23:] == usual[23:]  # past the time, the same bytes
    # a second handler (a test's capture) or a filter: logging's own path
    other = logging.Handler()
    log.addHandler(other)
    assert not say(log, logging.WARNING, "x")
    log.removeHandler(other)
    log.addFilter(lambda record: True)
    assert not say(log, logging.WARNING, "x")
    log.removeHandler(handler)
