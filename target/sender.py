"""Ordered, non-blocking output of one connection, with zero-copy file data.

Items are sent strictly in the order they were queued: byte strings go out
with ``sendmsg`` (gathered), :class:`~target.backend.FileExtent` items with
``os.sendfile`` straight from the page cache, :class:`~target.backend.Zeros`
from one shared zero buffer. When the socket is full the rest waits for the
event loop's writability callback; nothing here ever blocks the loop on the
socket. File data is expected in the page cache (see
:func:`target.pagecache.warm`), so ``sendfile`` does not wait on the disk.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import deque

from .backend import FileExtent, Segment, Zeros

_ZERO = memoryview(bytes(1 << 18))
_IOV_MAX = 512
# Queue more than this and the connection stops reading new commands until
# the initiator has taken some data: a slow reader cannot make us buffer its
# whole disk.
HIGH_WATER = 32 << 20
FLUSH_NOW = 256 << 10


class Sender:
    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        self.queue: deque[Segment] = deque()
        self.queued_bytes = 0
        self.waiting = False  # a writability callback is registered
        self.flush_scheduled = False
        # set while the connection handles a batch of input; it flushes after
        self.corked = False
        self.closed = False
        self.error: OSError | None = None
        self._drained: asyncio.Future[None] | None = None

    def send(self, items: list[Segment]) -> None:
        """Queue ``items``; they leave on the next turn of the event loop,
        together with everything else queued until then (one sendmsg for
        many responses), or at once when a lot is queued."""
        if self.closed:
            return
        self.queue.extend(items)
        self.queued_bytes += sum(map(len, items))
        if self.waiting or self.flush_scheduled or self.corked:
            return
        if self.queued_bytes >= FLUSH_NOW:
            self._flush()
        else:
            self.flush_scheduled = True
            self.loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self.flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        """Send what is queued now, unless a writability wait is pending."""
        if self.queue and not self.waiting and not self.closed:
            self._flush()

    @property
    def congested(self) -> bool:
        return self.queued_bytes > HIGH_WATER

    async def drain(self) -> None:
        """Wait until everything queued is sent (or the socket failed)."""
        if not self.queue or self.closed:
            return
        if self._drained is None:
            self._drained = self.loop.create_future()
        await asyncio.shield(self._drained)

    def close(self) -> None:
        if self.waiting:
            self.loop.remove_writer(self.fd)
            self.waiting = False
        self.closed = True
        self.queue.clear()
        self._wake()

    def _wake(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def _flush(self) -> None:
        q = self.queue
        try:
            while q:
                head = q[0]
                if isinstance(head, FileExtent):
                    sent = os.sendfile(self.fd, head.fd, head.offset, head.length)
                    if sent == 0:  # the file is shorter than the extent: send zeros
                        q[0] = Zeros(head.length)
                        continue
                    self.queued_bytes -= sent
                    if sent < head.length:
                        q[0] = FileExtent(head.fd, head.offset + sent, head.length - sent)
                        break
                    q.popleft()
                    continue
                iov = _gather(q)
                sent = self.sock.sendmsg(iov)
                self.queued_bytes -= sent
                _consume(q, sent)
                if sent < sum(len(b) for b in iov):
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            self.error = e
            self.close()
            return
        if q:
            if not self.waiting:
                self.loop.add_writer(self.fd, self._on_writable)
                self.waiting = True
        else:
            if self.waiting:
                self.loop.remove_writer(self.fd)
                self.waiting = False
            self._wake()

    def _on_writable(self) -> None:
        self._flush()


def _gather(q: deque[Segment]) -> list[bytes | memoryview]:
    """The leading in-memory items of the queue as an iovec."""
    iov: list[bytes | memoryview] = []
    for item in q:
        if isinstance(item, FileExtent) or len(iov) >= _IOV_MAX:
            break
        if isinstance(item, Zeros):
            n = item.length
            while n > 0 and len(iov) < _IOV_MAX:
                iov.append(_ZERO[:min(n, len(_ZERO))])
                n -= len(_ZERO)
            if n > 0:
                break
        else:
            iov.append(item)
    return iov


def _consume(q: deque[Segment], sent: int) -> None:
    """Drop ``sent`` bytes from the front of the queue."""
    while sent:
        head = q[0]
        n = len(head)
        if sent >= n:
            q.popleft()
            sent -= n
        elif isinstance(head, Zeros):
            q[0] = Zeros(n - sent)
            return
        else:
            q[0] = memoryview(head)[sent:]  # type: ignore[arg-type]
            return
