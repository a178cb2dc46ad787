"""The machines' names as an authoritative DNS zone (RFC 1034/1035), on
dnslib's codec, without sockets: ``Zone.answer(query bytes) -> reply bytes``.

A records for ``<hostname>.<domain>``, PTR records for their addresses
(RFC 1035 §3.5), SOA/NS at the apex. A missing name in the zone is
NXDOMAIN with the SOA for negative caching (RFC 2308 §3). A name outside
it is :class:`Outside`: the caller forwards it (bootsvc/dns/forward.py) or
refuses it (``Zone.refused``); RA is set only for a client whose outside
names are forwarded (RFC 1035 §4.1.1)."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from dnslib import (
    NS,
    PTR,
    QTYPE,
    RCODE,
    RR,
    SOA,
    A,
    DNSError,
    DNSHeader,
    DNSLabel,
    DNSRecord,
)
from dnslib.buffer import Buffer
from dnslib.label import DNSLabelError

Records = Callable[[], "dict[str, ipaddress.IPv4Address]"]  # hostname -> address, asked per query
OPCODE_QUERY = 0
MAX_UDP = 512  # RFC 1035 §4.2.1, without EDNS


@dataclass(frozen=True)
class Outside:
    """A well-formed query for a name outside the zone, and its bytes."""

    query: DNSRecord
    data: bytes


@dataclass
class Zone:
    domain: str
    records: Records
    server: ipaddress.IPv4Address | None = None  # the name server's own address (ns.<domain>)
    ttl: int = 60
    counters: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.apex = DNSLabel(self.domain)
        self.ns = DNSLabel(f"ns.{self.domain}")

    def answer(self, data: bytes, udp: bool = True) -> bytes | None:
        """The reply to a query, names outside the zone REFUSED; None for
        what cannot even be answered (no parseable header, or a response)."""
        reply = self.respond(data, udp)
        return self.refused(reply) if isinstance(reply, Outside) else reply

    def respond(self, data: bytes, udp: bool = True, recursion: bool = False) -> bytes | Outside | None:
        """As ``answer``, but a query for a name outside the zone is
        returned as :class:`Outside` for the caller to forward or refuse;
        ``recursion``: the client's outside names are forwarded (RA)."""
        try:
            query = DNSRecord.parse(data)
        except (DNSError, ValueError, IndexError, UnicodeDecodeError):
            return self._formerr(data)
        if query.header.qr:
            self.counters["dropped_response"] += 1
            return None
        reply = self._reply(query, int(recursion))
        if query.header.opcode != OPCODE_QUERY:
            reply.header.rcode = RCODE.NOTIMP
        elif len(query.questions) != 1:
            reply.header.rcode = RCODE.FORMERR
        elif not self._resolve(query.questions[0].qname, query.questions[0].qtype, reply):
            return Outside(query, data)
        return self._pack(reply, data, udp)

    def refused(self, outside: Outside) -> bytes | None:
        """REFUSED: not ours, and not forwarded for this client."""
        return self._pack(self._reply(outside.query, 0, RCODE.REFUSED, aa=0), outside.data, True)

    def unknown(self, outside: Outside) -> bytes | None:
        """NXDOMAIN for a reverse name of the boot network that is no
        machine's: answered here, not asked of the world (RFC 6303 §3)."""
        return self._pack(self._reply(outside.query, 1, RCODE.NXDOMAIN, aa=0), outside.data, True)

    def failed(self, outside: Outside) -> bytes | None:
        """SERVFAIL: forwarded, and no upstream answered (RFC 1035 §4.1.1)."""
        return self._pack(self._reply(outside.query, 1, RCODE.SERVFAIL, aa=0), outside.data, True)

    @staticmethod
    def _reply(query: DNSRecord, ra: int, rcode: int = 0, aa: int = 1) -> DNSRecord:
        reply = query.reply(ra=ra, aa=aa)
        reply.rr, reply.auth, reply.ar = [], [], []  # no EDNS: the OPT record is not echoed
        reply.header.ad = 0  # nothing here is DNSSEC-validated (RFC 6840 §5.8)
        reply.header.rcode = rcode
        return reply

    def _pack(self, reply: DNSRecord, data: bytes, udp: bool) -> bytes | None:
        try:
            packed = reply.pack()
        except DNSLabelError:  # a name dnslib parsed but cannot write back (a label over 63 bytes)
            return self._formerr(data)
        self.counters[RCODE.get(reply.header.rcode)] += 1
        if udp and len(packed) > MAX_UDP:
            reply.rr, reply.auth = [], []
            reply.header.tc = 1  # the client retries over TCP
            packed = reply.pack()
        return packed

    def _formerr(self, data: bytes) -> bytes | None:
        self.counters["malformed"] += 1
        if len(data) < 12:
            return None
        try:
            header = DNSHeader.parse(Buffer(data[:12]))
        except (DNSError, ValueError, IndexError):
            return None
        if header.qr:
            return None
        return DNSRecord(DNSHeader(id=header.id, qr=1, aa=0, ra=0, rcode=RCODE.FORMERR)).pack()

    def _resolve(self, qname: DNSLabel, qtype: int, reply: DNSRecord) -> bool:
        """Fill ``reply``; False for a name that is not ours."""
        hosts = self.records()
        if qname.matchSuffix(self.apex):
            name = str(qname).rstrip(".").lower()
            if qname == self.apex:
                if qtype in (QTYPE.SOA, QTYPE.ANY):
                    reply.add_answer(self._soa())
                if qtype in (QTYPE.NS, QTYPE.ANY):
                    reply.add_answer(RR(self.apex, QTYPE.NS, ttl=self.ttl, rdata=NS(self.ns)))
                if not reply.rr:
                    reply.add_auth(self._soa())
                return True
            host = name[:-len(self.domain) - 1]
            address = self.server if qname == self.ns else hosts.get(host)
            if address is None:
                reply.header.rcode = RCODE.NXDOMAIN
                reply.add_auth(self._soa())
            elif qtype in (QTYPE.A, QTYPE.ANY):
                reply.add_answer(RR(qname, QTYPE.A, ttl=self.ttl, rdata=A(str(address))))
            else:  # the name exists, not with this type (NODATA, RFC 2308 §2.2)
                reply.add_auth(self._soa())
            return True
        address = reverse_address(qname)
        if address is not None:
            names = {a: h for h, a in hosts.items()}
            host = names.get(address)
            if host is not None:
                if qtype in (QTYPE.PTR, QTYPE.ANY):
                    reply.add_answer(RR(qname, QTYPE.PTR, ttl=self.ttl, rdata=PTR(f"{host}.{self.domain}")))
                else:
                    reply.add_auth(self._soa())
                return True
        return False

    def _soa(self) -> RR:
        return RR(self.apex, QTYPE.SOA, ttl=self.ttl,
                  rdata=SOA(self.ns, f"hostmaster.{self.domain}", (1, 3600, 600, 86400, self.ttl)))


def reverse_address(qname: DNSLabel) -> ipaddress.IPv4Address | None:
    """``4.3.2.1.in-addr.arpa`` -> 1.2.3.4 (RFC 1035 §3.5)."""
    labels = [bytes(x).decode("ascii", "replace") for x in qname.label]
    if len(labels) != 6 or [x.lower() for x in labels[4:]] != ["in-addr", "arpa"]:
        return None
    try:
        return ipaddress.IPv4Address(".".join(reversed(labels[:4])))
    except ValueError:
        return None
