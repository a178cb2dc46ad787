"""ErrorRecoveryLevel 1 over real TCP on loopback: tests/iscsi_client.py
against a TargetServer, the client losing PDUs on purpose and asking for
them with SNACKs (RFC 7143 §11.16), or corrupting a digest (§7.8)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from target.pdu import (
    R2T,
    DataIn,
    DataOut,
    NopIn,
    NopOut,
    Reject,
    RejectReason,
    ScsiCommand,
    ScsiResponse,
    TextResponse,
)
from target.recovery import SnackType
from target.text import decode_text
from tests.iscsi_client import Client, read10, write10
from tests.test_target_wire import Running, image, logged_in, read_all, srv, still_serves  # noqa: F401 - fixtures

ERL1 = {"ErrorRecoveryLevel": "1"}
RESERVED = 0xFFFFFFFF


def data_ins(c: Client, itt: int) -> list[DataIn]:
    """Every Data-In of a read, up to the one with the status."""
    out: list[DataIn] = []
    while True:
        pdu = c.recv()
        assert isinstance(pdu, DataIn) and pdu.itt == itt, pdu
        out.append(pdu)
        if pdu.status_present:
            return out


def digests_on(srv: Running, **keys: str) -> Client:
    c = logged_in(srv, HeaderDigest="CRC32C", DataDigest="CRC32C", **ERL1, **keys)
    assert c.keys["ErrorRecoveryLevel"] == "1"
    c.reader.digests.header = c.reader.digests.data = True
    return c


def test_level_negotiated(srv: Running) -> None:
    c = logged_in(srv, ErrorRecoveryLevel="2")
    assert c.keys["ErrorRecoveryLevel"] == "2"  # the target's most since MC/S and ERL 2
    c1 = logged_in(srv, ErrorRecoveryLevel="1")
    assert c1.keys["ErrorRecoveryLevel"] == "1"
    c0 = logged_in(srv)
    assert "ErrorRecoveryLevel" not in c0.keys  # not offered: the default 0, as before
    c0.snack(SnackType.DATA_R2T, itt=1)
    r = c0.recv()
    assert isinstance(r, Reject) and r.reason == RejectReason.SNACK_REJECT


@pytest.mark.parametrize("digests", [False, True])  # with a data digest the data is read as bytes, not sent by file
def test_lost_data_in_is_sent_again_identical(srv: Running, image: Path, digests: bool) -> None:
    c = digests_on(srv, MaxRecvDataSegmentLength="8192") if digests else \
        logged_in(srv, MaxRecvDataSegmentLength="8192", **ERL1)
    itt = c.command(read10(0, 128), read=64 << 10)
    pdus = data_ins(c, itt)
    assert len(pdus) == 8
    lost = {3, 5}
    kept = {p.datasn: bytes(p.data) for p in pdus if p.datasn not in lost}
    # §11.16: the status is not acknowledged while data is missing (that would acknowledge the data)
    c.expstatsn = pdus[-1].statsn
    for sn in sorted(lost):
        c.snack(SnackType.DATA_R2T, itt=itt, begrun=sn, runlength=1)
        again = c.recv()
        assert isinstance(again, DataIn) and again.datasn == sn and again.buffer_offset == sn * 8192
        kept[sn] = bytes(again.data)
        assert kept[sn] == bytes(pdus[sn].data)
    assert b"".join(kept[k] for k in range(8)) == image.read_bytes()[:64 << 10]
    still_serves(srv, image)


def test_lost_status_is_sent_again(srv: Running, image: Path) -> None:
    c = logged_in(srv, **ERL1)
    first = c.command(read10(0, 1), read=512)
    read_all(c, first)
    statsn = c.expstatsn  # the next read's status: the client "loses" it
    itt = c.command(read10(1, 1), read=512)
    lost = c.recv()
    assert isinstance(lost, DataIn) and lost.status_present and lost.statsn == statsn
    c.expstatsn = statsn
    c.snack(SnackType.STATUS, begrun=statsn, runlength=1)
    again = c.recv()
    assert isinstance(again, ScsiResponse) and again.itt == itt and again.statsn == statsn and again.status == 0
    # acknowledged now: asking again is a protocol error
    c.snack(SnackType.STATUS, begrun=statsn - 1, runlength=1)
    r = c.recv()
    assert isinstance(r, Reject) and r.reason == RejectReason.PROTOCOL_ERROR


def test_lost_r2t_is_sent_again(srv: Running, image: Path) -> None:
    c = logged_in(srv, InitialR2T="Yes", ImmediateData="No", **ERL1)
    payload = os.urandom(16 << 10)
    itt = c.command(write10(64, 32), write=payload)
    r2t = c.recv()
    assert isinstance(r2t, R2T)  # "lost": the client asks for it again
    c.snack(SnackType.DATA_R2T, itt=itt, begrun=0, runlength=0)
    again = c.recv()
    assert isinstance(again, R2T) and (again.ttt, again.r2tsn, again.desired_length) == (r2t.ttt, 0, len(payload))
    c.data_out(itt, again.ttt, 0, payload)
    resp = c.recv()
    assert isinstance(resp, ScsiResponse) and resp.status == 0
    assert image.read_bytes()[64 * 512:64 * 512 + len(payload)] == payload


def test_data_ack_releases_the_read(srv: Running, image: Path) -> None:
    c = logged_in(srv, MaxRecvDataSegmentLength="65536", MaxBurstLength="131072", **ERL1)
    itt = c.command(read10(0, 1024), read=512 << 10)
    pdus = data_ins(c, itt)
    acks = [p for p in pdus if p.ack]
    assert len(acks) == 3 and all(p.ttt != RESERVED and p.final for p in acks)  # 4 bursts, the last has status
    assert b"".join(bytes(p.data) for p in pdus) == image.read_bytes()[:512 << 10]
    c.expstatsn = pdus[-1].statsn  # the status not acknowledged: only the DataACK releases the read
    c.snack(SnackType.DATA_R2T, itt=itt, begrun=1, runlength=1)
    again = c.recv()
    assert isinstance(again, DataIn) and again.datasn == 1 and bytes(again.data) == bytes(pdus[1].data)
    c.snack(SnackType.DATA_ACK, ttt=acks[0].ttt, begrun=len(pdus), lun=pdus[0].lun)
    c.snack(SnackType.DATA_R2T, itt=itt, begrun=0, runlength=1)
    r = c.recv()
    assert isinstance(r, Reject) and r.reason == RejectReason.PROTOCOL_ERROR  # released: nothing to resend
    c.send(NopOut(immediate=True, itt=99, cmdsn=c.cmdsn, expstatsn=c.expstatsn))
    assert isinstance(c.recv(), NopIn)


def test_corrupt_data_out_is_asked_again_by_r2t(srv: Running, image: Path) -> None:
    c = digests_on(srv, InitialR2T="Yes", ImmediateData="No", MaxRecvDataSegmentLength="8192")
    payload = os.urandom(32 << 10)
    itt = c.command(write10(200, 64), write=payload)
    r2t = c.recv()
    assert isinstance(r2t, R2T) and r2t.desired_length == len(payload)
    for k in range(4):
        chunk = payload[k * 8192:(k + 1) * 8192]
        pdu = DataOut(final=k == 3, itt=itt, ttt=r2t.ttt, buffer_offset=k * 8192, datasn=k,
                      expstatsn=c.expstatsn, data=chunk)
        if k == 1:
            c.send_corrupt(pdu)
        else:
            c.send(pdu)
    reject = c.recv()
    assert isinstance(reject, Reject) and reject.reason == RejectReason.DATA_DIGEST_ERROR
    recovery = c.recv()
    assert isinstance(recovery, R2T) and (recovery.buffer_offset, recovery.desired_length) == (8192, 8192)
    c.data_out(itt, recovery.ttt, 8192, payload[8192:16384])
    resp = c.recv()
    assert isinstance(resp, ScsiResponse) and resp.status == 0
    assert image.read_bytes()[200 * 512:200 * 512 + len(payload)] == payload


def test_corrupt_immediate_data_is_rejected_and_retried(srv: Running, image: Path) -> None:
    c = digests_on(srv, ImmediateData="Yes")
    payload = os.urandom(4096)
    cmd = ScsiCommand(final=True, write=True, itt=c.next_itt(), edtl=len(payload), cmdsn=c.cmdsn,
                      expstatsn=c.expstatsn, cdb=write10(300, 8).ljust(16, b"\0"), data=payload)
    c.send_corrupt(cmd)
    r = c.recv()
    assert isinstance(r, Reject) and r.reason == RejectReason.DATA_DIGEST_ERROR
    c.send(cmd)  # §7.8: the initiator retries the command, same CmdSN
    resp = c.recv()
    assert isinstance(resp, ScsiResponse) and resp.status == 0
    assert image.read_bytes()[300 * 512:300 * 512 + len(payload)] == payload


def test_header_digest_error_discards_the_pdu_at_erl1(srv: Running, image: Path) -> None:
    c = digests_on(srv)
    c.send_corrupt(NopOut(immediate=True, itt=7, cmdsn=c.cmdsn, expstatsn=c.expstatsn, data=b"ping"), header=True)
    c.send(NopOut(immediate=True, itt=8, cmdsn=c.cmdsn, expstatsn=c.expstatsn))
    r = c.recv()
    assert isinstance(r, NopIn) and r.itt == 8  # the first was dropped, the connection stays
    # two in a row: the framing cannot be trusted any more
    for itt in (9, 10):
        c.send_corrupt(NopOut(immediate=True, itt=itt, cmdsn=c.cmdsn, expstatsn=c.expstatsn), header=True)
    assert c.recv(timeout=5) is None
    still_serves(srv, image)


def test_header_digest_error_closes_at_erl0(srv: Running, image: Path) -> None:
    c = logged_in(srv, HeaderDigest="CRC32C", DataDigest="CRC32C")
    c.reader.digests.header = c.reader.digests.data = True
    c.send_corrupt(NopOut(immediate=True, itt=7, cmdsn=c.cmdsn, expstatsn=c.expstatsn), header=True)
    assert c.recv(timeout=5) is None
    still_serves(srv, image)


@pytest.mark.parametrize("chunk", [8192, 128 << 10])  # the second goes through the reader's own-buffer path
def test_data_out_lost_to_a_header_digest_error_is_asked_again(srv: Running, image: Path, chunk: int) -> None:
    """The header of the second Data-Out fails its digest: it is discarded
    whole, the third shows a DataSN gap, and a recovery R2T asks for the
    bytes in between (§7.4)."""
    c = digests_on(srv, InitialR2T="Yes", ImmediateData="No", MaxBurstLength=str(4 * chunk))
    payload = os.urandom(4 * chunk)
    itt = c.command(write10(1000, len(payload) // 512), write=payload)
    r2t = c.recv()
    assert isinstance(r2t, R2T) and r2t.desired_length == len(payload)
    for k in range(4):
        pdu = DataOut(final=k == 3, itt=itt, ttt=r2t.ttt, buffer_offset=k * chunk, datasn=k,
                      expstatsn=c.expstatsn, data=payload[k * chunk:(k + 1) * chunk])
        if k == 1:
            c.send_corrupt(pdu, header=True)
        else:
            c.send(pdu)
    recovery = c.recv()
    assert isinstance(recovery, R2T) and (recovery.buffer_offset, recovery.desired_length) == (chunk, chunk)
    c.data_out(itt, recovery.ttt, chunk, payload[chunk:2 * chunk])
    resp = c.recv()
    assert isinstance(resp, ScsiResponse) and resp.status == 0
    assert image.read_bytes()[1000 * 512:1000 * 512 + len(payload)] == payload


QUICK = 0.3  # the data_out_timeout of these servers: a stalled write is asked again within 0.6 s


@pytest.fixture
def quick(image: Path) -> Iterator[Running]:
    r = Running(image, data_out_timeout=QUICK)
    yield r
    r.stop()


def test_withheld_last_data_out_is_asked_again_by_recovery_r2t(quick: Running, image: Path) -> None:
    """The client never sends the write's last Data-Out (no DataSN gap shows
    the loss): after the timeout the target asks for exactly those bytes
    (§11.8), and answering completes the write with the right bytes."""
    c = logged_in(quick, InitialR2T="Yes", ImmediateData="No", MaxRecvDataSegmentLength="8192", **ERL1)
    payload = os.urandom(32 << 10)
    itt = c.command(write10(400, 64), write=payload)
    r2t = c.recv()
    assert isinstance(r2t, R2T) and r2t.desired_length == len(payload)
    for k in range(3):  # the fourth and last (F bit) is withheld
        c.data_out(itt, r2t.ttt, k * 8192, payload[k * 8192:(k + 1) * 8192], final=False, datasn=k)
    recovery = c.recv(timeout=5 * QUICK)
    assert isinstance(recovery, R2T) and recovery.itt == itt and recovery.ttt != r2t.ttt
    assert (recovery.buffer_offset, recovery.desired_length, recovery.r2tsn) == (24576, 8192, 1)
    c.data_out(itt, recovery.ttt, 24576, payload[24576:])
    resp = c.recv()
    assert isinstance(resp, ScsiResponse) and resp.status == 0
    assert image.read_bytes()[400 * 512:400 * 512 + len(payload)] == payload


def test_withheld_unsolicited_data_is_asked_again(quick: Running, image: Path) -> None:
    c = logged_in(quick, InitialR2T="No", ImmediateData="Yes", FirstBurstLength="16384",
                  MaxRecvDataSegmentLength="8192", **ERL1)
    payload = os.urandom(24 << 10)
    itt = c.command(write10(600, 48), write=payload, immediate_len=4096, final=False)
    r2t = c.recv()  # the rest past FirstBurstLength is solicited at once
    assert isinstance(r2t, R2T) and (r2t.buffer_offset, r2t.desired_length) == (16384, 8192)
    c.data_out(itt, r2t.ttt, 16384, payload[16384:])
    c.data_out(itt, 0xFFFFFFFF, 4096, payload[4096:8192], final=False)  # then the unsolicited burst stops
    recovery = c.recv(timeout=5 * QUICK)
    assert isinstance(recovery, R2T) and (recovery.buffer_offset, recovery.desired_length) == (8192, 8192)
    c.data_out(itt, recovery.ttt, 8192, payload[8192:16384])
    resp = c.recv()
    assert isinstance(resp, ScsiResponse) and resp.status == 0
    assert image.read_bytes()[600 * 512:600 * 512 + len(payload)] == payload


def test_withheld_data_out_at_erl0_gets_no_recovery_r2t(quick: Running, image: Path) -> None:
    c = logged_in(quick, InitialR2T="Yes", ImmediateData="No")
    payload = os.urandom(8192)
    itt = c.command(write10(700, 16), write=payload)
    r2t = c.recv()
    assert isinstance(r2t, R2T)
    c.data_out(itt, r2t.ttt, 0, payload[:4096], final=False)
    with pytest.raises(TimeoutError):
        c.recv(timeout=4 * QUICK)  # as before: the initiator's own timeout is what ends it
    c.data_out(itt, r2t.ttt, 4096, payload[4096:], datasn=1)
    resp = c.recv()
    assert isinstance(resp, ScsiResponse) and resp.status == 0


def text_answer(c: Client, pairs: list[tuple[str, str]]) -> dict[str, str]:
    c.text(pairs)
    r = c.recv()
    assert isinstance(r, TextResponse) and r.final, r
    return dict(decode_text(r.data))


def test_login_keys_in_a_text_request_are_rejected_and_not_applied(srv: Running, image: Path) -> None:
    """ErrorRecoveryLevel and the other login-only keys (RFC 7143 §13 "Use:
    LO" / "IO") cannot change in Full Feature Phase: each is answered
    Reject, which leaves the session's value (§6.2); a declaration that
    may change (MaxRecvDataSegmentLength) is taken."""
    c0 = logged_in(srv)  # ERL 0
    answer = text_answer(c0, [("ErrorRecoveryLevel", "1"), ("MaxBurstLength", "512"), ("HeaderDigest", "CRC32C"),
                              ("InitialR2T", "No"), ("CHAP_A", "5"), ("InitiatorAlias", "renamed"),
                              ("MaxRecvDataSegmentLength", "4096")])
    assert answer == {"ErrorRecoveryLevel": "Reject", "MaxBurstLength": "Reject", "HeaderDigest": "Reject",
                      "InitialR2T": "Reject", "CHAP_A": "Reject"}
    c0.snack(SnackType.STATUS, begrun=0)
    r = c0.recv()
    assert isinstance(r, Reject) and r.reason == RejectReason.SNACK_REJECT  # still ERL 0
    itt = c0.command(read10(0, 16), read=8192)
    pdus = []
    while not pdus or not pdus[-1].status_present:
        pdu = c0.recv()
        assert isinstance(pdu, DataIn) and pdu.itt == itt
        pdus.append(pdu)
    # MaxRecvDataSegmentLength taken (4 KiB PDUs), MaxBurstLength not (one burst: no F bit inside)
    assert [len(p.data) for p in pdus] == [4096, 4096] and not pdus[0].final
    assert b"".join(bytes(p.data) for p in pdus) == image.read_bytes()[:8192]

    c1 = logged_in(srv, **ERL1)
    assert text_answer(c1, [("ErrorRecoveryLevel", "0")]) == {"ErrorRecoveryLevel": "Reject"}
    statsn = c1.expstatsn = c1.expstatsn - 1  # the Text Response's, "lost": not acknowledged
    c1.snack(SnackType.STATUS, begrun=statsn, runlength=1)  # still ERL 1: the response is sent again
    again = c1.recv()
    assert isinstance(again, TextResponse) and again.statsn == statsn
