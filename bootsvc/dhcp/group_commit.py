"""Group commit of DHCP leases: ACKs leave only once the leases decided
before them are on disk (RFC 2131 §4.3.1: the server records the binding
before it acknowledges), with one fsync for many leases.

The responder decides in memory; the lease store collects the writes.
A DHCP service hands each batch's ACKs to :meth:`GroupCommit.send_after`
and calls :meth:`GroupCommit.flush` at the end of the batch. If no commit
is under way, the writes pending then become one transaction, its
statements run on the loop (``LeaseStore.begin``: pages in memory, no I/O
to wait for) and its COMMIT, the one fsync, in a thread of its own
(``LeaseStore.finish``) while the loop goes on reading and deciding; when
it is done, the ACKs held for it are sent. Whatever was decided meanwhile
waits for the next commit, which takes all of it at once: the slower the
disk, the bigger the group. If the write fails (or the process dies
first), the held ACKs are never sent and the clients ask again. Writes
no ACK waits for (an unknown MAC seen) join the next group, or are written
WRITE_LATER on.

There is one group commit per lease store (:func:`group_commit`), shared
by the services that decide with it (port 67 and the proxyDHCP port): an
ACK must wait for the commit that holds its lease, whoever started it.

OFFERs, NAKs and the rest go at once: they promise nothing a crash could
break (an offer is held in memory only; after a restart the client is
offered again).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import weakref
from collections.abc import Callable

from .leases import LeaseStore, Writes

Address = tuple[str, int]
Datagram = tuple[bytes, Address]  # a datagram's bytes, and where it comes from or goes


# an ACK held: its bytes, where it goes, and the fields of the event said once it has left
Ack = tuple[bytes, Address, "dict[str, object] | None"]
Send = Callable[[list[Ack]], None]  # a service's socket
Failed = Callable[[BaseException, list[Ack]], None]  # a write failed: why, and the ACKs not sent
Held = list[tuple[Send, list[Ack]]]


WRITE_LATER = 0.05  # seconds a write no ACK waits for may wait to join the next group


class GroupCommit:
    def __init__(self, leases: LeaseStore) -> None:
        self.leases = leases
        self.held: Held = []  # ACKs decided since the running commit began, with their socket
        self.failed: Failed = lambda error, acks: None  # told of a write that failed
        self.loop: asyncio.AbstractEventLoop | None = None  # None: write in the caller's thread
        self.commits = 0  # transactions written (each one fsync)
        self.grouped = 0  # writes in them
        self._users = 0
        self._queue: queue.SimpleQueue[bool] = queue.SimpleQueue()  # to the writer thread: COMMIT, or end
        self._writer: threading.Thread | None = None
        self._running: tuple[int, Held] | None = None  # the commit under way: its writes, its ACKs
        self._later: asyncio.TimerHandle | None = None  # a commit for writes no ACK waits for
        self._idle: asyncio.Future[None] | None = None  # stop() waiting for the running commit

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """A service starts: commit in a thread beside ``loop`` from now on."""
        self._users += 1
        self.loop = loop
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_all, name="dhcp-commit", daemon=True)
            self._writer.start()

    def send_after(self, send: Send, acks: list[Ack]) -> None:
        """``send(acks)`` once everything decided until now is durable."""
        if acks:
            self.held.append((send, acks))

    def flush(self) -> None:
        """The end of a batch: a commit for the ACKs held, unless one is
        under way (the next one starts when it ends). Writes no ACK waits
        for (an unknown MAC seen, an offer let go) join the next group, or
        are written WRITE_LATER on: no fsync of their own per batch."""
        if self._running is not None:
            return
        if self.held or self.loop is None:
            self._commit()
        elif self.leases.unwritten and self._later is None:
            self._later = self.loop.call_later(WRITE_LATER, self._due)

    def _due(self) -> None:
        self._later = None
        if self._running is None:
            self._commit()

    def _commit(self) -> None:
        if self._later is not None:
            self._later.cancel()
            self._later = None
        writes, held = self.leases.take(), self.held
        self.held = []
        if not writes:
            _send(held)  # nothing of theirs to wait for
        elif self.loop is None or self._writer is None:
            self._write_now(writes, held)
        else:
            try:
                self.leases.begin(writes)  # the statements here, without I/O to wait for
            except Exception as e:  # a failing store: no ACK for what it did not keep
                self._fail(held, e)
                return
            self._running = (len(writes), held)
            self._queue.put(True)  # the COMMIT (the fsync) there

    def _write_all(self) -> None:
        """The writer thread: each group's COMMIT (the GIL is free while
        SQLite writes and fsyncs), then back to the loop."""
        while self._queue.get():
            error: BaseException | None = None
            try:
                self.leases.finish()
            except Exception as e:  # a failing store: said on the loop, no ACK sent
                error = e
            loop = self.loop
            if loop is not None:
                loop.call_soon_threadsafe(self._written, error)

    def _write_now(self, writes: Writes, held: Held) -> None:
        try:
            self.leases.write(writes)
        except Exception as e:  # a failing store: no ACK for what it did not keep
            self._fail(held, e)
            return
        self._count(len(writes))
        _send(held)

    def _written(self, error: BaseException | None) -> None:
        assert self._running is not None
        writes, held = self._running
        self._running = None
        if error is not None:
            self._fail(held, error)
        else:
            self._count(writes)
            _send(held)
        self.flush()  # what was decided meanwhile: the next group
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _fail(self, held: Held, error: BaseException) -> None:
        self.failed(error, [ack for _, acks in held for ack in acks])

    def _count(self, writes: int) -> None:
        self.commits += 1
        self.grouped += writes

    async def stop(self) -> None:
        """A service stops: the running commit ends (its ACKs are sent) and,
        after the last service, what is left is written here and the thread
        ends."""
        while self._running is not None and self.loop is not None:  # its end may start the next group
            self._idle = self.loop.create_future()
            await self._idle
        self._users = max(0, self._users - 1)
        if self._users:
            return
        self.loop = None
        self._commit()
        if self._writer is not None:
            self._queue.put(False)
            self._writer.join(timeout=30)
            self._writer = None


def _send(held: Held) -> None:
    for send, acks in held:
        send(acks)


# by the store's id: a group holds its store, so while it lives the id is its store's
_GROUPS: weakref.WeakValueDictionary[int, GroupCommit] = weakref.WeakValueDictionary()


def group_commit(leases: LeaseStore, failed: Failed) -> GroupCommit:
    """The one group commit of ``leases``, telling ``failed`` of a write
    that fails (the services of one store share one responder: one report
    is enough)."""
    group = _GROUPS.get(id(leases))
    if group is None or group.leases is not leases:
        group = _GROUPS[id(leases)] = GroupCommit(leases)
    group.failed = failed
    return group
