"""The target over real TCP on loopback, driven by tests/iscsi_client.py:
normal flows, and the malformed input real initiators never send. After
every bad exchange a second session must still work."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from target.pdu import (
    R2T,
    DataIn,
    LoginResponse,
    LogoutResponsePdu,
    NopIn,
    NopOut,
    Reject,
    RejectReason,
    ScsiResponse,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TextResponse,
    TmfFunction,
    encode,
)
from target.server import Portal, TargetServer
from target.targets import LunSpec, Target, TargetSpec
from target.text import decode_text
from tests.e2e.peers import free_port
from tests.iscsi_client import Client, read10, write10

IQN = "iqn.2026-11.test:wire"
SIZE = 8 << 20


class Running:
    """A target server on its own loop thread; ``spec`` go to the
    TargetSpec, ``server_kw`` to TargetServer."""

    def __init__(self, image: Path, *, spec: dict[str, Any] | None = None, **server_kw: Any) -> None:
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        target = Target.open(TargetSpec(IQN, (LunSpec(str(image)),), alias="wire", **(spec or {})))
        server_kw.setdefault("nop_interval", 0)
        self.server = TargetServer([target], [Portal("127.0.0.1", self.port)], **server_kw)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def client(self, **kw: object) -> Client:
        return Client("127.0.0.1", self.port, **kw)  # type: ignore[arg-type]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "disk.img"
    p.write_bytes(os.urandom(SIZE))
    return p


@pytest.fixture
def srv(image: Path) -> Iterator[Running]:
    r = Running(image)
    yield r
    r.stop()


def logged_in(srv: Running, **keys: str) -> Client:
    c = srv.client()
    r = c.login(IQN, **keys)
    assert r.status_class == 0 and r.transit and r.tsih
    return c


def read_all(c: Client, itt: int) -> tuple[bytes, int]:
    data = bytearray()
    while True:
        pdu = c.recv()
        assert pdu is not None, "connection closed"
        if isinstance(pdu, DataIn):
            assert pdu.itt == itt
            data += pdu.data
            if pdu.status_present:
                return bytes(data), pdu.status
        elif isinstance(pdu, ScsiResponse):
            return bytes(data), pdu.status
        else:
            raise AssertionError(pdu)


def still_serves(srv: Running, image: Path) -> None:
    c = logged_in(srv)
    data, status = read_all(c, c.command(read10(8, 8), read=4096))
    assert status == 0 and data == image.read_bytes()[4096:8192]
    c.close()


def test_read_matches_image(srv: Running, image: Path) -> None:
    c = logged_in(srv, MaxRecvDataSegmentLength="8192")
    data, status = read_all(c, c.command(read10(0, 256), read=128 << 10))
    assert status == 0 and data == image.read_bytes()[: 128 << 10]


def test_write_with_r2t(srv: Running, image: Path) -> None:
    c = logged_in(srv, InitialR2T="Yes", ImmediateData="No", MaxBurstLength="65536")
    payload = os.urandom(256 << 10)
    itt = c.command(write10(100, 512), write=payload)
    done = 0
    while done < len(payload):
        r2t = c.recv()
        assert isinstance(r2t, R2T) and r2t.itt == itt
        chunk = payload[r2t.buffer_offset:r2t.buffer_offset + r2t.desired_length]
        c.data_out(itt, r2t.ttt, r2t.buffer_offset, chunk)
        done += len(chunk)
    resp = c.recv()
    assert isinstance(resp, ScsiResponse) and resp.status == 0
    assert image.read_bytes()[100 * 512:100 * 512 + len(payload)] == payload


def test_write_immediate_and_unsolicited(srv: Running, image: Path) -> None:
    c = logged_in(srv, InitialR2T="No", ImmediateData="Yes", FirstBurstLength="65536")
    payload = os.urandom(32 << 10)
    itt = c.command(write10(0, 64), write=payload, immediate_len=8192, final=False)
    c.data_out(itt, 0xFFFFFFFF, 8192, payload[8192:], final=True)
    resp = c.recv()
    assert isinstance(resp, ScsiResponse) and resp.status == 0
    assert image.read_bytes()[: len(payload)] == payload


def test_send_targets(srv: Running) -> None:
    c = srv.client()
    assert c.login(None).status_class == 0
    c.text([("SendTargets", "All")])
    r = c.recv()
    assert isinstance(r, TextResponse)
    pairs = decode_text(r.data)
    assert pairs == [("TargetName", IQN), ("TargetAddress", f"127.0.0.1:{srv.port},1")]


def test_nop_out_is_answered(srv: Running) -> None:
    c = logged_in(srv)
    c.send(NopOut(immediate=True, itt=77, cmdsn=c.cmdsn, data=b"ping"))
    r = c.recv()
    assert isinstance(r, NopIn) and r.itt == 77 and r.data == b"ping"


def test_logout(srv: Running) -> None:
    c = logged_in(srv)
    c.logout()
    assert isinstance(c.recv(), LogoutResponsePdu)
    assert c.recv() is None


def test_unknown_opcode_is_rejected(srv: Running, image: Path) -> None:
    c = logged_in(srv)
    raw = bytearray(encode(NopOut(itt=5)))
    raw[0] = 0x1C
    c.send_raw(bytes(raw))
    r = c.recv()
    assert isinstance(r, Reject) and r.reason == RejectReason.COMMAND_NOT_SUPPORTED
    assert bytes(r.data)[:1] == b"\x1c"
    data, status = read_all(c, c.command(read10(0, 1), read=512))  # the same session goes on
    assert status == 0 and data == image.read_bytes()[:512]


def test_data_past_negotiated_limit_is_rejected(srv: Running, image: Path) -> None:
    c = logged_in(srv)
    limit = int(c.keys.get("MaxRecvDataSegmentLength", "262144"))
    c.send(NopOut(immediate=True, itt=9, data=bytes(limit + 4)))
    r = c.recv()
    assert isinstance(r, Reject) and r.reason == RejectReason.PROTOCOL_ERROR
    still_serves(srv, image)


def test_cmdsn_out_of_window_is_ignored(srv: Running, image: Path) -> None:
    c = logged_in(srv)
    c.cmdsn += 100000
    c.command(read10(0, 1), read=512)
    c.cmdsn -= 100001
    data, status = read_all(c, c.command(read10(0, 1), read=512))
    assert status == 0 and data == image.read_bytes()[:512]


def test_truncated_pdu_then_hangup(srv: Running, image: Path) -> None:
    c = logged_in(srv)
    c.send_raw(encode(NopOut(immediate=True, itt=3, data=b"x" * 100))[:60])
    c.close()
    still_serves(srv, image)


def test_garbage_before_login(srv: Running, image: Path) -> None:
    c = srv.client()
    c.send_raw(os.urandom(4096))
    pdu = c.recv()
    assert pdu is None or isinstance(pdu, (Reject, LoginResponse))
    still_serves(srv, image)


def test_login_to_unknown_target(srv: Running) -> None:
    c = srv.client()
    r = c.login("iqn.2026-11.test:nope")
    assert (r.status_class, r.status_detail) == (2, 3)
    assert c.recv() is None


def test_data_out_for_unknown_task_is_rejected(srv: Running) -> None:
    c = logged_in(srv)
    c.data_out(0x1234, 0x99, 0, b"x" * 512)
    r = c.recv()
    assert isinstance(r, Reject) and r.reason == RejectReason.INVALID_PDU_FIELD


def test_abort_task_waiting_for_data(srv: Running, image: Path) -> None:
    c = logged_in(srv, InitialR2T="Yes", ImmediateData="No")
    itt = c.command(write10(0, 8), write=bytes(4096))
    assert isinstance(c.recv(), R2T)
    c.send(TaskMgmtRequest(immediate=True, function=TmfFunction.ABORT_TASK, itt=c.next_itt(), rtt=itt,
                           cmdsn=c.cmdsn, refcmdsn=c.cmdsn - 1))
    r = c.recv()
    assert isinstance(r, TaskMgmtResponse) and r.response == 0
    assert image.read_bytes()[:4096] != bytes(4096)  # nothing was written


def test_session_reinstatement_closes_the_old_connection(srv: Running) -> None:
    a = logged_in(srv)
    b = logged_in(srv)  # same ISID and initiator name: replaces a
    assert a.recv(timeout=5) is None
    b.send(NopOut(immediate=True, itt=1, cmdsn=b.cmdsn))
    assert isinstance(b.recv(), NopIn)


def test_header_digest_round_trip(srv: Running, image: Path) -> None:
    c = srv.client()
    r = c.login(IQN, HeaderDigest="CRC32C", DataDigest="CRC32C")
    assert r.status_class == 0
    assert c.keys["HeaderDigest"] == "CRC32C" and c.keys["DataDigest"] == "CRC32C"
    c.reader.digests.header = c.reader.digests.data = True
    data, status = read_all(c, c.command(read10(0, 16), read=8192))
    assert status == 0 and data == image.read_bytes()[:8192]


def test_datasn_error_drops_the_connection(srv: Running, image: Path) -> None:
    c = logged_in(srv, InitialR2T="Yes", ImmediateData="No")
    itt = c.command(write10(0, 2), write=bytes(1024))
    r2t = c.recv()
    assert isinstance(r2t, R2T)
    c.data_out(itt, r2t.ttt, 0, bytes(512), final=False, datasn=1)
    assert c.recv() is None
    assert image.read_bytes()[:1024] != bytes(1024)
    still_serves(srv, image)


def test_zero_length_read_with_overflow_gets_a_response(srv: Running) -> None:
    c = logged_in(srv)
    c.command(read10(0, 1), read=0)
    r = c.recv()
    assert isinstance(r, ScsiResponse) and r.status == 0 and r.overflow and r.residual == 512


def test_many_concurrent_sessions(srv: Running, image: Path) -> None:
    expected = image.read_bytes()
    clients = []
    for i in range(24):
        c = srv.client(isid=bytes.fromhex("4000000100") + bytes([i]))
        assert c.login(IQN).status_class == 0
        clients.append(c)
    itts = [(c, c.command(read10(i * 16, 16), read=8192)) for i, c in enumerate(clients)]
    for i, (c, itt) in enumerate(itts):
        data, status = read_all(c, itt)
        assert status == 0 and data == expected[i * 8192:(i + 1) * 8192]


def test_idle_initiator_is_pinged(image: Path) -> None:
    r = Running(image)
    r.server.nop_interval = 0.4
    try:
        c = logged_in(r)
        ping = c.recv(timeout=5)
        assert isinstance(ping, NopIn) and ping.itt == 0xFFFFFFFF and ping.ttt != 0xFFFFFFFF
        c.send(NopOut(immediate=True, itt=0xFFFFFFFF, ttt=ping.ttt, cmdsn=c.cmdsn))
        data, status = read_all(c, c.command(read10(0, 1), read=512))
        assert status == 0
    finally:
        r.stop()


def one_writer(image: Path, read_only: bool = False) -> Running:
    """A server whose one target is a machine's disk: one writer at a time."""
    r = Running(image)
    target = Target.open(TargetSpec(IQN, (LunSpec(str(image), read_only=read_only),), single_writer=True))
    r.server.targets[IQN].close()
    r.server.targets[IQN] = target
    return r


def test_a_machine_disk_has_one_writer(image: Path) -> None:
    """The same initiator logging in again (another ISID: iPXE's abandoned
    session, then the OS from the iBFT) replaces its session; another
    initiator is refused while the disk is in use (0301), and gets it once
    the session is gone."""
    r = one_writer(image)
    try:
        first = r.client(isid=bytes.fromhex("400000000011"))
        assert first.login(IQN).status_class == 0
        again = r.client(isid=bytes.fromhex("400000000022"))
        assert again.login(IQN).status_class == 0
        assert first.recv(timeout=5) is None  # its connection is closed
        other = r.client(initiator="iqn.2026-11.test:other")
        refused = other.login(IQN)
        assert (refused.status_class, refused.status_detail) == (3, 1)
        again.close()
        time.sleep(0.3)
        later = r.client(initiator="iqn.2026-11.test:other")
        assert later.login(IQN).status_class == 0
    finally:
        r.stop()


def test_a_read_only_machine_disk_has_many_readers(image: Path) -> None:
    r = one_writer(image, read_only=True)
    try:
        clients = [r.client(initiator=f"iqn.2026-11.test:reader{i}") for i in range(3)]
        assert [c.login(IQN).status_class for c in clients] == [0, 0, 0]
    finally:
        r.stop()


def test_an_announced_16_mib_segment_is_refused_not_buffered(srv: Running) -> None:
    """A NOP-Out announcing 16 MiB of data (far over our declared
    MaxRecvDataSegmentLength): Reject at once from its header, its bytes
    dropped as they come (the server's memory stays flat), and the session
    goes on."""
    import resource

    c = logged_in(srv)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    raw = bytearray(encode(NopOut(immediate=True, itt=5, cmdsn=c.cmdsn)))
    size = (1 << 24) - 4
    raw[5:8] = size.to_bytes(3, "big")
    c.sock.sendall(bytes(raw))
    reject = c.recv(timeout=5)
    assert isinstance(reject, Reject) and reject.reason == RejectReason.PROTOCOL_ERROR
    chunk = bytes(1 << 20)
    for _ in range(16):
        c.sock.sendall(chunk[:min(len(chunk), size)])
        size -= len(chunk)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB; the server runs in this process
    assert grown < 8 << 10, f"grew {grown} KiB"
    c.send(NopOut(immediate=True, itt=6, cmdsn=c.cmdsn))
    assert isinstance(c.recv(timeout=5), NopIn)
