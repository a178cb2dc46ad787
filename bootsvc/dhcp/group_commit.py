"""Group commit of DHCP leases: ACKs leave only once the leases decided
before them are on disk (RFC 2131 §4.3.1: the server records the binding
before it acknowledges), with one fsync for many leases.

The responder decides in memory; the lease store collects the writes.
A DHCP service hands each batch's ACKs to :meth:`GroupCommit.send_after`
and calls :meth:`GroupCommit.flush` at the end of the batch. If no commit
is under way, the writes pending then are taken and written in a thread of
their own (``LeaseStore.write``: one transaction, one fsync) while the
loop goes on reading and deciding; when it is done, the ACKs held for it
are sent. Whatever was decided meanwhile waits for the next commit, which
takes all of it at once: the slower the disk, the bigger the group. If
the write fails (or the process dies first), the held ACKs are never sent
and the clients ask again.

There is one group commit per lease store (:func:`group_commit`), shared
by the services that decide with it (port 67 and the proxyDHCP port): an
ACK must wait for the commit that holds its lease, whoever started it.

OFFERs, NAKs and the rest go at once: they promise nothing a crash could
break (an offer is held in memory only; after a restart the client is
offered again).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import weakref
from collections.abc import Callable

from .leases import LeaseStore, Writes

Address = tuple[str, int]
Datagram = tuple[bytes, Address]  # a reply's bytes and where it goes


Send = Callable[[list[Datagram]], None]  # a service's socket
Failed = Callable[[BaseException, int], None]  # a write failed: why, how many ACKs were not sent
Held = list[tuple[Send, list[Datagram]]]


class GroupCommit:
    def __init__(self, leases: LeaseStore) -> None:
        self.leases = leases
        self.held: Held = []  # ACKs decided since the running commit began, with their socket
        self.failed: Failed = lambda error, acks: None  # told of a write that failed
        self.loop: asyncio.AbstractEventLoop | None = None  # None: write in the caller's thread
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._users = 0
        self._running: asyncio.Future[None] | None = None
        self.commits = 0  # transactions written (each one fsync)
        self.grouped = 0  # writes in them

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """A service starts: commit in a thread beside ``loop`` from now on."""
        self._users += 1
        self.loop = loop
        if self._writer is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dhcp-commit")

    def send_after(self, send: Send, acks: list[Datagram]) -> None:
        """``send(acks)`` once everything decided until now is durable."""
        if acks:
            self.held.append((send, acks))

    def flush(self) -> None:
        """The end of a batch: start a commit unless one is under way (the
        next one starts when it ends)."""
        if self._running is not None:
            return
        writes, held = self.leases.take(), self.held
        self.held = []
        if not writes:
            _send(held)  # nothing of theirs to wait for
            return
        if self.loop is None or self._writer is None:
            self._write_now(writes, held)
            return
        self._running = self.loop.run_in_executor(self._writer, self.leases.write, writes)
        self._running.add_done_callback(lambda done: self._written(done, len(writes), held))

    def _write_now(self, writes: Writes, held: Held) -> None:
        try:
            self.leases.write(writes)
        except Exception as e:  # a failing store: no ACK for what it did not keep
            self._fail(held, e)
            return
        self._count(len(writes))
        _send(held)

    def _written(self, done: asyncio.Future[None], writes: int, held: Held) -> None:
        self._running = None
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        if error is not None:
            self._fail(held, error)
        else:
            self._count(writes)
            _send(held)
        self.flush()  # what was decided meanwhile: the next group

    def _fail(self, held: Held, error: BaseException) -> None:
        self.failed(error, sum(len(acks) for _, acks in held))

    def _count(self, writes: int) -> None:
        self.commits += 1
        self.grouped += writes

    async def stop(self) -> None:
        """A service stops: the running commit ends (its ACKs are sent) and,
        after the last service, what is left is written here and the thread
        goes."""
        while self._running is not None:  # its callback may start the next group
            await asyncio.wait([self._running])
        self._users = max(0, self._users - 1)
        if self._users:
            return
        self.loop = None
        self.flush()
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None


def _send(held: Held) -> None:
    for send, acks in held:
        send(acks)


_GROUPS: weakref.WeakKeyDictionary[LeaseStore, GroupCommit] = weakref.WeakKeyDictionary()


def group_commit(leases: LeaseStore, failed: Failed) -> GroupCommit:
    """The one group commit of ``leases``, telling ``failed`` of a write
    that fails (the services of one store share one responder: one report
    is enough)."""
    group = _GROUPS.get(leases)
    if group is None:
        group = _GROUPS[leases] = GroupCommit(leases)
    group.failed = failed
    return group
