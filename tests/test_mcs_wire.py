"""Several connections in one session (MC/S) and connection recovery
(ErrorRecoveryLevel 2), over real TCP on loopback against a real
TargetServer, driven by tests/iscsi_client.py: no Debian initiator does
either (open-iscsi refuses MaxConnections > 1 and runs ERL 0, libiscsi
too). RFC 7143 §4.2.2.1 (one CmdSN window), §5.1 (allegiance), §5.3.4
(adding a connection), §6.3.4 (connection reinstatement), §7.2 and
§11.5.1 (TASK REASSIGN), §11.14.1 (Logout of one connection)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from target.chap import ChapAuth, ChapSecret
from target.login import LoginStatus
from target.pdu import (
    R2T,
    DataIn,
    LogoutResponsePdu,
    NopIn,
    NopOut,
    Reject,
    RejectReason,
    ScsiResponse,
    TaskMgmtResponse,
    TmfFunction,
    TmfResponse,
)
from tests.iscsi_client import Client, read10, write10
from tests.test_target_wire import IQN, Running, image, read_all, srv  # noqa: F401 - fixtures

BLOCK = 512


def session(srv: Running, connections: int, **keys: str) -> list[Client]:
    """A session with ``connections`` connections, CIDs 0, 1, ..."""
    lead = srv.client()
    r = lead.login(IQN, MaxConnections=str(connections), **keys)
    assert r.status_class == 0 and r.tsih, r
    assert lead.keys["MaxConnections"] == str(connections)
    out = [lead]
    for cid in range(1, connections):
        c = lead.another(cid)
        r = c.login(IQN)
        assert r.status_class == 0 and r.tsih == lead.tsih, r
        out.append(c)
    return out


def login_status(r: object) -> int:
    return (r.status_class << 8) | r.status_detail  # type: ignore[attr-defined]


def expect_closed(c: Client, timeout: float = 5.0) -> None:
    """The target ends ``c``'s connection (anything still queued may come first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if c.recv(timeout=deadline - time.monotonic()) is None:
                return
        except (ConnectionError, socket.timeout):
            return
    raise AssertionError("connection still open")


def silent(c: Client, seconds: float) -> bool:
    """Nothing arrives on ``c`` for ``seconds``."""
    try:
        c.recv(timeout=seconds)
    except socket.timeout:
        return True
    return False


# -- MC/S ----------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 4])
def test_interleaved_reads_come_back_on_their_connections(srv: Running, image: Path, n: int) -> None:
    conns = session(srv, n)
    disk = image.read_bytes()
    for round_ in range(3):
        itts = []
        for i, c in enumerate(conns):  # one command on each connection before any answer is read
            lba = (round_ * n + i) * 64
            itts.append((c, c.command(read10(lba, 64), read=64 * BLOCK), lba))
        for c, itt, lba in reversed(itts):
            data, status = read_all(c, itt)  # read_all asserts the answer is this command's
            assert status == 0 and data == disk[lba * BLOCK:(lba + 64) * BLOCK]


def test_statsn_is_counted_per_connection(srv: Running) -> None:
    a, b = session(srv, 2)
    seen = {}
    for c in (a, b, a, b):
        itt = c.command(read10(0, 1), read=BLOCK)
        pdu = c.recv()
        assert isinstance(pdu, DataIn) and pdu.itt == itt
        seen.setdefault(c.cid, []).append(pdu.statsn)
    for sns in seen.values():  # §4.2.2.2: each connection's StatSN runs on by one
        assert sns[1] == sns[0] + 1


def test_commands_run_in_cmdsn_order_whichever_connection_they_came_on(srv: Running, image: Path) -> None:
    a, b = session(srv, 2)
    first = a.cmdsn
    # CmdSN first+1 goes out on b before CmdSN first on a: b's waits for it (§4.2.2.1)
    b.cmdsn = first + 1
    late = b.command(read10(10, 1), read=BLOCK)
    assert silent(b, 0.5)
    a.cmdsn = first
    early = a.command(read10(20, 1), read=BLOCK)
    assert read_all(a, early) == (image.read_bytes()[20 * BLOCK:21 * BLOCK], 0)
    assert read_all(b, late) == (image.read_bytes()[10 * BLOCK:11 * BLOCK], 0)
    for c in (a, b):
        c.cmdsn = first + 2
    # what one connection wrote the other reads (SIMPLE tasks: ordered delivery,
    # not ordered execution, so the read waits for the write's status)
    payload = os.urandom(4 * BLOCK)
    w = a.command(write10(300, 4), write=payload, immediate_len=len(payload))
    assert read_all(a, w) == (b"", 0)
    r = b.command(read10(300, 4), read=len(payload))
    assert read_all(b, r) == (payload, 0)


def test_data_out_follows_its_commands_connection(srv: Running, image: Path) -> None:
    a, b = session(srv, 2, InitialR2T="Yes", ImmediateData="No")
    payload = os.urandom(16 << 10)
    itt = a.command(write10(500, len(payload) // BLOCK), write=payload)
    r2t = a.recv()
    assert isinstance(r2t, R2T) and r2t.itt == itt
    b.data_out(itt, r2t.ttt, 0, payload)  # §5.1: not on another connection
    rej = b.recv()
    assert isinstance(rej, Reject) and rej.reason == RejectReason.PROTOCOL_ERROR
    a.data_out(itt, r2t.ttt, 0, payload)
    resp = a.recv()
    assert isinstance(resp, ScsiResponse) and resp.status == 0
    assert image.read_bytes()[500 * BLOCK:500 * BLOCK + len(payload)] == payload


def test_logout_of_one_connection_leaves_the_other(srv: Running, image: Path) -> None:
    a, b, c = session(srv, 3)
    a.logout(reason=1)  # close this connection
    r = a.recv()
    assert isinstance(r, LogoutResponsePdu) and r.response == 0
    expect_closed(a)
    b.logout(reason=1, cid=c.cid)  # close another connection, from here (§11.14.1)
    r = b.recv()
    assert isinstance(r, LogoutResponsePdu) and r.response == 0
    expect_closed(c)
    data, status = read_all(b, b.command(read10(7, 2), read=2 * BLOCK))
    assert status == 0 and data == image.read_bytes()[7 * BLOCK:9 * BLOCK]
    b.logout(reason=1, cid=9)  # no such connection
    r = b.recv()
    assert isinstance(r, LogoutResponsePdu) and r.response == 1
    b.logout(reason=0)  # the session
    r = b.recv()
    assert isinstance(r, LogoutResponsePdu) and r.response == 0
    expect_closed(b)


def test_logout_of_the_session_closes_every_connection(srv: Running) -> None:
    a, b = session(srv, 2)
    a.logout(reason=0)
    assert isinstance(a.recv(), LogoutResponsePdu)
    expect_closed(a)
    expect_closed(b)


def test_more_connections_than_agreed_are_refused(srv: Running) -> None:
    a, b = session(srv, 2)
    c = a.another(2)
    r = c.login(IQN)
    assert login_status(r) == LoginStatus.TOO_MANY_CONNECTIONS  # §11.13.5: 0x0206
    data, status = read_all(b, b.command(read10(0, 1), read=BLOCK))
    assert status == 0


def test_an_initiator_that_asks_one_connection_gets_one(srv: Running) -> None:
    a = srv.client()
    r = a.login(IQN, MaxConnections="1", ErrorRecoveryLevel="0")  # what open-iscsi and libiscsi offer
    assert r.status_class == 0
    assert a.keys["MaxConnections"] == "1" and a.keys["ErrorRecoveryLevel"] == "0"
    r = a.another(1).login(IQN)
    assert login_status(r) == LoginStatus.TOO_MANY_CONNECTIONS


def test_another_initiator_cannot_join_a_session(srv: Running) -> None:
    a, _ = session(srv, 2)
    stranger = Client("127.0.0.1", srv.port, isid=a.isid, initiator="iqn.2026-11.test:stranger", cid=5)
    stranger.tsih = a.tsih
    r = stranger.login(IQN)
    assert login_status(r) == LoginStatus.SESSION_DOES_NOT_EXIST
    wrong_isid = Client("127.0.0.1", srv.port, isid=bytes.fromhex("400000000099"), cid=5)
    wrong_isid.tsih = a.tsih
    assert login_status(wrong_isid.login(IQN)) == LoginStatus.SESSION_DOES_NOT_EXIST


def test_leading_only_keys_on_an_added_connection_fail_its_login(srv: Running) -> None:
    a, = session(srv, 1)
    r = a.another(1).login(IQN, MaxBurstLength="65536")
    assert login_status(r) == LoginStatus.INITIATOR_ERROR


def test_a_live_cid_logging_in_again_replaces_its_connection(srv: Running, image: Path) -> None:
    a, b = session(srv, 2, InitialR2T="Yes", ImmediateData="No")
    itt = b.command(write10(40, 2), write=bytes(2 * BLOCK))
    assert isinstance(b.recv(), R2T)
    b2 = a.another(1)  # CID 1 again while b lives: reinstatement (§6.3.4)
    assert b2.login(IQN).status_class == 0
    expect_closed(b)
    # ERL 0: b's write ended with it, nothing more is said of it; the session goes on
    data, status = read_all(b2, b2.command(read10(40, 2), read=2 * BLOCK))
    assert status == 0 and data == image.read_bytes()[40 * BLOCK:42 * BLOCK]
    assert itt


def test_erl0_a_connection_lost_mid_io_ends_only_its_tasks(srv: Running, image: Path) -> None:
    a, b = session(srv, 2)
    a.command(read10(0, 2048), read=1 << 20)
    a.kill()  # mid-I/O, no Logout
    time.sleep(0.2)
    # below ERL 2 a's tasks ended with it; the session lives on b (§6.3.6)
    data, status = read_all(b, b.command(read10(64, 8), read=8 * BLOCK))
    assert status == 0 and data == image.read_bytes()[64 * BLOCK:72 * BLOCK]
    # its last connection lost, the session is gone: its TSIH names nothing
    b.kill()
    time.sleep(0.2)
    c = Client("127.0.0.1", srv.port, cid=3)
    c.tsih = a.tsih
    assert login_status(c.login(IQN)) == LoginStatus.SESSION_DOES_NOT_EXIST


def test_task_reassign_below_erl2_is_not_supported(srv: Running) -> None:
    a, b = session(srv, 2)
    itt = b.task_management(TmfFunction.TASK_REASSIGN, rtt=77)
    r = b.recv()
    assert isinstance(r, TaskMgmtResponse) and r.itt == itt
    assert r.response == TmfResponse.REASSIGNMENT_NOT_SUPPORTED  # §11.6.1
    b.logout(reason=2, cid=0)  # remove for recovery needs ERL 2 too
    r = b.recv()
    assert isinstance(r, LogoutResponsePdu) and r.response == 2


# -- ERL 2: connection recovery ---------------------------------------------------

ERL2 = {"ErrorRecoveryLevel": "2", "InitialR2T": "Yes", "ImmediateData": "No", "MaxBurstLength": "65536"}


def reassign(c: Client, rtt: int, expdatasn: int = 0) -> TaskMgmtResponse:
    """TASK REASSIGN ``rtt`` to ``c``'s connection, retried while the target
    has not yet seen the old connection fail (bounded)."""
    for _ in range(50):
        c.task_management(TmfFunction.TASK_REASSIGN, rtt=rtt, expdatasn=expdatasn)
        r = c.recv()
        assert isinstance(r, TaskMgmtResponse), r
        if r.response != TmfResponse.TASK_STILL_ALLEGIANT:
            return r
        time.sleep(0.05)
    raise AssertionError("task still allegiant after 2.5 s")


def test_erl2_tasks_of_a_killed_connection_are_reassigned(srv: Running, image: Path) -> None:
    a, b = session(srv, 2, **ERL2)
    assert a.keys["ErrorRecoveryLevel"] == "2"
    # on a: a read whose answer is never taken, and a write a third sent
    read_itt = a.command(read10(1000, 256), read=256 * BLOCK)
    payload = os.urandom(192 << 10)
    write_itt = a.command(write10(3000, len(payload) // BLOCK), write=payload)
    unseen = a.expstatsn  # the read's answer is lost with the connection: never acknowledged
    while not isinstance(pdu := a.recv(), R2T):  # both commands reached the target
        assert isinstance(pdu, DataIn) and pdu.itt == read_itt
    assert pdu.buffer_offset == 0 and pdu.desired_length == 64 << 10
    a.expstatsn = unseen
    a.data_out(write_itt, pdu.ttt, 0, payload[:64 << 10])
    second = a.recv()  # the target has the first 64 KiB
    assert isinstance(second, R2T) and second.buffer_offset == 64 << 10
    a.kill()
    # on b: both tasks move here; the read is sent again, the write asks again for its data
    r = reassign(b, read_itt)
    assert r.response == TmfResponse.FUNCTION_COMPLETE
    assert read_all(b, read_itt) == (image.read_bytes()[1000 * BLOCK:1256 * BLOCK], 0)
    r = reassign(b, write_itt)
    assert r.response == TmfResponse.FUNCTION_COMPLETE
    done, offsets = 0, []
    while True:
        pdu = b.recv()
        if isinstance(pdu, ScsiResponse):
            assert pdu.itt == write_itt and pdu.status == 0
            break
        assert isinstance(pdu, R2T) and pdu.itt == write_itt, pdu
        b.data_out(write_itt, pdu.ttt, pdu.buffer_offset,
                   payload[pdu.buffer_offset:pdu.buffer_offset + pdu.desired_length])
        done += pdu.desired_length
        offsets.append(pdu.buffer_offset)
    assert offsets[0] == 64 << 10 and done == len(payload) - (64 << 10)  # only what had not arrived
    data, status = read_all(b, b.command(read10(3000, len(payload) // BLOCK), read=len(payload)))
    assert status == 0 and data == payload == image.read_bytes()[3000 * BLOCK:3000 * BLOCK + len(payload)]


def test_erl2_reassign_resends_data_in_from_expdatasn(srv: Running, image: Path) -> None:
    a = srv.client()
    assert a.login(IQN, MaxConnections="2", ErrorRecoveryLevel="2", MaxRecvDataSegmentLength="8192").status_class == 0
    b = a.another(1)  # the same PDU size on both: DataSN means the same data on either
    assert b.login(IQN, MaxRecvDataSegmentLength="8192").status_class == 0
    itt = a.command(read10(0, 64), read=64 * BLOCK)  # 32 KiB: four Data-In of 8 KiB
    first = a.recv()
    assert isinstance(first, DataIn) and first.datasn == 0
    a.kill()
    assert reassign(b, itt, expdatasn=1).response == TmfResponse.FUNCTION_COMPLETE
    got = []
    while True:
        pdu = b.recv()
        assert isinstance(pdu, DataIn) and pdu.itt == itt
        got.append(pdu)
        if pdu.status_present:
            break
    assert [p.datasn for p in got] == [1, 2, 3]
    assert b"".join(bytes(p.data) for p in got) == image.read_bytes()[8192:64 * BLOCK]


def test_erl2_connection_reinstatement_then_reassign(srv: Running, image: Path) -> None:
    a, = session(srv, 1, **ERL2)
    itt = a.command(read10(200, 16), read=16 * BLOCK)
    assert isinstance(a.recv(), DataIn)
    a2 = a.another(0)  # the same CID logs in again while a is live (§6.3.4)
    assert a2.login(IQN).status_class == 0
    expect_closed(a)
    assert reassign(a2, itt).response == TmfResponse.FUNCTION_COMPLETE
    assert read_all(a2, itt) == (image.read_bytes()[200 * BLOCK:216 * BLOCK], 0)


def test_erl2_logout_for_recovery_then_reassign(srv: Running, image: Path) -> None:
    a, b = session(srv, 2, **ERL2)
    itt = a.command(read10(300, 8), read=8 * BLOCK)
    assert isinstance(a.recv(), DataIn)  # sent, and never acknowledged
    b.logout(reason=2, cid=0)  # remove a for recovery, from b
    r = b.recv()
    assert isinstance(r, LogoutResponsePdu) and r.response == 0
    expect_closed(a)
    assert reassign(b, itt).response == TmfResponse.FUNCTION_COMPLETE
    assert read_all(b, itt) == (image.read_bytes()[300 * BLOCK:308 * BLOCK], 0)
    # a task on a live connection is still allegiant; an unknown one does not exist
    live = b.command(read10(0, 1), read=BLOCK)
    read_all(b, live)
    b.task_management(TmfFunction.TASK_REASSIGN, rtt=0xABCD)
    r = b.recv()
    assert isinstance(r, TaskMgmtResponse) and r.response == TmfResponse.TASK_DOES_NOT_EXIST


def test_erl2_tasks_are_dropped_after_time2retain(srv: Running) -> None:
    a, b = session(srv, 2, **ERL2, DefaultTime2Wait="0", DefaultTime2Retain="1")
    assert a.keys["DefaultTime2Retain"] == "1"
    # §13.15, §13.16: kept Time2Wait (the larger of both sides', 2 s here) then Time2Retain
    kept = int(a.keys["DefaultTime2Wait"]) + 1
    itt = a.command(read10(0, 8), read=8 * BLOCK)
    assert isinstance(a.recv(), DataIn)
    a.kill()
    time.sleep(kept + 0.5)
    r = reassign(b, itt)
    assert r.response == TmfResponse.TASK_DOES_NOT_EXIST
    # the session outlives a lost last connection for Time2Retain, then ends
    b.kill()
    c = b.another(1)
    assert c.login(IQN).status_class == 0  # back within Time2Retain: the same session
    c.kill()
    time.sleep(kept + 0.5)
    d = Client("127.0.0.1", srv.port, cid=1)
    d.tsih = a.tsih
    assert login_status(d.login(IQN)) == LoginStatus.SESSION_DOES_NOT_EXIST


def test_every_added_connection_proves_chap_again(image: Path) -> None:
    secret = ChapSecret("node01", b"forward-secret-1")
    srv = Running(image, spec={"auth": ChapAuth(secret)})
    try:
        a = srv.client()
        assert a.login(IQN, chap=(secret.user, secret.secret), MaxConnections="2").status_class == 0
        # §5.3.4: each connection authenticates; no CHAP, or a wrong secret, and it is not added
        assert login_status(a.another(1).login(IQN)) == LoginStatus.AUTHENTICATION_FAILURE
        assert login_status(a.another(1).login(IQN, chap=(secret.user, b"not-the-secret!!"))) \
            == LoginStatus.AUTHENTICATION_FAILURE
        b = a.another(1)
        assert b.login(IQN, chap=(secret.user, secret.secret)).status_class == 0
        data, status = read_all(b, b.command(read10(3, 1), read=BLOCK))
        assert status == 0 and data == image.read_bytes()[3 * BLOCK:4 * BLOCK]
    finally:
        srv.stop()


def test_an_added_connection_is_reported_as_such_not_as_a_login(image: Path) -> None:
    events: list[tuple[str, dict[str, object]]] = []
    srv = Running(image, on_event=lambda what, fields: events.append((what, fields)))
    try:
        a, b = session(srv, 2)
        b.logout(reason=1)
        assert isinstance(b.recv(), LogoutResponsePdu)
        expect_closed(b)
        names = [w for w, _ in events]
        assert names.count("iscsi.login") == 1  # the machine logged in once (the recorder's boot steps)
        added = next(f for w, f in events if w == "iscsi.connection_added")
        assert added["cid"] == 1 and added["tsih"] == a.tsih and added["connections"] == 2
        assert next(f for w, f in events if w == "iscsi.connection_logout")["cid"] == 1
        assert "iscsi.logout" not in names and "iscsi.session_dropped" not in names
    finally:
        srv.stop()


def test_erl2_reassigned_to_a_connection_with_digests(srv: Running, image: Path) -> None:
    """Digests are per connection (§13.1): a read answered on a connection
    without them (file data sent zero-copy) is resent with a data digest."""
    a = srv.client()
    assert a.login(IQN, MaxConnections="2", ErrorRecoveryLevel="2").status_class == 0
    itt = a.command(read10(64, 128), read=128 * BLOCK)
    assert isinstance(a.recv(), DataIn)
    a.kill()
    b = a.another(1)
    assert b.login(IQN, HeaderDigest="CRC32C", DataDigest="CRC32C").status_class == 0
    b.reader.digests.header = b.reader.digests.data = True
    assert reassign(b, itt).response == TmfResponse.FUNCTION_COMPLETE
    assert read_all(b, itt) == (image.read_bytes()[64 * BLOCK:192 * BLOCK], 0)


def test_erl2_a_status_the_initiator_acknowledged_is_not_kept(srv: Running, image: Path) -> None:
    """§4.2.2.2: ExpStatSN acknowledges every status below it; the target
    keeps nothing of those for a reassignment."""
    a, b = session(srv, 2, ErrorRecoveryLevel="2")
    itt = a.command(read10(0, 8), read=8 * BLOCK)
    assert read_all(a, itt)[1] == 0
    a.send(NopOut(immediate=True, itt=a.next_itt(), ttt=0xFFFFFFFF, cmdsn=a.cmdsn, expstatsn=a.expstatsn))
    assert isinstance(a.recv(), NopIn)  # the acknowledgement has arrived
    a.kill()
    assert reassign(b, itt).response == TmfResponse.TASK_DOES_NOT_EXIST


# -- ERL 1's SNACK on a session of several connections ----------------------------------


def test_snacks_on_two_connections(srv: Running, image: Path) -> None:
    """ERL 2 includes ERL 1 (docs/iscsi-recovery.md): what a connection
    keeps for SNACKs is its own. A Data SNACK on connection 2 for a read
    issued there resends identical bytes there (cut to connection 2's
    MaxRecvDataSegmentLength); a Status SNACK on connection 1 is answered
    while connection 2 is busy with a long read; neither connection can
    ask for what the other sent."""
    from target.recovery import SnackType
    disk = image.read_bytes()
    a = srv.client()
    assert a.login(IQN, MaxConnections="2", ErrorRecoveryLevel="2").status_class == 0
    assert a.keys["ErrorRecoveryLevel"] == "2" and a.keys["MaxConnections"] == "2"
    b = a.another(1)
    assert b.login(IQN, MaxRecvDataSegmentLength="8192").status_class == 0

    # connection 1: a read whose status the initiator "loses" (not acknowledged)
    itt_a = a.command(read10(0, 1), read=BLOCK)
    status_a = a.recv()
    assert isinstance(status_a, DataIn) and status_a.itt == itt_a and status_a.status_present
    a.expstatsn = status_a.statsn

    # connection 2: a read of 8 Data-In (8 KiB each), DataSN 3 and 5 "lost"
    itt_b = b.command(read10(256, 128), read=64 << 10)
    pdus: list[DataIn] = []
    while not (pdus and pdus[-1].status_present):
        pdu = b.recv()
        assert isinstance(pdu, DataIn) and pdu.itt == itt_b, pdu
        pdus.append(pdu)
    assert [p.datasn for p in pdus] == list(range(8))
    b.expstatsn = pdus[-1].statsn  # §11.16: data missing, so its status is not acknowledged

    # connection 2 busy: a 4 MiB read in flight, not read yet
    busy = b.command(read10(4096, 8192), read=4 << 20)
    # Status SNACK on connection 1: answered there, with connection 1's StatSN
    a.snack(SnackType.STATUS, begrun=status_a.statsn, runlength=1)
    again = a.recv()
    assert isinstance(again, ScsiResponse) and again.itt == itt_a and again.statsn == status_a.statsn
    assert again.status == 0
    # connection 1 cannot ask for connection 2's read: not in its store
    a.snack(SnackType.DATA_R2T, itt=itt_b, begrun=3, runlength=1)
    r = a.recv()
    assert isinstance(r, Reject) and r.reason == RejectReason.PROTOCOL_ERROR

    data, status = read_all(b, busy)
    assert status == 0 and data == disk[4096 * BLOCK:(4096 + 8192) * BLOCK]
    b.expstatsn = pdus[-1].statsn  # read_all acknowledged the busy read's status, which acknowledges itt_b's
    for sn in (3, 5):
        b.snack(SnackType.DATA_R2T, itt=itt_b, begrun=sn, runlength=1)
        resent = b.recv()
        assert isinstance(resent, DataIn) and resent.itt == itt_b and resent.datasn == sn
        assert resent.buffer_offset == sn * 8192 and bytes(resent.data) == bytes(pdus[sn].data)
        assert bytes(resent.data) == disk[256 * BLOCK + sn * 8192:256 * BLOCK + (sn + 1) * 8192]
    assert silent(a, 0.3)  # nothing of connection 2's went to connection 1
    # and the session goes on on both
    for c, lba in ((a, 10), (b, 20)):
        data, status = read_all(c, c.command(read10(lba, 8), read=8 * BLOCK))
        assert status == 0 and data == disk[lba * BLOCK:(lba + 8) * BLOCK]
