"""The iSCSI session as a sans-I/O core: PDUs and a fake clock in, actions
out; no sockets, no event loop. A login (target/login.py) hands over to the
session, which then serves READ and WRITE (immediate, unsolicited and
R2T-solicited data), task management, the keepalive NOP-In and its timeout,
and Logout. A hypothesis state machine checks the CmdSN window and TMF."""

from __future__ import annotations

import logging
import struct
from collections.abc import Coroutine, Hashable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from target.actions import Action, Close, Execute, Send
from target.backend import FileExtent, Segment, Zeros
from target.keys import SessionParams
from target.login import Login
from target.pdu import (
    R2T,
    DataIn,
    DataOut,
    LoginRequest,
    LogoutRequest,
    LogoutResponsePdu,
    NopIn,
    NopOut,
    Pdu,
    Reject,
    ScsiCommand,
    ScsiResponse,
    SnackRequest,
    Stage,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TmfFunction,
    TmfResponse,
)
from target.scsi import ScsiResult, ScsiStatus
from target.scsi.sense import LUN_RESET_OCCURRED, POWER_ON_RESET, Asc
from target.session import LOGOUT_TIMEOUT, DropReason, Keepalive, Link, Session, SessionFailure
from target.targets import Target
from target.text import encode_text

IQN_T = "iqn.2026-11.test:core"
IQN_I = "iqn.2026-11.test:initiator"
ISID = bytes.fromhex("400001370000")
BLOCK = 512
BLOCKS = 256
RESERVED = 0xFFFFFFFF


class MemLun:
    """A LUN over a bytearray that understands READ(10) and WRITE(10)."""

    def __init__(self) -> None:
        self.data = bytearray(bytes(range(256)) * (BLOCKS * BLOCK // 256))
        self.resets = 0
        self.attentions: list[Asc] = []
        self.lost: list[Hashable] = []

    async def execute(self, cdb: bytes, data_out: memoryview | None, nexus: Hashable,
                      transfer_length: int) -> ScsiResult:
        lba, blocks = struct.unpack_from(">IxH", cdb, 2)
        start, n = lba * BLOCK, blocks * BLOCK
        if cdb[0] == 0x28:
            return ScsiResult(ScsiStatus.GOOD, (bytes(self.data[start:start + n]),))
        assert cdb[0] == 0x2A and data_out is not None
        self.data[start:start + n] = data_out[:n]
        return ScsiResult(ScsiStatus.GOOD, data_out_length=n)

    def data_out_length(self, cdb: bytes) -> int:
        return struct.unpack_from(">H", cdb, 7)[0] * BLOCK if cdb[0] == 0x2A else 0

    def reset(self, attention: Asc = LUN_RESET_OCCURRED) -> None:
        self.resets += 1
        self.attentions.append(attention)

    def nexus_lost(self, nexus: Hashable) -> None:
        self.lost.append(nexus)


def run_now(coro: Coroutine[Any, Any, ScsiResult]) -> ScsiResult:
    """A coroutine that never waits, run to its end without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("the fake LUN never waits")


def read10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0).ljust(16, b"\0")


def write10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0).ljust(16, b"\0")


def data_of(segments: Sequence[Segment] | None, pdu: Pdu) -> bytes:
    if segments is None:
        return bytes(getattr(pdu, "data", b""))
    out = b""
    for s in segments:
        assert not isinstance(s, FileExtent)
        out += bytes(s.length) if isinstance(s, Zeros) else bytes(s)
    return out


@dataclass
class Server:
    """The server as a session and a login see it."""

    target: Target
    keepalive: Keepalive = Keepalive(15.0, 30.0)
    window: int = 8
    portal_group_tag: int = 1
    events: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)
    forgotten: list[Session] = field(default_factory=list)
    dropped: list[tuple[Session, DropReason]] = field(default_factory=list)

    def find_target(self, name: str) -> Target | None:
        return self.target if name == self.target.name else None

    def admit(self, isid: bytes, tsih: int, params: SessionParams) -> int:
        s = Session(self, params, isid, 7, 1, self.target, window=self.window, keepalive=self.keepalive)
        self.target.sessions.add(s)
        self.sessions.append(s)
        return 7

    def visible_targets(self, initiator_name: str) -> list[Target]:
        return [self.target]

    def portals(self, local: tuple[str, int]) -> list[str]:
        return [f"{local[0]}:{local[1]},1"]

    def forget(self, session: Session) -> None:
        self.forgotten.append(session)

    def drop_after_send(self, session: Session, reason: DropReason) -> None:
        self.dropped.append((session, reason))

    def event(self, what: str, level: int = logging.INFO, /, **fields: object) -> None:
        self.events.append((what, fields))

    def names(self) -> list[str]:
        return [e[0] for e in self.events]


class Initiator:
    """Drives one session: logs in through target/login.py, then sends PDUs
    at the fake clock's time and carries out the session's actions the way
    the asyncio connection does (commands run at once unless held)."""

    def __init__(self, keepalive: Keepalive = Keepalive(15.0, 30.0), window: int = 8, **keys: str) -> None:
        self.lun = MemLun()
        self.target = Target(IQN_T, "", {0: self.lun})  # type: ignore[dict-item]
        self.server = Server(self.target, keepalive, window)
        self.now = 1000.0
        self.cmdsn = 1
        self.itt = 0
        self.sent: list[tuple[Pdu, bytes]] = []
        self.closed: list[Close] = []
        self.held: list[Execute] = []
        self.hold = False
        self.session = self._login(keys)

    def _login(self, keys: dict[str, str]) -> Session:
        login = Login(self.server, window=self.server.window, started=self.now)
        pairs = [("InitiatorName", IQN_I), ("TargetName", IQN_T), ("AuthMethod", "None")]
        r = login.receive(LoginRequest(immediate=True, transit=True, csg=Stage.SECURITY, nsg=Stage.OPERATIONAL,
                                       isid=ISID, itt=0, cmdsn=1, expstatsn=500, data=encode_text(pairs)))
        assert not r.failed and r.response.statsn == 500
        op = {"MaxRecvDataSegmentLength": "8192", "MaxBurstLength": "16384", "FirstBurstLength": "4096",
              "InitialR2T": "No", "ImmediateData": "Yes", **keys}
        r = login.receive(LoginRequest(immediate=True, transit=True, csg=Stage.OPERATIONAL, nsg=Stage.FULL_FEATURE,
                                       isid=ISID, itt=0, cmdsn=1, expstatsn=501, data=encode_text(list(op.items()))))
        assert r.params is not None and r.response.tsih == 7 and r.response.maxcmdsn == self.server.window
        session = self.server.sessions[-1]
        session.bind(Link(0, "192.0.2.1:40000", ("192.0.2.2", 3260)), login.statsn, self.now)
        assert login.statsn == 502  # StatSN carries on from the login into the session
        return session

    # -- carrying out actions ------------------------------------------------------

    def do(self, actions: list[Action]) -> list[Pdu]:
        out: list[Pdu] = []
        for a in actions:
            if isinstance(a, Send):
                self.sent.append((a.pdu, data_of(a.segments, a.pdu)))
                out.append(a.pdu)
            elif isinstance(a, Execute):
                if self.hold:
                    self.held.append(a)
                else:
                    out += self.run(a)
            else:
                self.closed.append(a)
        return out

    def run(self, a: Execute) -> list[Pdu]:
        result = run_now(a.lun.execute(a.task.cdb, a.data_out, self.session.nexus, a.task.cmd.edtl))
        return self.do(self.session.command_done(a.task, result))

    def send(self, pdu: Pdu) -> list[Pdu]:
        return self.do(self.session.receive(pdu, self.now))

    def tick(self, seconds: float) -> list[Pdu]:
        """Let time pass, firing the session's timer as a transport would."""
        end = self.now + seconds
        out: list[Pdu] = []
        while (when := self.session.next_timer()) is not None and when <= end:
            self.now = max(self.now, when)
            out += self.do(self.session.handle_timer(self.now))
            assert self.session.next_timer() != when, "a timer that fired must move on"
        self.now = end
        return out

    # -- PDUs ------------------------------------------------------------------

    def next_itt(self) -> int:
        self.itt += 1
        return self.itt

    def command(self, cdb: bytes, *, read: int = 0, write: bytes = b"", immediate: int = 0,
                final: bool = True) -> tuple[int, list[Pdu]]:
        itt = self.next_itt()
        pdu = ScsiCommand(final=final, read=bool(read), write=bool(write), itt=itt, edtl=read or len(write),
                          cmdsn=self.cmdsn, cdb=cdb, data=write[:immediate])
        self.cmdsn += 1
        return itt, self.send(pdu)


def statsns(pdus: list[Pdu]) -> list[int]:
    return [p.statsn for p in pdus if isinstance(p, (ScsiResponse, NopIn, TaskMgmtResponse, LogoutResponsePdu))
            or isinstance(p, DataIn) and p.status_present]


# -- the flows -----------------------------------------------------------------------


def test_read_returns_data_with_status_and_statsn_follows_the_login() -> None:
    i = Initiator()
    itt, out = i.command(read10(2, 4), read=4 * BLOCK)
    assert len(out) == 1 and isinstance(out[0], DataIn)
    din = out[0]
    assert din.itt == itt and din.status_present and din.status == 0 and din.statsn == 502
    assert i.sent[-1][1] == bytes(i.lun.data[2 * BLOCK:6 * BLOCK])
    assert din.expcmdsn == 2 and din.maxcmdsn == 2 + 8 - 1


def test_long_read_is_split_by_the_initiators_limits() -> None:
    i = Initiator()
    _, out = i.command(read10(0, 64), read=64 * BLOCK)  # 32 KiB: 8 KiB PDUs, 16 KiB bursts
    assert [p.buffer_offset for p in out] == [0, 8192, 16384, 24576]  # type: ignore[attr-defined]
    assert [p.final for p in out] == [False, True, False, True]  # type: ignore[attr-defined]
    assert [p.datasn for p in out] == [0, 1, 2, 3]  # type: ignore[attr-defined]
    assert b"".join(d for _, d in i.sent) == bytes(i.lun.data[:64 * BLOCK])
    assert statsns(out) == [502]


def test_write_with_immediate_data_only() -> None:
    i = Initiator()
    payload = bytes([9]) * 1024
    _, out = i.command(write10(10, 2), write=payload, immediate=1024)
    assert isinstance(out[0], ScsiResponse) and out[0].status == 0
    assert i.lun.data[10 * BLOCK:12 * BLOCK] == payload


def test_write_with_unsolicited_then_solicited_data() -> None:
    i = Initiator()
    payload = bytes(range(256)) * 64  # 16 KiB; FirstBurstLength 4 KiB
    itt, out = i.command(write10(0, 32), write=payload, immediate=1024, final=False)
    assert len(out) == 1 and isinstance(out[0], R2T)  # the part past the first burst is solicited at once
    r2t = out[0]
    assert r2t.buffer_offset == 4096 and r2t.desired_length == 12288
    assert i.send(DataOut(final=True, itt=itt, ttt=RESERVED, buffer_offset=1024, datasn=0,
                          data=payload[1024:4096])) == []
    out = i.send(DataOut(final=True, itt=itt, ttt=r2t.ttt, buffer_offset=4096, datasn=0, data=payload[4096:]))
    assert isinstance(out[0], ScsiResponse) and out[0].status == 0 and out[0].expdatasn == 1
    assert bytes(i.lun.data[:len(payload)]) == payload


def test_write_with_initial_r2t_is_all_solicited() -> None:
    i = Initiator(InitialR2T="Yes", ImmediateData="No")
    payload = bytes([5]) * 8192
    itt, out = i.command(write10(4, 16), write=payload)
    assert [type(p) for p in out] == [R2T] and out[0].buffer_offset == 0  # type: ignore[attr-defined]
    ttt = out[0].ttt  # type: ignore[attr-defined]
    assert i.send(DataOut(final=False, itt=itt, ttt=ttt, buffer_offset=0, datasn=0, data=payload[:4096])) == []
    out = i.send(DataOut(final=True, itt=itt, ttt=ttt, buffer_offset=4096, datasn=1, data=payload[4096:]))
    assert isinstance(out[0], ScsiResponse) and out[0].status == 0
    assert i.lun.data[4 * BLOCK:20 * BLOCK] == payload


def test_data_out_out_of_sequence_fails_the_session() -> None:
    i = Initiator(InitialR2T="Yes", ImmediateData="No")
    itt, out = i.command(write10(0, 16), write=bytes(8192))
    try:
        i.send(DataOut(final=True, itt=itt, ttt=out[0].ttt, buffer_offset=0, datasn=3,  # type: ignore[attr-defined]
                       data=bytes(4096)))
    except SessionFailure:
        return
    raise AssertionError("a DataSN gap at ERL 0 must end the session")


def test_abort_task_waiting_for_data() -> None:
    i = Initiator(InitialR2T="Yes", ImmediateData="No")
    itt, _ = i.command(write10(0, 16), write=bytes(8192))
    out = i.send(TaskMgmtRequest(immediate=True, function=TmfFunction.ABORT_TASK, itt=i.next_itt(), rtt=itt,
                                 cmdsn=i.cmdsn, refcmdsn=i.cmdsn - 1))
    assert isinstance(out[0], TaskMgmtResponse) and out[0].response == TmfResponse.FUNCTION_COMPLETE
    assert not i.session.tasks
    out = i.send(DataOut(final=True, itt=itt, ttt=1, buffer_offset=0, data=bytes(4096)))
    assert isinstance(out[0], Reject)  # the task is gone
    assert ("iscsi.task_management", "ABORT_TASK") in [(w, f.get("function")) for w, f in i.server.events]


def test_abort_task_while_the_command_runs_drops_its_response() -> None:
    i = Initiator()
    i.hold = True
    itt, out = i.command(read10(0, 1), read=BLOCK)
    assert out == [] and len(i.held) == 1
    out = i.send(TaskMgmtRequest(immediate=True, function=TmfFunction.ABORT_TASK, itt=i.next_itt(), rtt=itt,
                                 cmdsn=i.cmdsn, refcmdsn=i.cmdsn - 1))
    assert out[0].response == TmfResponse.FUNCTION_COMPLETE  # type: ignore[attr-defined]
    assert i.run(i.held.pop()) == []  # the late result is not sent


def test_abort_of_a_completed_task_and_of_an_unknown_one() -> None:
    i = Initiator()
    itt, _ = i.command(read10(0, 1), read=BLOCK)
    tmf = TaskMgmtRequest(immediate=True, function=TmfFunction.ABORT_TASK, itt=i.next_itt(), rtt=itt,
                          cmdsn=i.cmdsn, refcmdsn=1)
    assert i.send(tmf)[0].response == TmfResponse.FUNCTION_COMPLETE  # type: ignore[attr-defined]
    tmf = TaskMgmtRequest(immediate=True, function=TmfFunction.ABORT_TASK, itt=i.next_itt(), rtt=99,
                          cmdsn=i.cmdsn, refcmdsn=i.cmdsn + 5)
    assert i.send(tmf)[0].response == TmfResponse.TASK_DOES_NOT_EXIST  # type: ignore[attr-defined]


def test_lun_reset_aborts_tasks_and_resets_the_lun() -> None:
    i = Initiator(InitialR2T="Yes", ImmediateData="No")
    i.command(write10(0, 16), write=bytes(8192))
    out = i.send(TaskMgmtRequest(immediate=True, function=TmfFunction.LOGICAL_UNIT_RESET, itt=i.next_itt(),
                                 cmdsn=i.cmdsn))
    assert out[0].response == TmfResponse.FUNCTION_COMPLETE  # type: ignore[attr-defined]
    assert not i.session.tasks and i.lun.resets == 1


def test_tmf_for_a_missing_lun_and_unsupported_functions() -> None:
    i = Initiator()
    out = i.send(TaskMgmtRequest(immediate=True, function=TmfFunction.LOGICAL_UNIT_RESET, itt=i.next_itt(),
                                 lun=5 << 48, cmdsn=i.cmdsn))
    assert out[0].response == TmfResponse.LUN_DOES_NOT_EXIST  # type: ignore[attr-defined]
    out = i.send(TaskMgmtRequest(immediate=True, function=TmfFunction.TASK_REASSIGN, itt=i.next_itt(),
                                 cmdsn=i.cmdsn))
    assert out[0].response == TmfResponse.REASSIGNMENT_NOT_SUPPORTED  # type: ignore[attr-defined]


def test_target_cold_reset_closes_after_the_response() -> None:
    i = Initiator()
    out = i.send(TaskMgmtRequest(immediate=True, function=TmfFunction.TARGET_COLD_RESET, itt=i.next_itt(),
                                 cmdsn=i.cmdsn))
    assert out[0].response == TmfResponse.FUNCTION_COMPLETE  # type: ignore[attr-defined]
    assert i.closed == [Close(DropReason.TARGET_RESET)] and i.lun.resets == 1
    assert i.lun.attentions == [POWER_ON_RESET]  # a hard reset's UNIT ATTENTION, as for a warm reset


def test_lun_reset_and_target_warm_reset_report_their_own_unit_attention() -> None:
    i = Initiator()
    for function in (TmfFunction.LOGICAL_UNIT_RESET, TmfFunction.TARGET_WARM_RESET):
        out = i.send(TaskMgmtRequest(immediate=True, function=function, itt=i.next_itt(), cmdsn=i.cmdsn))
        assert out[0].response == TmfResponse.FUNCTION_COMPLETE  # type: ignore[attr-defined]
    assert i.lun.attentions == [LUN_RESET_OCCURRED, POWER_ON_RESET] and not i.closed


def test_idle_initiator_is_pinged_and_answering_keeps_it() -> None:
    i = Initiator(Keepalive(interval=15.0, timeout=30.0))
    assert i.tick(14.0) == []
    out = i.tick(2.0)
    assert len(out) == 1 and isinstance(out[0], NopIn)
    ping = out[0]
    assert ping.itt == RESERVED and ping.ttt != RESERVED and ping.statsn == 502  # StatSN not advanced
    i.send(NopOut(immediate=True, itt=RESERVED, ttt=ping.ttt, cmdsn=i.cmdsn))
    assert i.tick(14.0) == [] and not i.closed
    assert isinstance(i.tick(2.0)[0], NopIn)  # idle again: the next ping


def test_traffic_postpones_the_ping() -> None:
    i = Initiator(Keepalive(interval=15.0, timeout=30.0))
    for _ in range(5):
        i.tick(10.0)
        i.command(read10(0, 1), read=BLOCK)
    assert not [p for p, _ in i.sent if isinstance(p, NopIn)]


def test_unanswered_ping_drops_the_session() -> None:
    i = Initiator(Keepalive(interval=15.0, timeout=30.0))
    i.tick(16.0)  # the ping leaves at 15 s
    assert i.tick(28.0) == [] and not i.closed
    i.tick(2.0)
    assert i.closed == [Close(DropReason.NOP_TIMEOUT, after_send=False, cid=0)]
    assert "iscsi.nop_timeout" in i.server.names()
    i.session.close(DropReason.NOP_TIMEOUT)
    dropped = [f for w, f in i.server.events if w == "iscsi.session_dropped"]
    assert dropped == [{"peer": "192.0.2.1:40000", "initiator": IQN_I, "target": IQN_T, "reason": "nop_timeout",
                        "read_bytes": 0, "written_bytes": 0, "io_errors": 0}]
    assert i.lun.lost == [i.session.nexus] and i.server.forgotten == [i.session]


def test_keepalive_off() -> None:
    i = Initiator(Keepalive(interval=0.0))
    assert i.session.next_timer() is None


def test_nop_out_ping_from_the_initiator_is_answered() -> None:
    i = Initiator()
    out = i.send(NopOut(immediate=True, itt=i.next_itt(), cmdsn=i.cmdsn, data=b"hello"))
    assert isinstance(out[0], NopIn) and out[0].data == b"hello" and out[0].statsn == 502


def test_logout_closes_after_the_response_without_a_drop() -> None:
    i = Initiator()
    out = i.send(LogoutRequest(immediate=True, itt=i.next_itt(), cmdsn=i.cmdsn))
    assert isinstance(out[0], LogoutResponsePdu) and out[0].response == 0 and out[0].statsn == 502
    assert i.closed == [Close()]
    i.session.close(DropReason.CONNECTION_LOST)
    assert "iscsi.logout" in i.server.names() and "iscsi.session_dropped" not in i.server.names()
    assert i.session.next_timer() is None


def test_logout_waits_for_commands_in_flight() -> None:
    i = Initiator()
    i.hold = True
    i.command(read10(0, 1), read=BLOCK)
    assert i.send(LogoutRequest(immediate=True, itt=i.next_itt(), cmdsn=i.cmdsn)) == []
    out = i.run(i.held.pop())
    assert [type(p) for p in out] == [DataIn, LogoutResponsePdu]
    assert statsns(out) == [502, 503]


def test_logout_gives_up_waiting_after_its_timeout() -> None:
    i = Initiator(Keepalive(interval=0.0))
    i.hold = True
    i.command(read10(0, 1), read=BLOCK)
    i.send(LogoutRequest(immediate=True, itt=i.next_itt(), cmdsn=i.cmdsn))
    assert i.session.next_timer() == i.now + LOGOUT_TIMEOUT
    assert i.tick(LOGOUT_TIMEOUT - 1) == []
    out = i.tick(2.0)
    assert [type(p) for p in out] == [LogoutResponsePdu] and i.closed == [Close()]


def test_snack_and_login_in_full_feature_phase_are_rejected() -> None:
    i = Initiator()
    assert isinstance(i.send(SnackRequest(itt=1))[0], Reject)
    assert isinstance(i.send(LoginRequest(itt=1))[0], Reject)


def test_rebinding_after_connection_reinstatement_drops_old_tasks() -> None:
    i = Initiator(InitialR2T="Yes", ImmediateData="No")
    i.command(write10(0, 16), write=bytes(8192))
    assert i.session.tasks
    i.session.bind(Link(0, "192.0.2.1:40001", ("192.0.2.2", 3260)), 900, i.now)
    assert not i.session.tasks and i.session.statsn == 900


# -- the CmdSN window and TMF, as a state machine ------------------------------------------


class CmdSnWindow(RuleBasedStateMachine):
    """§4.2.2.1: commands are delivered in CmdSN order; those ahead of
    ExpCmdSN wait, duplicates and those outside [ExpCmdSN, MaxCmdSN] are
    dropped; immediate commands skip the queue; MaxCmdSN advances with
    ExpCmdSN. Commands are NOP-Outs (each answered with its ITT) and READs
    that may be held, then aborted by TMF or completed."""

    @initialize(start=st.sampled_from([1, 0xFFFFFFF0]))  # also across the 2^32 wrap
    def setup(self, start: int) -> None:
        self.i = Initiator(Keepalive(interval=0.0), window=4)
        self.i.session.expcmdsn = start
        self.exp = start
        self.waiting: dict[int, int] = {}  # CmdSN -> ITT of what we sent ahead
        self.answered: list[int] = []
        self.expected: list[int] = []
        self.running: dict[int, Execute] = {}  # ITT -> held READ
        self.i.hold = True

    def _answers(self, out: list[Pdu]) -> None:
        self.answered += [p.itt for p in out if isinstance(p, NopIn)]  # type: ignore[attr-defined]

    def _deliver_in_order(self) -> None:
        while self.exp in self.waiting:
            self.expected.append(self.waiting.pop(self.exp))
            self.exp = (self.exp + 1) & 0xFFFFFFFF

    @rule(ahead=st.integers(0, 6))
    def nop(self, ahead: int) -> None:
        sn = (self.exp + ahead) & 0xFFFFFFFF
        itt = self.i.next_itt()
        in_window = ahead < 4 and sn not in self.waiting
        self._answers(self.i.send(NopOut(itt=itt, cmdsn=sn)))
        if in_window:
            self.waiting[sn] = itt
            self._deliver_in_order()
        else:
            assert self.i.server.names()[-1] == "iscsi.cmdsn_dropped"

    @rule(back=st.integers(1, 3))
    def duplicate(self, back: int) -> None:
        sn = (self.exp - back) & 0xFFFFFFFF
        self._answers(self.i.send(NopOut(itt=self.i.next_itt(), cmdsn=sn)))
        assert self.i.server.names()[-1] == "iscsi.cmdsn_dropped"

    @rule()
    def immediate(self) -> None:
        itt = self.i.next_itt()
        self._answers(self.i.send(NopOut(immediate=True, itt=itt, cmdsn=self.exp)))
        self.expected.append(itt)

    @precondition(lambda self: not self.waiting)
    @rule()
    def read(self) -> None:
        itt = self.i.next_itt()
        self.i.send(ScsiCommand(read=True, itt=itt, edtl=BLOCK, cmdsn=self.exp, cdb=read10(0, 1)))
        self.exp = (self.exp + 1) & 0xFFFFFFFF
        self.running[itt] = self.i.held.pop()

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        itt = data.draw(st.sampled_from(sorted(self.running)))
        out = self.i.run(self.running.pop(itt))
        assert [(type(p), p.itt) for p in out] == [(DataIn, itt)]  # type: ignore[attr-defined]

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        itt = data.draw(st.sampled_from(sorted(self.running)))
        out = self.i.send(TaskMgmtRequest(immediate=True, function=TmfFunction.ABORT_TASK, itt=self.i.next_itt(),
                                          rtt=itt, cmdsn=self.exp, refcmdsn=self.exp))
        assert out[0].response == TmfResponse.FUNCTION_COMPLETE  # type: ignore[attr-defined]
        assert self.i.run(self.running.pop(itt)) == []

    @rule()
    def abort_task_set(self) -> None:
        out = self.i.send(TaskMgmtRequest(immediate=True, function=TmfFunction.ABORT_TASK_SET,
                                          itt=self.i.next_itt(), cmdsn=self.exp))
        assert out[0].response == TmfResponse.FUNCTION_COMPLETE  # type: ignore[attr-defined]
        for held in self.running.values():
            assert self.i.run(held) == []
        self.running.clear()

    @invariant()
    def window_follows_expcmdsn(self) -> None:
        s = self.i.session
        assert s.expcmdsn == self.exp
        assert s.maxcmdsn == (self.exp + 3) & 0xFFFFFFFF
        assert sorted(s.pending) == sorted(self.waiting)
        assert self.answered == self.expected
        assert set(s.tasks) == set(self.running)

    @invariant()
    def statsn_counts_every_status(self) -> None:
        statuses = [p for p, _ in self.i.sent if isinstance(p, (NopIn, TaskMgmtResponse, ScsiResponse))
                    or isinstance(p, DataIn) and p.status_present]
        assert [p.statsn for p in statuses] == list(range(502, 502 + len(statuses)))  # type: ignore[attr-defined]


TestCmdSnWindow = CmdSnWindow.TestCase
TestCmdSnWindow.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_the_core_has_no_io_imports() -> None:
    """The session and the SCSI layer import no event loop, socket or clock."""
    import ast
    from pathlib import Path

    import target

    root = Path(target.__file__).parent
    for path in [root / "session.py", *sorted((root / "scsi").glob("*.py"))]:
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
        assert not names & {"asyncio", "socket", "time", "selectors", "threading"}, (path, names)


def test_preempt_and_abort_ends_the_preempted_nexus_tasks() -> None:
    """SPC-4 §5.12.11.4.5: after a PREEMPT AND ABORT the LUN names the
    preempted I_T nexuses; their tasks on that LUN end without status."""
    i = Initiator(InitialR2T="Yes", ImmediateData="No")
    i.command(write10(0, 16), write=bytes(8192))
    assert i.session.tasks
    i.lun.pr = SimpleNamespace(preempted=frozenset({("someone else", bytes(6), IQN_T)}))  # type: ignore[attr-defined]
    i.session._abort_preempted(0)
    assert i.session.tasks
    i.lun.pr = SimpleNamespace(preempted=frozenset({i.session.nexus}))  # type: ignore[attr-defined]
    i.session._abort_preempted(0)
    assert not i.session.tasks
