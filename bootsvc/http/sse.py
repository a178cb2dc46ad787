"""``GET /api/events``: the flight recorder's changes as server-sent events
(text/event-stream), for the web page's live table.

Each change of a boot is one ``boot`` event whose data is that boot's
summary (JSON on one line); a comment every ``KEEPALIVE`` seconds keeps
proxies from closing a quiet stream. Bounded on every side:

- at most ``MAX_STREAMS`` streams, ``MAX_PER_SOURCE`` from one address (a
  stream holds a connection for as long as the page is open);
- each stream has at most ``QUEUE`` events waiting; a client that does not
  read falls behind, and is dropped rather than buffered for: the page's
  EventSource reconnects and fetches the table again;
- changes are coalesced by MAC: a boot that moved ten steps between two
  turns of the loop is sent once, as it is now.

The recorder tells of changes from whichever thread emitted the event (the
TFTP sender has its own): :meth:`EventHub.told` only notes the MAC under a
lock and asks the loop to send, once; the summaries are made on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from .api import BootViews
from .message import stream_head

MAX_STREAMS = 16
MAX_PER_SOURCE = 4
QUEUE = 64  # events a stream may have waiting before it counts as not reading
KEEPALIVE = 15.0  # seconds between comments on a quiet stream
MAX_UNSENT = 256 * 1024  # bytes the transport may hold for a client before it counts as not reading
RETRY_MS = 3000  # how soon a browser reconnects after a drop
CONTENT_TYPE = "text/event-stream; charset=utf-8"
COMMENT = b": keepalive\n\n"


def sse_event(name: str, data: bytes) -> bytes:
    """One event (WHATWG HTML, server-sent events): ``data`` is one line
    (orjson never writes a raw newline), so one ``data:`` field."""
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


@dataclass(eq=False)
class Stream:
    source: str
    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(QUEUE))
    dropped: bool = False  # fell behind: the next thing it reads is the end


class EventHub:
    def __init__(self, views: BootViews, clock: Callable[[], float] = time.time,
                 max_streams: int = MAX_STREAMS, max_per_source: int = MAX_PER_SOURCE) -> None:
        self.views = views
        self.clock = clock
        self.max_streams = max_streams
        self.max_per_source = max_per_source
        self.streams: set[Stream] = set()
        self.dropped = 0  # streams let go for not reading
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.views.watch(self.told)

    def stop(self) -> None:
        self.views.unwatch(self.told)
        for s in self.streams:
            self._drop(s)

    def open(self, source: str) -> Stream | str:
        """A new stream for a client at ``source``, or why not."""
        if len(self.streams) >= self.max_streams:
            return "too many event streams"
        if sum(1 for s in self.streams if s.source == source) >= self.max_per_source:
            return "too many event streams from your address"
        stream = Stream(source)
        self.streams.add(stream)
        return stream

    def close(self, stream: Stream) -> None:
        self.streams.discard(stream)

    def told(self, mac: str) -> None:
        """A boot changed (any thread): send it soon, once."""
        if not self.streams or self._loop is None:
            return  # nobody watching: the event path pays one check
        with self._lock:
            first = not self._pending
            self._pending.add(mac)
        if first:
            self._loop.call_soon_threadsafe(self._send)

    def _send(self) -> None:
        with self._lock:
            macs, self._pending = self._pending, set()
        now = self.clock()
        for mac in macs:
            summary = self.views.summary(mac, now)
            if summary is not None:
                self.publish(sse_event("boot", orjson.dumps(summary, default=str)))

    def publish(self, frame: bytes) -> None:
        for s in list(self.streams):
            if s.dropped:
                continue
            try:
                s.queue.put_nowait(frame)
            except asyncio.QueueFull:
                self._drop(s)

    def _drop(self, stream: Stream) -> None:
        """End a stream at its next read, whatever is waiting in it."""
        stream.dropped = True
        self.dropped += 1
        while not stream.queue.empty():
            stream.queue.get_nowait()
        stream.queue.put_nowait(None)


async def pump(stream: Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               send_timeout: float) -> int:
    """Write a stream's events to its client until it goes away, falls
    behind or the hub drops it; the bytes sent. A client that stops reading
    is a ConnectionError (its slot is freed either way)."""
    sent = 0
    gone = asyncio.ensure_future(reader.read(1024))  # a client says nothing more: EOF is its leaving
    try:
        frame: bytes | None = stream_head(CONTENT_TYPE) + f"retry: {RETRY_MS}\n\n".encode()
        while frame is not None and not gone.done():
            writer.write(frame)
            sent += len(frame)
            transport = writer.transport
            if transport.get_write_buffer_size() > MAX_UNSENT:
                raise ConnectionError("the client stopped reading")
            async with asyncio.timeout(send_timeout):
                await writer.drain()
            frame = await _next(stream, gone)
    except TimeoutError:
        raise ConnectionError("the client stopped reading") from None
    finally:
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await gone
    return sent


async def _next(stream: Stream, gone: asyncio.Future[bytes]) -> bytes | None:
    """The next frame: an event, a keepalive after a quiet while, or None
    at the end (dropped, or the client left)."""
    get = asyncio.ensure_future(stream.queue.get())
    done, _ = await asyncio.wait({get, gone}, timeout=KEEPALIVE, return_when=asyncio.FIRST_COMPLETED)
    if get in done:
        return get.result()
    get.cancel()
    return None if gone in done else COMMENT
