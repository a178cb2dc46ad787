"""Full Feature Phase of an iSCSI session (RFC 7143 §3.2, §4, §11), sans I/O.

One :class:`Session` per logged-in initiator (ERL 0, one connection). It
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
from dataclasses import dataclass
from typing import Protocol

from .actions import Action, Close, Execute, Send
from .backend import FileExtent, Segment, Zeros, segments_length
from .keys import KeyValueError, SessionParams, negotiate
from .limits import SESSION_WRITE_LIMIT
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
)
from .scsi import ScsiResult, ScsiStatus, no_such_lun, report_luns, target_port_groups
from .scsi.cdb import PERSISTENT_RESERVE_OUT
from .scsi.ports import MAINTENANCE_IN, is_report_target_port_groups
from .scsi.reservations import PrOut
from .targets import Target, lun_from_field
from .text import TextFormatError, decode_text, encode_text

REPORT_LUNS = 0xA0
SERIAL_HALF = 1 << 31
# §11.14: a Logout Response waits for the commands in flight, this long at most
LOGOUT_TIMEOUT = 10.0


MEDIUM_ERROR, HARDWARE_ERROR = 0x3, 0x4  # SPC-4 §4.5.6 sense keys


def _sense_key(sense: bytes) -> int:
    """The sense key of fixed (70h/71h) or descriptor (72h/73h) sense data (SPC-4 §4.5)."""
    if len(sense) < 3:
        return 0
    return (sense[1] if sense[0] & 0x7F in (0x72, 0x73) else sense[2]) & 0x0F


def sn_lt(a: int, b: int) -> bool:
    """Serial number arithmetic, RFC 1982 with SERIAL_BITS = 32 (§4.2.2.1)."""
    return a != b and ((b - a) & 0xFFFFFFFF) < SERIAL_HALF


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


@dataclass
class R2TState:
    offset: int
    length: int
    received: int = 0
    datasn: int = 0  # the DataSN the next Data-Out of this sequence must carry


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
    aborted: bool = False

    @property
    def itt(self) -> int:
        return self.cmd.itt


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
                 portal_group_tag: int = 1) -> None:
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
        self.statsn = 0
        self.link = Link(0, "", ("", 0))
        self.tasks: dict[int, Task] = {}
        self.pending: dict[int, Pdu] = {}  # commands ahead of ExpCmdSN
        self.executing: set[Task] = set()  # handed to the transport to run, not back yet
        self.text_reply: tuple[int, bytes] | None = None  # (TTT, rest) of a long Text Response
        self.text_request = bytearray()
        self.text_request_ttt = RESERVED_TAG  # given to the last part of a continued request
        self.next_ttt = 1
        self.first_read_seen = False
        # the I_T nexus: the initiator port and the target port, a portal group (§4.4.1)
        self.portal_group_tag = portal_group_tag
        self.nexus = (params.initiator_name, isid, params.target_name, portal_group_tag)
        self.closed = False
        self.logged_out = False
        self.nexus_ended = False
        self.ending = False  # asked the transport to close: no more timers
        self.logout: _PendingLogout | None = None
        self.last_rx = 0.0
        self.last_request = 0.0  # the last PDU other than a NOP-Out
        self.ping_ttt = 0
        self.ping_sent: float | None = None  # when the unanswered ping left
        self._out: list[Action] = []

    # -- identity and bookkeeping ---------------------------------------------

    @property
    def discovery(self) -> bool:
        return self.params.session_type == "Discovery"

    @property
    def maxcmdsn(self) -> int:
        return (self.expcmdsn + self.window - 1) & 0xFFFFFFFF

    def _statsn(self) -> int:
        sn = self.statsn
        self.statsn = (sn + 1) & 0xFFFFFFFF
        return sn

    def _ttt(self) -> int:
        ttt = self.next_ttt
        self.next_ttt = (ttt + 1) % RESERVED_TAG or 1
        return ttt

    def _actions(self) -> list[Action]:
        out = self._out
        self._out = []
        return out

    def _send(self, pdu: Pdu) -> None:
        self._out.append(Send(pdu))

    def bind(self, link: Link, statsn: int, now: float) -> None:
        """The session (new, or reinstated on a new connection, §6.3.5)
        enters Full Feature Phase on ``link``; the login left StatSN at
        ``statsn``. Tasks of an earlier connection are gone (ERL 0)."""
        self.collecting.clear()
        for task in list(self.tasks.values()):
            self._abort(task)
        self.link = link
        self.statsn = statsn
        self.last_rx = self.last_request = now
        self.ping_sent = None
        self.logout = None

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

    def receive(self, pdu: Pdu, now: float) -> list[Action]:
        """Handle one PDU from the initiator, received at ``now``.

        Raises :class:`SessionFailure` for errors only a new session recovers
        from; the transport then drops the connection."""
        self._receive(pdu, now)
        return self._actions()

    def receive_all(self, pdus: Iterable[Pdu], now: float) -> list[Action]:
        """Handle PDUs that arrived together, up to the one after which the
        session asked to close; one list of actions for the whole batch.
        If ``pdus`` raises (a PDU the transport could not decode), the
        actions so far come with those of the next call."""
        for pdu in pdus:
            self._receive(pdu, now)
            if self.ending:
                break
        return self._actions()

    def _receive(self, pdu: Pdu, now: float) -> None:
        self.last_rx = now
        if type(pdu) is not NopOut:
            self.last_request = now
        try:
            if isinstance(pdu, DataOut):
                self._data_out(pdu)
            elif isinstance(pdu, (ScsiCommand, NopOut, TaskMgmtRequest, TextRequest, LogoutRequest)):
                self._ordered(pdu, now)
            elif isinstance(pdu, SnackRequest):
                raise ProtocolViolation(RejectReason.SNACK_REJECT, "SNACK at ErrorRecoveryLevel 0")
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
        self.server.event(what, level, peer=self.link.peer, initiator=self.params.initiator_name,
                          target=self.params.target_name, **fields)

    def reject(self, bhs: bytes, reason: RejectReason, why: str) -> list[Action]:
        """Reject a PDU the transport could not decode (§11.17)."""
        self._reject(bhs, reason, why)
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
                nxt = self.pending.pop(self.expcmdsn)
                self.expcmdsn = (self.expcmdsn + 1) & 0xFFFFFFFF
                self._deliver(nxt, now)
        elif sn_lt(self.expcmdsn, sn) and not sn_lt(self.maxcmdsn, sn) and sn not in self.pending:
            self.pending[sn] = pdu
        else:  # outside the window, or a duplicate within it: no answer (§4.2.2.1)
            self._event("iscsi.cmdsn_dropped", cmdsn=sn, expcmdsn=self.expcmdsn, maxcmdsn=self.maxcmdsn)

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
        when = None
        if self.keepalive.interval > 0 and not (self.closed or self.ending):
            if self.ping_sent is not None:
                when = self.ping_sent + self.keepalive.timeout
            else:
                when = self.last_rx + self.keepalive.interval
        if self.logout is not None and (when is None or self.logout.deadline < when):
            when = self.logout.deadline
        idle_end = self._idle_end()
        if idle_end is not None and (when is None or idle_end < when):
            when = idle_end
        return when

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
        if self.logout is not None and now >= self.logout.deadline:
            self._answer_logout()
        if self.keepalive.interval > 0 and not (self.closed or self.ending):
            if self.ping_sent is not None:
                if now >= self.ping_sent + self.keepalive.timeout:
                    self.ending = True
                    self._event("iscsi.nop_timeout")
                    self._out.append(Close(DropReason.NOP_TIMEOUT, after_send=False))
            elif now >= self.last_rx + self.keepalive.interval:
                self._ping(now)
        idle_end = self._idle_end()
        if idle_end is not None and now >= idle_end:
            self.ending = True
            self._event("iscsi.idle_timeout", why=f"no request for {self.discovery_timeout:g} s")
            self._out.append(Close(DropReason.IDLE_TIMEOUT, after_send=False))
        return self._actions()

    # -- NOP ------------------------------------------------------------------

    def _nop_out(self, pdu: NopOut) -> None:
        """§11.18: answer pings; a NOP-Out with ITT 0xffffffff answers ours."""
        if pdu.itt == RESERVED_TAG:
            if pdu.ttt == self.ping_ttt:
                self.ping_sent = None
            return
        data = bytes(pdu.data)[: self.params.initiator_max_recv]
        self._send(NopIn(lun=pdu.lun, itt=pdu.itt, ttt=RESERVED_TAG, statsn=self._statsn(),
                         expcmdsn=self.expcmdsn, maxcmdsn=self.maxcmdsn, data=data))

    def _ping(self, now: float) -> None:
        """A NOP-In that asks the initiator for a NOP-Out (§11.19); StatSN is
        not advanced because no status is carried."""
        self.ping_ttt = (self.ping_ttt % 0xFFFF) + 1 | 0x80000000
        self.ping_sent = now
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
        task = Task(cmd, lun_from_field(cmd.lun), cmd.full_cdb)
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
        task.outstanding = {}
        # unsolicited data is the initiator's to send: it takes credit unasked
        self._take_credit(task, min(wanted, unsolicited_end))
        self.collecting[task] = None
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
        oldest = next(iter(self.collecting)) is task
        while task.next_r2t_offset < wanted and len(task.outstanding) < p.max_outstanding_r2t:
            length = min(p.max_burst_length, wanted - task.next_r2t_offset)
            if not oldest and self.write_credit + length > self.write_limit:
                break
            self._take_credit(task, length)
            ttt = self._ttt()
            task.outstanding[ttt] = R2TState(task.next_r2t_offset, length)
            self._send(R2T(lun=task.cmd.lun, itt=task.itt, ttt=ttt, statsn=self.statsn,
                           expcmdsn=self.expcmdsn, maxcmdsn=self.maxcmdsn, r2tsn=task.r2tsn,
                           buffer_offset=task.next_r2t_offset, desired_length=length))
            task.r2tsn += 1
            task.next_r2t_offset += length

    def _data_out(self, pdu: DataOut) -> None:
        task = self.tasks.get(pdu.itt)
        if task is None or task.buffer is None or task.outstanding is None:
            raise ProtocolViolation(RejectReason.INVALID_PDU_FIELD, f"Data-Out for unknown ITT {pdu.itt:#x}")
        n = len(pdu.data)
        end = pdu.buffer_offset + n
        if pdu.ttt == RESERVED_TAG:
            if end > task.unsolicited_end:
                raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, "unsolicited data beyond FirstBurstLength")
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
            # §7.1.4: a sequence error; without SNACK (ERL 0) only a new session recovers
            raise SessionFailure(f"Data-Out DataSN {pdu.datasn}, expected {expected_datasn}")
        if end > task.cmd.edtl:
            raise ProtocolViolation(RejectReason.PROTOCOL_ERROR, "Data-Out beyond the expected length")
        _keep(task, pdu.buffer_offset, pdu.data)
        task.received += n
        if r2t is not None:
            r2t.received += n
            if pdu.final or r2t.received >= r2t.length:
                del task.outstanding[pdu.ttt]
                self._send_r2ts(task)
        if (task.received >= max(task.wanted, task.unsolicited_end) and not task.outstanding
                and task.next_r2t_offset >= task.wanted):
            self.collecting.pop(task, None)
            self._resume_writes()
            self._execute(task, memoryview(task.buffer))

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
            if not task.aborted:
                self._respond(task, result, segments)
                if (result.status == ScsiStatus.GOOD and task.cdb[0] == PERSISTENT_RESERVE_OUT
                        and task.cdb[1] & 0x1F == PrOut.PREEMPT_AND_ABORT):
                    self._abort_preempted(task.lun)
            if self.logout is not None and not self.executing:
                self._answer_logout()
        return self._actions()

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
            datasn = self._send_data_in(task, segments, wanted, min(wanted, edtl),
                                        result.status if good else None, overflow, underflow, residual)
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
        if n != cmd.edtl or n > self.params.initiator_max_recv or n > self.params.max_burst_length:
            return False
        self.bytes_read += n
        self._out.append(Send(DataIn(final=True, status_present=True, status=ScsiStatus.GOOD, lun=cmd.lun,
                                     itt=cmd.itt, statsn=self._statsn(), expcmdsn=self.expcmdsn,
                                     maxcmdsn=self.maxcmdsn), segments, n))
        return True

    def _send_data_in(self, task: Task, segments: Sequence[Segment], total: int, length: int,
                      status: int | None, overflow: bool, underflow: bool, residual: int) -> int:
        """Split ``length`` bytes of ``segments`` into Data-In PDUs no larger
        than the initiator's MaxRecvDataSegmentLength, sequences no longer
        than MaxBurstLength (F bit at each end, §11.7.1); returns the count."""
        mrdsl = self.params.initiator_max_recv
        burst = self.params.max_burst_length
        cmd = task.cmd
        # the common case, one PDU carrying all the data, needs no slicing
        parts = None if length <= min(mrdsl, burst) and total == length else _Cursor(segments)
        offset = 0
        datasn = 0
        expcmdsn, maxcmdsn = self.expcmdsn, self.maxcmdsn
        out = self._out
        while offset < length:
            n = min(mrdsl, length - offset, burst - offset % burst)
            last = offset + n >= length
            end_of_burst = last or (offset + n) % burst == 0
            pieces = segments if parts is None else parts.take(n)
            if last and status is not None:
                pdu = DataIn(final=True, status_present=True, status=status, overflow=overflow,
                             underflow=underflow, residual=residual if (overflow or underflow) else 0,
                             lun=cmd.lun, itt=cmd.itt, statsn=self._statsn(), expcmdsn=expcmdsn,
                             maxcmdsn=maxcmdsn, datasn=datasn, buffer_offset=offset)
            else:
                pdu = DataIn(final=end_of_burst, itt=cmd.itt, lun=cmd.lun, statsn=self.statsn,
                             expcmdsn=expcmdsn, maxcmdsn=maxcmdsn, datasn=datasn, buffer_offset=offset)
            out.append(Send(pdu, pieces, length if parts is None else None))
            offset += n
            datasn += 1
        return datasn

    # -- task management --------------------------------------------------------

    def _task_management(self, req: TaskMgmtRequest) -> None:
        """§11.5: answer once the affected tasks are gone (ERL 0, no task
        reassignment)."""
        response = self._tmf(req)
        self._resume_writes()
        self._send(TaskMgmtResponse(response=response, itt=req.itt, statsn=self._statsn(),
                                    expcmdsn=self.expcmdsn, maxcmdsn=self.maxcmdsn))
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
            lun.reset()
        return TmfResponse.FUNCTION_COMPLETE

    def _clear_aca(self, req: TaskMgmtRequest, target: Target, lun_id: int) -> TmfResponse:
        return TmfResponse.FUNCTION_COMPLETE  # no ACA is ever established (NACA is refused)

    def _reassign(self, req: TaskMgmtRequest, target: Target, lun_id: int) -> TmfResponse:
        return TmfResponse.REASSIGNMENT_NOT_SUPPORTED  # ERL 0 (§11.5.1)

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
                reply = negotiate(key, value)
            except KeyValueError:
                reply = "Reject"
            if key == "MaxRecvDataSegmentLength" and reply is None:
                self.params.apply(key, value)
            elif reply is not None:
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
        self.ending = True
        self._out.append(Close(DropReason.PROTOCOL_ERROR))

    def _send_text(self, req: TextRequest, data: bytes) -> None:
        limit = self.params.initiator_max_recv
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
            out += [("TargetAddress", a) for a in self.server.portals(self.link.local_address)]
        return out

    # -- logout -----------------------------------------------------------------

    def _logout(self, req: LogoutRequest, now: float) -> None:
        """§11.14: answer once the commands in flight have completed (or
        LOGOUT_TIMEOUT has passed)."""
        if req.reason == LogoutReason.REMOVE_FOR_RECOVERY:
            response = LogoutResponse.RECOVERY_NOT_SUPPORTED
        elif req.reason == LogoutReason.CLOSE_CONNECTION and req.cid != self.link.cid:
            response = LogoutResponse.CID_NOT_FOUND
        else:
            response = LogoutResponse.SUCCESS
        self.logout = _PendingLogout(req, response, now + LOGOUT_TIMEOUT)
        if not self.executing:
            self._answer_logout()

    def _answer_logout(self) -> None:
        assert self.logout is not None
        req, response = self.logout.req, self.logout.response
        self.logout = None
        self._send(LogoutResponsePdu(response=response, itt=req.itt, statsn=self._statsn(),
                                     expcmdsn=self.expcmdsn, maxcmdsn=self.maxcmdsn,
                                     time2wait=self.params.default_time2wait,
                                     time2retain=self.params.default_time2retain))
        if response == LogoutResponse.SUCCESS:
            self.logged_out = self.ending = True
            self._event("iscsi.logout", **self._counts())
            if req.reason == LogoutReason.CLOSE_SESSION:
                # the session, and so the I_T nexus, ends with this response
                # (§11.14): the initiator's next command through another
                # session may arrive before this connection's close does
                self._nexus_ended()
            self._out.append(Close())


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
