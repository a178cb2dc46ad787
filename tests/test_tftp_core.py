"""The TFTP read transfer as a state machine, driven by datagrams and a fake
clock, no sockets: option negotiation (RFC 2347-2349), lock-step and
windows (RFC 7440), lost and duplicate ACKs (RFC 1350 §2, RFC 1123
§4.2.3.1), a client gone silent, an ERROR from the client, block number
wrap, and garbage."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tftpy.TftpPacketTypes import TftpPacketOACK

from bootsvc.tftp.transfer import (
    RETRIES,
    TIMEOUT,
    ReadTransfer,
    TftpError,
    TftpFormatError,
    decode,
    error,
    parse_request,
)

DATA, ACK, ERROR = 3, 4, 5
START = 1000.0  # any monotonic clock reading: the core never reads one itself


def rrq(name: str, **options: str) -> bytes:
    """A read request as a client sends it (RFC 1350 §5, options RFC 2347 §2)."""
    fields = [name, "octet", *(x for kv in options.items() for x in kv)]
    return b"\0\1" + b"".join(f.encode() + b"\0" for f in fields)


def ack(n: int) -> bytes:
    return struct.pack("!HH", ACK, n & 0xFFFF)


def block(packet: bytes) -> tuple[int, bytes]:
    """A DATA packet's block number and payload."""
    op, n = struct.unpack("!HH", packet[:4])
    assert op == DATA, packet[:20]
    return n, packet[4:]


class Driver:
    """What service._Transfer and its threads do around a transfer, with a
    fake clock: a datagram that is the prepared ACK takes the lock-step fast
    path (on_expected_ack), any other takes on_datagram, every send is
    followed by prepare(), and the timer is served when next_timer() says."""

    def __init__(self, request: bytes, data: bytes) -> None:
        self.now = START
        self.t = ReadTransfer(parse_request(decode(request)), data)
        self.opening = self._sent(self.t.start(self.now))

    def _sent(self, packets: list[bytes]) -> list[bytes]:
        if packets:
            self.t.prepare()
        return packets

    def receive(self, datagram: bytes, after: float = 0.0) -> list[bytes]:
        """The client's ``datagram``, ``after`` seconds from the last event."""
        self.now += after
        if datagram == self.t.expect:
            packet = self.t.on_expected_ack(self.now)
            return self._sent([packet] if packet is not None else [])
        return self._sent(self.t.on_datagram(datagram, self.now))

    def wait(self, seconds: float) -> list[bytes]:
        """Silence for ``seconds``; what the timer sends if it came due."""
        self.now += seconds
        timer = self.t.next_timer()
        if timer is None or self.now < timer:
            return []
        return self._sent(self.t.handle_timer(self.now))


def fetch(d: Driver, first: list[bytes], size: int, got: bytes = b"") -> bytes:
    """A client that ACKs each block as it comes, 1 ms later; ``got``: what
    it holds already."""
    out = first
    while out:
        (packet,) = out
        n, payload = block(packet)
        assert n == (len(got) // d.t.blksize + 1) & 0xFFFF
        got += payload
        out = d.receive(ack(n), after=0.001)
    assert len(got) == size
    return got


def test_lockstep_without_options_starts_with_data() -> None:
    data = os.urandom(3 * 512 + 100)
    d = Driver(rrq("f"), data)
    assert block(d.opening[0])[0] == 1
    assert fetch(d, d.opening, len(data)) == data
    assert d.t.done and not d.t.failed and d.t.next_timer() is None


def test_oack_then_lockstep_with_tsize_and_blksize() -> None:
    data = os.urandom(10_000)
    d = Driver(rrq("f", blksize="1468", tsize="0"), data)
    (oack,) = d.opening
    pkt = decode(oack)
    assert isinstance(pkt, TftpPacketOACK)
    assert pkt.options == {"blksize": "1468", "tsize": str(len(data))}
    assert fetch(d, d.receive(ack(0)), len(data)) == data
    assert d.t.done and not d.t.failed


def test_a_lost_ack_brings_the_block_again_after_the_timeout() -> None:
    data = os.urandom(2000)
    d = Driver(rrq("f"), data)
    (first,) = d.opening
    (second,) = d.receive(ack(1), after=0.01)
    assert d.t.next_timer() == pytest.approx(d.now + TIMEOUT)
    # the client's ACK of block 2 is lost: nothing before the timeout, then block 2 again
    assert d.wait(TIMEOUT * 0.9) == []
    assert d.t.handle_timer(d.now) == []  # called early by a driver: still nothing
    assert d.wait(TIMEOUT * 0.2) == [second]
    assert d.t.next_timer() == pytest.approx(d.now + TIMEOUT)  # a new deadline from the resend
    got = block(first)[1] + block(second)[1]
    assert fetch(d, d.receive(ack(2)), len(data), got) == data
    assert not d.t.failed


def test_timeout_option_sets_the_retransmission_interval() -> None:
    """RFC 2349 §2: the client's timeout (1-255 s) is acknowledged and used."""
    d = Driver(rrq("f", timeout="3"), b"x" * 700)
    assert decode(d.opening[0]).options == {"timeout": "3"}  # type: ignore[attr-defined]
    (first,) = d.receive(ack(0))
    assert d.wait(2.9) == []
    assert d.wait(0.2) == [first]
    for bad in ("0", "256", "soon"):
        assert "timeout" not in parse_request(decode(rrq("f", timeout=bad))).accepted


def test_duplicate_ack_sends_nothing() -> None:
    """Sorcerer's Apprentice (RFC 1123 §4.2.3.1): a delayed duplicate ACK
    does not send the next block again; only the timer resends."""
    d = Driver(rrq("f"), os.urandom(5 * 512))
    d.receive(ack(1))
    deadline = d.t.next_timer()
    assert d.receive(ack(1), after=0.3) == []
    assert d.receive(ack(0), after=0.1) == []  # older still
    assert d.t.next_timer() == deadline  # a duplicate does not push the deadline on
    assert block(d.receive(ack(2))[0])[0] == 3


def test_windowsize_sends_a_window_per_ack_and_restarts_after_the_last_in_order() -> None:
    """RFC 7440 §4: a window of blocks per ACK; the client ACKs the last
    block it got in order, and the next window starts after it."""
    data = os.urandom(20 * 512)
    d = Driver(rrq("f", windowsize="4"), data)
    assert decode(d.opening[0]).options == {"windowsize": "4"}  # type: ignore[attr-defined]
    window = d.receive(ack(0))
    assert [block(p)[0] for p in window] == [1, 2, 3, 4]
    window = d.receive(ack(4))
    assert [block(p)[0] for p in window] == [5, 6, 7, 8]
    # block 7 lost: the client ACKs 6, and the window restarts at 7
    window = d.receive(ack(6))
    assert [block(p)[0] for p in window] == [7, 8, 9, 10]
    assert d.receive(ack(5)) == []  # older than what was acknowledged: a stray
    assert d.receive(ack(12)) == []  # beyond what was sent: a stray
    # the window's ACK lost: after the timeout the window again, halved
    assert d.wait(TIMEOUT) == window[:2]
    window = window[:2]
    got = data[:6 * 512]
    while not d.t.done:
        last = block(window[-1])[0]
        got += b"".join(block(p)[1] for p in window)
        window = d.receive(ack(last))
    assert got == data and not d.t.failed


def test_a_client_that_acks_only_the_oack_costs_halving_windows() -> None:
    """A client that asks for 64 blocks of 64 KiB a window, ACKs the OACK
    and then nothing: each timeout halves the window, so it is sent 64 +
    32 + 16 + 8 + 4 + 2 blocks (8 MiB) before the transfer gives up, not
    six full windows (25 MB)."""
    size = 64 << 20
    d = Driver(rrq("f", blksize="65464", windowsize="64"), bytes(size))
    sent = sum(len(p) for p in d.receive(ack(0)))
    while not d.t.done:
        sent += sum(len(p) for p in d.wait(TIMEOUT))
    assert d.t.failed.startswith("no ACK") and sent == (64 + 32 + 16 + 8 + 4 + 2) * (65464 + 4)


def test_silent_client_is_given_up_after_the_retries() -> None:
    d = Driver(rrq("f"), os.urandom(2000))
    resent = [d.wait(TIMEOUT) for _ in range(RETRIES)]
    assert resent == [d.opening] * RETRIES
    assert not d.t.done
    assert d.wait(TIMEOUT) == []
    assert d.t.done and d.t.failed == f"no ACK after {RETRIES} retries" and d.t.next_timer() is None


def test_an_ack_after_resends_restarts_the_retry_count() -> None:
    d = Driver(rrq("f"), os.urandom(2000))
    for _ in range(RETRIES):
        d.wait(TIMEOUT)
    d.receive(ack(1))
    for _ in range(RETRIES):
        assert d.wait(TIMEOUT)
    assert not d.t.done


def test_error_from_the_client_ends_the_transfer() -> None:
    d = Driver(rrq("f"), os.urandom(2000))
    d.receive(ack(1))
    assert error(TftpError.NOT_DEFINED, "disk full") == b"\0\5\0\0disk full\0"  # RFC 1350 §5
    assert d.receive(error(TftpError.NOT_DEFINED, "disk full")) == []
    assert d.t.done and d.t.failed == "client error 0: b'disk full'"
    assert d.t.next_timer() is None and d.wait(10 * TIMEOUT) == []


def test_garbage_and_other_packets_to_the_transfer() -> None:
    d = Driver(rrq("f"), os.urandom(2000))
    with pytest.raises(TftpFormatError):
        d.receive(b"\0\x09junk")
    (answer,) = d.receive(rrq("g"))  # a request on the transfer's port: refused, the transfer goes on
    assert struct.unpack("!HH", answer[:4]) == (ERROR, TftpError.ILLEGAL_OPERATION)
    assert not d.t.done and block(d.receive(ack(1))[0])[0] == 2


def run_transfer(t: ReadTransfer, drop_every: int = 0) -> bytes:
    """Play a client that ACKs what arrives in order, through a network that
    loses every ``drop_every``-th packet; the timer fires whenever nothing
    moves."""
    got = bytearray()
    expect = 1
    now = START
    out = t.start(now)
    count = 0
    while not t.done:
        acked = None
        for pkt in out:
            count += 1
            if drop_every and count % drop_every == 0:
                continue
            op, n = struct.unpack("!HH", pkt[:4])
            if op == 6:
                acked = 0
            elif op == DATA and n == expect & 0xFFFF:
                got += pkt[4:]
                acked = n
                expect += 1
        out = t.on_datagram(ack(acked), now) if acked is not None else []
        if not out and not t.done:
            now = t.next_timer() or now
            out = t.handle_timer(now)
    return bytes(got)


@pytest.mark.parametrize("options", [{}, {"blksize": "1468", "tsize": "0"}, {"blksize": "512", "windowsize": "8"}])
def test_transfer_with_options_and_losses(options: dict[str, str]) -> None:
    data = os.urandom(100_000)
    for drop in (0, 7):
        t = ReadTransfer(parse_request(decode(rrq("f", **options))), data)
        assert run_transfer(t, drop) == data and not t.failed


def test_block_numbers_wrap() -> None:
    data = os.urandom(70_000 * 8)  # 70000 blocks of 8 bytes: past 65535
    t = ReadTransfer(parse_request(decode(rrq("f", blksize="8", windowsize="16"))), data)
    assert run_transfer(t) == data


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_garbage_raises_only_format_errors(blob: bytes) -> None:
    try:
        parse_request(decode(blob))
    except (TftpFormatError, PermissionError):
        pass
