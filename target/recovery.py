"""Within-command and within-connection recovery, ErrorRecoveryLevel >= 1
(RFC 7143 §7.1.4.1, §7.2-§7.4, §11.16), sans I/O.

What a connection keeps so that an initiator may ask again for what it lost:

- :class:`StatusStore`: the numbered responses (SCSI Response, the status a
  Data-In carried, Task Management, Text, Logout, NOP-In answers, Reject),
  keyed by StatSN, bounded by count and bytes, released as the initiator's
  ExpStatSN acknowledges them (§4.2.2.2). A Status SNACK (§11.16.1, type 1)
  resends them.
- :class:`ReadStore`: for each read whose Data-In may be asked again by a
  Data SNACK (type 0), the command and the way its Data-In were cut
  (MaxRecvDataSegmentLength and MaxBurstLength at the time, DataSN count,
  the status they carried). No data is kept: a resend reads it again from
  the LUN, cut the same way, with the same DataSN and offsets. A DataACK
  SNACK (type 2) acknowledging every DataSN, or the ExpStatSN that
  acknowledges the read's status, releases the record.

:class:`Recovery` holds both for one connection (its StatSN space), so it
can hang off a per-connection object when a session has several. The
session (target/session.py) calls in at a few hooks; decisions that need no
session state (which DataSN or StatSN a SNACK names, whether that is
allowed) are made here.

:class:`DataOutWatch` notices a write whose Data-Out stopped arriving short
of what it was asked (§11.8: a recovery R2T may follow a "sequence
reception timeout"), so that a lost *last* Data-Out, which no DataSN gap
reveals, is asked for again.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, replace

from .actions import Action, Send
from .limits import DATA_OUT_ASKS, RETAINED_READS, RETAINED_STATUS_BYTES, RETAINED_STATUSES
from .pdu import (
    BHS_LEN,
    RESERVED_TAG,
    DataIn,
    LogoutResponsePdu,
    NopIn,
    Pdu,
    Reject,
    RejectReason,
    ScsiCommand,
    ScsiResponse,
    TaskMgmtResponse,
    TextResponse,
)

SERIAL_HALF = 1 << 31


def sn_lt(a: int, b: int) -> bool:
    """Serial number arithmetic, RFC 1982 with SERIAL_BITS = 32 (§4.2.2.1)."""
    return a != b and ((b - a) & 0xFFFFFFFF) < SERIAL_HALF


class SnackType(enum.IntEnum):
    """§11.16.1: the Type field of a SNACK Request."""

    DATA_R2T = 0
    STATUS = 1
    DATA_ACK = 2
    R_DATA = 3


class SnackError(Exception):
    """A SNACK the target does not satisfy: it gets a Reject with ``reason``
    (§11.16: PROTOCOL_ERROR for what was never sent or was already
    acknowledged; SNACK_REJECT for what is no longer kept)."""

    def __init__(self, reason: RejectReason, why: str) -> None:
        super().__init__(why)
        self.reason = reason


def snack_run(begrun: int, runlength: int, count: int, floor: int = 0, what: str = "DataSN") -> range:
    """The numbers a SNACK's BegRun/RunLength name among ``count`` sent
    (0..count-1), RunLength 0 meaning all from BegRun (§11.16.3, §11.16.4).
    Numbers below ``floor`` were acknowledged already. Raises SnackError."""
    if begrun < floor:
        raise SnackError(RejectReason.PROTOCOL_ERROR, f"SNACK for {what} {begrun}, acknowledged already")
    end = count if runlength == 0 else begrun + runlength
    if begrun >= count or end > count:
        raise SnackError(RejectReason.PROTOCOL_ERROR,
                         f"SNACK for {what} {begrun}..{end - 1}, only 0..{count - 1} were sent")
    return range(begrun, end)


# -- numbered responses, for the Status SNACK -------------------------------------

_NUMBERED = (ScsiResponse, TaskMgmtResponse, TextResponse, LogoutResponsePdu, Reject)


def is_numbered(pdu: Pdu) -> bool:
    """Whether ``pdu`` carries a new StatSN (§4.2.2.2): a Data-In only with
    its status (§11.7.4), a NOP-In only when it answers a NOP-Out (our
    pings are not numbered, §11.19)."""
    cls = type(pdu)
    if cls is DataIn:
        return pdu.status_present  # type: ignore[attr-defined,no-any-return]
    if cls is NopIn:
        return pdu.itt != RESERVED_TAG  # type: ignore[attr-defined,no-any-return]
    return cls in _NUMBERED


def as_response(pdu: Pdu) -> Pdu:
    """What a Status SNACK gets for a kept response: the status a Data-In
    carried goes as the SCSI Response that says the same (its data is not
    kept); everything else as it was."""
    if isinstance(pdu, DataIn):
        return ScsiResponse(overflow=pdu.overflow, underflow=pdu.underflow, status=pdu.status, itt=pdu.itt,
                            statsn=pdu.statsn, expdatasn=pdu.datasn + 1, residual=pdu.residual)
    return pdu


class StatusStore:
    """Numbered responses not yet acknowledged, oldest first, at most
    ``count`` of them and ``nbytes`` of header and data."""

    def __init__(self, count: int = RETAINED_STATUSES, nbytes: int = RETAINED_STATUS_BYTES) -> None:
        self.limit_count = count
        self.limit_bytes = nbytes
        self.kept: OrderedDict[int, tuple[Pdu, int]] = OrderedDict()
        self.bytes = 0
        self.newest: int | None = None  # the last StatSN kept
        self.acked = 0  # the initiator's ExpStatSN: StatSNs below it are acknowledged

    def __len__(self) -> int:
        return len(self.kept)

    def keep(self, pdu: Pdu, statsn: int) -> None:
        """Keep ``pdu``, sent with ``statsn``. A resent response (its StatSN
        is not newer than the newest kept) is not kept twice."""
        if self.newest is not None and not sn_lt(self.newest, statsn):
            return
        self.newest = statsn
        size = BHS_LEN + len(pdu.data)  # a Data-In's data is not here: only its header is kept
        self.kept[statsn] = (pdu, size)
        self.bytes += size
        while len(self.kept) > self.limit_count or self.bytes > self.limit_bytes:
            self.bytes -= self.kept.popitem(last=False)[1][1]

    def acknowledge(self, expstatsn: int) -> None:
        """The initiator has every response below ``expstatsn``."""
        if not sn_lt(self.acked, expstatsn):
            return
        self.acked = expstatsn
        while self.kept:
            sn = next(iter(self.kept))
            if not sn_lt(sn, expstatsn):
                break
            self.bytes -= self.kept.pop(sn)[1]

    def resend(self, begrun: int, runlength: int, next_statsn: int) -> list[Pdu]:
        """The responses a Status SNACK names (§11.16.1: BegRun is a StatSN,
        RunLength 0 means every one from BegRun); ``next_statsn`` is the
        StatSN the next response would get."""
        if sn_lt(begrun, self.acked):
            raise SnackError(RejectReason.PROTOCOL_ERROR,
                             f"Status SNACK for StatSN {begrun}, acknowledged already (ExpStatSN {self.acked})")
        left = (next_statsn - begrun) & 0xFFFFFFFF  # sent from BegRun on
        if not sn_lt(begrun, next_statsn) or runlength > left:
            last = begrun + (runlength or 1) - 1
            raise SnackError(RejectReason.PROTOCOL_ERROR,
                             f"Status SNACK for StatSN {begrun}..{last & 0xFFFFFFFF}, the last sent is "
                             f"{(next_statsn - 1) & 0xFFFFFFFF}")
        out = []
        for k in range(runlength or left):
            sn = (begrun + k) & 0xFFFFFFFF
            kept = self.kept.get(sn)
            if kept is None:
                raise SnackError(RejectReason.SNACK_REJECT,
                                 f"Status SNACK for StatSN {sn}: no longer kept (at most {self.limit_count})")
            out.append(as_response(kept[0]))
        return out


# -- reads, for the Data SNACK ----------------------------------------------------


@dataclass(slots=True)
class ReadRecord:
    """How one read's Data-In went out (§11.7): enough to cut them again the
    same way from data read again."""

    cmd: ScsiCommand
    total: int  # bytes the command gave (residuals are against EDTL)
    length: int  # bytes sent: min(total, EDTL)
    count: int  # Data-In PDUs sent: DataSN 0..count-1
    mrdsl: int  # the initiator's MaxRecvDataSegmentLength then
    burst: int  # MaxBurstLength then
    statsn: int  # the StatSN of the read's status
    status: int = 0
    with_status: bool = True  # the last Data-In carried the status (§11.7.4), not a SCSI Response
    overflow: bool = False
    underflow: bool = False
    residual: int = 0
    ttt: int = RESERVED_TAG  # given on Data-In with the A bit (§11.7.2), named by DataACK
    acked: int = 0  # DataSNs below this the initiator acknowledged (DataACK SNACK)

    @property
    def itt(self) -> int:
        return self.cmd.itt


class ReadStore:
    """Read records by ITT, oldest first, at most ``count``."""

    def __init__(self, count: int = RETAINED_READS) -> None:
        self.limit = count
        self.records: OrderedDict[int, ReadRecord] = OrderedDict()
        self.by_ttt: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.records)

    def keep(self, record: ReadRecord) -> None:
        self._forget(record.itt)
        self.records[record.itt] = record
        if record.ttt != RESERVED_TAG:
            self.by_ttt[record.ttt] = record.itt
        while len(self.records) > self.limit:
            self._forget(next(iter(self.records)))

    def _forget(self, itt: int) -> None:
        record = self.records.pop(itt, None)
        if record is not None and record.ttt != RESERVED_TAG:
            self.by_ttt.pop(record.ttt, None)

    def acknowledge(self, expstatsn: int) -> None:
        """§4.2.2.2: acknowledging a read's status acknowledges its data."""
        while self.records:
            record = next(iter(self.records.values()))
            if not sn_lt(record.statsn, expstatsn):
                break
            self._forget(record.itt)

    def find(self, itt: int) -> ReadRecord:
        record = self.records.get(itt)
        if record is None:
            raise SnackError(RejectReason.PROTOCOL_ERROR,
                             f"Data SNACK for ITT {itt:#x}: no such read awaiting acknowledgement")
        return record

    def data_ack(self, ttt: int, begrun: int) -> None:
        """DataACK SNACK (§11.16.1 type 2): every DataSN below ``begrun`` of
        the read the A bit's TTT named has arrived; once all have, the
        record goes."""
        itt = self.by_ttt.get(ttt)
        if itt is None:
            raise SnackError(RejectReason.PROTOCOL_ERROR, f"DataACK SNACK with unknown TTT {ttt:#x}")
        record = self.records[itt]
        if begrun > record.count:
            raise SnackError(RejectReason.PROTOCOL_ERROR,
                             f"DataACK for DataSN {begrun}, only {record.count} were sent")
        record.acked = max(record.acked, begrun)
        if record.acked >= record.count:
            self._forget(itt)


# -- one connection ---------------------------------------------------------------


class Recovery:
    """What one connection keeps for SNACKs (at ErrorRecoveryLevel >= 1)."""

    def __init__(self, statsn: int = 0, statuses: StatusStore | None = None, reads: ReadStore | None = None) -> None:
        """``statsn``: the StatSN of the connection's first numbered response."""
        self.statuses = statuses if statuses is not None else StatusStore()
        self.statuses.acked = statsn
        self.reads = reads if reads is not None else ReadStore()

    def sent(self, actions: Iterable[Action]) -> None:
        """Note the numbered responses among ``actions`` about to be sent."""
        for action in actions:
            if type(action) is Send and is_numbered(action.pdu):
                self.statuses.keep(action.pdu, action.pdu.statsn)  # type: ignore[attr-defined]

    def acknowledge(self, expstatsn: int, next_statsn: int) -> None:
        """An initiator PDU carried ``expstatsn``; one beyond what was sent
        (``next_statsn``) is not believed."""
        if sn_lt(next_statsn, expstatsn):
            return
        self.statuses.acknowledge(expstatsn)
        self.reads.acknowledge(expstatsn)

    def status_snack(self, begrun: int, runlength: int, next_statsn: int, expcmdsn: int,
                     maxcmdsn: int) -> list[Pdu]:
        """The responses to send again, with today's command window."""
        return [replace(pdu, expcmdsn=expcmdsn, maxcmdsn=maxcmdsn)  # type: ignore[type-var]
                for pdu in self.statuses.resend(begrun, runlength, next_statsn)]


# -- writes whose data stopped arriving, for the recovery R2T ---------------------


class DataOutWatch:
    """A periodic sweep over a session's writes that wait for Data-Out
    (ERL >= 1): one timer for the session, never one per command. A write
    whose progress did not move from one sweep to the next, ``timeout``
    seconds apart, has stalled: between one and two timeouts after its last
    Data-Out. Each write is reported at most ``asks`` times without its data
    progressing in between: an initiator that never answers is left to its
    own command timeout and ABORT TASK, not asked forever."""

    def __init__(self, timeout: float, asks: int = DATA_OUT_ASKS) -> None:
        self.timeout = timeout
        self.asks = asks
        self.at: float | None = None  # the next sweep; None while no write waits
        # by write: its progress at the last sweep, and how often it was reported since it last moved
        self.seen: dict[Hashable, tuple[tuple[int, int], int]] = {}

    def start(self, now: float) -> None:
        """A write begins to wait for data: sweep ``timeout`` from now, unless a sweep is due already."""
        if self.at is None:
            self.at = now + self.timeout

    def due(self, now: float) -> bool:
        return self.at is not None and now >= self.at

    def sweep(self, waiting: Mapping[Hashable, tuple[int, int]], now: float) -> list[Hashable]:
        """The writes of ``waiting`` (each with its progress: bytes received,
        R2Ts sent) whose progress is what it was at the last sweep. The next
        sweep is due ``timeout`` from ``now`` while any write waits."""
        stalled = []
        seen: dict[Hashable, tuple[tuple[int, int], int]] = {}
        for write, progress in waiting.items():
            before = self.seen.get(write)
            asked = 0 if before is None or before[0][0] != progress[0] else before[1]
            if before is not None and before[0] == progress and asked < self.asks:
                stalled.append(write)
                asked += 1
            seen[write] = (progress, asked)
        self.seen = seen
        self.at = now + self.timeout if waiting else None
        return stalled
