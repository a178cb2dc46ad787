#!/usr/bin/env python3
"""One worker of bench/storm.py: simulated diskless machines booting at once.

Runs inside the client network namespace. Each machine does what iPXE
does on its way to the boot sector and beyond, as fast as it can:

1. DHCP as iPXE (user class "iPXE", option 175, PXE vendor class and
   architecture): DISCOVER, OFFER, REQUEST, ACK. The worker is the relay
   agent of its machines (giaddr = its own address, RFC 1542 §4), as
   perfdhcp is, so hundreds of MACs share one interface; the server
   answers to the relay's port 67. A lost packet is sent again after 1,
   2, 4 and 8 s, as iPXE backs off; after that the machine has failed.
2. iSCSI from the leased address: login to the target of the ACK's
   root-path (option 17, RFC 4173) with the initiator name of option 203,
   READ CAPACITY(10), then ``--mib`` MiB of READ(10) of 127 blocks one at a
   time (queue depth 1: iPXE's INT 13h reads, ipxe src/arch/x86/interface/
   pcbios/int13.c), and logout.

The worker reads its job (JSON) on stdin, prints ``ready``, waits for a
``go`` line, runs every machine at once, and prints one JSON result line
per machine. Every wait is bounded by ``deadline``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from target.pdu import LoginRequest, LoginResponse, LogoutRequest, Stage, decode, encode  # noqa: E402
from target.text import decode_text, encode_text  # noqa: E402

BLOCK = 512
READ_BLOCKS = 127  # iPXE's INT 13h reads at most 127 sectors at a time
DHCP_WAITS = (1.0, 2.0, 4.0, 8.0)  # iPXE doubles its wait after each loss (src/net/udp/dhcp.c)
MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, ACK = 1, 2, 3, 5
OP_SCSI_RESPONSE, OP_DATA_IN, OP_LOGIN_RESPONSE, OP_LOGOUT_RESPONSE = 0x21, 0x25, 0x23, 0x26
BHS = 48
SCSI_TRIES = 11  # the first try and iPXE's 10 retries
MAX_RECV = 8192  # iPXE's MaxRecvDataSegmentLength (ipxe include/ipxe/iscsi.h)


@dataclass
class Result:
    mac: str
    ok: bool = False
    error: str = ""
    start: float = 0.0  # time.time() when the machine began (all workers share the clock)
    acked: float = 0.0  # seconds from start: DHCPACK
    logged_in: float = 0.0  # seconds from start: in Full Feature Phase
    done: float = 0.0  # seconds from start: the last read's status
    bytes_read: int = 0


class StormError(Exception):
    """A machine's boot went wrong (the message says where)."""


# -- DHCP as iPXE, through our own relay address ---------------------------------------------


def dhcp_packet(kind: int, mac: bytes, xid: int, giaddr: bytes, requested: bytes = b"", server: bytes = b"") -> bytes:
    """A BOOTREQUEST as iPXE's (RFC 2131 §2, options RFC 2132, 4578, iPXE's 175)."""
    head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 1, xid, 0, 0, bytes(4), bytes(4), bytes(4),
                       giaddr, mac.ljust(16, b"\0"), b"", b"")
    opts = [(53, bytes([kind])), (60, b"PXEClient:Arch:00000:UNDI:002001"), (77, b"iPXE"),
            (93, b"\x00\x00"), (94, b"\x01\x02\x01"), (175, b"\x13\x01\x01"),  # 175.19: iSCSI
            (61, b"\x01" + mac)]
    if requested:
        opts += [(50, requested), (54, server)]
    body = b"".join(bytes([code, len(value)]) + value for code, value in opts)
    return head + MAGIC + body + b"\xff"


def dhcp_options(packet: bytes) -> dict[int, bytes]:
    """The options of a BOOTREPLY (no overload handling: both servers fit)."""
    out: dict[int, bytes] = {}
    i = 240
    while i < len(packet):
        code = packet[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        length = packet[i + 1]
        out[code] = out.get(code, b"") + packet[i + 2:i + 2 + length]
        i += 2 + length
    return out


class Relay(asyncio.DatagramProtocol):
    """The relay agent's port 67: replies routed to the waiting machine by xid."""

    def __init__(self, address: str, server: str) -> None:
        self.giaddr = socket.inet_aton(address)
        self.server = (server, 67)
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 240 or data[0] != 2:
            return
        future = self.waiting.get(struct.unpack_from("!I", data, 4)[0])
        if future is not None and not future.done():
            future.set_result(data)

    async def exchange(self, packet: bytes, xid: int, want: int) -> bytes:
        """Send ``packet`` until a reply of type ``want`` to ``xid`` comes."""
        assert self.transport is not None
        for wait in DHCP_WAITS:
            future = asyncio.get_running_loop().create_future()
            self.waiting[xid] = future
            self.transport.sendto(packet, self.server)
            try:
                reply = await asyncio.wait_for(future, wait)
            except asyncio.TimeoutError:
                continue
            finally:
                self.waiting.pop(xid, None)
            if dhcp_options(reply).get(53) == bytes([want]):
                return reply
        raise StormError(f"DHCP: no {'OFFER' if want == OFFER else 'ACK'} after {len(DHCP_WAITS)} tries")

    async def dora(self, mac: str) -> tuple[str, dict[int, bytes]]:
        """(the leased address, the ACK's options)."""
        raw = bytes.fromhex(mac.replace(":", ""))
        xid = random.getrandbits(32)
        offer = await self.exchange(dhcp_packet(DISCOVER, raw, xid, self.giaddr), xid, OFFER)
        yiaddr = offer[16:20]
        server = dhcp_options(offer).get(54, b"")
        ack = await self.exchange(dhcp_packet(REQUEST, raw, xid, self.giaddr, yiaddr, server), xid, ACK)
        return socket.inet_ntoa(ack[16:20]), dhcp_options(ack)


def root_path(value: str) -> tuple[str, int, int, str]:
    """(server, port, LUN, target) of ``iscsi:server:proto:port:lun:target`` (RFC 4173 §5)."""
    if not value.startswith("iscsi:"):
        raise StormError(f"root-path is not iSCSI: {value!r}")
    server, _proto, port, lun, target = value[len("iscsi:"):].split(":", 4)
    return server, int(port or 3260), int(lun or "0", 16), target


# -- iSCSI -----------------------------------------------------------------------------------


class Session(asyncio.Protocol):
    """Just enough of an initiator for the storm: one connection, QD 1.

    PDUs are parsed where they land in the receive buffer: for a read only
    the headers are looked at and the data is counted, so the client costs
    little next to the server it measures."""

    def __init__(self, lun: int) -> None:
        self.lun = struct.pack(">Q", lun << 48 if lun < 256 else 0)
        self.cmdsn, self.itt, self.expstatsn = 1, 0, 0
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiting: asyncio.Future[tuple[bytes, bytes]] | None = None
        self.counted = 0  # data bytes of the command in flight

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(StormError(f"the target closed the connection ({exc})"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= BHS:
            length = int.from_bytes(buf[pos + 5:pos + 8], "big")
            total = BHS + ((length + 3) & ~3)
            if end - pos < total:
                break
            opcode, flags = buf[pos] & 0x3F, buf[pos + 1]
            if opcode == OP_DATA_IN and not flags & 0x01:
                self.counted += length  # data only; status comes later
            elif opcode != 0x20:  # NOP-In: ignored
                if opcode == OP_DATA_IN:
                    self.counted += length
                self._deliver(bytes(buf[pos:pos + BHS]), bytes(buf[pos + BHS:pos + BHS + length])
                              if opcode != OP_DATA_IN else b"")
            pos += total
        del buf[:pos]

    def _deliver(self, bhs: bytes, data: bytes) -> None:
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result((bhs, data))
        elif self.transport is not None:
            self.transport.abort()  # a PDU nobody asked for: give up on this machine

    async def send(self, raw: bytes) -> tuple[bytes, bytes]:
        """Send ``raw``; the next PDU that ends an exchange (its header and data)."""
        assert self.transport is not None
        self.waiting = asyncio.get_running_loop().create_future()
        self.counted = 0
        self.transport.write(raw)
        return await self.waiting

    async def login(self, initiator: str, target: str) -> None:
        """As iPXE logs in without CHAP (ipxe src/net/tcp/iscsi.c): the
        security stage with AuthMethod=None, then the operational stage
        with iPXE's keys, to Full Feature Phase (RFC 7143 §6.3)."""
        isid = bytes.fromhex("80") + random.randbytes(5)
        steps = [(Stage.SECURITY, Stage.OPERATIONAL,
                  [("InitiatorName", initiator), ("TargetName", target), ("SessionType", "Normal"),
                   ("AuthMethod", "None")]),
                 (Stage.OPERATIONAL, Stage.FULL_FEATURE,
                  [("HeaderDigest", "None"), ("DataDigest", "None"),
                   ("MaxRecvDataSegmentLength", str(MAX_RECV)), ("FirstBurstLength", "65536"),
                   ("MaxBurstLength", "262144"), ("InitialR2T", "Yes"), ("ImmediateData", "No")])]
        for csg, nsg, keys in steps:
            self.itt += 1
            bhs, data = await self.send(encode(LoginRequest(
                immediate=True, transit=True, csg=csg, nsg=nsg, isid=isid, itt=self.itt, cmdsn=self.cmdsn,
                expstatsn=self.expstatsn, data=encode_text(keys))))
            reply = decode(bhs, b"", data)
            if not isinstance(reply, LoginResponse) or reply.status_class:
                raise StormError(f"login refused: {reply!r}")
            self.expstatsn = reply.statsn + 1
            if not reply.transit:
                raise StormError(f"the target did not go on to the next stage: {dict(decode_text(reply.data))}")
            if reply.nsg == Stage.FULL_FEATURE:
                return
        raise StormError("login did not reach Full Feature Phase")

    async def command(self, cdb: bytes, length: int) -> int:
        """A READ-type command; the bytes of data received. A CHECK
        CONDITION (tgt's unit attention after power on, SPC-4 §6.4) is
        retried as iPXE retries a failed SCSI command (ipxe
        src/drivers/block/scsi.c, SCSI_MAX_RETRIES = 10)."""
        for _ in range(SCSI_TRIES):
            self.itt += 1
            bhs, _ = await self.send(struct.pack(
                ">BBBBB3s8sIIII16s", 0x01, 0xC1, 0, 0, 0, b"\0\0\0", self.lun, self.itt, length,
                self.cmdsn, self.expstatsn, cdb.ljust(16, b"\0")))
            self.cmdsn += 1
            if bhs[0] & 0x3F not in (OP_DATA_IN, OP_SCSI_RESPONSE):
                raise StormError(f"unexpected PDU opcode {bhs[0] & 0x3F:#x} during a read")
            self.expstatsn = struct.unpack_from(">I", bhs, 24)[0] + 1  # status in the last Data-In or a Response
            if bhs[3] == 0:
                return self.counted
        raise StormError(f"SCSI status {bhs[3]:#x} after {SCSI_TRIES} tries")

    async def logout(self) -> None:
        self.itt += 1
        await self.send(encode(LogoutRequest(immediate=True, itt=self.itt, cmdsn=self.cmdsn,
                                             expstatsn=self.expstatsn)))


async def boot(relay: Relay, mac: str, mib: int, result: Result) -> None:
    start = time.monotonic()
    result.start = time.time()
    address, options = await relay.dora(mac)
    result.acked = time.monotonic() - start
    server, port, lun, target = root_path(options.get(17, b"").decode())
    initiator = options.get(203, b"").decode() or f"iqn.2026-12.bench.storm:{mac.replace(':', '')}"
    transport, s = await asyncio.get_running_loop().create_connection(
        lambda: Session(lun), server, port, local_addr=(address, 0))
    try:
        await s.login(initiator, target)
        result.logged_in = time.monotonic() - start
        await s.command(b"\x25" + bytes(9), 8)  # READ CAPACITY(10)
        blocks = mib * (1 << 20) // BLOCK
        for lba in range(0, blocks, READ_BLOCKS):
            n = min(READ_BLOCKS, blocks - lba)
            result.bytes_read += await s.command(struct.pack(">BBIBHB", 0x28, 0, lba, 0, n, 0), n * BLOCK)
        result.done = time.monotonic() - start
        await s.logout()
        result.ok = True
    finally:
        transport.close()


async def run(job: dict[str, object]) -> list[Result]:
    loop = asyncio.get_running_loop()
    relay = Relay(str(job["relay"]), str(job["server"]))
    transport, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=(str(job["relay"]), 67))
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "go"
    results = [Result(mac) for mac in job["macs"]]  # type: ignore[attr-defined]

    async def one(r: Result) -> None:
        try:
            await boot(relay, r.mac, int(job["mib"]), r)  # type: ignore[arg-type]
        except (StormError, OSError, asyncio.IncompleteReadError, ValueError) as e:
            r.error = f"{type(e).__name__}: {e}"

    try:
        await asyncio.wait_for(asyncio.gather(*(one(r) for r in results)), float(job["deadline"]))  # type: ignore[arg-type]
    except asyncio.TimeoutError:
        for r in results:
            if not r.ok and not r.error:
                r.error = "did not finish before the deadline"
    transport.close()
    return results


def main() -> int:
    job = json.loads(sys.stdin.readline())
    ipaddress.IPv4Address(job["relay"])
    for r in asyncio.run(run(job)):
        print(json.dumps(asdict(r)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
