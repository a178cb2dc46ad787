"""Full Feature Phase of an iSCSI session (RFC 7143 §3.2, §4, §11), sans I/O.

One :class:`Session` per logged-in initiator, on one or more connections
(MC/S; each one's state in :mod:`target.allegiance`). It
takes decoded PDUs and the time (:meth:`Session.receive`) and returns
:mod:`~target.actions` for its transport to carry out: PDUs to send, SCSI
commands to run, the connection to close. It covers CmdSN windowing
(§4.2.2), SCSI commands with immediate, unsolicited and solicited (R2T) data
(§4.2.5), Data-In with status piggy-backed (§11.7.4), task management
(§11.5), SendTargets (§13, Appendix C), NOP (§11.18/19) with the keepalive
ping, Logout (§11.14) and Reject (§11.17) for everything malformed. It owns
StatSN (§4.2.2.2) and its timers (:meth:`Session.next_timer`,
:meth:`Session.handle_timer`): no sockets, no clock, no event loop here.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from .actions import Action, Close, Execute, Send
from .allegiance import ConnectionState, Retained
from .backend import FileExtent, Segment, Zeros, segments_length
from .keys import NOT_SETTLED, REJECT, KeyValueError, SessionParams, renegotiate
from .limits import DATA_OUT_TIMEOUT, SESSION_WRITE_LIMIT
from .login import MAX_LOGIN_TEXT
from .pdu import (
    R2T,
    RESERVED_TAG,
    DataIn,
    DataOut,
    LoginRequest,
    LogoutReason,
    LogoutRequest,
    LogoutResponse,
    LogoutResponsePdu,
    NopIn,
    NopOut,
    Pdu,
    PduFormatError,
    Reject,
    RejectReason,
    ScsiCommand,
    ScsiResponse,
    SnackRequest,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TextRequest,
    TextResponse,
    TmfFunction,
    TmfResponse,
    decode,
)
from .recovery import DataOutWatch, ReadRecord, Recovery, SnackError, SnackType, is_numbered, sn_lt, snack_run
from .scsi import ScsiResult, ScsiStatus, no_such_lun, report_luns, target_port_groups
from .scsi.cdb import PERSISTENT_RESERVE_OUT
from .scsi.ports import MAINTENANCE_IN, is_report_target_port_groups
from .scsi.reservations import PrOut
from .scsi.sense import POWER_ON_RESET
from .targets import Target, lun_from_field
from .text import TextFormatError, decode_text, encode_text

REPORT_LUNS = 0xA0
# §11.14: a Logout Response waits for the commands in flight, this long at most
LOGOUT_TIMEOUT = 10.0


MEDIUM_ERROR, HARDWARE_ERROR = 0x3, 0x4  # SPC-4 §4.5.6 sense keys


def _sense_key(sense: bytes) -> int:
    """The sense key of fixed (70h/71h) or descriptor (72h/73h) sense data (SPC-4 §4.5)."""
    if len(sense) < 3:
        return 0
    return (sense[1] if sense[0] & 0x7F in (0x72, 0x73) else sense[2]) & 0x0F


class DropReason(enum.Enum):
    """Why a session ended without a Logout (``iscsi.session_dropped``)."""

    CONNECTION_LOST = "connection_lost"
    NOP_TIMEOUT = "nop_timeout"  # §11.19: the initiator stopped answering our pings
    REINSTATED = "reinstated"  # §6.3.5: a new login with the same ISID replaced it
    REPLACED = "replaced"  # one writer per disk: the same initiator logged in again with another ISID
    SERVER_STOP = "server_stop"
    PROTOCOL_ERROR = "protocol_error"
    TARGET_RESET = "target_reset"  # §11.5.1: TARGET COLD RESET drops every session
    PDU_TIMEOUT = "pdu_timeout"  # a PDU began and did not end in time (target.limits)
    IDLE_TIMEOUT = "idle_timeout"  # a Discovery session that asked nothing for too long


class ServerContext(Protocol):
    """What a session asks of the server that holds it."""

    def visible_targets(self, initiator_name: str) -> list[Target]: ...

    def portals(self, local: tuple[str, int]) -> list[str]: ...

    @property
    def port_groups(self) -> tuple[int, ...]:
        """Every target portal group tag: the target ports REPORT TARGET
        PORT GROUPS lists (:mod:`target.scsi.ports`)."""
        ...

    def forget(self, session: Session) -> None: ...

    def drop_after_send(self, session: Session, reason: DropReason) -> None:
        """End another session's connection (a target reset reaches them all)."""
        ...

    def event(self, what: str, level: int = logging.INFO, /, **fields: object) -> None: ...


@dataclass(frozen=True)
class Link:
    """The connection a session runs on, as the session needs to know it."""

    cid: int
    peer: str  # "host:port" of the initiator, for events
    local_address: tuple[str, int]  # where the initiator reached us (SendTargets answers)


@dataclass(frozen=True)
class Keepalive:
    """§11.19: ping an initiator silent for ``interval`` seconds with a
    NOP-In; drop it when ``timeout`` passes without the answer. An interval
    of 0 turns pinging off."""

    interval: float = 15.0
    timeout: float = 30.0


@dataclass
class _PendingLogout:
    req: LogoutRequest
    response: LogoutResponse
    deadline: float
    conn: ConnectionState  # the connection the answer goes out on


@dataclass
class R2TState:
    offset: int
    length: int
    received: int = 0
    datasn: int = 0  # the DataSN the next Data-Out of this sequence must carry
    r2tsn: int = 0  # the R2TSN it went with: an R2T SNACK names it (§11.16.1)
    end: int = -1  # ERL >= 1: where the next Data-Out should begin (a gap is lost data)


@dataclass(slots=True, eq=False)
class Task:
    """One SCSI command from arrival to its last response PDU."""

    cmd: ScsiCommand
    lun: int
    cdb: bytes
    # a write's Data-Out, grown as it arrives; never longer than ``wanted``
    buffer: bytearray | None = None
    wanted: int = 0  # bytes of Data-Out kept: min(EDTL, what the CDB asks for)
    credit: int = 0  # bytes of the session's write limit this task holds
    received: int = 0
    unsolicited_end: int = 0
    next_r2t_offset: int = 0
    # R2Ts in flight by TTT; made only for writes that solicit data, since
    # a Task is built for every READ and an unused dict costs on that path
    outstanding: dict[int, R2TState] | None = None
    r2tsn: int = 0
    unsolicited_datasn: int = 0
    unsolicited_next: int = 0  # ERL >= 1: where the next unsolicited Data-Out should begin
    aborted: bool = False
    conn: ConnectionState | None = None  # the connection it is allegiant to (§5.1)

    @property
    def itt(self) -> int:
        return self.cmd.itt


@dataclass(slots=True, eq=False)
class Resend(Task):
    """A read run again for a Data SNACK or an R-Data SNACK (§11.16): its
    Data-In go out again as ``record`` says, only DataSNs in ``run`` (all
    of them, cut anew, when ``snack_tag`` is set: R-Data). ``snack`` is the
    SNACK's header, for a Reject if the data cannot be read again."""

    record: ReadRecord | None = None
    run: range | None = None
    snack_tag: int = 0
    snack: bytes = b""


class SessionFailure(Exception):
    """An error ERL 0 cannot recover from within the connection (§7.1.4):
    the connection is dropped, and with it the session's tasks."""


class ProtocolViolation(Exception):
    """A PDU that gets a Reject (§11.17); the connection carries on."""

    def __init__(self, reason: RejectReason, why: str) -> None:
        super().__init__(why)
        self.reason = reason


class Session:
    """One session's protocol state. Every entry point returns the actions
    it led to, in the order they must be carried out."""

    def __init__(self, server: ServerContext, params: SessionParams, isid: bytes, tsih: int, cmdsn: int,
                 target: Target | None, *, window: int = 128, keepalive: Keepalive = Keepalive(),
                 discovery_timeout: float = 0.0, write_limit: int = SESSION_WRITE_LIMIT,
                 portal_group_tag: int = 1, data_out_timeout: float = DATA_OUT_TIMEOUT) -> None:
        self.server = server
        self.params = params
        self.isid = isid
        self.tsih = tsih
        self.target = target
        self.expcmdsn = cmdsn
        self.window = window
        self.keepalive = keepalive
        self.discovery_timeout = discovery_timeout  # 0: a Discovery session may idle forever
        self.write_limit = write_limit
        self.write_credit = 0  # bytes of write data solicited or buffered and not yet written
        # what the session moved, for its logout or drop event (a boot's bytes read and written)
        self.bytes_read = 0
        self.bytes_written = 0
        self.io_errors = 0  # commands answered MEDIUM or HARDWARE ERROR
        # writes still gathering their Data-Out, oldest first: the oldest may
        # always solicit (so the limit cannot deadlock), the rest wait for credit
        self.collecting: dict[Task, None] = {}
        # the connection the input at hand came on; every live one by CID, and
        # (ERL 2) the failed ones whose tasks wait for reassignment (§7.2)
        self.conn = ConnectionState(Link(0, "", ("", 0)), max_recv=params.initiator_max_recv)
        self.conns: dict[int, ConnectionState] = {}
        self.failed: list[ConnectionState] = []
        self.erl1 = params.error_recovery_level >= 1  # SNACK, digest errors (target/recovery.py)
        self.erl2 = params.error_recovery_level >= 2
        # ERL >= 1: writes whose Data-Out stopped short get a recovery R2T (§11.8); 0 turns it off
        self.data_watch = DataOutWatch(data_out_timeout) if self.erl1 and data_out_timeout > 0 else None
        if self.erl2:  # chosen once: the ERL 0 hot path pays nothing for what ERL 2 keeps
            self._respond = self._respond_kept  # type: ignore[method-assign]
        self.now = 0.0  # the time of the latest entry point that was told it
        self.tasks: dict[int, Task] = {}
        # commands ahead of ExpCmdSN, with the connection each came on (§4.2.2.1:
        # one window for the whole session, whichever connection they take)
        self.pending: dict[int, tuple[Pdu, ConnectionState]] = {}
        self.executing: set[Task] = set()  # handed to the transport to run, not back yet
        self.text_reply: tuple[int, bytes] | None = None  # (TTT, rest) of a long Text Response
        self.text_request = bytearray()
        self.text_request_ttt = RESERVED_TAG  # given to the last part of a continued request
        self.next_ttt = 1
        # by the TASK REASSIGN at hand: the task, and the connection it leaves
        self.reassigned: tuple[Task | Retained, ConnectionState] | None = None
        self.first_read_seen = False
        # the I_T nexus: the initiator port and the target port, a portal group (§4.4.1)
        self.portal_group_tag = portal_group_tag
        self.nexus = (params.initiator_name, isid, params.target_name, portal_group_tag)
        self.closed = False
        self.logged_out = False
        self.nexus_ended = False
        self.ending = False  # asked the transport to close: no more timers
        self.logout: _PendingLogout | None = None
        self.last_request = 0.0  # the last PDU other than a NOP-Out
        self.ping_ttt = 0
        self._out: list[Action] = []

    # -- identity and bookkeeping ---------------------------------------------

    @property
    def discovery(self) -> bool:
        return self.params.session_type == "Discovery"

    @property
    def maxcmdsn(self) -> int:
        return (self.expcmdsn + self.window - 1) & 0xFFFFFFFF

    @property
    def statsn(self) -> int:
        """StatSN of the connection at hand (§4.2.2.2: one per connection)."""
        return self.conn.statsn

    @statsn.setter
    def statsn(self, value: int) -> None:
        self.conn.statsn = value

    @property
    def link(self) -> Link:
        return self.conn.link

    def _statsn(self) -> int:
        conn = self.conn
        sn = conn.statsn
        conn.statsn = (sn + 1) & 0xFFFFFFFF
        return sn

    def _ttt(self) -> int:
        ttt = self.next_ttt
        self.next_ttt = (ttt + 1) % RESERVED_TAG or 1
        return ttt

    @property
    def recovery(self) -> Recovery | None:
        """What the connection at hand keeps for SNACKs (ERL >= 1, target/recovery.py)."""
        return self.conn.recovery

    def _actions(self) -> list[Action]:
        out = self._out
        self._out = []
        if self.erl1 and out:
            self._keep_sent(out)
        return out

    def _keep_sent(self, out: list[Action]) -> None:
        """ERL >= 1: each numbered response is kept for a Status SNACK by the
        connection it goes out on (StatSN is per connection, §4.2.2.2)."""
        conns = self.conns
        for action in out:
            if type(action) is Send and is_numbered(action.pdu):
                conn = conns.get(action.cid)  # type: ignore[arg-type]
                if conn is not None and conn.recovery is not None:
                    conn.recovery.statuses.keep(action.pdu, action.pdu.statsn)  # type: ignore[attr-defined]

    def _send(self, pdu: Pdu) -> None:
        self._out.append(Send(pdu, None, None, self.conn.cid))

    def bind(self, link: Link, statsn: int, now: float, max_recv: int | None = None) -> None:
        """A connection enters Full Feature Phase on ``link``: the session's
        first, one more (MC/S, §5.3.4), or one that reinstates the live
        connection of its CID (§6.3.4: that one's tasks end, or at ERL 2
        wait for reassignment). The login left StatSN at ``statsn``;
        ``max_recv`` is the initiator's MaxRecvDataSegmentLength on it."""
        self.now = now
        old = self.conns.get(link.cid)
        if old is not None:
            self._drop_connection(old, keep=self.erl2)
            if self.logout is not None and self.logout.conn is old:
                self.logout = None
        # §7.1.4.1: from ERL 1 the connection keeps responses and reads for SNACKs
        state = ConnectionState(link, statsn, max_recv or self.params.initiator_max_recv, last_rx=now,
                                recovery=Recovery(statsn) if self.erl1 else None)
        self.conns[link.cid] = state
        self.conn = state
        self.last_request = now

    def _drop_connection(self, state: ConnectionState, keep: bool) -> None:
        """``state``'s connection is no longer part of the session. Its tasks
        end (§4.2.2.3 implicit termination) unless ``keep`` (ERL 2): then
        they wait Time2Wait + Time2Retain for a TASK REASSIGN (§7.2.2)."""
        if self.conns.get(state.cid) is state:
            del self.conns[state.cid]
        if keep:
            state.fail(self.now + self.params.default_time2wait + self.params.default_time2retain)
            self.failed.append(state)
            if len(self.failed) > self.params.max_connections:  # bounded, as what each one keeps
                oldest = self.failed.pop(0)
                self._end_tasks_of(oldest)
            self._event("iscsi.connection_failed", cid=state.cid, kept=len(self._allegiant(state))
                        + len(state.retained), retain_s=self.params.default_time2wait
                        + self.params.default_time2retain)
            return
        state.fail(None)
        self._end_tasks_of(state)

    def _allegiant(self, state: ConnectionState) -> list[Task]:
        return [t for t in self.tasks.values() if t.conn is state]

    def _end_tasks_of(self, state: ConnectionState) -> None:
        """Terminate the tasks allegiant to ``state`` without telling the
        initiator (§4.2.2.3); commands of it still waiting in the CmdSN
        window are skipped when their turn comes."""
        tasks = self._allegiant(state)
        for task in tasks:
            self._abort(task)
        state.retained.clear()
        if tasks:
            self._resume_writes()

    def connection_lost(self, cid: int, reason: DropReason, now: float) -> list[Action]:
        """The connection ``cid`` ended without a Logout (or after one).
        Below ERL 2 its tasks end and the session carries on over the
        others; it fails with its last connection (§6.3.6). At ERL 2 the
        tasks wait for reassignment, the session with them."""
        self.now = now
        state = self.conns.get(cid)
        if state is not None:
            self._drop_connection(state, keep=self.erl2 and not self.logged_out)
        if not self.conns and not (self.failed and self.erl2):
            self.close(reason)
        return self._actions()

    def close(self, reason: DropReason) -> None:
        """The session ends: abort its tasks, tell the LUNs the nexus is gone.
        ``reason`` is reported unless the initiator logged out."""
        if self.closed:
            return
        self.closed = True
        if not self.logged_out:
            self._event("iscsi.session_dropped", reason=reason.value, **self._counts())
        for task in self.tasks.values():
            task.aborted = True
        self.tasks.clear()
        self.executing.clear()
        for conn in self.failed:
            conn.retained.clear()
        self.failed.clear()
        if self.target is not None:
            self.target.sessions.discard(self)
        self._nexus_ended()
        self.server.forget(self)

    def _nexus_ended(self) -> None:
        """Tell the LUNs this I_T nexus is gone (its RESERVE(6), its unit
        attentions, its held copy status), once."""
        if self.target is not None and not self.nexus_ended:
            self.nexus_ended = True
            for lun in self.target.luns.values():
                lun.nexus_lost(self.nexus)

    # -- dispatch -------------------------------------------------------------

    def _on(self, cid: int | None) -> bool:
        """Make the connection ``cid`` (None: the one at hand) the one input
        comes on; False if it is no longer part of the session."""
        if cid is None:
            return True
        state = self.conns.get(cid)
        if state is None:
            return False
        self.conn = state
        return True

    def receive(self, pdu: Pdu, now: float, cid: int | None = None) -> list[Action]:
        """Handle one PDU from the initiator, received at ``now`` on the
        connection ``cid`` (None: the session's only one).

        Raises :class:`SessionFailure` for errors only a new session recovers
        from; the transport then drops the connection."""
        if self._on(cid):
            self.now = now
            if self.failed:
                self._expire(now)
            self._receive(pdu, now)
        return self._actions()

    def receive_all(self, pdus: Iterable[Pdu], now: float, cid: int | None = None) -> list[Action]:
        """Handle PDUs that arrived together, up to the one after which the
        session asked to close; one list of actions for the whole batch.
        If ``pdus`` raises (a PDU the transport could not decode), the
        actions so far come with those of the next call."""
        if not self._on(cid):
            return []
        self.now = now
        if self.failed:
            self._expire(now)  # before a TASK REASSIGN could claim a task past its time
        conn = self.conn
        for pdu in pdus:
            self._receive(pdu, now)
            if self.ending or conn.ending:
                break
        return self._actions()

    def _receive(self, pdu: Pdu, now: float) -> None:
        conn = self.conn
        conn.last_rx = now
        if conn.retained or conn.recovery is not None:  # ERL >= 1: responses kept until acknowledged
            expstatsn = getattr(pdu, "expstatsn", None)  # not in the target's PDUs a peer may send
            if expstatsn is not None:
                conn.acknowledged(expstatsn)
        if type(pdu) is not NopOut:
            self.last_request = now
        try:
            if isinstance(pdu, DataOut):
                self._data_out(pdu)
            elif isinstance(pdu, (ScsiCommand, NopOut, TaskMgmtRequest, TextRequest, LogoutRequest)):
                self._ordered(pdu, now)
            elif isinstance(pdu, SnackRequest):
                self._snack(pdu)
            elif isinstance(pdu, LoginRequest):
                raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, "Login Request in Full Feature Phase")
            else:
                raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, f"{type(pdu).__name__} from an initiator")
        except ProtocolViolation as e:
            self._reject(pdu.encode_bhs(), e.reason, str(e))

    def _counts(self) -> dict[str, int]:
        return {"read_bytes": self.bytes_read, "written_bytes": self.bytes_written, "io_errors": self.io_errors}

    def _event(self, what: str, level: int = logging.INFO, /, **fields: object) -> None:
        """An event about this session, with the identities it knows."""
        self.server.event(what, level, peer=self.conn.link.peer, initiator=self.params.initiator_name,
                          target=self.params.target_name, **fields)

    def reject(self, bhs: bytes, reason: RejectReason, why: str, cid: int | None = None) -> list[Action]:
        """Reject a PDU the transport could not decode (§11.17)."""
        if self._on(cid):
            self._reject(bhs, reason, why)
        return self._actions()

    def data_digest_error(self, bhs: bytes, why: str, cid: int | None = None) -> list[Action]:
        """A PDU whose data failed its digest (§7.8) on the connection
        ``cid``: it is rejected. From ERL 1 a Data-Out's place in its
        sequence still counts and its data is asked for again with a
        recovery R2T (§7.4); a command with immediate data is retried by the
        initiator."""
        if not self._on(cid):
            return self._actions()
        self._reject(bhs, RejectReason.DATA_DIGEST_ERROR, why)
        if self.conn.recovery is not None:
            pdu = _header_only(bhs)
            if isinstance(pdu, DataOut):
                try:
                    self._data_out(pdu, lost=int.from_bytes(bhs[5:8], "big"))
                except ProtocolViolation:
                    pass  # not a Data-Out the session waits for: rejected once already, that is all
        return self._actions()

    def _reject(self, bhs: bytes, reason: RejectReason, why: str) -> None:
        self._event("iscsi.reject", reason=reason.name, why=why)
        self._send(Reject(reason=reason, statsn=self._statsn(), expcmdsn=self.expcmdsn,
                          maxcmdsn=self.maxcmdsn, data=bhs))

    def _ordered(self, pdu: ScsiCommand | NopOut | TaskMgmtRequest | TextRequest | LogoutRequest,
                 now: float) -> None:
        """§4.2.2.1: deliver commands in CmdSN order; drop those outside the window."""
        if pdu.immediate:
            self._deliver(pdu, now)
            return
        sn = pdu.cmdsn
        if sn == self.expcmdsn:
            self.expcmdsn = (sn + 1) & 0xFFFFFFFF
            self._deliver(pdu, now)
            while self.expcmdsn in self.pending:
                self._deliver_waiting(self.pending.pop(self.expcmdsn), now)
        elif sn_lt(self.expcmdsn, sn) and not sn_lt(self.maxcmdsn, sn) and sn not in self.pending:
            self.pending[sn] = (pdu, self.conn)
        else:  # outside the window, or a duplicate within it: no answer (§4.2.2.1)
            self._event("iscsi.cmdsn_dropped", cmdsn=sn, expcmdsn=self.expcmdsn, maxcmdsn=self.maxcmdsn)

    def _deliver_waiting(self, waiting: tuple[Pdu, ConnectionState], now: float) -> None:
        """A command that waited for its CmdSN, on the connection it came on;
        if that one has gone meanwhile, the command went with it (§4.2.2.3)."""
        self.expcmdsn = (self.expcmdsn + 1) & 0xFFFFFFFF
        pdu, conn = waiting
        if not conn.alive:
            self._event("iscsi.cmdsn_skipped", cmdsn=self.expcmdsn - 1 & 0xFFFFFFFF, cid=conn.cid)
            return
        here = self.conn
        self.conn = conn
        try:
            self._deliver(pdu, now)
        finally:
            self.conn = here

    def _deliver(self, pdu: Pdu, now: float) -> None:
        try:
            if isinstance(pdu, ScsiCommand):
                self._command(pdu)
            elif isinstance(pdu, NopOut):
                self._nop_out(pdu)
            elif isinstance(pdu, TaskMgmtRequest):
                self._task_management(pdu)
            elif isinstance(pdu, TextRequest):
                self._text(pdu)
            elif isinstance(pdu, LogoutRequest):
                self._logout(pdu, now)
        except ProtocolViolation as e:
            self._reject(pdu.encode_bhs(), e.reason, str(e))

    # -- timers -----------------------------------------------------------------

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` has something to do next, or None."""
        when = self._keepalive_due()
        for due in (*(c.retain_until for c in self.failed), self.logout.deadline if self.logout else None,
                    self._idle_end(), self._data_sweep_due()):
            if due is not None and (when is None or due < when):
                when = due
        return when

    def _keepalive_due(self) -> float | None:
        """The earliest ping to send, or to give up waiting for (§11.19)."""
        when = None
        if self.keepalive.interval > 0 and not (self.closed or self.ending):
            for conn in self.conns.values():
                if conn.ending:
                    continue
                if conn.ping_sent is not None:
                    due = conn.ping_sent + self.keepalive.timeout
                else:
                    due = conn.last_rx + self.keepalive.interval
                if when is None or due < when:
                    when = due
        return when

    def _data_sweep_due(self) -> float | None:
        """ERL >= 1: the next look for writes whose Data-Out stopped, while
        any write gathers data on a live connection."""
        watch = self.data_watch
        if watch is None or not self.collecting or not self.conns:
            return None
        return watch.at

    def _idle_end(self) -> float | None:
        """When a Discovery session that asks nothing more is ended: its
        answers to our pings keep it alive but are no reason to keep it."""
        if not self.discovery or self.discovery_timeout <= 0 or self.closed or self.ending:
            return None
        return self.last_request + self.discovery_timeout

    def handle_timer(self, now: float) -> list[Action]:
        """Run what is due at ``now``: a Logout Response that waited long
        enough, the keepalive ping (§11.19) or giving up on its answer, the
        end of an idle Discovery session."""
        self.now = now
        if self.logout is not None and now >= self.logout.deadline:
            self._answer_logout()
        if self.keepalive.interval > 0 and not (self.closed or self.ending):
            for conn in list(self.conns.values()):
                if not conn.ending:
                    self.conn = conn
                    self._keepalive(conn, now)
        idle_end = self._idle_end()
        if idle_end is not None and now >= idle_end:
            self._event("iscsi.idle_timeout", why=f"no request for {self.discovery_timeout:g} s")
            self._close_connection(DropReason.IDLE_TIMEOUT, after_send=False)
        if self.failed:
            self._expire(now)
        if self.data_watch is not None and self.data_watch.due(now) and not self.closed:
            self._sweep_data_out(now)
        return self._actions()

    def _sweep_data_out(self, now: float) -> None:
        """ERL >= 1: writes still waiting for Data-Out that made no progress
        since the last sweep (:class:`~target.recovery.DataOutWatch`) lost
        their last Data-Out, or the R2T that asked for it: a recovery R2T
        asks for what is missing. Writes waiting for write credit, or
        allegiant to a failed connection (ERL 2), are not waiting for the
        initiator."""
        assert self.data_watch is not None
        waiting = {task: (task.received, task.r2tsn) for task in self.collecting
                   if task.conn is not None and task.conn.alive and self._awaits_data(task)}
        for task in self.data_watch.sweep(waiting, now):
            assert isinstance(task, Task) and task.conn is not None
            self.conn = task.conn  # §5.1: the R2T goes where the command came from
            self._ask_again(task)

    @staticmethod
    def _awaits_data(task: Task) -> bool:
        """Whether ``task`` has asked for Data-Out (an R2T, or its
        unsolicited burst) that has not all arrived."""
        return bool(task.outstanding) or task.unsolicited_next < task.unsolicited_end

    def _ask_again(self, task: Task) -> None:
        """§11.8 sequence reception timeout: each R2T whose data stopped
        short, and the unsolicited burst if it did, is closed (a late
        Data-Out for it gets a Reject) and a recovery R2T asks for exactly
        the bytes past the last Data-Out received (data comes in order:
        DataPDUInOrder is Yes)."""
        assert task.outstanding is not None
        missing: list[tuple[int, int]] = []
        for ttt, r2t in list(task.outstanding.items()):
            end = r2t.offset + r2t.length
            if r2t.end < end:
                del task.outstanding[ttt]
                missing.append((r2t.end, end - r2t.end))
        if task.unsolicited_next < task.unsolicited_end:
            missing.append((task.unsolicited_next, task.unsolicited_end - task.unsolicited_next))
            task.unsolicited_end = task.unsolicited_next  # the rest comes by R2T now
        for offset, length in sorted(missing):
            self._recovery_r2t(task, offset, length)

    def _keepalive(self, conn: ConnectionState, now: float) -> None:
        """§11.19 on one connection: ping it when idle, end it when the
        answer does not come."""
        if conn.ping_sent is not None:
            if now >= conn.ping_sent + self.keepalive.timeout:
                self._event("iscsi.nop_timeout")
                self._close_connection(DropReason.NOP_TIMEOUT, after_send=False)
        elif now >= conn.last_rx + self.keepalive.interval:
            self._ping(now)

    def _close_connection(self, reason: DropReason, after_send: bool = True) -> None:
        """End the connection at hand; the session ends with its last one."""
        conn = self.conn
        conn.ending = True
        if all(c.ending for c in self.conns.values()):
            self.ending = True
        self._out.append(Close(reason, after_send, conn.cid))

    def _expire(self, now: float) -> None:
        """ERL 2: the tasks of a failed connection that no TASK REASSIGN
        claimed within Time2Wait + Time2Retain are dropped (§13.16); a
        session left with no connection then ends."""
        for conn in [c for c in self.failed if c.retain_until is not None and now >= c.retain_until]:
            self.failed.remove(conn)
            dropped = len(self._allegiant(conn)) + len(conn.retained)
            self._end_tasks_of(conn)
            self._event("iscsi.tasks_expired", cid=conn.cid, tasks=dropped)
        if not self.conns and not self.failed:
            self.close(DropReason.CONNECTION_LOST)

    # -- NOP ------------------------------------------------------------------

    def _nop_out(self, pdu: NopOut) -> None:
        """§11.18: answer pings; a NOP-Out with ITT 0xffffffff answers ours."""
        if pdu.itt == RESERVED_TAG:
            if pdu.ttt == self.conn.ping_ttt:
                self.conn.ping_sent = None
            return
        data = bytes(pdu.data)[: self.conn.max_recv]
        self._send(NopIn(lun=pdu.lun, itt=pdu.itt, ttt=RESERVED_TAG, statsn=self._statsn(),
                         expcmdsn=self.expcmdsn, maxcmdsn=self.maxcmdsn, data=data))

    def _ping(self, now: float) -> None:
        """A NOP-In that asks the initiator for a NOP-Out (§11.19); StatSN is
        not advanced because no status is carried."""
        self.ping_ttt = (self.ping_ttt % 0xFFFF) + 1 | 0x80000000
        self.conn.ping_ttt = self.ping_ttt
        self.conn.ping_sent = now
        self._send(NopIn(ttt=self.ping_ttt, itt=RESERVED_TAG, statsn=self.statsn,
                         expcmdsn=self.expcmdsn, maxcmdsn=self.maxcmdsn))

    # -- SCSI commands ----------------------------------------------------------

    def _command(self, cmd: ScsiCommand) -> None:
        if self.discovery:
            raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, "SCSI command in a Discovery session")
        if cmd.itt in self.tasks:
            raise ProtocolViolation(RejectReason.TASK_IN_PROGRESS, f"ITT {cmd.itt:#x} already in use")
        data = cmd.data
        if data and not self.params.immediate_data:
            raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, "immediate data not negotiated")
        if len(data) > cmd.edtl or len(data) > self.params.first_burst_length:
            raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, "more immediate data than allowed")
        if data and not cmd.write:
            raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, "data with a command that is not a write")
        task = Task(cmd, lun_from_field(cmd.lun), cmd.full_cdb, conn=self.conn)
        self.tasks[cmd.itt] = task
        if not cmd.write:
            self._execute(task, None)
            return
        wanted = self._wanted(task)
        if cmd.final or self.params.initial_r2t:
            unsolicited_end = len(data)
        else:
            unsolicited_end = min(self.params.first_burst_length, cmd.edtl)
        if max(wanted, unsolicited_end) > len(data):
            self._collect(task, data, wanted, unsolicited_end)
        else:
            self._execute(task, memoryview(data)[:wanted])

    def _wanted(self, task: Task) -> int:
        """§11.4.5.2: the Data-Out a write is given is what its CDB asks for,
        whatever Expected Data Transfer Length announced (the residual
        reports the difference); a command that fails before taking data
        (no such LUN, an unknown opcode) is given none."""
        lun = self.target.luns.get(task.lun) if self.target is not None else None
        if lun is None or task.cdb[0] == REPORT_LUNS:
            return 0
        return min(task.cmd.edtl, lun.data_out_length(task.cdb))

    def _collect(self, task: Task, data: bytes, wanted: int, unsolicited_end: int) -> None:
        """Gather a write's Data-Out (§4.2.5): unsolicited data up to
        ``unsolicited_end``, then R2Ts for the rest of ``wanted``. Only the
        first ``wanted`` bytes are kept, in a buffer that grows as they
        arrive; memory follows the data sent, never the length announced."""
        task.wanted = wanted
        task.buffer = bytearray(data[:wanted])
        task.received = len(data)
        task.unsolicited_end = unsolicited_end
        task.next_r2t_offset = unsolicited_end
        task.unsolicited_next = len(data)
        task.outstanding = {}
        # unsolicited data is the initiator's to send: it takes credit unasked
        self._take_credit(task, min(wanted, unsolicited_end))
        self.collecting[task] = None
        if self.data_watch is not None:
            self.data_watch.start(self.now)
        self._send_r2ts(task)

    def _take_credit(self, task: Task, n: int) -> None:
        task.credit += n
        self.write_credit += n

    def _release(self, task: Task) -> None:
        """``task`` is over: its write data no longer counts against the
        session's limit (writes waiting for it go on in :meth:`_resume_writes`)."""
        self.collecting.pop(task, None)
        self.write_credit -= task.credit
        task.credit = 0

    def _resume_writes(self) -> None:
        """Credit was freed or the oldest write has its data: the writes
        that waited may solicit theirs."""
        for waiting in list(self.collecting):
            self._send_r2ts(waiting)

    def _send_r2ts(self, task: Task) -> None:
        """§4.2.5.2: solicit the rest, at most MaxOutstandingR2T at a time
        and, but for the oldest write, within the session's write limit."""
        p = self.params
        wanted = task.wanted
        assert task.outstanding is not None
        conn = task.conn or self.conn
        if not conn.alive:
            return  # ERL 2: solicited again once the task is reassigned
        oldest = next(iter(self.collecting)) is task
        while task.next_r2t_offset < wanted and len(task.outstanding) < p.max_outstanding_r2t:
            length = min(p.max_burst_length, wanted - task.next_r2t_offset)
            if not oldest and self.write_credit + length > self.write_limit:
                break
            self._take_credit(task, length)
            ttt = self._ttt()
            task.outstanding[ttt] = R2TState(task.next_r2t_offset, length, r2tsn=task.r2tsn,
                                             end=task.next_r2t_offset)
            self._out.append(Send(R2T(lun=task.cmd.lun, itt=task.itt, ttt=ttt, statsn=conn.statsn,
                                      expcmdsn=self.expcmdsn, maxcmdsn=self.maxcmdsn, r2tsn=task.r2tsn,
                                      buffer_offset=task.next_r2t_offset, desired_length=length),
                                  None, None, conn.cid))
            task.r2tsn += 1
            task.next_r2t_offset += length

    def _data_out(self, pdu: DataOut, lost: int = 0) -> None:
        """A Data-Out (§11.7). ``lost`` is the length of one whose data failed
        its digest (ERL >= 1, §7.8): it keeps its place in the sequence and
        its bytes are asked for again with a recovery R2T."""
        task = self.tasks.get(pdu.itt)
        if task is None or task.buffer is None or task.outstanding is None:
            raise ProtocolViolation(RejectReason.INVALID_PDU_FIELD, f"Data-Out for unknown ITT {pdu.itt:#x}")
        if task.conn is not self.conn:
            # §5.1: a task's Data-Out comes on the connection its command came on
            raise ProtocolViolation(RejectReason.PROTOCOL_ERROR,
                                    f"Data-Out for ITT {pdu.itt:#x} on another connection than its command")
        n = lost or len(pdu.data)
        end = pdu.buffer_offset + n
        if pdu.ttt == RESERVED_TAG:
            if end > task.unsolicited_end:
                # past FirstBurstLength, or late: after a recovery R2T asked for it (_ask_again)
                raise ProtocolViolation(RejectReason.PROTOCOL_ERROR,
                                        "unsolicited data beyond FirstBurstLength or already asked for by R2T")
            r2t = None
            expected_datasn = task.unsolicited_datasn
            task.unsolicited_datasn += 1
        else:
            r2t = task.outstanding.get(pdu.ttt)
            if r2t is None:
                raise ProtocolViolation(RejectReason.INVALID_PDU_FIELD, f"Data-Out with unknown TTT {pdu.ttt:#x}")
            if pdu.buffer_offset < r2t.offset or end > r2t.offset + r2t.length:
                raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, "Data-Out outside its R2T")
            expected_datasn = r2t.datasn
            r2t.datasn += 1
        if pdu.datasn != expected_datasn:
            self._datasn_gap(task, r2t, pdu, expected_datasn)
        if end > task.cmd.edtl:
            raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, "Data-Out beyond the expected length")
        if lost:
            self._recovery_r2t(task, pdu.buffer_offset, n)
        else:
            _keep(task, pdu.buffer_offset, pdu.data)
            task.received += n
        if r2t is not None:
            r2t.received += n
            r2t.end = end
            if pdu.final or r2t.received >= r2t.length:
                del task.outstanding[pdu.ttt]
                self._send_r2ts(task)
        else:
            task.unsolicited_next = end
        if (task.received >= max(task.wanted, task.unsolicited_end) and not task.outstanding
                and task.next_r2t_offset >= task.wanted):
            self.collecting.pop(task, None)
            self._resume_writes()
            self._execute(task, memoryview(task.buffer))

    def _datasn_gap(self, task: Task, r2t: R2TState | None, pdu: DataOut, expected: int) -> None:
        """A Data-Out out of sequence (§7.1.4). At ERL 0 only a new session
        recovers. From ERL 1 the Data-Outs skipped were lost (a digest error
        the framing dropped): a recovery R2T asks for the bytes between the
        last one received and this one (§7.4; DataPDUInOrder is Yes)."""
        if self.conn.recovery is None:
            raise SessionFailure(f"Data-Out DataSN {pdu.datasn}, expected {expected}")
        start = task.unsolicited_next if r2t is None else r2t.end
        if not sn_lt(expected, pdu.datasn) or pdu.buffer_offset <= start:
            raise ProtocolViolation(RejectReason.PROTOCOL_ERROR,
                                    f"Data-Out DataSN {pdu.datasn} at offset {pdu.buffer_offset}, expected "
                                    f"DataSN {expected} after offset {start}")
        if r2t is None:
            task.unsolicited_datasn = (pdu.datasn + 1) & 0xFFFFFFFF
        else:
            r2t.datasn = (pdu.datasn + 1) & 0xFFFFFFFF
            r2t.received += pdu.buffer_offset - start
        self._recovery_r2t(task, start, pdu.buffer_offset - start)

    def _recovery_r2t(self, task: Task, offset: int, length: int) -> None:
        """§7.4: ask again for ``length`` bytes at ``offset`` that were lost,
        in R2Ts of at most MaxBurstLength. Their write credit was taken when
        the data was first solicited (or sent unasked)."""
        assert task.outstanding is not None
        self._event("iscsi.recovery_r2t", logging.WARNING, itt=task.itt, offset=offset, length=length)
        end = offset + length
        while offset < end:
            n = min(self.params.max_burst_length, end - offset)
            ttt = self._ttt()
            task.outstanding[ttt] = R2TState(offset, n, r2tsn=task.r2tsn, end=offset)
            # on the connection at hand: the Data-Out it answers came on it (allegiance, §5.1)
            self._send(R2T(lun=task.cmd.lun, itt=task.itt, ttt=ttt, statsn=self.statsn, expcmdsn=self.expcmdsn,
                           maxcmdsn=self.maxcmdsn, r2tsn=task.r2tsn, buffer_offset=offset, desired_length=n))
            task.r2tsn += 1
            offset += n

    def _execute(self, task: Task, data_out: memoryview | None) -> None:
        cdb = task.cdb
        target = self.target
        assert target is not None
        lun = target.luns.get(task.lun)
        if cdb[0] == REPORT_LUNS:
            self._respond(task, report_luns(sorted(target.luns), cdb))
            return
        if cdb[0] == MAINTENANCE_IN and lun is not None and is_report_target_port_groups(cdb):
            self._respond(task, target_port_groups(self.server.port_groups, cdb))
            return
        if lun is None:
            self._respond(task, no_such_lun(cdb))
            return
        if not self.first_read_seen and cdb[0] in (0x08, 0x28, 0xA8, 0x88):
            self.first_read_seen = True
            self._event("iscsi.first_read", lun=task.lun)
        self.executing.add(task)
        self._out.append(Execute(task, lun, data_out))

    def command_done(self, task: Task, result: ScsiResult,
                     segments: Sequence[Segment] | None = None) -> list[Action]:
        """``task`` ran (an :class:`~target.actions.Execute`): send its data
        and status. ``segments`` stand in for ``result.data`` when the
        transport made them ready to send (read from the page cache, or
        bytes for a data digest)."""
        if task in self.executing:
            self.executing.discard(task)
            if type(task) is Resend:
                self._resend_data(task, result, segments)
            elif not task.aborted:
                conn = task.conn or self.conn
                if conn.alive:
                    self.conn = conn  # §5.1: data and status go where the command came from
                    self._respond(task, result, segments)
                else:
                    self._hold(task, conn, result, segments)
                if (result.status == ScsiStatus.GOOD and task.cdb[0] == PERSISTENT_RESERVE_OUT
                        and task.cdb[1] & 0x1F == PrOut.PREEMPT_AND_ABORT):
                    self._abort_preempted(task.lun)
            if self.logout is not None and not self.executing:
                self._answer_logout()
        return self._actions()

    def _hold(self, task: Task, conn: ConnectionState, result: ScsiResult,
              segments: Sequence[Segment] | None) -> None:
        """ERL 2: ``task`` completed while its connection was down; its
        data and status wait for a TASK REASSIGN (§7.2.2)."""
        self.tasks.pop(task.itt, None)
        if task.buffer is not None:
            self._release(task)
            self._resume_writes()
        conn.keep(task.itt, Retained(task, result, segments, None))

    def _abort_preempted(self, lun_id: int) -> None:
        """PREEMPT AND ABORT (SPC-4 §5.12.11.4.5): the tasks the preempted
        I_T nexuses have on the LUN end without status, as for ABORT TASK SET."""
        target = self.target
        lun = target.luns.get(lun_id) if target is not None else None
        if target is None or lun is None:
            return
        for s in list(target.sessions):
            if s.nexus in lun.pr.preempted:
                for task in [t for t in s.tasks.values() if t.lun == lun_id]:
                    s._abort(task)

    def command_failed(self, task: Task, error: BaseException) -> list[Action]:
        """``task`` raised instead of returning a result: a bug or an
        unexpected backend failure. The initiator retries a BUSY."""
        self._event("iscsi.command_failed", logging.ERROR, cdb=task.cdb.hex(), why=repr(error))
        return self.command_done(task, ScsiResult(ScsiStatus.BUSY))

    def _respond_kept(self, task: Task, result: ScsiResult, segments: Sequence[Segment] | None = None) -> None:
        """:meth:`_respond` at ERL 2: the response is kept until the
        initiator acknowledges its status (target.allegiance)."""
        Session._respond(self, task, result, segments)
        conn = self.conn
        conn.keep(task.itt, Retained(task, result, segments, (conn.statsn - 1) & 0xFFFFFFFF))

    def _respond(self, task: Task, result: ScsiResult, segments: Sequence[Segment] | None = None) -> None:
        """Data-In PDUs then status (§11.7, §11.4), residuals per §11.4.5."""
        if segments is None:
            segments = result.data
        cmd = task.cmd
        self.tasks.pop(task.itt, None)
        if task.buffer is not None:
            self._release(task)
            self._resume_writes()
        if self._read_in_one_pdu(cmd, result, segments):
            return
        edtl = cmd.edtl
        if cmd.write:
            wanted = result.data_out_length if result.data_out_length is not None else edtl
        else:
            wanted = segments_length(segments)
        overflow = wanted > edtl
        underflow = wanted < edtl
        residual = abs(wanted - edtl)
        good = result.status == ScsiStatus.GOOD and not result.sense
        self._count(task, good, min(wanted, edtl), result.sense)
        datasn = 0
        if segments and not cmd.write and min(wanted, edtl) > 0:
            # the status StatSN, taken by the last Data-In or the SCSI Response after them
            datasn = self._send_read(segments, ReadRecord(
                cmd, wanted, min(wanted, edtl), 0, self.conn.max_recv, self.params.max_burst_length, self.statsn,
                result.status, good, overflow, underflow, residual if (overflow or underflow) else 0))
            if good:
                return
        elif cmd.write:
            datasn = task.r2tsn
        sense = result.sense
        data = len(sense).to_bytes(2, "big") + sense if sense else b""
        self._send(ScsiResponse(
            overflow=overflow, underflow=underflow, response=0, status=result.status, itt=cmd.itt,
            statsn=self._statsn(), expcmdsn=self.expcmdsn, maxcmdsn=self.maxcmdsn, expdatasn=datasn,
            residual=residual if (overflow or underflow) else 0, data=data))

    def _count(self, task: Task, good: bool, moved: int, sense: bytes) -> None:
        """Bytes read and written; a command that failed on the medium is
        an ``iscsi.io_error`` (the first of the session only: a dying disk
        fails every command)."""
        if good:
            if task.cmd.write:
                self.bytes_written += moved
            else:
                self.bytes_read += moved
            return
        key = _sense_key(sense)
        if key in (MEDIUM_ERROR, HARDWARE_ERROR):
            self.io_errors += 1
            if self.io_errors == 1:
                self._event("iscsi.io_error", logging.WARNING, lun=task.lun, cdb=task.cdb[:1].hex(),
                            sense_key=key)

    def _read_in_one_pdu(self, cmd: ScsiCommand, result: ScsiResult, segments: Sequence[Segment]) -> bool:
        """The boot's hot path: a good READ whose data and status fit one
        Data-In (§11.7.4) is sent without the general splitting."""
        if not segments or cmd.write or result.status != ScsiStatus.GOOD or result.sense:
            return False
        n = segments_length(segments)
        if n != cmd.edtl or n > self.conn.max_recv or n > self.params.max_burst_length:
            return False
        self.bytes_read += n
        statsn = self._statsn()
        self._out.append(Send(DataIn(final=True, status_present=True, status=ScsiStatus.GOOD, lun=cmd.lun,
                                     itt=cmd.itt, statsn=statsn, expcmdsn=self.expcmdsn,
                                     maxcmdsn=self.maxcmdsn), segments, n, self.conn.cid))
        recovery = self.conn.recovery
        if recovery is not None:
            recovery.reads.keep(ReadRecord(cmd, n, n, 1, self.conn.max_recv, self.params.max_burst_length,
                                           statsn, ScsiStatus.GOOD))
        return True

    def _send_read(self, segments: Sequence[Segment], read: ReadRecord) -> int:
        """A read's Data-In; from ERL 1 kept (without data) for Data SNACKs
        by the connection they go out on, with DataACK asked at each burst's
        end of a long one (§11.7.2)."""
        recovery = self.conn.recovery
        if recovery is None:
            return self._send_data_in(segments, read)
        if read.length > read.burst:
            read.ttt = self._ttt()
        read.count = self._send_data_in(segments, read)
        recovery.reads.keep(read)
        return read.count

    def _send_data_in(self, segments: Sequence[Segment], read: ReadRecord, only: range | None = None,
                      again: bool = False) -> int:
        """Split ``read.length`` bytes of ``segments`` into Data-In PDUs no
        larger than ``read.mrdsl`` (the initiator's MaxRecvDataSegmentLength
        on the connection at hand), sequences no longer than ``read.burst``
        (F bit at each end, §11.7.1), the last with the status if
        ``read.with_status``; returns the count. They go on the connection
        at hand. Sent ``again`` (a SNACK), only DataSNs in ``only`` go, and
        StatSN does not move."""
        mrdsl, burst, length, cmd = read.mrdsl, read.burst, read.length, read.cmd
        cid = self.conn.cid
        # the common case, one PDU carrying all the data, needs no slicing
        parts = None if length <= min(mrdsl, burst) and read.total == length else _Cursor(segments)
        offset = 0
        datasn = 0
        expcmdsn, maxcmdsn = self.expcmdsn, self.maxcmdsn
        statsn = read.statsn
        ack_ttt = read.ttt  # RESERVED_TAG unless DataACK is asked (ERL >= 1)
        out = self._out
        while offset < length:
            n = min(mrdsl, length - offset, burst - offset % burst)
            last = offset + n >= length
            end_of_burst = last or (offset + n) % burst == 0
            pieces = segments if parts is None else parts.take(n)
            if only is not None and datasn not in only:
                pass
            elif last and read.with_status:
                if not again:
                    self._statsn()
                pdu = DataIn(final=True, status_present=True, status=read.status, overflow=read.overflow,
                             underflow=read.underflow, residual=read.residual, lun=cmd.lun, itt=cmd.itt,
                             statsn=statsn, expcmdsn=expcmdsn, maxcmdsn=maxcmdsn, datasn=datasn,
                             buffer_offset=offset)
                out.append(Send(pdu, pieces, length if parts is None else None, cid))
            else:
                ack = end_of_burst and ack_ttt != RESERVED_TAG
                pdu = DataIn(final=end_of_burst, ack=ack, itt=cmd.itt, lun=cmd.lun, statsn=statsn,
                             ttt=ack_ttt if ack else RESERVED_TAG, expcmdsn=expcmdsn, maxcmdsn=maxcmdsn,
                             datasn=datasn, buffer_offset=offset)
                out.append(Send(pdu, pieces, length if parts is None else None, cid))
            offset += n
            datasn += 1
        return datasn

    # -- SNACK (ERL >= 1) -----------------------------------------------------------

    def _snack(self, pdu: SnackRequest) -> None:
        """§11.16: the initiator asks again for what it lost, or acknowledges
        Data-In. At ERL 0 there is no SNACK (§7.1.4.1). A SNACK names what
        went on its own connection: StatSN, the reads kept and R2Ts are the
        connection's (§4.2.2.2, §5.1)."""
        recovery = self.conn.recovery
        if recovery is None:
            raise ProtocolViolation(RejectReason.SNACK_REJECT, "SNACK at ErrorRecoveryLevel 0")
        handler = _SNACK_HANDLERS.get(pdu.type)
        try:
            if handler is None:
                raise SnackError(RejectReason.PROTOCOL_ERROR, f"SNACK of unknown type {pdu.type}")
            handler(self, pdu, recovery)
        except SnackError as e:
            raise ProtocolViolation(e.reason, str(e)) from e

    def _data_snack(self, pdu: SnackRequest, recovery: Recovery) -> None:
        """Data/R2T SNACK: R2Ts of a write still gathering its data, by
        R2TSN; else Data-In of a read, by DataSN, read again from the LUN."""
        task = self.tasks.get(pdu.itt)
        if task is not None and task.outstanding is not None:
            self._r2t_snack(task, pdu)
            return
        read = recovery.reads.find(pdu.itt)
        self._read_again(read, snack_run(pdu.begrun, pdu.runlength, read.count, read.acked), 0, pdu)

    def _r2t_snack(self, task: Task, pdu: SnackRequest) -> None:
        """R2Ts named by R2TSN go again as they were; those already
        answered in full are not asked again (their data is here)."""
        assert task.outstanding is not None
        if task.conn is not self.conn:
            raise SnackError(RejectReason.PROTOCOL_ERROR,
                             f"R2T SNACK for ITT {task.itt:#x} on another connection than its command")
        run = snack_run(pdu.begrun, pdu.runlength, task.r2tsn, what="R2TSN")
        for ttt, r2t in task.outstanding.items():
            if r2t.r2tsn not in run:
                continue
            if r2t.received:
                raise SnackError(RejectReason.PROTOCOL_ERROR,
                                 f"R2T SNACK for R2TSN {r2t.r2tsn}, whose data is arriving")
            self._send(R2T(lun=task.cmd.lun, itt=task.itt, ttt=ttt, statsn=self.statsn, expcmdsn=self.expcmdsn,
                           maxcmdsn=self.maxcmdsn, r2tsn=r2t.r2tsn, buffer_offset=r2t.offset,
                           desired_length=r2t.length))

    def _rdata_snack(self, pdu: SnackRequest, recovery: Recovery) -> None:
        """R-Data SNACK (§11.16.1, §7.4.1): every Data-In again, cut for the
        initiator's MaxRecvDataSegmentLength now, then a SCSI Response with
        the SNACK Tag and the status's StatSN (§11.4)."""
        read = recovery.reads.find(pdu.itt)
        if pdu.ttt in (0, RESERVED_TAG) or pdu.begrun or pdu.runlength:
            raise SnackError(RejectReason.PROTOCOL_ERROR, "R-Data SNACK without a SNACK Tag, or with a run")
        if read.acked or read.status != ScsiStatus.GOOD or not read.with_status:
            raise SnackError(RejectReason.SNACK_REJECT,
                             "R-Data SNACK for a read with acknowledged data or without GOOD status")
        self._read_again(read, None, pdu.ttt, pdu)

    def _read_again(self, read: ReadRecord, run: range | None, snack_tag: int, pdu: SnackRequest) -> None:
        """Run the read again on its LUN (the data is not kept); the Data-In
        go in :meth:`_resend_data`."""
        target = self.target
        lun_id = lun_from_field(read.cmd.lun)
        lun = target.luns.get(lun_id) if target is not None else None
        if lun is None:
            raise SnackError(RejectReason.SNACK_REJECT, f"Data SNACK for ITT {read.itt:#x}: its LUN is gone")
        # the Data-In go again on the connection the SNACK came on (the read's: its store found it)
        task = Resend(read.cmd, lun_id, read.cmd.full_cdb, conn=self.conn, record=read, run=run,
                      snack_tag=snack_tag, snack=pdu.encode_bhs())
        self.executing.add(task)
        self._out.append(Execute(task, lun, None))

    def _resend_data(self, task: Resend, result: ScsiResult, segments: Sequence[Segment] | None) -> None:
        read, conn = task.record, task.conn
        assert read is not None and conn is not None
        if not conn.alive or self.closed:
            return  # the connection the SNACK came on has gone, with what it kept
        self.conn = conn
        if segments is None:
            segments = result.data
        if result.status != read.status or segments_length(segments) < read.total:
            self._reject(task.snack, RejectReason.SNACK_REJECT, "the data could not be read again")
            return
        if not task.snack_tag:
            self._send_data_in(segments, read, task.run, again=True)
            return
        again = replace(read, mrdsl=conn.max_recv, with_status=False)
        again.count = self._send_data_in(segments, again, again=True)
        self._send(ScsiResponse(overflow=read.overflow, underflow=read.underflow, status=read.status,
                                itt=read.itt, snack_tag=task.snack_tag, statsn=read.statsn,
                                expcmdsn=self.expcmdsn, maxcmdsn=self.maxcmdsn, expdatasn=again.count,
                                residual=read.residual))
        if conn.recovery is not None:
            conn.recovery.reads.keep(replace(again, with_status=True))

    def _status_snack(self, pdu: SnackRequest, recovery: Recovery) -> None:
        """Status SNACK: numbered responses again, by StatSN."""
        for response in recovery.status_snack(pdu.begrun, pdu.runlength, self.statsn, self.expcmdsn,
                                              self.maxcmdsn):
            self._send(response)

    def _data_ack(self, pdu: SnackRequest, recovery: Recovery) -> None:
        """DataACK SNACK (§11.16.1): Data-In below BegRun arrived; no answer."""
        recovery.reads.data_ack(pdu.ttt, pdu.begrun)

    # -- task management --------------------------------------------------------

    def _task_management(self, req: TaskMgmtRequest) -> None:
        """§11.5: answer once the affected tasks are gone (ERL 0, no task
        reassignment)."""
        self.reassigned = None
        response = self._tmf(req)
        self._resume_writes()
        self._send(TaskMgmtResponse(response=response, itt=req.itt, statsn=self._statsn(),
                                    expcmdsn=self.expcmdsn, maxcmdsn=self.maxcmdsn))
        if self.reassigned is not None:
            moved, old = self.reassigned
            # DataSN counts PDUs: it names the same data only if they are as long here
            self._resume_reassigned(moved, req.expdatasn if old.max_recv == self.conn.max_recv else 0)
        if req.function == TmfFunction.TARGET_COLD_RESET and response == TmfResponse.FUNCTION_COMPLETE:
            # §11.5.1: a cold reset also ends every connection to the target
            for s in list(self.target.sessions if self.target else ()):
                if s is not self:
                    self.server.drop_after_send(s, DropReason.TARGET_RESET)
            self._out.append(Close(DropReason.TARGET_RESET))

    def _tmf(self, req: TaskMgmtRequest) -> TmfResponse:
        fn = req.function
        target = self.target
        if target is None:
            return TmfResponse.REJECTED
        lun_id = lun_from_field(req.lun)
        self._event("iscsi.task_management", function=fn.name if isinstance(fn, TmfFunction) else fn,
                    lun=lun_id)
        if fn in _LUN_FUNCTIONS and lun_id not in target.luns:
            return TmfResponse.LUN_DOES_NOT_EXIST
        handler = _TMF_HANDLERS.get(fn)
        if handler is None:
            return TmfResponse.NOT_SUPPORTED
        return handler(self, req, target, lun_id)

    def _abort_task(self, req: TaskMgmtRequest, target: Target, lun_id: int) -> TmfResponse:
        task = self.tasks.get(req.rtt)
        if task is None:
            # §11.5.1: a task that completed already counts as aborted
            return (TmfResponse.FUNCTION_COMPLETE if sn_lt(req.refcmdsn, self.expcmdsn)
                    else TmfResponse.TASK_DOES_NOT_EXIST)
        self._abort(task)
        return TmfResponse.FUNCTION_COMPLETE

    def _abort_task_set(self, req: TaskMgmtRequest, target: Target, lun_id: int) -> TmfResponse:
        for task in [t for t in self.tasks.values() if t.lun == lun_id]:
            self._abort(task)
        return TmfResponse.FUNCTION_COMPLETE

    def _lun_reset(self, req: TaskMgmtRequest, target: Target, lun_id: int) -> TmfResponse:
        for s in list(target.sessions):
            for task in [t for t in s.tasks.values() if t.lun == lun_id]:
                s._abort(task)
        target.luns[lun_id].reset()
        return TmfResponse.FUNCTION_COMPLETE

    def _target_reset(self, req: TaskMgmtRequest, target: Target, lun_id: int) -> TmfResponse:
        for s in list(target.sessions):
            for task in list(s.tasks.values()):
                s._abort(task)
        for lun in target.luns.values():
            lun.reset(POWER_ON_RESET)
        return TmfResponse.FUNCTION_COMPLETE

    def _clear_aca(self, req: TaskMgmtRequest, target: Target, lun_id: int) -> TmfResponse:
        return TmfResponse.FUNCTION_COMPLETE  # no ACA is ever established (NACA is refused)

    def _reassign(self, req: TaskMgmtRequest, target: Target, lun_id: int) -> TmfResponse:
        """§11.5.1 TASK REASSIGN (ERL 2 only): the task ``rtt``, allegiant
        to a connection that failed or was logged out for recovery, is
        moved to the connection this request came on; what it still owes
        follows the response (:meth:`_resume_reassigned`)."""
        if not self.erl2:
            return TmfResponse.REASSIGNMENT_NOT_SUPPORTED
        task = self.tasks.get(req.rtt)
        if task is not None:
            if task.conn is not None and task.conn.alive:
                return TmfResponse.TASK_STILL_ALLEGIANT  # §11.6.1: log the connection out first
            self.reassigned = (task, task.conn or self.conn)
            return TmfResponse.FUNCTION_COMPLETE
        for conn in self.failed:
            kept = conn.retained.pop(req.rtt, None)
            if kept is not None:
                self.reassigned = (kept, conn)
                return TmfResponse.FUNCTION_COMPLETE
        if any(req.rtt in c.retained for c in self.conns.values()):
            return TmfResponse.TASK_STILL_ALLEGIANT
        return TmfResponse.TASK_DOES_NOT_EXIST

    def _resume_reassigned(self, moved: Task | Retained, expdatasn: int) -> None:
        """§7.2.2: a reassigned task carries on here. One that completed
        sends its Data-In again (from ExpDataSN) and its status; a write
        still gathering data solicits again what it has not been sent
        (R2Ts from the start: Data-Out may have been lost with the
        connection); one still running answers here when done."""
        self._event("iscsi.task_reassigned", itt=moved.task.itt if isinstance(moved, Retained) else moved.itt)
        if isinstance(moved, Retained):
            moved.task.conn = self.conn
            start = len(self._out)
            self._respond(moved.task, moved.result, moved.segments)
            self._out[start:] = [a for a in self._out[start:] if not (
                isinstance(a, Send) and isinstance(a.pdu, DataIn) and not a.pdu.status_present
                and a.pdu.datasn < expdatasn)]
            return
        task = moved
        task.conn = self.conn
        if task.buffer is not None and task in self.collecting:
            self._solicit_again(task)

    def _solicit_again(self, task: Task) -> None:
        """A write reassigned while gathering its Data-Out: R2Ts for what
        did not arrive. With data in order (DataPDUInOrder and
        DataSequenceInOrder, what the target agrees to) what arrived is a
        prefix and the R2Ts start past it, or at the first hole an ERL 1
        recovery R2T was still asking to fill; otherwise from offset 0."""
        p = self.params
        start = 0
        if p.data_pdu_in_order and p.data_sequence_in_order:
            assert task.outstanding is not None
            start = min(task.received, task.wanted,
                        *(r2t.offset + r2t.received for r2t in task.outstanding.values()))
        buffer = task.buffer
        assert buffer is not None
        del buffer[start:]
        self._release(task)
        task.received = task.unsolicited_end = task.next_r2t_offset = task.unsolicited_next = start
        task.outstanding = {}
        self._take_credit(task, start)
        if start >= task.wanted:  # it had everything: the connection failed before it ran
            self._execute(task, memoryview(buffer))
            return
        self.collecting[task] = None
        if self.data_watch is not None:
            self.data_watch.start(self.now)
        self._send_r2ts(task)

    def _abort(self, task: Task) -> None:
        task.aborted = True
        self.tasks.pop(task.itt, None)
        self.executing.discard(task)
        self._release(task)

    # -- text and discovery -----------------------------------------------------

    def _text(self, req: TextRequest) -> None:
        """§11.10: SendTargets and renegotiation, with long requests taken in
        parts (C bit; at most MAX_LOGIN_TEXT in all) and long answers split
        over several Text Responses (§11.11: C bit, TTT)."""
        if req.ttt != RESERVED_TAG:
            if self.text_reply is not None and self.text_reply[0] == req.ttt:
                self._send_text(req, self.text_reply[1])
                return
            if req.ttt != self.text_request_ttt:  # §11.10.4: a part of a request carries our TTT
                raise ProtocolViolation(RejectReason.INVALID_PDU_FIELD, "Text Request with an unknown TTT")
        self.text_reply = None
        if len(self.text_request) + len(req.data) > MAX_LOGIN_TEXT:
            self._text_too_long(req)
            return
        self.text_request += req.data
        if req.cont:
            self.text_request_ttt = self._ttt()
            self._send(TextResponse(final=False, itt=req.itt, lun=req.lun, ttt=self.text_request_ttt,
                                    statsn=self._statsn(), expcmdsn=self.expcmdsn, maxcmdsn=self.maxcmdsn))
            return
        self.text_request_ttt = RESERVED_TAG
        try:
            pairs = decode_text(self.text_request)
        except TextFormatError as e:
            self.text_request.clear()
            raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, str(e)) from e
        self.text_request.clear()
        answer: list[tuple[str, str]] = []
        for key, value in pairs:
            if key == "SendTargets":
                answer += self._send_targets(value)
                continue
            try:
                reply = renegotiate(key, value)
            except KeyValueError:
                reply = REJECT
            if reply is None:  # a declaration that may change now (§13 "Use: ALL")
                self.params.apply(key, value)
                if key == "MaxRecvDataSegmentLength":
                    self.conn.max_recv = self.params.initiator_max_recv
                continue
            if reply not in NOT_SETTLED:  # Reject (a login-only key) leaves the session's value (§6.2)
                self.params.apply(key, reply)
            answer.append((key, reply))
        self._send_text(req, encode_text(answer))

    def _text_too_long(self, req: TextRequest) -> None:
        """A request continued (C bit) past the limit login text has too: the
        peer would have us buffer without end. Reject it (§11.17.1, 0x0a:
        out of resources for the long operation) and end the connection."""
        self.text_request.clear()
        self._event("iscsi.text_too_long", logging.WARNING, limit=MAX_LOGIN_TEXT,
                    why=f"Text Request continued past {MAX_LOGIN_TEXT} bytes")
        self._send(Reject(reason=RejectReason.LONG_OPERATION_REJECT, statsn=self._statsn(),
                          expcmdsn=self.expcmdsn, maxcmdsn=self.maxcmdsn, data=req.encode_bhs()))
        self._close_connection(DropReason.PROTOCOL_ERROR)

    def _send_text(self, req: TextRequest, data: bytes) -> None:
        limit = self.conn.max_recv
        more = len(data) > limit
        if more:
            ttt = self._ttt()
            self.text_reply = (ttt, data[limit:])
            data = data[:limit]
        else:
            ttt = RESERVED_TAG
            self.text_reply = None
        self._send(TextResponse(final=not more, cont=more, lun=req.lun, itt=req.itt, ttt=ttt,
                                statsn=self._statsn(), expcmdsn=self.expcmdsn, maxcmdsn=self.maxcmdsn,
                                data=data))

    def _send_targets(self, value: str) -> list[tuple[str, str]]:
        """Appendix C / §13: every portal of each target this initiator may
        see; in a Normal session only the session's own target."""
        visible = self.server.visible_targets(self.params.initiator_name)
        if self.discovery:
            chosen = visible if value == "All" else [t for t in visible if t.name == value]
        else:
            name = self.params.target_name if value in ("", "All") else value
            chosen = [t for t in visible if t.name == name]
        out: list[tuple[str, str]] = []
        for t in chosen:
            out.append(("TargetName", t.name))
            out += [("TargetAddress", a) for a in self.server.portals(self.conn.link.local_address)]
        return out

    # -- logout -----------------------------------------------------------------

    def _logout(self, req: LogoutRequest, now: float) -> None:
        """§11.14: answer once the commands in flight have completed (or
        LOGOUT_TIMEOUT has passed). Reason 0 closes the session, 1 one
        connection (this one or, from here, another: §11.14.1), 2 removes
        one for recovery, its tasks kept for reassignment (ERL 2 only)."""
        if req.reason == LogoutReason.REMOVE_FOR_RECOVERY and not self.erl2:
            response = LogoutResponse.RECOVERY_NOT_SUPPORTED
        elif req.reason != LogoutReason.CLOSE_SESSION and self._named_connection(req.cid) is None:
            response = LogoutResponse.CID_NOT_FOUND
        else:
            response = LogoutResponse.SUCCESS
        self.logout = _PendingLogout(req, response, now + LOGOUT_TIMEOUT, self.conn)
        if not self.executing:
            self._answer_logout()

    def _named_connection(self, cid: int) -> ConnectionState | None:
        """The connection a Logout names: a live one, or (ERL 2) a failed
        one whose state is still kept (§11.14.1: its clean-up)."""
        return self.conns.get(cid) or next((c for c in self.failed if c.cid == cid), None)

    def _answer_logout(self) -> None:
        assert self.logout is not None
        req, response, self.conn = self.logout.req, self.logout.response, self.logout.conn
        self.logout = None
        if not self.conn.alive:
            return  # the connection to answer on has gone meanwhile
        self._send(LogoutResponsePdu(response=response, itt=req.itt, statsn=self._statsn(),
                                     expcmdsn=self.expcmdsn, maxcmdsn=self.maxcmdsn,
                                     time2wait=self.params.default_time2wait,
                                     time2retain=self.params.default_time2retain))
        if response != LogoutResponse.SUCCESS:
            return
        named = self._named_connection(req.cid)
        if req.reason == LogoutReason.CLOSE_SESSION or (
                req.reason == LogoutReason.CLOSE_CONNECTION and list(self.conns.values()) == [named]):
            self.logged_out = self.ending = True
            self._event("iscsi.logout", **self._counts())
            if req.reason == LogoutReason.CLOSE_SESSION:
                # the session, and so the I_T nexus, ends with this response
                # (§11.14): the initiator's next command through another
                # session may arrive before this connection's close does
                self._nexus_ended()
            self._out.append(Close())
            return
        assert named is not None
        self._event("iscsi.connection_logout", cid=named.cid, reason=int(req.reason))
        if named in self.failed:  # clean-up of a failed connection's state
            self.failed.remove(named)
            self._end_tasks_of(named)
            return
        self._drop_connection(named, keep=req.reason == LogoutReason.REMOVE_FOR_RECOVERY)
        self._out.append(Close(None, True, named.cid))


# functions that address one LUN, which must exist (§11.5.1)
_LUN_FUNCTIONS = frozenset((TmfFunction.ABORT_TASK, TmfFunction.ABORT_TASK_SET, TmfFunction.CLEAR_TASK_SET,
                            TmfFunction.LOGICAL_UNIT_RESET, TmfFunction.CLEAR_ACA))
_TMF_HANDLERS: dict[int, Callable[[Session, TaskMgmtRequest, Target, int], TmfResponse]] = {
    TmfFunction.ABORT_TASK: Session._abort_task,
    TmfFunction.ABORT_TASK_SET: Session._abort_task_set,
    TmfFunction.CLEAR_TASK_SET: Session._abort_task_set,
    TmfFunction.LOGICAL_UNIT_RESET: Session._lun_reset,
    TmfFunction.TARGET_WARM_RESET: Session._target_reset,
    TmfFunction.TARGET_COLD_RESET: Session._target_reset,
    TmfFunction.CLEAR_ACA: Session._clear_aca,
    TmfFunction.TASK_REASSIGN: Session._reassign,
}


_SNACK_HANDLERS: dict[int, Callable[[Session, SnackRequest, Recovery], None]] = {
    SnackType.DATA_R2T: Session._data_snack,
    SnackType.STATUS: Session._status_snack,
    SnackType.DATA_ACK: Session._data_ack,
    SnackType.R_DATA: Session._rdata_snack,
}


def _header_only(bhs: bytes) -> Pdu | None:
    """The PDU a header describes, its data left out (a data digest failed)."""
    try:
        return decode(bhs)
    except PduFormatError:
        return None


def _keep(task: Task, offset: int, data: bytes) -> None:
    """Put the part of a Data-Out below ``task.wanted`` into the task's
    buffer, growing it to fit; bytes past it are the initiator's excess
    (an EDTL larger than the CDB asks for) and are dropped."""
    buf = task.buffer
    assert buf is not None
    end = min(offset + len(data), task.wanted)
    if end <= offset:
        return
    if len(buf) < offset:  # out of order (DataPDUInOrder=No): the gap fills in later
        buf.extend(bytes(offset - len(buf)))
    buf[offset:end] = memoryview(data)[:end - offset]


class _Cursor:
    """Walks a segment list handing out consecutive slices of it."""

    def __init__(self, segments: Sequence[Segment]) -> None:
        self.segments = list(segments)
        self.index = 0
        self.offset = 0  # into the current segment

    def take(self, n: int) -> list[Segment]:
        out: list[Segment] = []
        while n > 0 and self.index < len(self.segments):
            seg = self.segments[self.index]
            size = seg.length if isinstance(seg, (FileExtent, Zeros)) else len(seg)
            k = min(n, size - self.offset)
            if isinstance(seg, FileExtent):
                out.append(FileExtent(seg.fd, seg.offset + self.offset, k))
            elif isinstance(seg, Zeros):
                out.append(Zeros(k))
            else:
                out.append(memoryview(seg)[self.offset:self.offset + k])
            n -= k
            self.offset += k
            if self.offset == size:
                self.index += 1
                self.offset = 0
        if n:
            out.append(Zeros(n))  # a short backend read: the rest of the disk is zeros
        return out
