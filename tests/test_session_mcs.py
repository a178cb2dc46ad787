"""The sans-I/O session with several connections (target/session.py,
target/allegiance.py): each action names its connection, StatSN and the
keepalive are per connection, a connection lost below ERL 2 takes only its
own tasks. Real sockets: tests/test_mcs_wire.py."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings

from target.actions import Close, Execute, Send
from target.pdu import DataIn, NopIn, NopOut, ScsiCommand
from target.session import DropReason, Keepalive, Link
from tests.test_session_core import Initiator, read10, run_now

PEER = ("192.0.2.2", 3260)


def two_connections(**keys: str) -> Initiator:
    i = Initiator(Keepalive(15.0, 30.0), MaxConnections="2", **keys)
    i.session.bind(Link(1, "192.0.2.1:40001", PEER), 9000, i.now, 8192)
    return i


def command_on(i: Initiator, cid: int, lba: int) -> list[Send]:
    itt = i.next_itt()
    pdu = ScsiCommand(final=True, read=True, itt=itt, edtl=512, cmdsn=i.cmdsn, cdb=read10(lba, 1))
    i.cmdsn += 1
    out = []
    for a in i.session.receive(pdu, i.now, cid):
        if isinstance(a, Execute):
            result = run_now(a.lun.execute(a.task.cdb, a.data_out, i.session.nexus, a.task.cmd.edtl))
            out += [x for x in i.session.command_done(a.task, result) if isinstance(x, Send)]
        elif isinstance(a, Send):
            out.append(a)
    return out


def test_answers_go_out_on_the_connection_the_command_came_on_with_its_statsn() -> None:
    i = two_connections()
    a = command_on(i, 0, 1)
    b = command_on(i, 1, 2)
    c = command_on(i, 0, 3)
    assert [s.cid for s in a + b + c] == [0, 1, 0]
    assert all(isinstance(s.pdu, DataIn) for s in a + b + c)
    assert b[0].pdu.statsn == 9000  # connection 1's own count
    assert c[0].pdu.statsn == a[0].pdu.statsn + 1


def test_each_connection_is_pinged_and_dropped_alone() -> None:
    i = two_connections()
    i.now += 10
    i.session.receive(NopOut(immediate=True, itt=0xFFFFFFFF, ttt=0xFFFFFFFF, cmdsn=i.cmdsn), i.now, 1)
    i.now += 6  # connection 0 silent 16 s, connection 1 6 s
    pings = [a for a in i.session.handle_timer(i.now) if isinstance(a, Send)]
    assert [(type(a.pdu), a.cid) for a in pings] == [(NopIn, 0)]
    i.now += 31
    out = i.session.handle_timer(i.now)
    closes = [a for a in out if isinstance(a, Close)]
    assert Close(DropReason.NOP_TIMEOUT, after_send=False, cid=0) in closes
    assert not i.session.ending  # the session has another connection


def test_below_erl2_a_lost_connection_takes_only_its_tasks() -> None:
    i = two_connections()
    i.hold = True
    itt0 = i.next_itt()
    i.do(i.session.receive(ScsiCommand(final=True, read=True, itt=itt0, edtl=512, cmdsn=i.cmdsn,
                                       cdb=read10(0, 1)), i.now, 0))
    i.cmdsn += 1
    itt1 = i.next_itt()
    i.do(i.session.receive(ScsiCommand(final=True, read=True, itt=itt1, edtl=512, cmdsn=i.cmdsn,
                                       cdb=read10(1, 1)), i.now, 1))
    i.cmdsn += 1
    assert set(i.session.tasks) == {itt0, itt1}
    i.session.connection_lost(0, DropReason.CONNECTION_LOST, i.now)
    assert set(i.session.tasks) == {itt1} and not i.session.closed
    i.session.connection_lost(1, DropReason.CONNECTION_LOST, i.now)
    assert i.session.closed


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2), min_size=1, max_size=8).flatmap(
    lambda cids: st.tuples(st.just(cids), st.permutations(range(len(cids))))))
def test_commands_run_in_cmdsn_order_and_answer_on_their_connection(case: tuple[list[int], list[int]]) -> None:
    """§4.2.2.1 across connections: whatever order the commands of three
    connections arrive in, they run in CmdSN order, and each one's answer
    leaves on the connection it came on (§5.1)."""
    cids, arrival = case
    i = two_connections()
    i.session.bind(Link(2, "192.0.2.1:40002", PEER), 7000, i.now, 8192)
    first = i.cmdsn
    ran: list[int] = []
    answered: dict[int, int | None] = {}
    for n in arrival:
        pdu = ScsiCommand(final=True, read=True, itt=100 + n, edtl=512, cmdsn=first + n, cdb=read10(n, 1))
        for a in i.session.receive(pdu, i.now, cids[n]):
            if isinstance(a, Execute):
                ran.append(a.task.itt - 100)
                result = run_now(a.lun.execute(a.task.cdb, a.data_out, i.session.nexus, a.task.cmd.edtl))
                for s in i.session.command_done(a.task, result):
                    if isinstance(s, Send):
                        answered[s.pdu.itt - 100] = s.cid  # type: ignore[attr-defined]
    assert ran == list(range(len(cids)))
    assert answered == dict(enumerate(cids))


def test_preempt_and_abort_aborts_the_preempted_tasks_on_a_live_connection() -> None:
    """A PERSISTENT RESERVE OUT PREEMPT AND ABORT answered on its (live)
    connection still aborts the preempted nexuses' tasks (SPC-4
    §5.12.11.4.5), as before MC/S, not only when it completes while its
    connection is down."""
    from target.scsi import ScsiResult, ScsiStatus
    from target.session import Task
    i = two_connections(ErrorRecoveryLevel="2")
    s = i.session
    called: list[int] = []
    s._abort_preempted = called.append  # type: ignore[method-assign]
    cdb = bytes([0x5F, 0x05, 0x01]) + bytes(13)  # PERSISTENT RESERVE OUT, PREEMPT AND ABORT
    cmd = ScsiCommand(final=True, write=True, itt=0x77, edtl=24, cmdsn=i.cmdsn, cdb=cdb)
    task = Task(cmd, 0, cdb, conn=s.conns[1])
    s.tasks[cmd.itt] = task
    s.executing.add(task)
    sends = [a for a in s.command_done(task, ScsiResult(ScsiStatus.GOOD)) if isinstance(a, Send)]
    assert called == [0] and [a.cid for a in sends] == [1]


def test_erl2_reassigned_write_with_an_erl1_hole_is_asked_from_the_hole() -> None:
    """ERL 2 includes ERL 1: a write whose middle Data-Out was lost to a
    data digest error (its recovery R2T not answered yet) has a hole, not
    a prefix; reassigned after its connection failed, it is asked again
    from the hole, and the data ends up whole on the disk."""
    from target.pdu import R2T, DataOut, ScsiResponse, TaskMgmtRequest, TaskMgmtResponse, TmfFunction
    from tests.test_session_core import write10
    i = two_connections(ErrorRecoveryLevel="2", InitialR2T="Yes", ImmediateData="No")
    s = i.session
    payload = bytes(range(256)) * 64  # 16 KiB
    itt = i.next_itt()
    out = s.receive(ScsiCommand(final=True, write=True, itt=itt, edtl=len(payload), cmdsn=i.cmdsn,
                                cdb=write10(8, 32)), i.now, 1)
    i.cmdsn += 1
    r2t = next(a.pdu for a in out if isinstance(a, Send) and isinstance(a.pdu, R2T))
    assert (r2t.buffer_offset, r2t.desired_length) == (0, 16384)

    def data_out(datasn: int, offset: int) -> DataOut:
        return DataOut(itt=itt, ttt=r2t.ttt, datasn=datasn, buffer_offset=offset,
                       data=payload[offset:offset + 4096])
    s.receive(data_out(0, 0), i.now, 1)
    lost = s.data_digest_error(data_out(1, 4096).encode_bhs(), "data digest", 1)
    recovery = [a.pdu for a in lost if isinstance(a, Send) and isinstance(a.pdu, R2T)]
    assert [(p.buffer_offset, p.desired_length) for p in recovery] == [(4096, 4096)]
    s.receive(data_out(2, 8192), i.now, 1)
    s.connection_lost(1, DropReason.CONNECTION_LOST, i.now)  # before the recovery R2T was answered
    out = s.receive(TaskMgmtRequest(immediate=True, function=TmfFunction.TASK_REASSIGN, itt=i.next_itt(), rtt=itt, cmdsn=i.cmdsn),
                    i.now, 0)
    pdus = [a.pdu for a in out if isinstance(a, Send)]
    assert isinstance(pdus[0], TaskMgmtResponse) and pdus[0].response == 0
    again = [p for p in pdus if isinstance(p, R2T)]
    assert [(p.buffer_offset, p.desired_length) for p in again] == [(4096, 12288)]  # from the hole, not 8192
    out = s.receive(DataOut(final=True, itt=itt, ttt=again[0].ttt, datasn=0, buffer_offset=4096,
                            data=payload[4096:]), i.now, 0)
    done = []
    for a in out:
        if isinstance(a, Execute):
            result = run_now(a.lun.execute(a.task.cdb, a.data_out, s.nexus, a.task.cmd.edtl))
            done += [x.pdu for x in s.command_done(a.task, result) if isinstance(x, Send)]
    assert isinstance(done[-1], ScsiResponse) and done[-1].status == 0
    assert bytes(i.lun.data[8 * 512:8 * 512 + len(payload)]) == payload
