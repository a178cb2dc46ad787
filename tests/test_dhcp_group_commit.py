"""The DHCP group commit (bootsvc/dhcp/group_commit.py): a lease is on
disk (in the lease journal, read by a store of its own) before its
ACK is handed to the socket; a batch's leases are one transaction; a write
that fails, or a process killed between the decision and the commit, sends
no ACK; OFFERs do not wait."""

from __future__ import annotations

import asyncio
import ipaddress
import sqlite3
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bootsvc.dhcp.group_commit import WRITE_LATER
from bootsvc.dhcp.leases import LeaseState, LeaseStore
from bootsvc.dhcp.message import IPv4, MessageType
from bootsvc.dhcp.responder import Machines, Responder, Subnet, UnknownPolicy
from bootsvc.dhcp.service import OPTIONS_AT, DhcpService

SUBNET = Subnet(ipaddress.IPv4Network("10.215.0.0/16"), IPv4("10.215.0.1"), IPv4("10.215.1.0"),
                IPv4("10.215.1.255"))
RELAY = ("10.215.0.2", 67)
HERE = Path(__file__).resolve().parent


def request(n: int, msg: MessageType, ip: IPv4 | None = None) -> bytes:
    """A relayed DISCOVER or REQUEST (RFC 2131 §2) from MAC 52:54:00:00:00:<n>."""
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 1, n, 0, 0, bytes(4), bytes(4), bytes(4),
                         IPv4(RELAY[0]).packed, bytes([0x52, 0x54, 0, 0, 0, n]), b"", b"")
    options = bytes([53, 1, msg])
    if ip is not None:
        options += bytes([50, 4]) + ip.packed + bytes([54, 4]) + SUBNET.server.packed
    return header + b"\x63\x82\x53\x63" + options + b"\xff"


def on_disk(db: Path) -> set[str]:
    """The bound leases on disk (the SQLite file and the lease journal), as
    another process would read them."""
    other = LeaseStore(db)
    try:
        return {str(ip) for ip, lease in other.by_ip.items() if lease.state is LeaseState.BOUND}
    finally:
        other.close()


class Socket:
    """The service's socket: records each reply with the leases on disk at that moment."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.sent: list[tuple[int, str, set[str]]] = []  # (message type, yiaddr, bound leases on disk)

    def sendto(self, data: bytes, address: tuple[str, int]) -> None:
        self.sent.append((data[OPTIONS_AT + 2], str(IPv4(data[16:20])), on_disk(self.db)))

    def acks(self) -> list[tuple[int, str, set[str]]]:
        return [s for s in self.sent if s[0] == MessageType.ACK]


def service(tmp_path: Path) -> tuple[DhcpService, Socket, LeaseStore]:
    leases = LeaseStore(tmp_path / "leases.db")
    responder = Responder([SUBNET], Machines({}), leases, lambda *a: None, unknown=UnknownPolicy.DISCOVER)
    svc = DhcpService(responder, SUBNET.server)
    sock = svc.transport = Socket(tmp_path / "leases.db")
    return svc, sock, leases


def offered(leases: LeaseStore, n: int) -> IPv4:
    lease = leases.for_mac(f"52:54:00:00:00:{n:02x}")
    assert lease is not None
    return lease.ip


async def settle(svc: DhcpService) -> None:
    """Until no commit runs (each is a thread's fsync): bounded."""
    for _ in range(500):
        if svc.commits._running is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the group commit did not end in 5 s")


def test_each_lease_is_on_disk_before_its_ack_leaves(tmp_path: Path) -> None:
    svc, sock, leases = service(tmp_path)

    async def run() -> None:
        svc.commits.start(asyncio.get_running_loop())
        svc.received([(request(n, MessageType.DISCOVER), RELAY) for n in range(1, 9)])
        assert len(sock.sent) == 8 and not sock.acks()  # the offers did not wait
        # two batches: the second is decided while the first is being written
        svc.received([(request(n, MessageType.REQUEST, offered(leases, n)), RELAY) for n in range(1, 5)])
        svc.received([(request(n, MessageType.REQUEST, offered(leases, n)), RELAY) for n in range(5, 9)])
        await settle(svc)
        await svc.commits.stop()

    asyncio.run(run())
    acks = sock.acks()
    assert len(acks) == 8
    for _, ip, durable in acks:
        assert ip in durable  # its lease was in the file when the ACK was handed over
    # the 8 leases in one or two groups (the writer takes what was handed over when it wakes): not one per lease
    assert 1 <= svc.commits.commits <= 2
    leases.close()


def test_a_failed_write_sends_no_ack(tmp_path: Path) -> None:
    svc, sock, leases = service(tmp_path)
    events: list[tuple[object, dict[str, object]]] = []
    svc.responder.emit = lambda kind, **f: events.append((kind, f))  # type: ignore[assignment]

    finish = leases.finish

    def broken() -> None:
        finish()  # (the transaction ends)
        raise sqlite3.OperationalError("disk I/O error")

    async def run() -> None:
        svc.commits.start(asyncio.get_running_loop())
        svc.received([(request(1, MessageType.DISCOVER), RELAY)])
        leases.finish = broken  # type: ignore[method-assign]
        svc.received([(request(1, MessageType.REQUEST, offered(leases, 1)), RELAY)])
        await settle(svc)
        await svc.commits.stop()

    asyncio.run(run())
    assert [s[0] for s in sock.sent] == [MessageType.OFFER]  # no ACK
    assert svc.responder.counters["acks_not_sent"] == 1
    why = [f["why"] for kind, f in events if getattr(kind, "value", "") == "dhcp.error"]
    assert why and "1 ACKs not sent" in str(why[0]) and "disk I/O error" in str(why[0])
    # no dhcp.ack for the ACK kept back, but the client's own dhcp.ack_withheld
    said = {getattr(kind, "value", ""): f for kind, f in events}
    assert "dhcp.ack" not in said
    assert said["dhcp.ack_withheld"]["mac"] == "52:54:00:00:00:01"
    assert "disk I/O error" in str(said["dhcp.ack_withheld"]["why"])


def test_dhcp_ack_is_said_once_the_ack_has_left(tmp_path: Path) -> None:
    """The event follows the commit and the send, never the decision."""
    svc, sock, leases = service(tmp_path)
    said: list[tuple[str, int]] = []  # (event, ACKs on the socket then)
    svc.responder.emit = lambda kind, **f: said.append((kind.value, len(sock.acks())))  # type: ignore[assignment]

    async def run() -> None:
        svc.commits.start(asyncio.get_running_loop())
        svc.received([(request(n, MessageType.DISCOVER), RELAY) for n in (1, 2)])
        svc.received([(request(n, MessageType.REQUEST, offered(leases, n)), RELAY) for n in (1, 2)])
        assert not [e for e, _ in said if e == "dhcp.ack"]  # decided, not yet durable: not said
        await settle(svc)
        await svc.commits.stop()

    asyncio.run(run())
    # each said once its ACK was on the socket (the group's two ACKs leave together, then are said)
    acked = [(e, n) for e, n in said if e == "dhcp.ack"]
    assert len(acked) == 2 and all(n >= i + 1 for i, (_, n) in enumerate(acked))


def test_an_ack_waits_for_a_slow_disk(tmp_path: Path) -> None:
    """While the write is held up (as if the disk were slow) nothing is
    sent; once it returns, the ACK goes."""
    svc, sock, leases = service(tmp_path)
    gate = threading.Event()
    finish = leases.finish

    def slow() -> None:
        assert gate.wait(10)
        finish()

    async def run() -> None:
        svc.commits.start(asyncio.get_running_loop())
        svc.received([(request(1, MessageType.DISCOVER), RELAY)])
        leases.finish = slow  # type: ignore[method-assign]
        svc.received([(request(1, MessageType.REQUEST, offered(leases, 1)), RELAY)])
        await asyncio.sleep(0.2)
        assert not sock.acks()
        gate.set()
        await settle(svc)
        await svc.commits.stop()

    asyncio.run(run())
    assert len(sock.acks()) == 1


CRASH = """
import asyncio, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from test_dhcp_group_commit import *
import os

def killed():
    sys.stdout.write("decided\\n"); sys.stdout.flush()
    os._exit(9)  # the process dies after deciding, before the commit

async def run():
    svc, sock, leases = service(Path({tmp!r}))
    sock.sendto = lambda data, addr: (sys.stdout.write(f"sent {{data[OPTIONS_AT + 2]}}\\n"), sys.stdout.flush())
    svc.commits.start(asyncio.get_running_loop())
    svc.received([(request(1, MessageType.DISCOVER), RELAY)])
    leases.finish = killed
    svc.received([(request(1, MessageType.REQUEST, offered(leases, 1)), RELAY)])
    await asyncio.sleep(5)

asyncio.run(run())
"""


def test_a_crash_between_decision_and_commit_sends_no_ack(tmp_path: Path) -> None:
    code = CRASH.format(root=str(HERE.parent), tests=str(HERE), tmp=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 9, r.stderr
    assert r.stdout.split("\n")[:2] == [f"sent {int(MessageType.OFFER)}", "decided"]
    assert f"sent {int(MessageType.ACK)}" not in r.stdout
    assert on_disk(tmp_path / "leases.db") == set()  # and nothing half-written


@pytest.mark.parametrize("batch", [1, 64])
def test_without_a_loop_the_commit_is_written_in_place(tmp_path: Path, batch: int) -> None:
    """Tools and tests that call the service without an event loop: each
    batch is written (and fsynced) before its ACKs go."""
    svc, sock, leases = service(tmp_path)
    svc.received([(request(n, MessageType.DISCOVER), RELAY) for n in range(1, batch + 1)])
    before = svc.commits.commits  # the unknown MACs seen: written with the DISCOVERs, having no loop
    svc.received([(request(n, MessageType.REQUEST, offered(leases, n)), RELAY) for n in range(1, batch + 1)])
    assert len(sock.acks()) == batch and all(ip in durable for _, ip, durable in sock.acks())
    assert svc.commits.commits == before + 1
    leases.close()


def test_writes_no_ack_waits_for_join_a_later_group(tmp_path: Path) -> None:
    """An unknown MAC seen (policy discover) promises the client nothing:
    its write is no fsync of its own per batch, but it is on disk soon."""
    svc, sock, leases = service(tmp_path)

    async def run() -> None:
        svc.commits.start(asyncio.get_running_loop())
        for n in range(1, 4):
            leases.saw_unknown(f"52:54:00:00:00:{n:02x}", "discover", float(n))
            svc.received([(request(n, MessageType.DISCOVER), RELAY)])
        assert svc.commits.commits == 0 and len(sock.sent) == 3  # the offers went, nothing written yet
        await asyncio.sleep(WRITE_LATER * 4)
        await settle(svc)
        assert svc.commits.commits == 1  # the three in one group
        await svc.commits.stop()

    asyncio.run(run())
    other = LeaseStore(tmp_path / "leases.db")  # as another process reads them
    assert len(other.unknown_machines()) == 3
    other.close()
    leases.close()


def test_the_services_of_one_store_share_one_group_commit(tmp_path: Path) -> None:
    """Port 67 and the proxyDHCP port answer from one lease store: an ACK
    of either waits for the commit holding its lease, whoever started it."""
    svc, _, leases = service(tmp_path)
    other = DhcpService(svc.responder, SUBNET.server, port=4011, reply_to_source=True)
    assert other.commits is svc.commits
    assert DhcpService(Responder([SUBNET], Machines({}), LeaseStore(":memory:"), lambda *a: None),
                       SUBNET.server).commits is not svc.commits
    leases.close()


def test_in_the_worker_a_lone_batch_is_written_on_the_loop(tmp_path: Path) -> None:
    """inline_when_idle (DHCP's worker process): with the writer idle, a
    batch's lease is written and its ACK sent before received() returns,
    in the loop's thread; while a write is under way, the next batch goes
    to the writer as before (it overlaps the disk)."""
    svc, sock, leases = service(tmp_path)
    gate = threading.Event()
    finish = leases.finish
    threads: list[str] = []

    def slow() -> None:
        threads.append(threading.current_thread().name)
        if threads[-1] == "dhcp-commit":
            assert gate.wait(10)
        finish()

    async def run() -> None:
        svc.commits.start(asyncio.get_running_loop())
        svc.commits.inline_when_idle = True
        leases.finish = slow  # type: ignore[method-assign]
        svc.received([(request(n, MessageType.DISCOVER), RELAY) for n in (1, 2, 3)])
        svc.received([(request(1, MessageType.REQUEST, offered(leases, 1)), RELAY)])
        assert len(sock.acks()) == 1 and sock.acks()[0][1] in sock.acks()[0][2]  # sent, and durable first
        svc.commits.inline_when_idle = False  # one write under way in the writer...
        svc.received([(request(2, MessageType.REQUEST, offered(leases, 2)), RELAY)])
        svc.commits.inline_when_idle = True
        svc.received([(request(3, MessageType.REQUEST, offered(leases, 3)), RELAY)])  # ...so this one waits for it
        await asyncio.sleep(0.1)
        assert len(sock.acks()) == 1
        gate.set()
        await settle(svc)
        await svc.commits.stop()

    asyncio.run(run())
    assert threads[0] == "MainThread" and "dhcp-commit" in threads
    assert [ip in durable for _, ip, durable in sock.acks()] == [True, True, True]
    leases.close()
