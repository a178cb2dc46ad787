"""DNS: the machines' zone against dig (UDP and TCP) on loopback, and
fuzzed queries that must get an answer or be dropped, never an exception."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
from collections.abc import Iterator

import pytest
from dnslib import QTYPE, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from bootsvc.dns.service import DnsService
from bootsvc.dns.zone import Zone
from tests.e2e.peers import LOOPBACK, free_port
from tests.loop_thread import serving

HOSTS = {"pc1": ipaddress.IPv4Address("10.77.0.21"), "pc2": ipaddress.IPv4Address("10.77.0.22")}


def zone() -> Zone:
    return Zone("lab.example", lambda: HOSTS, ipaddress.IPv4Address("10.77.0.1"), ttl=30)


@pytest.fixture
def dns() -> Iterator[int]:
    port = free_port()
    service = DnsService(zone(), LOOPBACK, port)
    with serving(service.start, service.stop):
        yield port


def dig(port: int, *args: str) -> str:
    r = subprocess.run(["dig", "@" + LOOPBACK, "-p", str(port), "+time=2", "+tries=1", *args],
                       capture_output=True, text=True, timeout=20)
    return r.stdout


@pytest.mark.skipif(not shutil.which("dig"), reason="needs dig (bind9-dnsutils)")
@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
def test_dig(dns: int, transport: str) -> None:
    out = dig(dns, transport, "pc1.lab.example", "A")
    assert "status: NOERROR" in out and "flags: qr aa rd;" in out and "10.77.0.21" in out, out
    assert "pc2.lab.example." in dig(dns, transport, "-x", "10.77.0.22")
    out = dig(dns, transport, "nothere.lab.example", "A")
    assert "status: NXDOMAIN" in out and "SOA" in out, out
    assert "status: REFUSED" in dig(dns, transport, "example.com", "A")  # no recursion
    out = dig(dns, transport, "pc1.lab.example", "AAAA")
    assert "status: NOERROR" in out and "ANSWER: 0" in out, out
    assert "10.77.0.1" in dig(dns, transport, "ns.lab.example", "A")
    assert "status: NOTIMP" not in dig(dns, transport, "lab.example", "SOA")


def test_two_questions_is_formerr() -> None:
    q = DNSRecord.question("lab.example", "ANY")
    q.add_question(*DNSRecord.question("pc2.lab.example").questions)
    assert DNSRecord.parse(zone().answer(q.pack()) or b"").header.rcode == 1  # FORMERR


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz(data: bytes) -> None:
    reply = zone().answer(data)
    if reply is not None:
        DNSRecord.parse(reply)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=60),
       st.sampled_from(["A", "AAAA", "PTR", "SOA", "NS", "ANY", "TXT", "MX"]))
def test_any_question_is_answered(name: str, qtype: str) -> None:
    try:
        q = DNSRecord.question(name, qtype)
    except Exception:
        return  # a name dnslib itself cannot encode
    r = DNSRecord.parse(zone().answer(q.pack()) or b"")
    assert r.header.id == q.header.id and r.header.qr and not r.header.ra
    assert all(rr.rtype in (QTYPE.A, QTYPE.PTR, QTYPE.SOA, QTYPE.NS) for rr in r.rr)


def test_garbage_over_udp(dns: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for junk in (b"", b"\x00", b"\xff" * 600, bytes(12) + b"\x05abc"):
            s.sendto(junk, (LOOPBACK, dns))
        s.sendto(DNSRecord.question("pc2.lab.example").pack(), (LOOPBACK, dns))
        for _ in range(5):
            reply = DNSRecord.parse(s.recv(4096))
            if reply.rr:
                assert str(reply.rr[0].rdata) == "10.77.0.22"
                return
    raise AssertionError("no answer after garbage")


def test_a_label_dnslib_cannot_write_back_gets_formerr(dns: int) -> None:
    """dnslib parses a 64-byte label but refuses to pack it: FORMERR, not
    a traceback and no answer (over UDP, from a live service)."""
    import struct
    query = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + bytes([64]) + b"a" * 64 + b"\x00" + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(query, (LOOPBACK, dns))
        reply = DNSRecord.parse(s.recv(4096))
    assert reply.header.id == 7 and reply.header.qr and reply.header.rcode == 1  # FORMERR
