"""The log of ``bootsvc serve``, made cheap for a DHCP storm (two or
three event lines per exchange; docs/benchmarks.md, DHCP).

- :class:`LoopBatchedHandler`: lines written by the event loop's thread
  are gathered and written once per loop iteration, one write for a batch
  of requests instead of a system call per line. Lines from other threads,
  or with no loop running, are written at once, after those gathered, so
  the order holds.
- :func:`say`: an event's line straight to that handler when it is the
  only place the line would go (no filters, no other handler): the same
  text logging's own path gives, without a LogRecord and the handler
  chain: 12 % of an exchange's instructions through serve's wiring
  (bench/dhcp_cost.py --serve --batch 16: 0.893 to 0.782 M).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class SecondFormatter(logging.Formatter):
    """logging's own format, the date and time made once a second (a DHCP
    storm logs thousands of lines a second, each formatted the same up to
    the milliseconds)."""

    _second = -1
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self.stamp(record.created)

    def stamp(self, created: float) -> str:
        """``created`` as asctime shows it: ``2026-12-05 15:17:03,042``."""
        second = int(created)
        if second != self._second:
            self._text = time.strftime(self.default_time_format, self.converter(created))
            self._second = second
        return self.default_msec_format % (self._text, int((created - second) * 1000))  # type: ignore[operator]


class LoopBatchedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a write is due on
        self._flush_thread = 0  # the thread that runs it

    def emit(self, record: logging.LogRecord) -> None:
        # (logging.Handler.handle holds self.lock here)
        try:
            line = self.format(record) + self.terminator
        except Exception:  # logging's own rule: a bad record is reported, never raised
            self.handleError(record)
            return
        self._add(line)

    def _add(self, line: str) -> None:
        self._pending.append(line)
        due = self._flush_on
        if due is not None and self._flush_thread == threading.get_ident() and due.is_running():
            # this thread runs the loop the write is due on: nothing to ask.
            # (Python 3.11's running-loop accessor makes a getpid system call,
            # 11 % of serve's time per DHCP event line.)
            return
        loop = asyncio._get_running_loop()  # the C accessor: None off the loop's thread
        if loop is None:
            self._write()
        elif due is not loop:
            self._flush_on = loop
            self._flush_thread = threading.get_ident()
            loop.call_soon(self._due)

    def _due(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._flush_on = None
            self._write()

    def _write(self) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # a closed or full stream: as StreamHandler, reported and not raised
            self.handleError(logging.makeLogRecord({"msg": text}))

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()
            super().flush()


def say(logger: logging.Logger, level: int, text: str) -> bool:
    """``text`` at ``level`` on ``logger`` (already known to be enabled),
    written as LOG_FORMAT shows it, if the only handler it would reach is a
    LoopBatchedHandler with a SecondFormatter and nothing filters on the
    way; False otherwise (the caller logs it the usual way)."""
    handler = None
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters:
            return False
        for h in node.handlers:
            if handler is not None:
                return False  # a second handler (a test's capture, a file): logging's own path
            handler = h
        node = node.parent if node.propagate else None
    if type(handler) is not LoopBatchedHandler or handler.filters or level < handler.level:
        return False
    formatter = handler.formatter
    if type(formatter) is not SecondFormatter or formatter._fmt != LOG_FORMAT:
        return False
    line = f"{formatter.stamp(time.time())} {logging.getLevelName(level)} {logger.name} {text}\n"
    with handler.lock:  # type: ignore[union-attr]
        handler._add(line)
    return True
