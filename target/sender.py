"""Ordered, non-blocking output of one connection, with zero-copy file data.

Items are sent strictly in the order they were queued: byte strings go out
with ``sendmsg`` (gathered), :class:`~target.backend.FileExtent` items with
``os.sendfile`` straight from the page cache, :class:`~target.backend.Zeros`
from one shared zero buffer. File data is expected in the page cache (see
:func:`target.pagecache.warm`), so ``sendfile`` does not wait on the disk.

Two ways out, the same order either way:

- on the event loop (login, Discovery): sent when queued, the rest when the
  loop says the socket is writable; nothing ever blocks the loop;
- on the connection's own writer thread (:meth:`Sender.offload`, a Normal
  session in Full Feature Phase): the loop hands over each batch of
  responses and goes on decoding and running commands while the kernel
  copies the last batch into the socket. ``sendmsg`` and ``sendfile`` drop
  the GIL, and on loopback they also carry the peer's receive path, about
  40 % of the loop's time under random 4 KiB reads (bench/iscsi_perf.py).
"""

from __future__ import annotations

import asyncio
import os
import queue
import select
import socket
import threading
from collections import deque

from .backend import FileExtent, Segment, Zeros

_ZERO = memoryview(bytes(1 << 18))
_IOV_MAX = 512
# Queue more than this and the connection stops reading new commands until
# the initiator has taken some data: a slow reader cannot make us buffer its
# whole disk.
HIGH_WATER = 32 << 20
FLUSH_NOW = 256 << 10
# With a writer thread, a batch of input is answered in parts of about this
# size: the thread sends the first responses while the loop runs the next
# commands, and the initiator gets them sooner (with QD32 the whole window
# was answered in one piece, and the initiator and we took turns waiting).
HAND_OVER = 32 << 10
# how long the writer thread waits for room in the socket before it looks
# whether the connection was closed meanwhile
_POLL_MS = 500
_STOP = None


class Sender:
    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        self.queue: deque[Segment] = deque()
        self.queued_bytes = 0  # queued since the start; what left is ``sent`` (threaded) or subtracted
        self.waiting = False  # a writability callback is registered
        self.flush_scheduled = False
        # set while the connection handles a batch of input; it flushes after
        self.corked = False
        self.closed = False
        self.error: OSError | None = None
        self._drained: asyncio.Future[None] | None = None
        self._writer: _Writer | None = None
        self.held = 0  # bytes queued and not yet handed to the writer thread

    def offload(self) -> None:
        """From now on send on a thread of this connection's own (see the
        module docstring). What is queued goes first, in order."""
        if self._writer is not None or self.closed:
            return
        if self.waiting:
            self.loop.remove_writer(self.fd)
            self.waiting = False
        self._writer = _Writer(self)
        self._writer.start()
        if self.queue:
            self._flush()

    def send(self, items: list[Segment]) -> None:
        """Queue ``items``; they leave on the next turn of the event loop,
        together with everything else queued until then (one sendmsg for
        many responses), or at once when a lot is queued."""
        if self.closed:
            return
        self.queue.extend(items)
        n = sum(map(len, items))
        self.queued_bytes += n
        if self._writer is not None:
            self.held += n
            if self.held >= HAND_OVER:
                self._flush()
                return
        if self.waiting or self.flush_scheduled or self.corked:
            return
        if self.queued_bytes - self.sent >= FLUSH_NOW:
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
    def sent(self) -> int:
        """Bytes the writer thread has sent (0 while sending on the loop)."""
        return self._writer.sent if self._writer is not None else 0

    @property
    def empty(self) -> bool:
        """Nothing is queued or on its way out."""
        return not self.queue and (self._writer is None or self._writer.idle)

    @property
    def congested(self) -> bool:
        return self.queued_bytes - self.sent > HIGH_WATER

    async def drain(self) -> None:
        """Wait until everything queued is sent (or the socket failed)."""
        if self._drained is None:
            self._drained = self.loop.create_future()
        # set the future first, then look: the writer thread looks at it
        # after it finished a batch, so one of the two sees the other
        if self.empty or self.closed:
            self._wake()
            return
        await asyncio.shield(self._drained)

    def close(self) -> None:
        if self.waiting:
            self.loop.remove_writer(self.fd)
            self.waiting = False
        self.closed = True
        self.queue.clear()
        if self._writer is not None:
            self._writer.stop()
        self._wake()

    def _wake(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def _written(self) -> None:
        """On the loop, from the writer thread: it has sent everything handed over."""
        if self._writer is not None and self._writer.error is not None and not self.closed:
            self.error = self._writer.error
            self.close()
        elif self._drained is not None and self.empty:
            self._wake()

    def _flush(self) -> None:
        q = self.queue
        writer = self._writer
        if writer is not None:
            if writer.idle and self.held < HAND_OVER:
                # a few responses (QD1, the boot's case) leave from here: a
                # thread hand-over would cost more than the send itself
                try:
                    n = write(self.sock, q)
                except OSError as e:
                    self.error = e
                    self.close()
                    return
                self.queued_bytes -= n
            if q:
                writer.hand_over(list(q))
                q.clear()
            self.held = 0
            return
        try:
            self.queued_bytes -= write(self.sock, q)
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


class _Writer(threading.Thread):
    """The thread that sends a connection's batches in the order handed over.

    It writes through its own duplicate of the socket's descriptor, closed
    when it ends: the loop may close the connection's socket (and the number
    be reused by a new connection) while a send is still under way here."""

    def __init__(self, sender: Sender) -> None:
        super().__init__(name=f"iscsi-send-{sender.fd}", daemon=True)
        self.sender = sender
        self.loop = sender.loop
        self.sock = socket.socket(fileno=os.dup(sender.fd))
        self.batches: queue.SimpleQueue[list[Segment] | None] = queue.SimpleQueue()
        self.handed = 0  # batches handed over (by the loop)
        self.done = 0  # batches sent (by this thread)
        self.sent = 0
        self.error: OSError | None = None
        self.stopped = False

    @property
    def idle(self) -> bool:
        return self.done == self.handed

    def hand_over(self, batch: list[Segment]) -> None:
        self.handed += 1
        self.batches.put(batch)

    def stop(self) -> None:
        self.stopped = True
        self.batches.put(_STOP)

    def run(self) -> None:
        try:
            self._run()
        finally:
            self.sock.close()

    def _run(self) -> None:
        q: deque[Segment] = deque()
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLOUT)
        while not self.stopped:
            items = self.batches.get()
            n = 1
            while items is not _STOP:  # everything handed over meanwhile leaves together
                try:
                    more = self.batches.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    return
                items += more
                n += 1
            if items is _STOP:
                return
            try:
                self._send(items, q, poller)
            except OSError as e:
                self.error = e
                self.stopped = True
            self.done += n
            if self.error is not None or (self.sender._drained is not None and self.batches.empty()):
                try:
                    self.loop.call_soon_threadsafe(self.sender._written)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    return

    def _send(self, items: list[Segment], q: deque[Segment], poller: select.poll) -> None:
        """Send ``items``; while this thread holds the GIL the loop waits,
        so the common case (only bytes, and the socket takes them all) is
        one ``sendmsg`` and nothing else."""
        if len(items) <= _IOV_MAX:
            try:
                sent = self.sock.sendmsg(items)  # type: ignore[arg-type]
            except (TypeError, BlockingIOError, InterruptedError):  # TypeError: file data among them
                sent = 0
            self.sent += sent
            if sent and sent == sum(map(len, items)):
                return
            q.extend(items)
            _consume(q, sent)
        else:
            q.extend(items)
        while q and not self.stopped:
            self.sent += write(self.sock, q)
            if q:
                poller.poll(_POLL_MS)


def write(sock: socket.socket, q: deque[Segment]) -> int:
    """Send from the front of ``q`` until it is empty or the socket is full;
    what was sent leaves the queue. The byte count sent; OSErrors other
    than a full socket are raised."""
    fd = sock.fileno()
    total = 0
    try:
        while q:
            head = q[0]
            if isinstance(head, FileExtent):
                sent = os.sendfile(fd, head.fd, head.offset, head.length)
                if sent == 0:  # the file is shorter than the extent: send zeros
                    q[0] = Zeros(head.length)
                    continue
                total += sent
                if sent < head.length:
                    q[0] = FileExtent(head.fd, head.offset + sent, head.length - sent)
                    break
                q.popleft()
                continue
            iov = _gather(q)
            sent = sock.sendmsg(iov)
            total += sent
            _consume(q, sent)
            if sent < sum(map(len, iov)):
                break
    except (BlockingIOError, InterruptedError):
        pass
    return total


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
