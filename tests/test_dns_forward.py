"""DNS forwarding (bootsvc/dns/forward.py, service.py): names outside the
domain asked of a real upstream (dnsmasq) for allowed clients, REFUSED for
everyone else; a dead or silent upstream is SERVFAIL within the timeout;
forged upstream replies are ignored; bounds per source and in all. Clients
are dig (bind9-dnsutils) and raw sockets, on loopback only."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, TXT, A, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from bootsvc.address import HostPort
from bootsvc.dns.forward import Forwarder, fit, matches, question_end, udp_limit
from bootsvc.dns.limits import Limits, Verdict
from bootsvc.dns.service import DnsService
from bootsvc.dns.settings import Forwarding
from bootsvc.dns.zone import Outside, Zone
from tests.e2e.peers import BIG_TXT, LOOPBACK, dnsmasq_dns, free_port, have
from tests.loop_thread import serving

pytestmark = pytest.mark.skipif(not have("dig", "dnsmasq"), reason="needs dig (bind9-dnsutils) and dnsmasq")

HOSTS = {"pc1": ipaddress.IPv4Address("10.77.0.21")}
OUTSIDER = "127.0.0.9"  # a second loopback address: a client outside the allowed networks
ONLY_US = (ipaddress.ip_network("127.0.0.1/32"),)
BOOT_NET = (ipaddress.ip_network("10.77.0.0/24"),)  # the DHCP subnet pc1 is in


def zone() -> Zone:
    return Zone("lab.example", lambda: HOSTS, ipaddress.IPv4Address("10.77.0.1"), ttl=30)


@dataclass
class Served:
    port: int
    service: DnsService
    upstream_log: Path


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[int]:
    with dnsmasq_dns(tmp_path) as port:
        yield port


def serve(upstreams: tuple[HostPort, ...], log: Path, **forwarder: float) -> Iterator[Served]:
    port = free_port()
    service = DnsService(zone(), LOOPBACK, port, Forwarding(upstreams, ONLY_US, local=BOOT_NET))
    if forwarder:
        service.forwarder = Forwarder(upstreams, **forwarder)
    with serving(service.start, service.stop):
        yield Served(port, service, log)


@pytest.fixture
def dns(upstream: int, tmp_path: Path) -> Iterator[Served]:
    yield from serve((HostPort(LOOPBACK, upstream),), tmp_path / "dnsmasq-dns.log")


def dig(port: int, *args: str, source: str = LOOPBACK, timeout: int = 6) -> str:
    r = subprocess.run(["dig", "@" + LOOPBACK, "-p", str(port), "-b", source, f"+time={timeout}", "+tries=1",
                        *args], capture_output=True, text=True, timeout=30)
    return r.stdout


@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
def test_outside_names_are_forwarded_for_allowed_clients(dns: Served, transport: str) -> None:
    out = dig(dns.port, transport, "www.example.test", "A")
    assert "status: NOERROR" in out and "192.0.2.7" in out and " ra" in out, out
    assert "query[A] www.example.test" in dns.upstream_log.read_text()
    out = dig(dns.port, transport, "pc1.lab.example", "A")  # the zone's own names stay ours, RA now set
    assert "status: NOERROR" in out and "flags: qr aa rd ra;" in out and "10.77.0.21" in out, out
    assert "pc1.lab.example" not in dns.upstream_log.read_text()
    out = dig(dns.port, transport, "elsewhere.org", "A")  # the upstream's own REFUSED passes through
    assert "status: REFUSED" in out, out


def test_reverse_names_of_the_boot_network_stay_here(dns: Served) -> None:
    """RFC 6303: 10.77.0.99 is in the boot network and no machine's, so
    NXDOMAIN from here; a machine's is its name; any other is forwarded."""
    out = dig(dns.port, "-x", "10.77.0.99")
    assert "status: NXDOMAIN" in out and " ra" in out, out
    assert "pc1.lab.example." in dig(dns.port, "-x", "10.77.0.21")
    dig(dns.port, "-x", "192.0.2.7")
    queried = dns.upstream_log.read_text()
    assert "7.2.0.192.in-addr.arpa" in queried and "in-addr" in queried and "99.0.77.10" not in queried
    assert "status: REFUSED" in dig(dns.port, "-x", "10.77.0.99", source=OUTSIDER)


def test_a_big_answer_is_truncated_over_udp_and_whole_over_tcp(dns: Served) -> None:
    out = dig(dns.port, "+noedns", "+ignore", "big.example.test", "TXT")  # dnsmasq cuts it itself
    assert "status: NOERROR" in out and " tc" in out and not all(t in out for t in BIG_TXT), out
    out = dig(dns.port, "+noedns", "big.example.test", "TXT")  # dig retries over TCP on TC
    assert all(t in out for t in BIG_TXT), out


def test_outsiders_are_refused_but_get_the_zone(dns: Served) -> None:
    """Never an open resolver: a client outside the allowed networks gets
    REFUSED for names outside the domain, nothing reaches the upstream."""
    for transport in ("+notcp", "+tcp"):
        out = dig(dns.port, transport, "www.example.test", "A", source=OUTSIDER)
        assert "status: REFUSED" in out and " ra" not in out, out
        out = dig(dns.port, transport, "pc1.lab.example", "A", source=OUTSIDER)
        assert "status: NOERROR" in out and "10.77.0.21" in out and " ra" not in out, out
    assert "www.example.test" not in dns.upstream_log.read_text()
    assert dns.service.zone.counters["REFUSED"] == 2


def test_no_upstream_listening_is_servfail_at_once(tmp_path: Path) -> None:
    dead = HostPort(LOOPBACK, free_port())  # ICMP port unreachable: each try fails at once
    for served in serve((dead, dead), tmp_path / "none.log"):
        started = time.monotonic()
        out = dig(served.port, "www.example.test", "A")
        assert "status: SERVFAIL" in out and time.monotonic() - started < 2, out


def test_a_silent_upstream_is_servfail_within_the_timeout(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:  # takes queries, answers none
        hole.bind((LOOPBACK, 0))
        silent = HostPort(LOOPBACK, hole.getsockname()[1])
        for served in serve((silent,), tmp_path / "none.log", try_timeout=0.4, timeout=1.0):
            started = time.monotonic()
            out = dig(served.port, "www.example.test", "A", timeout=5)
            took = time.monotonic() - started
            assert "status: SERVFAIL" in out and 0.7 < took < 2.5, (took, out)


def test_the_next_upstream_answers_when_the_first_is_dead(upstream: int, tmp_path: Path) -> None:
    dead = HostPort(LOOPBACK, free_port())
    for served in serve((dead, HostPort(LOOPBACK, upstream)), tmp_path / "dnsmasq-dns.log"):
        assert "192.0.2.7" in dig(served.port, "+short", "a.example.test")
        assert served.service.forwarder.preferred == 1  # the next query goes to the one that answered


def _forging_upstream(sock: socket.socket, stop: threading.Event) -> None:
    """Answers each query three times: with another ID, for another
    question, then truly (NXDOMAIN); only the last may reach the client."""
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data, addr = sock.recvfrom(4096)
        except socket.timeout:
            continue
        query = DNSRecord.parse(data)
        forged = query.reply()
        forged.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("203.0.113.66")))
        forged.header.id = (query.header.id + 1) & 0xFFFF
        sock.sendto(forged.pack(), addr)
        other = DNSRecord.question("evil.example.test").reply()
        other.add_answer(RR("evil.example.test", QTYPE.A, rdata=A("203.0.113.66")))
        other.header.id = query.header.id
        sock.sendto(other.pack(), addr)
        true = query.reply()
        true.header.rcode = RCODE.NXDOMAIN
        sock.sendto(true.pack(), addr)


def test_forged_replies_are_ignored(tmp_path: Path) -> None:
    stop = threading.Event()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        thread = threading.Thread(target=_forging_upstream, args=(sock, stop), daemon=True)
        thread.start()
        try:
            for served in serve((HostPort(LOOPBACK, sock.getsockname()[1]),), tmp_path / "none.log"):
                out = dig(served.port, "www.example.test", "A")
                assert "status: NXDOMAIN" in out and "203.0.113.66" not in out, out
        finally:
            stop.set()
            thread.join(5)


def test_garbage_with_forwarding_on_crashes_nothing(dns: Served) -> None:
    junk = [b"", b"\x00", b"\xff" * 600, bytes(12) + b"\x05abc", DNSRecord.question("a.example.test").pack()[:20],
            bytes([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 0x0C, 0, 1, 0, 1])]  # a question that points at itself
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        for data in junk:
            s.sendto(data, (LOOPBACK, dns.port))
        s.sendto(DNSRecord.question("after.example.test").pack(), (LOOPBACK, dns.port))
        for _ in range(len(junk) + 1):
            reply = DNSRecord.parse(s.recv(4096))
            if reply.rr:
                assert str(reply.rr[0].rdata) == "192.0.2.7"
                return
    raise AssertionError("no forwarded answer after garbage")


def test_a_source_over_its_rate_is_dropped(dns: Served) -> None:
    """No reflection: a burst of queries from one source gets BURST replies
    and then only what RATE refills, the rest dropped."""
    limits = dns.service.limits
    limits.rate, limits.burst = 10.0, 20
    query = DNSRecord.question("pc1.lab.example").pack()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((OUTSIDER, 0))
        s.settimeout(0.5)
        started = time.monotonic()
        for _ in range(100):
            s.sendto(query, (LOOPBACK, dns.port))
        replies = 0
        try:
            while replies < 100:
                s.recv(4096)
                replies += 1
        except socket.timeout:
            pass
        elapsed = time.monotonic() - started
    assert 20 <= replies <= 20 + 10 * elapsed + 1, (replies, elapsed)


def test_forwards_in_flight_are_capped_per_source(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:
        hole.bind((LOOPBACK, 0))
        silent = HostPort(LOOPBACK, hole.getsockname()[1])
        for served in serve((silent,), tmp_path / "none.log", try_timeout=1.0, timeout=1.0):
            served.service.limits.max_in_flight_per_source = 2
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.5)
                for i in range(5):
                    s.sendto(DNSRecord.question(f"q{i}.example.test").pack(), (LOOPBACK, served.port))
                early = [DNSRecord.parse(s.recv(4096)) for _ in range(3)]  # before the timeout
                assert {r.header.rcode for r in early} == {RCODE.SERVFAIL}
                assert served.service.limits.forwarding == 2


# -- the parts without sockets ----------------------------------------------------------------


def test_limits_token_bucket_and_caps() -> None:
    limits = Limits(rate=2.0, burst=3, max_sources=2, max_in_flight=3, max_in_flight_per_source=2)
    assert [limits.query("a", 0.0) for _ in range(4)] == [Verdict.ADMIT] * 3 + [Verdict.RATE]
    assert limits.query("a", 0.5) is Verdict.ADMIT and limits.query("a", 0.5) is Verdict.RATE
    limits.query("b", 1.0)
    limits.query("c", 1.0)  # "a" is forgotten: at most two sources remembered
    assert list(limits.buckets) == ["b", "c"]
    assert [limits.begin_forward("a") for _ in range(3)] == [Verdict.ADMIT, Verdict.ADMIT, Verdict.BUSY]
    assert limits.begin_forward("b") is Verdict.ADMIT and limits.begin_forward("c") is Verdict.BUSY
    limits.end_forward("a")
    limits.end_forward("zzz")  # never began: nothing to end
    assert limits.forwarding == 2 and limits.begin_forward("c") is Verdict.ADMIT


def test_replies_must_match_id_and_question() -> None:
    asked = DNSRecord.question("www.example.test").pack()
    reply = DNSRecord.parse(asked).reply().pack()
    assert matches(asked, reply)
    assert matches(asked, reply[:12] + reply[12:].upper())  # names compare without case
    assert not matches(asked, asked)  # a query is no reply
    assert not matches(asked, bytes([asked[0] ^ 1]) + reply[1:])
    assert not matches(asked, DNSRecord.question("www.example.tesu").reply().pack()[:2] + reply[2:12]
                       + DNSRecord.question("www.example.tesu").pack()[12:])
    assert not matches(asked, reply[:14])


def test_fit_truncates_to_the_clients_size() -> None:
    query = DNSRecord.question("big.example.test", "TXT")
    assert udp_limit(query) == 512
    query.add_ar(EDNS0(udp_len=1232))
    assert udp_limit(query) == 1232
    reply = query.reply()
    for t in BIG_TXT:
        reply.add_answer(RR("big.example.test", QTYPE.TXT, rdata=TXT(t)))
    packed = reply.pack()
    assert fit(packed, 2048) == packed
    cut = DNSRecord.parse(fit(packed, 512))
    assert cut.header.tc and not cut.rr and cut.q == query.q and cut.header.id == query.header.id
    assert question_end(packed) == 12 + len("big.example.test") + 2 + 4


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=200))
def test_fuzz_reply_checks(asked: bytes, reply: bytes) -> None:
    matches(asked, reply)
    fit(reply, 12)
    question_end(asked)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_zone_with_forwarding(data: bytes) -> None:
    z = zone()
    reply = z.respond(data, recursion=True)
    if isinstance(reply, Outside):
        for packed in (z.refused(reply), z.failed(reply)):
            if packed is not None:
                DNSRecord.parse(packed)
    elif reply is not None:
        DNSRecord.parse(reply)


def test_forwarding_allows() -> None:
    f = Forwarding((HostPort("192.0.2.53", 53),), (ipaddress.ip_network("10.77.0.0/24"),))
    assert f.allows("10.77.0.9") and f.allows("::ffff:10.77.0.9") and not f.allows("10.77.1.9")
    assert not f.allows("not an address") and not f.allows("fe80::1%eth0")
