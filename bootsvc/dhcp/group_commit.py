"""Group commit of DHCP leases: ACKs leave only once the leases decided
before them are on disk (RFC 2131 §4.3.1: the server records the binding
before it acknowledges), with one fdatasync for many leases.

The responder decides in memory; the lease store collects the writes.
A DHCP service hands each batch's ACKs to :meth:`GroupCommit.send_after`
and calls :meth:`GroupCommit.flush` at the end of the batch, which hands
the batch's writes and ACKs to a writer thread at once (no timer). The
writer takes everything handed over since its last group, makes it
durable with one append and fdatasync (``LeaseStore.write``; the GIL is
free meanwhile), and hands the group's ACKs to the socket itself, at once;
the loop then counts them and says their dhcp.ack events (the event
subscribers, the fleet and the flight recorder, are the loop's). The loop
goes on reading and deciding while the disk works.
Whatever is handed over meanwhile is the next group, taken as soon as the
write ends: the slower the disk, the bigger the group. If the write fails
(or the process dies first), the held ACKs are never sent and the clients
ask again. Writes no ACK waits for (an unknown MAC seen) join the next
group, or are handed over WRITE_LATER on.

There is one group commit per lease store (:func:`group_commit`), shared
by the services that decide with it (port 67 and the proxyDHCP port): an
ACK must wait for the commit that holds its lease, whoever started it.

OFFERs, NAKs and the rest go at once: they promise nothing a crash could
break (an offer is held in memory only; after a restart the client is
offered again).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

from .leases import LeaseStore, Writes

Address = tuple[str, int]
Datagram = tuple[bytes, Address]  # a datagram's bytes, and where it comes from or goes


# an ACK held: its bytes, where it goes, and the fields of the event said once it has left
Ack = tuple[bytes, Address, "dict[str, object] | None"]
Failed = Callable[[BaseException, list[Ack]], None]  # a write failed: why, and the ACKs not sent (on the loop)


class AckSender(Protocol):
    """The service whose socket an ACK leaves by."""

    def send_acks(self, acks: list[Ack]) -> list[bool]:
        """Hand them to the socket (from the writer's thread): which ones it took."""
        ...

    def acks_sent(self, acks: list[Ack], sent: list[bool]) -> None:
        """Count them and say their events (on the loop)."""
        ...


Held = list[tuple[AckSender, list[Ack]]]


WRITE_LATER = 0.05  # seconds a write no ACK waits for may wait to join the next group


class GroupCommit:
    def __init__(self, leases: LeaseStore) -> None:
        self.leases = leases
        self.held: Held = []  # ACKs handed over, not yet taken by the writer, with their socket
        self.failed: Failed = lambda error, acks: None  # told of a write that failed (in the writer's thread)
        self.loop: asyncio.AbstractEventLoop | None = None  # None: write in the caller's thread
        self.commits = 0  # groups written (each one fdatasync)
        self.grouped = 0  # writes in them
        self._users = 0
        self._batch: Held = []  # the ACKs of the batch being decided (the loop's, until flush)
        self._writes: Writes = []  # handed over with self.held
        self._wake = threading.Condition()  # guards held, _writes, _running, _ending
        self._running: bool | None = None  # not None: the writer has work handed over or under way
        self._ending = False
        self._writer: threading.Thread | None = None
        self._later: asyncio.TimerHandle | None = None  # a hand-over for writes no ACK waits for
        # write a batch in the loop's own thread while the writer is idle
        # (DHCP's worker process, whose loop has nothing else to do: no
        # thread to wake before the fdatasync, none to wake the loop after).
        # Measured in the worker (docs/dhcp-scaling.md): always in place
        # beats the writer thread at 1000/s (0.32-0.35 against 0.60 ms
        # REQUEST->ACK) and at 3000/s (0.85-0.93 against 1.97 ms), and a
        # mix of the two (a time budget for the loop's writes) is worse than
        # either: the writer's GIL hand-offs cost more than the loop's wait.
        self.inline_when_idle = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """A service starts: commit in a thread beside ``loop`` from now on."""
        self._users += 1
        self.loop = loop
        if self._writer is None:
            self._ending = False
            self._writer = threading.Thread(target=self._write_all, name="dhcp-commit", daemon=True)
            self._writer.start()

    def send_after(self, sender: AckSender, acks: list[Ack]) -> None:
        """``acks`` by ``sender``'s socket once everything decided until now is durable."""
        if acks:
            self._batch.append((sender, acks))

    def flush(self) -> None:
        """The end of a batch: its writes and ACKs to the writer, now.
        Writes no ACK waits for (an unknown MAC seen, an offer let go) go
        with the next batch that has ACKs, or WRITE_LATER on: no fdatasync
        of their own per batch."""
        if self.loop is None or self._writer is None or (self._batch and self.inline_when_idle
                                                           and self._running is None and not self.held):
            self._write_now(self.leases.take(), self._batch, inline=True)
            self._batch = []
        elif self._batch:
            self._hand_over()
        elif self.leases.unwritten and self._later is None:
            self._later = self.loop.call_later(WRITE_LATER, self._hand_over)

    def _hand_over(self) -> None:
        if self._later is not None:
            self._later.cancel()
            self._later = None
        writes, batch = self.leases.take(), self._batch
        self._batch = []
        with self._wake:
            self._writes.extend(writes)
            self.held.extend(batch)
            self._running = True
            self._wake.notify()

    def _write_all(self) -> None:
        """The writer thread: each group written, then its ACKs sent."""
        while True:
            with self._wake:
                while not self._writes and not self.held and not self._ending:
                    self._running = None
                    self._wake.wait()
                if not self._writes and not self.held:
                    self._running = None
                    return  # ending, nothing left
                writes, held = self._writes, self.held
                self._writes, self.held = [], []
            self._write_now(writes, held)

    def _write_now(self, writes: Writes, held: Held, inline: bool = False) -> None:
        """``writes`` durable, then ``held`` sent; the reports on the loop
        (here, when this is the loop's thread or there is none)."""
        loop = self.loop if self._writer is not None and not inline else None
        if writes:
            try:
                self.leases.write(writes)
            except Exception as e:  # a failing store: no ACK for what it did not keep
                acks = [ack for _, group in held for ack in group]
                _on(loop, self.failed, e, acks)
                return
            self.commits += 1
            self.grouped += len(writes)
        if held:
            sent = [(sender, acks, sender.send_acks(acks)) for sender, acks in held]
            _on(loop, _report, sent)

    async def stop(self) -> None:
        """A service stops: what was handed over is written and its ACKs
        sent; after the last service, what is left is written here and the
        thread ends."""
        self._users = max(0, self._users - 1)
        if self._writer is not None and (self._batch or self.leases.unwritten):
            self._hand_over()
        for _ in range(3000):  # bounded: a disk that takes more than 30 s is reported by the write itself
            if self._running is None:
                break
            await asyncio.sleep(0.01)
        if self._users:
            return
        writer, self._writer = self._writer, None
        if writer is not None:
            with self._wake:
                self._ending = True
                self._wake.notify()
            writer.join(timeout=30)
            await asyncio.sleep(0)  # its last reports (call_soon_threadsafe) run
        self.loop = None
        self.flush()  # what came after (written here, in place)


Sent = list[tuple[AckSender, list[Ack], list[bool]]]


def _report(sent: Sent) -> None:
    for sender, acks, taken in sent:
        sender.acks_sent(acks, taken)


def _on(loop: asyncio.AbstractEventLoop | None, call: Callable[..., None], *args: object) -> None:
    """``call(*args)`` on ``loop``'s thread, or here without a loop (or once it is closed)."""
    if loop is not None:
        try:
            loop.call_soon_threadsafe(call, *args)
            return
        except RuntimeError:  # the loop is closed: nobody else will
            pass
    call(*args)


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
