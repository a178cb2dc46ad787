"""ErrorRecoveryLevel 1 in the sans-I/O session (RFC 7143 §7.1.4.1,
§7.2-§7.4, §11.16): the level negotiated, SNACKs for Data-In, R2Ts and
status, DataACK, R-Data, Data-Out lost to a digest error recovered by R2T,
and every bad SNACK rejected. ERL 0 stays as it was (test_session_core)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from target.keys import negotiate
from target.limits import DATA_OUT_ASKS, DATA_OUT_TIMEOUT
from target.pdu import R2T, DataIn, DataOut, Pdu, Reject, RejectReason, ScsiResponse, SnackRequest
from target.recovery import ReadStore, SnackError, SnackType, StatusStore, snack_run
from tests.test_session_core import BLOCK, RESERVED, Initiator, read10, write10

ERL1 = {"ErrorRecoveryLevel": "1"}


def data_ins(out: list[Pdu]) -> list[DataIn]:
    return [p for p in out if isinstance(p, DataIn)]


def sent_bytes(i: Initiator, pdus: list[Pdu]) -> list[bytes]:
    """The data segments that went with ``pdus`` (the last of each)."""
    return [next(d for p, d in reversed(i.sent) if p is pdu) for pdu in pdus]


def test_level_is_the_smaller_of_both_and_at_most_two() -> None:
    assert negotiate("ErrorRecoveryLevel", "2") == "2"
    assert negotiate("ErrorRecoveryLevel", "1") == "1"
    assert negotiate("ErrorRecoveryLevel", "0") == "0"
    assert negotiate("ErrorRecoveryLevel", "2", {"ErrorRecoveryLevel": "0"}) == "0"
    i = Initiator(**ERL1)
    assert i.session.params.error_recovery_level == 1 and i.session.recovery is not None
    i0 = Initiator()  # what Debian's initiators ask: nothing, or 0
    assert i0.session.params.error_recovery_level == 0 and i0.session.recovery is None


def test_erl0_rejects_snack_as_before() -> None:
    i = Initiator()
    out = i.send(SnackRequest(itt=1))
    assert isinstance(out[0], Reject) and out[0].reason == RejectReason.SNACK_REJECT


def test_data_snack_resends_the_same_data_in() -> None:
    i = Initiator(**ERL1)
    itt, out = i.command(read10(0, 64), read=64 * BLOCK)  # 4 Data-In of 8 KiB, bursts of 16 KiB
    first = data_ins(out)
    assert [p.datasn for p in first] == [0, 1, 2, 3]
    original = sent_bytes(i, first)
    again = data_ins(i.send(SnackRequest(type=SnackType.DATA_R2T, itt=itt, begrun=1, runlength=2)))
    assert [(p.datasn, p.buffer_offset, p.final) for p in again] == [(1, 8192, True), (2, 16384, False)]
    assert sent_bytes(i, again) == original[1:3]
    rest = data_ins(i.send(SnackRequest(type=SnackType.DATA_R2T, itt=itt, begrun=2, runlength=0)))
    assert [p.datasn for p in rest] == [2, 3]
    assert rest[-1].status_present and rest[-1].statsn == first[-1].statsn  # the same StatSN, not a new one
    assert i.session.statsn == first[-1].statsn + 1


def test_data_ack_is_asked_at_burst_ends_and_releases_the_read() -> None:
    i = Initiator(**ERL1)
    itt, out = i.command(read10(0, 64), read=64 * BLOCK)
    first = data_ins(out)
    assert [p.ack for p in first] == [False, True, False, False]  # the last carries the status
    ttt = first[1].ttt
    assert ttt != RESERVED
    assert len(i.session.recovery.reads) == 1  # type: ignore[union-attr]
    assert i.send(SnackRequest(type=SnackType.DATA_ACK, itt=RESERVED, ttt=ttt, begrun=2)) == []
    assert len(i.session.recovery.reads) == 1  # type: ignore[union-attr]
    out = i.send(SnackRequest(type=SnackType.DATA_R2T, itt=itt, begrun=1, runlength=1))
    assert isinstance(out[0], Reject) and out[0].reason == RejectReason.PROTOCOL_ERROR  # acknowledged
    assert i.send(SnackRequest(type=SnackType.DATA_ACK, itt=RESERVED, ttt=ttt, begrun=4)) == []
    assert len(i.session.recovery.reads) == 0  # type: ignore[union-attr]


def test_acknowledged_status_releases_reads_and_responses() -> None:
    i = Initiator(**ERL1)
    itts = [i.command(read10(k, 1), read=BLOCK)[0] for k in range(3)]
    rec = i.session.recovery
    assert rec is not None and len(rec.reads) == 3 and len(rec.statuses) == 3
    out = i.send(SnackRequest(type=SnackType.STATUS, itt=RESERVED, begrun=503, runlength=1))
    assert len(out) == 1 and isinstance(out[0], ScsiResponse)
    assert out[0].statsn == 503 and out[0].itt == itts[1] and out[0].expdatasn == 1
    i.send(SnackRequest(type=SnackType.DATA_ACK, itt=RESERVED, ttt=RESERVED, expstatsn=504))  # a bad one
    assert len(rec.reads) == 1 and 504 in rec.statuses.kept and 503 not in rec.statuses.kept
    out = i.send(SnackRequest(type=SnackType.STATUS, itt=RESERVED, begrun=503, runlength=1, expstatsn=504))
    assert isinstance(out[0], Reject) and out[0].reason == RejectReason.PROTOCOL_ERROR
    out = i.send(SnackRequest(type=SnackType.DATA_R2T, itt=itts[0], runlength=0, expstatsn=504))
    assert isinstance(out[0], Reject)  # its status was acknowledged: so was its data


def test_bad_snacks_are_rejected() -> None:
    i = Initiator(**ERL1)
    itt, _ = i.command(read10(0, 64), read=64 * BLOCK)
    cases = [
        SnackRequest(type=SnackType.DATA_R2T, itt=0x777, begrun=0),  # unknown task
        SnackRequest(type=SnackType.DATA_R2T, itt=itt, begrun=4),  # beyond what was sent
        SnackRequest(type=SnackType.DATA_R2T, itt=itt, begrun=2, runlength=3),
        SnackRequest(type=SnackType.STATUS, itt=RESERVED, begrun=600),  # not sent yet
        SnackRequest(type=SnackType.DATA_ACK, itt=RESERVED, ttt=0x1234, begrun=1),
        SnackRequest(type=7, itt=itt),
        SnackRequest(type=SnackType.R_DATA, itt=itt, ttt=RESERVED),  # no SNACK Tag
    ]
    for pdu in cases:
        out = i.send(pdu)
        assert len(out) == 1 and isinstance(out[0], Reject) and out[0].reason == RejectReason.PROTOCOL_ERROR, pdu
    _, out = i.command(read10(0, 1), read=BLOCK)  # the session carries on
    assert isinstance(out[0], DataIn) and out[0].status_present


def test_r2t_snack_sends_the_r2t_again() -> None:
    i = Initiator(InitialR2T="Yes", ImmediateData="No", **ERL1)
    payload = bytes([7]) * 8192
    itt, out = i.command(write10(4, 16), write=payload)
    r2t = out[0]
    assert isinstance(r2t, R2T) and r2t.r2tsn == 0
    again = i.send(SnackRequest(type=SnackType.DATA_R2T, itt=itt, begrun=0, runlength=0))
    assert len(again) == 1 and isinstance(again[0], R2T)
    assert (again[0].ttt, again[0].r2tsn, again[0].buffer_offset, again[0].desired_length) == \
        (r2t.ttt, 0, 0, 8192)
    out = i.send(SnackRequest(type=SnackType.DATA_R2T, itt=itt, begrun=1, runlength=0))
    assert isinstance(out[0], Reject)  # R2TSN 1 was never sent
    out = i.send(DataOut(final=True, itt=itt, ttt=r2t.ttt, buffer_offset=0, datasn=0, data=payload))
    assert isinstance(out[0], ScsiResponse) and out[0].status == 0
    assert i.lun.data[4 * BLOCK:20 * BLOCK] == payload


def test_data_out_digest_error_is_recovered_by_an_r2t() -> None:
    i = Initiator(InitialR2T="Yes", ImmediateData="No", **ERL1)
    payload = bytes(range(256)) * 32
    itt, out = i.command(write10(0, 16), write=payload)
    ttt = out[0].ttt  # type: ignore[attr-defined]
    assert i.send(DataOut(final=False, itt=itt, ttt=ttt, buffer_offset=0, datasn=0, data=payload[:2048])) == []
    bad = DataOut(final=False, itt=itt, ttt=ttt, buffer_offset=2048, datasn=1, data=payload[2048:4096])
    out = i.do(i.session.data_digest_error(bad.encode_bhs(), "data digest mismatch"))
    assert isinstance(out[0], Reject) and out[0].reason == RejectReason.DATA_DIGEST_ERROR
    recovery = out[1]
    assert isinstance(recovery, R2T) and (recovery.buffer_offset, recovery.desired_length) == (2048, 2048)
    assert recovery.r2tsn == 1 and recovery.ttt != ttt
    # the sequence carries on after the lost PDU, DataSN counted
    assert i.send(DataOut(final=True, itt=itt, ttt=ttt, buffer_offset=4096, datasn=2, data=payload[4096:])) == []
    out = i.send(DataOut(final=True, itt=itt, ttt=recovery.ttt, buffer_offset=2048, datasn=0,
                         data=payload[2048:4096]))
    assert isinstance(out[0], ScsiResponse) and out[0].status == 0
    assert bytes(i.lun.data[:8192]) == payload
    assert "iscsi.recovery_r2t" in i.server.names()


def test_erl0_data_digest_error_only_rejects() -> None:
    i = Initiator(InitialR2T="Yes", ImmediateData="No")
    itt, out = i.command(write10(0, 16), write=bytes(8192))
    bad = DataOut(final=False, itt=itt, ttt=out[0].ttt, buffer_offset=0, datasn=0, data=bytes(4096))  # type: ignore[attr-defined]
    out = i.do(i.session.data_digest_error(bad.encode_bhs(), "data digest mismatch"))
    assert len(out) == 1 and isinstance(out[0], Reject) and out[0].reason == RejectReason.DATA_DIGEST_ERROR


def test_datasn_gap_at_erl1_asks_for_the_missing_bytes() -> None:
    i = Initiator(InitialR2T="Yes", ImmediateData="No", **ERL1)
    payload = bytes(range(256)) * 32
    itt, out = i.command(write10(0, 16), write=payload)
    ttt = out[0].ttt  # type: ignore[attr-defined]
    i.send(DataOut(final=False, itt=itt, ttt=ttt, buffer_offset=0, datasn=0, data=payload[:1024]))
    # DataSN 1 (1024..3072) never arrived
    out = i.send(DataOut(final=True, itt=itt, ttt=ttt, buffer_offset=3072, datasn=2, data=payload[3072:]))
    assert len(out) == 1 and isinstance(out[0], R2T)
    assert (out[0].buffer_offset, out[0].desired_length) == (1024, 2048)
    out = i.send(DataOut(final=True, itt=itt, ttt=out[0].ttt, buffer_offset=1024, datasn=0,
                         data=payload[1024:3072]))
    assert isinstance(out[0], ScsiResponse) and out[0].status == 0
    assert bytes(i.lun.data[:8192]) == payload
    # a DataSN from the past is a protocol error, not a session failure
    itt, out = i.command(write10(0, 16), write=payload)
    ttt = out[0].ttt  # type: ignore[attr-defined]
    i.send(DataOut(final=False, itt=itt, ttt=ttt, buffer_offset=0, datasn=0, data=payload[:1024]))
    out = i.send(DataOut(final=False, itt=itt, ttt=ttt, buffer_offset=1024, datasn=0, data=payload[1024:2048]))
    assert isinstance(out[0], Reject) and out[0].reason == RejectReason.PROTOCOL_ERROR


def test_r_data_snack_cuts_the_data_anew() -> None:
    i = Initiator(**ERL1)
    itt, out = i.command(read10(0, 32), read=32 * BLOCK)  # 2 Data-In of 8 KiB
    assert len(data_ins(out)) == 2
    i.session.conn.max_recv = 4096  # as a Text negotiation would (per connection, §13.12)
    out = i.send(SnackRequest(type=SnackType.R_DATA, itt=itt, ttt=0x55))
    ins = data_ins(out)
    assert [(p.datasn, p.buffer_offset) for p in ins] == [(k, k * 4096) for k in range(4)]
    assert not any(p.status_present for p in ins)
    assert b"".join(sent_bytes(i, ins)) == bytes(i.lun.data[:32 * BLOCK])
    status = out[-1]
    assert isinstance(status, ScsiResponse) and status.snack_tag == 0x55 and status.statsn == 502
    assert status.expdatasn == 4
    again = data_ins(i.send(SnackRequest(type=SnackType.DATA_R2T, itt=itt, begrun=3, runlength=1)))
    assert [(p.datasn, p.buffer_offset) for p in again] == [(3, 3 * 4096)]  # the new cut stands


def test_status_store_is_bounded() -> None:
    store = StatusStore(count=2, nbytes=1 << 20)
    store.acked = 10
    for sn in (10, 11, 12):
        store.keep(ScsiResponse(statsn=sn), sn)
    assert list(store.kept) == [11, 12]
    assert [p.statsn for p in store.resend(11, 0, 13)] == [11, 12]  # type: ignore[attr-defined]
    try:
        store.resend(10, 1, 13)
    except SnackError as e:
        assert e.reason == RejectReason.SNACK_REJECT
    else:
        raise AssertionError("a dropped response cannot be sent again")
    for begrun, runlength in ((12, 2), (13, 0), (9, 1)):  # past the last sent, not sent, acknowledged
        try:
            store.resend(begrun, runlength, 13)
        except SnackError as e:
            assert e.reason == RejectReason.PROTOCOL_ERROR and "StatSN" in str(e)
        else:
            raise AssertionError(f"Status SNACK {begrun}+{runlength} must be refused")
    small = StatusStore(count=100, nbytes=200)
    for sn in range(5):
        small.keep(ScsiResponse(statsn=sn, data=bytes(60)), sn)
    assert small.bytes <= 200 and len(small) == 1
    reads = ReadStore(count=1)
    assert len(reads) == 0
    assert snack_run(2, 0, 5) == range(2, 5)


snacks = st.builds(
    SnackRequest, type=st.integers(0, 15), itt=st.sampled_from([1, 2, 3, 0x777, RESERVED]),
    ttt=st.one_of(st.integers(0, 8), st.just(RESERVED), st.integers(0, 0xFFFFFFFF)),
    begrun=st.one_of(st.integers(0, 8), st.integers(495, 510), st.integers(0, 0xFFFFFFFF)),
    runlength=st.one_of(st.integers(0, 8), st.integers(0, 0xFFFFFFFF)),
    expstatsn=st.one_of(st.integers(500, 510), st.integers(0, 0xFFFFFFFF)))


@settings(max_examples=300, deadline=None)
@given(st.lists(snacks, max_size=6))
def test_any_snack_is_answered_or_rejected(pdus: list[SnackRequest]) -> None:
    """Garbage SNACKs: never an exception, only Data-In, R2T, responses or
    Rejects; the session serves commands afterwards."""
    i = Initiator(InitialR2T="Yes", ImmediateData="No", **ERL1)
    i.command(read10(0, 64), read=64 * BLOCK)
    i.command(read10(0, 1), read=BLOCK)
    i.command(write10(0, 16), write=bytes(8192))
    for pdu in pdus:
        for out in i.send(pdu):
            assert isinstance(out, (DataIn, R2T, ScsiResponse, Reject)) or out.statsn  # type: ignore[attr-defined]
    itt, out = i.command(read10(1, 1), read=BLOCK)
    assert isinstance(out[-1], DataIn) and out[-1].status_present and out[-1].itt == itt


def test_lost_unsolicited_data_is_asked_again() -> None:
    i = Initiator(**ERL1)  # InitialR2T=No, FirstBurstLength 4 KiB, ImmediateData
    payload = bytes(range(256)) * 16  # 4 KiB, all of it unsolicited
    itt, out = i.command(write10(8, 8), write=payload, immediate=1024, final=False)
    assert out == []
    bad = DataOut(final=False, itt=itt, ttt=RESERVED, buffer_offset=1024, datasn=0, data=payload[1024:2048])
    out = i.do(i.session.data_digest_error(bad.encode_bhs(), "data digest mismatch"))
    assert isinstance(out[0], Reject) and isinstance(out[1], R2T)
    assert (out[1].buffer_offset, out[1].desired_length, out[1].r2tsn) == (1024, 1024, 0)
    assert i.send(DataOut(final=True, itt=itt, ttt=RESERVED, buffer_offset=2048, datasn=1,
                          data=payload[2048:])) == []
    out = i.send(DataOut(final=True, itt=itt, ttt=out[1].ttt, buffer_offset=1024, datasn=0,
                         data=payload[1024:2048]))
    assert isinstance(out[0], ScsiResponse) and out[0].status == 0
    assert bytes(i.lun.data[8 * BLOCK:16 * BLOCK]) == payload


def test_corrupt_data_out_for_no_task_is_rejected_once() -> None:
    i = Initiator(**ERL1)
    bad = DataOut(itt=0x99, ttt=5, buffer_offset=0, datasn=0, data=bytes(512))
    out = i.do(i.session.data_digest_error(bad.encode_bhs(), "data digest mismatch"))
    assert len(out) == 1 and isinstance(out[0], Reject) and out[0].reason == RejectReason.DATA_DIGEST_ERROR


# -- a Data-Out that never comes: the sequence reception timeout (§11.8) -------------

STALL = DATA_OUT_TIMEOUT * 2 + 0.1  # a stalled write is noticed between one and two timeouts


def test_lost_last_data_out_is_asked_again_after_the_timeout() -> None:
    i = Initiator(InitialR2T="Yes", ImmediateData="No", **ERL1)
    payload = bytes(range(256)) * 48  # 12 KiB: one R2T (MaxBurstLength 16 KiB)
    itt, out = i.command(write10(40, 24), write=payload)
    r2t = out[0]
    assert isinstance(r2t, R2T) and r2t.desired_length == len(payload)
    assert i.send(DataOut(final=False, itt=itt, ttt=r2t.ttt, buffer_offset=0, datasn=0, data=payload[:8192])) == []
    assert i.tick(DATA_OUT_TIMEOUT * 0.9) == []  # not yet
    out = i.tick(STALL)
    assert len(out) == 1 and isinstance(out[0], R2T)
    again = out[0]
    assert (again.buffer_offset, again.desired_length, again.r2tsn) == (8192, 4096, 1) and again.ttt != r2t.ttt
    # the first R2T is closed: its late Data-Out is rejected, not counted twice
    late = i.send(DataOut(final=True, itt=itt, ttt=r2t.ttt, buffer_offset=8192, datasn=1, data=payload[8192:]))
    assert isinstance(late[0], Reject) and late[0].reason == RejectReason.INVALID_PDU_FIELD
    out = i.send(DataOut(final=True, itt=itt, ttt=again.ttt, buffer_offset=8192, datasn=0, data=payload[8192:]))
    assert isinstance(out[0], ScsiResponse) and out[0].status == 0
    assert bytes(i.lun.data[40 * BLOCK:64 * BLOCK]) == payload
    assert i.session.next_timer() == i.now + 15  # the keepalive only: no write waits, no sweep


def test_lost_r2t_and_unsolicited_tail_are_asked_again() -> None:
    i = Initiator(**ERL1)  # InitialR2T=No, FirstBurstLength 4 KiB, ImmediateData
    payload = bytes(range(256)) * 32  # 8 KiB: 4 KiB unsolicited, then an R2T for the rest
    itt, out = i.command(write10(8, 16), write=payload, immediate=1024, final=False)
    assert isinstance(out[0], R2T) and (out[0].buffer_offset, out[0].desired_length) == (4096, 4096)
    # the R2T is "lost", and the unsolicited burst stops at 2 KiB
    assert i.send(DataOut(final=False, itt=itt, ttt=RESERVED, buffer_offset=1024, datasn=0,
                          data=payload[1024:2048])) == []
    out = i.tick(STALL)
    assert [(p.buffer_offset, p.desired_length, p.r2tsn) for p in out if isinstance(p, R2T)] == [
        (2048, 2048, 1), (4096, 4096, 2)]
    for r2t in out:
        assert isinstance(r2t, R2T)
        done = i.send(DataOut(final=True, itt=itt, ttt=r2t.ttt, buffer_offset=r2t.buffer_offset, datasn=0,
                              data=payload[r2t.buffer_offset:r2t.buffer_offset + r2t.desired_length]))
    assert isinstance(done[0], ScsiResponse) and done[0].status == 0
    assert bytes(i.lun.data[8 * BLOCK:24 * BLOCK]) == payload


def test_a_silent_initiator_is_asked_a_bounded_number_of_times() -> None:
    i = Initiator(InitialR2T="Yes", ImmediateData="No", **ERL1)
    itt, out = i.command(write10(0, 8), write=bytes(4096))
    assert isinstance(out[0], R2T)
    asked = [p for p in i.tick(20 * DATA_OUT_TIMEOUT) if isinstance(p, R2T)]
    assert len(asked) == DATA_OUT_ASKS and [p.r2tsn for p in asked] == [1, 2, 3]
    # data arriving starts the count again
    i.send(DataOut(final=False, itt=itt, ttt=asked[-1].ttt, buffer_offset=0, datasn=0, data=bytes(512)))
    assert [p.buffer_offset for p in i.tick(STALL) if isinstance(p, R2T)] == [512]


def test_erl0_keeps_waiting_for_data_out() -> None:
    i = Initiator(InitialR2T="Yes", ImmediateData="No")
    itt, out = i.command(write10(0, 8), write=bytes(4096))
    assert isinstance(out[0], R2T)
    assert i.session.data_watch is None and i.session.next_timer() == i.now + 15  # the keepalive only
    assert [p for p in i.tick(14) if isinstance(p, R2T)] == []


def test_a_write_waiting_for_credit_is_not_stalled() -> None:
    i = Initiator(InitialR2T="Yes", ImmediateData="No", **ERL1)
    i.session.write_limit = 4096  # the second write waits for the first to be written
    first, out = i.command(write10(0, 8), write=bytes(4096))
    second, out2 = i.command(write10(8, 8), write=bytes(4096))
    assert isinstance(out[0], R2T) and out2 == []
    asked = [p for p in i.tick(STALL) if isinstance(p, R2T)]
    assert [p.itt for p in asked] == [first]  # only the write that asked for data and got none
    done = i.send(DataOut(final=True, itt=first, ttt=asked[0].ttt, buffer_offset=0, datasn=0, data=bytes(4096)))
    assert [type(p) for p in done] == [R2T, ScsiResponse] and done[0].itt == second  # credit freed
