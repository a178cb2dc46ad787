"""The log handler of ``bootsvc serve``: lines written by the event loop's
thread are gathered and written once per loop iteration, one write for a
whole batch of DHCP requests (two or three lines each) instead of one
write system call per line (docs/benchmarks.md, DHCP). Lines from other
threads, or with no loop running, are written at once, after those
gathered, so the order holds."""

from __future__ import annotations

import asyncio
import logging
from typing import TextIO


class LoopBatchedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a write is due on

    def emit(self, record: logging.LogRecord) -> None:
        # (logging.Handler.handle holds self.lock here)
        try:
            line = self.format(record) + self.terminator
        except Exception:  # logging's own rule: a bad record is reported, never raised
            self.handleError(record)
            return
        self._pending.append(line)
        loop = asyncio._get_running_loop()  # the C accessor: None off the loop's thread
        if loop is None:
            self._write()
        elif self._flush_on is not loop:
            self._flush_on = loop
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
