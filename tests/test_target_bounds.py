"""Resource bounds of the target (target/limits.py), over real sockets on
loopback: what a hostile or broken peer may make it hold, and for how long.

The functional tests run the target in this process (tests/test_target_wire
``Running``) with short timeouts; the RSS tests run it alone in a
subprocess (tests/target_proc.py) and read its peak RSS (VmHWM) from /proc,
so the figure is the target's and not the test's. Every loop here is bounded
in count and in time, and every address is a loopback one.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from target.login import MAX_LOGIN_TEXT
from target.pdu import (
    R2T,
    RESERVED_TAG,
    DataIn,
    LoginRequest,
    NopIn,
    NopOut,
    Reject,
    RejectReason,
    ScsiCommand,
    ScsiResponse,
    Stage,
    TextRequest,
    TextResponse,
)
from target.targets import Target
from target.text import decode_text, encode_text
from tests.e2e.peers import free_port
from tests.iscsi_client import INITIATOR, Client, read10, write10
from tests.test_target_events import Recorder
from tests.test_target_wire import IQN, Running, image, logged_in, read_all  # noqa: F401 (image: a fixture)

MiB = 1 << 20
GiB = 1 << 30
RSS_BOUND = 64 * MiB  # what any one attack below may add to the target's peak RSS


# -- helpers ----------------------------------------------------------------------


def closed_within(sock: socket.socket | None, seconds: float) -> bool:
    """Whether the peer closes ``sock`` (EOF or reset) within ``seconds``;
    whatever it sends meanwhile is read and dropped. None is a connection
    reset before it was made."""
    if sock is None:
        return True
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(1 << 16):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except (socket.timeout, TimeoutError):
            return False
    return False


def write_command(c: Client, cdb: bytes, edtl: int, data: bytes = b"", final: bool = True) -> int:
    """A write whose Expected Data Transfer Length is ``edtl``, whatever the
    CDB asks for; ``data`` goes as immediate data."""
    itt = c.next_itt()
    c.send(ScsiCommand(final=final, write=True, itt=itt, edtl=edtl, cmdsn=c.cmdsn, expstatsn=c.expstatsn,
                       cdb=cdb.ljust(16, b"\0"), data=data))
    c.cmdsn += 1
    return itt


def text_part(c: Client, data: bytes, itt: int, ttt: int = RESERVED_TAG, cont: bool = True) -> None:
    """One part of a Text Request (C bit, §11.10): the parts share one ITT,
    each is a command of its own (CmdSN)."""
    c.send(TextRequest(final=not cont, cont=cont, itt=itt, ttt=ttt, cmdsn=c.cmdsn, expstatsn=c.expstatsn,
                       data=data))
    c.cmdsn += 1


def isid(i: int) -> bytes:
    """A distinct ISID per client: the same one again would reinstate (§6.3.5)."""
    return bytes.fromhex("40000000") + i.to_bytes(2, "big")


def discovery(srv: Running, i: int = 0, **keys: str) -> Client:
    c = srv.client(isid=isid(i))
    r = c.login(None, **keys)
    assert r.status_class == 0 and r.transit
    return c


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def fast(image: Path, rec: Recorder) -> Iterator[Running]:
    """A target with every bound short enough to watch it act."""
    r = Running(image, on_event=rec, pdu_timeout=1.0, discovery_timeout=1.5, login_timeout=1.5,
                max_unlogged=8, max_unlogged_per_source=4, session_write_limit=64 << 10)
    yield r
    r.stop()


# -- 1. text in Full Feature Phase is capped like login text --------------------------


@pytest.mark.parametrize("echo_ttt", [False, True], ids=["reserved-ttt", "echoed-ttt"])
def test_continued_text_request_is_capped(fast: Running, rec: Recorder, echo_ttt: bool) -> None:
    c = discovery(fast)
    chunk = b"X-Pad=" + b"a" * (16 << 10)
    itt, ttt, sent = c.next_itt(), RESERVED_TAG, 0
    for _ in range(64):  # 1 MiB at most: far past the cap
        text_part(c, chunk, itt, ttt)
        sent += len(chunk)
        r = c.recv(5)
        if isinstance(r, Reject):
            assert r.reason == RejectReason.LONG_OPERATION_REJECT
            break
        assert isinstance(r, TextResponse) and not r.final and r.ttt != RESERVED_TAG and not r.data
        ttt = r.ttt if echo_ttt else RESERVED_TAG
    else:
        raise AssertionError(f"{sent} bytes of continued text taken without a Reject")
    assert MAX_LOGIN_TEXT < sent <= MAX_LOGIN_TEXT + len(chunk)
    assert c.recv(5) is None  # and the connection ends
    assert rec.wait_for("iscsi.text_too_long")["limit"] == MAX_LOGIN_TEXT


def test_continued_text_request_within_the_cap_is_answered(fast: Running) -> None:
    c = discovery(fast)
    itt = c.next_itt()
    text_part(c, b"SendTargets=", itt)
    r = c.recv()
    assert isinstance(r, TextResponse) and not r.final
    text_part(c, b"All\0", itt, r.ttt, cont=False)
    r = c.recv()
    assert isinstance(r, TextResponse) and r.final and ("TargetName", IQN) in decode_text(r.data)


# -- 2. write data: what the CDB asks for, gathered as it arrives ----------------------


def test_r2t_solicits_what_the_cdb_asks_not_the_edtl(fast: Running, image: Path) -> None:
    c = logged_in(fast, InitialR2T="Yes", ImmediateData="No")
    itt = write_command(c, write10(40, 1), GiB)
    r2t = c.recv()
    assert isinstance(r2t, R2T) and (r2t.buffer_offset, r2t.desired_length) == (0, 512)
    payload = os.urandom(512)
    c.data_out(itt, r2t.ttt, 0, payload)
    resp = c.recv()
    # §11.4.5.2: less was transferred than announced, the residual says how much less
    assert isinstance(resp, ScsiResponse) and resp.status == 0
    assert resp.underflow and not resp.overflow and resp.residual == GiB - 512
    assert image.read_bytes()[40 * 512:41 * 512] == payload


def test_immediate_data_enough_for_the_cdb_completes_at_once(fast: Running, image: Path) -> None:
    c = logged_in(fast, InitialR2T="Yes", ImmediateData="Yes")
    payload = os.urandom(1024)
    write_command(c, write10(50, 2), GiB, payload)
    resp = c.recv()
    assert isinstance(resp, ScsiResponse) and resp.status == 0 and resp.underflow
    assert resp.residual == GiB - 1024
    assert image.read_bytes()[50 * 512:52 * 512] == payload


def test_edtl_below_the_cdb_length_is_an_overflow(fast: Running, image: Path) -> None:
    c = logged_in(fast, InitialR2T="Yes", ImmediateData="No")
    itt = write_command(c, write10(60, 2), 512)
    r2t = c.recv()
    assert isinstance(r2t, R2T) and r2t.desired_length == 512
    payload = os.urandom(512)
    c.data_out(itt, r2t.ttt, 0, payload)
    resp = c.recv()
    assert isinstance(resp, ScsiResponse) and resp.overflow and resp.residual == 512
    assert image.read_bytes()[60 * 512:61 * 512] == payload


def test_unsolicited_data_past_the_cdb_length_is_taken_and_dropped(fast: Running, image: Path) -> None:
    c = logged_in(fast, InitialR2T="No", ImmediateData="Yes", FirstBurstLength="8192")
    payload = os.urandom(8192)
    itt = write_command(c, write10(70, 1), 1 << 20, payload[:1024], final=False)
    c.data_out(itt, RESERVED_TAG, 1024, payload[1024:])
    resp = c.recv()
    assert isinstance(resp, ScsiResponse) and resp.status == 0 and resp.residual == (1 << 20) - 512
    assert image.read_bytes()[70 * 512:71 * 512] == payload[:512]


def test_session_write_limit_holds_back_r2ts(fast: Running, image: Path) -> None:
    """With 64 KiB of credit a second 64 KiB write is solicited only once
    the first one is written."""
    c = logged_in(fast, InitialR2T="Yes", ImmediateData="No", MaxBurstLength="65536")
    first, second = os.urandom(64 << 10), os.urandom(64 << 10)
    a = write_command(c, write10(100, 128), len(first))
    b = write_command(c, write10(300, 128), len(second))
    r2t = c.recv()
    assert isinstance(r2t, R2T) and r2t.itt == a
    with pytest.raises((socket.timeout, TimeoutError)):
        c.recv(0.5)  # nothing for b yet
    c.data_out(a, r2t.ttt, 0, first)
    got = {type(p).__name__: p for p in (c.recv(), c.recv())}
    assert got["ScsiResponse"].itt == a and got["R2T"].itt == b  # type: ignore[attr-defined]
    c.data_out(b, got["R2T"].ttt, 0, second)  # type: ignore[attr-defined]
    resp = c.recv()
    assert isinstance(resp, ScsiResponse) and resp.itt == b and resp.status == 0
    data = image.read_bytes()
    assert data[100 * 512:228 * 512] == first and data[300 * 512:428 * 512] == second


# -- 3. answers split at the initiator's MaxRecvDataSegmentLength ------------------------


def test_send_targets_answer_split_at_the_initiators_limit(fast: Running) -> None:
    names = [f"iqn.2026-11.test:many.{i:03d}.{'n' * 150}" for i in range(60)]
    for name in names:
        fast.server.targets[name] = Target(name, "", {})
    c = discovery(fast, MaxRecvDataSegmentLength="512")
    c.text([("SendTargets", "All")])
    answer = bytearray()
    for parts in range(200):
        r = c.recv()
        assert isinstance(r, TextResponse) and len(r.data) <= 512
        answer += r.data
        if r.final:
            assert not r.cont and r.ttt == RESERVED_TAG
            break
        assert r.cont and r.ttt != RESERVED_TAG  # §11.11: more to come, ask with this TTT
        c.send(TextRequest(itt=r.itt, ttt=r.ttt, cmdsn=c.cmdsn, expstatsn=c.expstatsn))
        c.cmdsn += 1
    assert parts > 10
    got = [v for k, v in decode_text(bytes(answer)) if k == "TargetName"]
    assert got == [IQN, *names]


def test_data_in_and_nop_in_split_at_the_initiators_limit(fast: Running, image: Path) -> None:
    c = logged_in(fast, MaxRecvDataSegmentLength="4096")
    itt = c.command(read10(0, 64), read=32 << 10)
    data = bytearray()
    while True:
        r = c.recv()
        assert isinstance(r, DataIn) and r.itt == itt and len(r.data) <= 4096
        data += r.data
        if r.status_present:
            break
    assert data == image.read_bytes()[:32 << 10]
    c.send(NopOut(immediate=True, itt=c.next_itt(), ttt=RESERVED_TAG, cmdsn=c.cmdsn, expstatsn=c.expstatsn,
                  data=b"p" * 8192))
    r = c.recv()
    assert isinstance(r, NopIn) and len(r.data) <= 4096


# -- 4. connections that have not logged in -------------------------------------------


def connect_from(host: str, port: int) -> socket.socket | None:
    """A connection from ``host``, or None if it was reset while connecting
    (refused at once, before connect() returned)."""
    s = socket.socket()
    s.bind((host, 0))
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port))
    except ConnectionResetError:
        s.close()
        return None
    return s


def test_connections_waiting_to_log_in_are_capped_per_source(fast: Running, rec: Recorder) -> None:
    held = [s for _ in range(4) if (s := connect_from("127.0.0.1", fast.port))]
    assert len(held) == 4
    extra = [connect_from("127.0.0.1", fast.port) for _ in range(12)]
    assert all(closed_within(s, 2) for s in extra)
    assert not any(closed_within(s, 0.1) for s in held)
    refused = rec.wait_for("iscsi.connections_refused", 3)
    assert refused["count"] == 12 and refused["peer"] == "127.0.0.1" and refused["sources"] == 1
    time.sleep(1.2)
    assert rec.names().count("iscsi.connections_refused") == 1  # one report for the burst
    # another address still gets in, and logs in
    other = Client("127.0.0.1", fast.port, source="127.0.0.2")
    assert other.login(IQN).status_class == 0
    # once one of the waiting connections goes, the first address may connect again
    held.pop().close()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        s = connect_from("127.0.0.1", fast.port)
        if s is not None and not closed_within(s, 0.2):
            s.close()
            break
        if s is not None:
            s.close()
    else:
        raise AssertionError("a closed waiting connection was never released")
    for s in held:
        s.close()


def test_connections_waiting_to_log_in_are_shared_when_all_are_taken(fast: Running, rec: Recorder) -> None:
    """8 places in all: a quieter address takes one from the busiest (its
    oldest waiting connection goes), so a flood from many addresses cannot
    lock a newcomer out; an address as busy as the busiest is refused."""
    held = [s for i in range(8) if (s := connect_from(f"127.0.0.{2 + i // 4}", fast.port))]
    assert len(held) == 8
    time.sleep(0.2)
    newcomer = connect_from("127.0.0.9", fast.port)
    assert not closed_within(newcomer, 0.3)
    assert closed_within(held[0], 2)  # the oldest from 127.0.0.2 made way
    # now .2 has 3, .3 has 4: .2 is not quieter enough to take a place
    assert closed_within(connect_from("127.0.0.2", fast.port), 2)
    assert not any(closed_within(s, 0.05) for s in held[1:])
    assert rec.wait_for("iscsi.connections_refused", 3)["count"] >= 2
    # a newcomer that logs in gives its place back
    c = Client("127.0.0.1", fast.port, source="127.0.0.10")
    assert c.login(IQN).status_class == 0
    for s in [*held, newcomer]:
        assert s is not None
        s.close()


# -- 5. time bounds ---------------------------------------------------------------------


def nop_header(c: Client, data_length: int) -> bytes:
    return NopOut(immediate=True, itt=c.next_itt(), ttt=RESERVED_TAG, cmdsn=c.cmdsn, expstatsn=c.expstatsn,
                  data=b"").encode_bhs(data_length)


def test_a_trickled_pdu_is_cut_off(fast: Running, rec: Recorder) -> None:
    c = logged_in(fast)
    c.send_raw(nop_header(c, 1000))
    started = time.monotonic()
    for _ in range(40):  # a byte every 0.1 s: 4 s at most, the bound is 1 s
        try:
            c.send_raw(b"x")
        except OSError:
            break
        if closed_within(c.sock, 0.1):
            break
    took = time.monotonic() - started
    assert took < 3, f"still open after {took:.1f} s"
    assert rec.wait_for("iscsi.pdu_timeout")["peer"]
    assert rec.wait_for("iscsi.session_dropped")["reason"] == "pdu_timeout"


def test_slow_but_whole_pdus_are_not_cut_off(fast: Running) -> None:
    c = logged_in(fast)
    for _ in range(5):  # 2 s in all, each PDU done well within 1 s
        header = nop_header(c, 4)
        c.send_raw(header[:20])
        time.sleep(0.2)
        c.send_raw(header[20:] + b"ping")
        r = c.recv(2)
        assert isinstance(r, NopIn) and r.data == b"ping"
        time.sleep(0.2)


def test_a_trickled_login_is_cut_off_by_the_login_timeout(fast: Running, rec: Recorder) -> None:
    c = fast.client()
    raw = LoginRequest(immediate=True, transit=True, csg=Stage.SECURITY, nsg=Stage.OPERATIONAL,
                       isid=c.isid, itt=1, data=encode_text([("InitiatorName", INITIATOR)])).encode_bhs(200)
    started = time.monotonic()
    for i in range(40):
        try:
            c.send_raw(raw[i:i + 1])
        except OSError:
            break
        if closed_within(c.sock, 0.1):
            break
    assert time.monotonic() - started < 3.5
    assert "no Full Feature Phase" in str(rec.wait_for("iscsi.login_failed")["why"])


def test_discovery_session_that_only_answers_pings_ends(image: Path, rec: Recorder) -> None:
    srv = Running(image, on_event=rec, discovery_timeout=1.0, nop_interval=0.2, nop_timeout=5)
    try:
        c = discovery(srv)
        normal = logged_in(srv)
        started = time.monotonic()
        while time.monotonic() - started < 4:
            r = c.recv(4)
            if r is None:
                break
            assert isinstance(r, NopIn) and r.itt == RESERVED_TAG
            c.send(NopOut(immediate=True, itt=RESERVED_TAG, ttt=r.ttt, cmdsn=c.cmdsn, expstatsn=c.expstatsn))
        took = time.monotonic() - started
        assert 0.9 < took < 2.5
        assert rec.wait_for("iscsi.idle_timeout")
        assert rec.wait_for("iscsi.session_dropped")["reason"] == "idle_timeout"
        # a Normal session as idle is not ended: it is pinged, and still serves
        itt = normal.command(read10(0, 1), read=512)
        pings = 0
        for _ in range(100):
            r = normal.recv(2)
            if not isinstance(r, NopIn):
                break
            pings += 1
        assert pings and isinstance(r, DataIn) and r.itt == itt and r.status_present and r.status == 0
        assert r.data == image.read_bytes()[:512]
    finally:
        srv.stop()


def test_twenty_trickling_discovery_sessions_are_let_go(fast: Running) -> None:
    clients = [discovery(fast, i) for i in range(20)]
    half = encode_text([("SendTargets", "All")])
    for c in clients:
        c.send_raw(TextRequest(itt=c.next_itt(), cmdsn=c.cmdsn, expstatsn=c.expstatsn,
                               data=half).encode_bhs(len(half)))
    started = time.monotonic()
    open_ = {c.sock: c for c in clients}
    for i in range(60):  # a byte every 0.1 s from each: 6 s at most
        if not open_:
            break
        for sock in list(open_):
            try:
                sock.send(half[i % len(half):i % len(half) + 1])
            except OSError:
                del open_[sock]
        readable, _, _ = select.select(list(open_), [], [], 0.1)
        for sock in readable:
            if closed_within(sock, 0.01):
                del open_[sock]
    assert not open_, f"{len(open_)} of 20 still open after {time.monotonic() - started:.1f} s"
    assert time.monotonic() - started < 3


# -- 6. RSS under attack (the target alone in a subprocess) -------------------------------


class TargetProcess:
    def __init__(self, image: Path, **keywords: object) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.target_proc", str(image), IQN, str(self.port), json.dumps(keywords)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        assert ready and self.proc.stdout.readline().strip() == b"ready"

    def status(self, key: str) -> int:
        """A /proc/PID/status figure in bytes (VmRSS, VmHWM: peak RSS)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def client(self, **kw: object) -> Client:
        return Client("127.0.0.1", self.port, **kw)  # type: ignore[arg-type]

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def proc(image: Path) -> Iterator[TargetProcess]:
    p = TargetProcess(image, nop_interval=0)
    yield p
    p.stop()


def settled_peak(p: TargetProcess) -> int:
    """Peak RSS once a login and a read have warmed the target up."""
    c = p.client()
    assert c.login(IQN).status_class == 0
    read_all(c, c.command(read10(0, 8), read=4096))
    c.close()
    return p.status("VmHWM")


def still_logs_in(p: TargetProcess, source: str = "127.0.0.1") -> None:
    c = p.client(source=source)
    assert c.login(IQN).status_class == 0
    data, status = read_all(c, c.command(read10(0, 8), read=4096))
    assert status == 0
    c.close()


def test_rss_16_connections_announcing_16_mib_segments(proc: TargetProcess) -> None:
    before = settled_peak(proc)
    clients = [proc.client(isid=isid(i)) for i in range(16)]
    for c in clients:
        assert c.login(IQN).status_class == 0
        c.send_raw(nop_header(c, (1 << 24) - 1))
    chunk = bytes(1 << 20)
    for _ in range(4):  # 4 MiB of each announced 16 MiB: 64 MiB sent in all
        for c in clients:
            c.send_raw(chunk)
    for c in clients:
        r = c.recv(5)
        assert isinstance(r, Reject) and r.reason == RejectReason.PROTOCOL_ERROR
    grown = proc.status("VmHWM") - before
    assert grown < RSS_BOUND, f"peak RSS grew by {grown / MiB:.1f} MiB"
    for c in clients:
        c.close()
    still_logs_in(proc)


def test_rss_1000_connections_not_logging_in(proc: TargetProcess) -> None:
    before = settled_peak(proc)
    fds_before = proc.descriptors()
    socks = []
    try:
        for _ in range(1000):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", proc.port))
            socks.append(s)
        time.sleep(1.0)
        held = proc.descriptors() - fds_before
        assert held <= 16 + 4, f"{held} descriptors held for connections that never log in"
        still_logs_in(proc, "127.0.0.2")
        grown = proc.status("VmHWM") - before
        assert grown < RSS_BOUND, f"peak RSS grew by {grown / MiB:.1f} MiB"
    finally:
        for s in socks:
            s.close()


def test_rss_continued_text_growth(proc: TargetProcess) -> None:
    before = settled_peak(proc)
    chunk = b"X-Pad=" + b"a" * (32 << 10)
    clients = []
    for i in range(8):
        c = proc.client(isid=isid(i))
        assert c.login(None).status_class == 0
        clients.append(c)
    for c in clients:
        itt = c.next_itt()
        for _ in range(512):  # 16 MiB per session at most
            text_part(c, chunk, itt)
            r = c.recv(5)
            if not isinstance(r, TextResponse):
                break
    grown = proc.status("VmHWM") - before
    assert grown < RSS_BOUND, f"peak RSS grew by {grown / MiB:.1f} MiB"
    for c in clients:
        c.close()
    still_logs_in(proc)


def test_rss_write_announcing_1_gib(proc: TargetProcess, image: Path) -> None:
    before = settled_peak(proc)
    c = proc.client()
    assert c.login(IQN, InitialR2T="Yes", ImmediateData="No").status_class == 0
    itts = [write_command(c, write10(lba, 1), GiB) for lba in (10, 11)]
    r2ts = [c.recv(10), c.recv(10)]
    grown = proc.status("VmHWM") - before
    assert grown < RSS_BOUND, f"peak RSS grew by {grown / MiB:.1f} MiB"
    for r2t in r2ts:
        assert isinstance(r2t, R2T) and r2t.desired_length == 512
        c.data_out(r2t.itt, r2t.ttt, 0, bytes([r2t.itt]) * 512)
    for _ in itts:
        resp = c.recv(10)
        assert isinstance(resp, ScsiResponse) and resp.status == 0 and resp.residual == GiB - 512
    c.close()
    assert image.read_bytes()[10 * 512:12 * 512] == bytes([itts[0]]) * 512 + bytes([itts[1]]) * 512


def test_a_boot_storm_waits_for_a_place_instead_of_being_reset(fast: Running, rec: Recorder) -> None:
    """8 places, taken by 8 addresses with one connection each (machines
    booting at once): a ninth machine is not reset, it waits until one of
    them logs in or goes, then logs in itself; nothing is reported
    refused. A second connection from an address already waiting is still
    refused at once when no busier address can make room."""
    held = [s for i in range(8) if (s := connect_from(f"127.0.0.{2 + i}", fast.port))]
    assert len(held) == 8
    time.sleep(0.2)
    late = Client("127.0.0.1", fast.port, source="127.0.0.20")  # accepted by the kernel, not yet by us
    assert not closed_within(late.sock, 0.5)
    second = connect_from("127.0.0.2", fast.port)  # in the listen backlog behind the late one
    held.pop().close()  # one of the storm goes: its place is the late one's
    assert closed_within(second, 2)  # .2 already waits and nobody is busier: refused as before
    assert late.login(IQN).status_class == 0
    time.sleep(1.2)
    assert [f["count"] for name, f in rec.events if name == "iscsi.connections_refused"] == [1]
    for s in held:
        s.close()
    late.close()
