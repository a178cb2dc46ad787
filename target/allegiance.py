"""The connections of one iSCSI session and what each one owes (RFC 7143
§4.2.2.2, §5.1, §6.3.4, §7.2, §13.15, §13.16), sans I/O.

A session may run on several TCP connections (MC/S, ``MaxConnections``).
What belongs to one connection lives in its :class:`ConnectionState`: the
CID, StatSN (§4.2.2.2: per connection), the initiator's
MaxRecvDataSegmentLength on it (§13.12: a connection-only key), its
keepalive ping. A task is *allegiant* to the connection its command came on
(§5.1): its R2Ts, Data-In and status go out there. The CmdSN window stays
session-wide (:class:`~target.session.Session`).

From ErrorRecoveryLevel 1 a connection keeps, in
:attr:`ConnectionState.recovery` (:class:`~target.recovery.Recovery`), its
numbered responses by StatSN and how its reads' Data-In were cut, for the
SNACKs that may come on it (§7.3, §7.4).

At ErrorRecoveryLevel 2 a connection that fails (or is logged out for
recovery, or reinstated) keeps its tasks for Time2Wait + Time2Retain
(:attr:`ConnectionState.retain_until`): the initiator reassigns each one to a
live connection with TASK REASSIGN (§11.5.1). Responses a task completed and
the initiator has not acknowledged (ExpStatSN) are kept in
:attr:`ConnectionState.retained`, so that a reassigned task's status and
Data-In can be sent again. Nothing here is kept below ERL 2.

Both are released by the same acknowledgement, the ExpStatSN the initiator
sends on the connection (:meth:`ConnectionState.acknowledged`); they are not
one store because they answer different requests on different connections
(docs/iscsi-recovery.md, "What is kept, and why twice").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .backend import Segment
from .limits import MAX_RETAINED
from .recovery import Recovery, sn_lt

if TYPE_CHECKING:
    from .scsi import ScsiResult
    from .session import Link, Task


@dataclass(slots=True)
class Retained:
    """A task's outcome kept for ERL 2: its status left on a connection
    that failed before the initiator acknowledged it (``statsn``), or the
    command completed while its connection was down (``statsn`` None)."""

    task: Task
    result: ScsiResult
    segments: Sequence[Segment] | None
    statsn: int | None


@dataclass(eq=False)
class ConnectionState:
    """One connection of a session, as the session needs to know it."""

    link: Link
    statsn: int = 0
    max_recv: int = 8192  # the initiator's MaxRecvDataSegmentLength on this connection (§13.12)
    last_rx: float = 0.0
    ping_ttt: int = 0  # the TTT of our latest ping on it
    ping_sent: float | None = None  # when our unanswered NOP-In ping left (§11.19)
    alive: bool = True
    ending: bool = False  # asked the transport to close it: take no more input from it
    retain_until: float | None = None  # ERL 2, once failed: when its tasks are dropped (§13.16)
    # ERL 2: responses not yet acknowledged by ExpStatSN, by ITT, oldest first
    retained: dict[int, Retained] = field(default_factory=dict)
    # ERL >= 1: responses by StatSN and reads' layouts, for SNACKs on this connection
    recovery: Recovery | None = None

    @property
    def cid(self) -> int:
        return self.link.cid

    def keep(self, itt: int, kept: Retained) -> None:
        """Keep ``kept`` for a reassignment, forgetting the oldest past
        :data:`~target.limits.MAX_RETAINED`."""
        self.retained.pop(itt, None)  # an ITT used again: the newest counts
        self.retained[itt] = kept
        if len(self.retained) > MAX_RETAINED:
            del self.retained[next(iter(self.retained))]

    def acknowledged(self, expstatsn: int) -> None:
        """§4.2.2.2: the initiator has every status below ``expstatsn`` on
        this connection; those responses need not be kept any longer, for a
        SNACK (ERL 1) or a TASK REASSIGN (ERL 2). An ExpStatSN beyond the
        StatSN sent is not believed."""
        if sn_lt(self.statsn, expstatsn):
            return
        if self.recovery is not None:
            self.recovery.acknowledge(expstatsn, self.statsn)
        retained = self.retained
        while retained:
            itt, kept = next(iter(retained.items()))
            if kept.statsn is None or not sn_lt(kept.statsn, expstatsn):
                return
            del retained[itt]

    def fail(self, retain_until: float | None) -> None:
        """The connection is gone: with ``retain_until`` (ERL 2) its tasks
        wait for reassignment until then, without it they are dropped."""
        self.alive = False
        self.ending = True
        self.ping_sent = None
        self.retain_until = retain_until
        self.recovery = None  # no SNACK can come on it any more (a reinstatement is a new connection)
        if retain_until is None:
            self.retained.clear()
