"""The iSNS server's own traffic on loopback: SCNs to a registered SCN port
and over the client's open connection (RFC 4171 §5.6.5.8), ESI probes and
the entity dropped when its portal stops answering (§5.6.5.13), requests
over UDP, heartbeats (§5.6.5.14), and the store across a server restart."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from isns.codec import (Attr, Heartbeat, Message, Port, Reassembler, address, encode_message, request, response,
                        unpack_header)
from isns.protocol import HEADER_SIZE, RESPONSE, Function, NodeType, ScnBits, Status, Tag
from isns.registry import Registry
from isns.server import IsnsServer
from isns.store import Store
from tests.e2e.peers import LOOPBACK, free_port
from tests.loop_thread import serving

INIT, TARGET, ADMIN = "iqn.2026-11.test:node01", "iqn.2026-11.test:boot.node01", "iqn.2026-11.test:admin"
_xids = itertools.count(1)


def read_message(sock: socket.socket) -> Message:
    joined = Reassembler()
    while True:
        header = unpack_header(_exactly(sock, HEADER_SIZE))
        msg = joined.feed(header, _exactly(sock, header.length))
        if msg is not None:
            return msg


def _exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def call(sock: socket.socket, source: str, function: Function, keys: list[Attr] = [],
         operating: list[Attr] = []) -> Message:
    msg = request(function, next(_xids), Attr(Tag.ISCSI_NAME, source), keys, operating)
    for pdu in encode_message(msg):
        sock.sendall(pdu)
    while True:
        reply = read_message(sock)
        if reply.xid == msg.xid and reply.function == function | RESPONSE:
            return reply


def registration(eid: str, node: str, kind: NodeType, portal_port: int, **ports: int) -> list[Attr]:
    ops = [Attr(Tag.ENTITY_IDENTIFIER, eid), Attr(Tag.PORTAL_IP_ADDRESS, address(LOOPBACK)),
           Attr(Tag.PORTAL_PORT, Port(portal_port))]
    if "esi" in ports:
        ops += [Attr(Tag.ESI_INTERVAL, 1), Attr(Tag.ESI_PORT, Port(ports["esi"]))]
    if "scn" in ports:
        ops.append(Attr(Tag.SCN_PORT, Port(ports["scn"])))
    return [*ops, Attr(Tag.ISCSI_NAME, node), Attr(Tag.ISCSI_NODE_TYPE, int(kind))]


class Listener:
    """A client's SCN/ESI port: records every message and answers it (while ``alive``)."""

    def __init__(self) -> None:
        self.sock = socket.create_server((LOOPBACK, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[Message] = []
        self.alive = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    msg = read_message(conn)
                except (OSError, ConnectionError):
                    continue
                self.received.append(msg)
                if self.alive:
                    for pdu in encode_message(response(msg, Status.SUCCESS, msg.attrs[:3])):
                        conn.sendall(pdu)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    one = Listener()
    yield one
    one.close()


def wait_for(check, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded poll
        if check():
            return True
        time.sleep(0.05)
    return False


def test_scn_to_the_scn_port_and_over_the_open_connection(listener: Listener) -> None:
    registry = Registry(control_nodes={ADMIN})
    srv = IsnsServer(registry, LOOPBACK, free_port())
    with serving(srv.start, srv.stop), socket.create_connection((LOOPBACK, srv.port), 5) as a, \
            socket.create_connection((LOOPBACK, srv.port), 5) as b:
        a.settimeout(5)
        b.settimeout(5)
        bits = [Attr(Tag.ISCSI_SCN_BITMAP, ScnBits.OBJECT_ADDED | ScnBits.OBJECT_REMOVED)]
        # node01 registers an SCN port; node02 none: its SCNs come over its connection
        assert call(a, INIT, Function.DEV_ATTR_REG, [], registration("host1", INIT, NodeType.INITIATOR, 3260,
                                                                     scn=listener.port)).status == Status.SUCCESS
        assert call(a, INIT, Function.SCN_REG, [Attr(Tag.ISCSI_NAME, INIT)], bits).status == Status.SUCCESS
        init2 = "iqn.2026-11.test:node02"
        assert call(b, init2, Function.DEV_ATTR_REG, [], [Attr(Tag.ENTITY_IDENTIFIER, "host2"),
                                                          Attr(Tag.ISCSI_NAME, init2)]).status == Status.SUCCESS
        assert call(b, init2, Function.SCN_REG, [Attr(Tag.ISCSI_NAME, init2)], bits).status == Status.SUCCESS
        with socket.create_connection((LOOPBACK, srv.port), 5) as t:
            assert call(t, TARGET, Function.DEV_ATTR_REG, [], registration("target", TARGET, NodeType.TARGET,
                                                                           3261)).status == Status.SUCCESS
        # node01 (in no DD, default DD visible) hears of node02, then of the target
        assert wait_for(lambda: any(Attr(Tag.ISCSI_NAME, TARGET) in m.attrs for m in listener.received))
        scn = listener.received[-1]
        assert scn.function == Function.SCN and scn.attrs[0] == Attr(Tag.ISCSI_NAME, INIT)
        assert scn.attrs[2:] == (Attr(Tag.ISCSI_SCN_BITMAP, ScnBits.OBJECT_ADDED), Attr(Tag.ISCSI_NAME, TARGET))
        over_b = read_message(b)
        assert over_b.function == Function.SCN and over_b.attrs[0] == Attr(Tag.ISCSI_NAME, init2)
        assert Attr(Tag.ISCSI_NAME, TARGET) in over_b.attrs
        for pdu in encode_message(response(over_b, Status.SUCCESS, over_b.attrs[:1])):
            b.sendall(pdu)  # the answer is taken, not mistaken for a request
        assert call(b, init2, Function.DEV_ATTR_QRY, [Attr(Tag.ISCSI_NAME, init2)]).status == Status.SUCCESS


def test_esi_keeps_a_live_portal_and_drops_a_silent_one(listener: Listener) -> None:
    registry = Registry()
    srv = IsnsServer(registry, LOOPBACK, free_port())
    with serving(srv.start, srv.stop), socket.create_connection((LOOPBACK, srv.port), 5) as s:
        s.settimeout(5)
        assert call(s, INIT, Function.DEV_ATTR_REG, [], registration("host1", INIT, NodeType.INITIATOR, 3260,
                                                                     esi=listener.port)).status == Status.SUCCESS
        assert wait_for(lambda: len(listener.received) >= 4)  # 1 s interval: answered probes keep it
        assert "host1" in registry.entities
        probe = listener.received[0]
        assert probe.function == Function.ESI and probe.attrs[0] == Attr(Tag.ENTITY_IDENTIFIER, "host1")
        listener.alive = False
        assert wait_for(lambda: "host1" not in registry.entities)


def test_udp_requests_and_malformed_datagrams() -> None:
    registry = Registry()
    srv = IsnsServer(registry, LOOPBACK, free_port())
    with serving(srv.start, srv.stop), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(5)
        reg = request(Function.DEV_ATTR_REG, 7, Attr(Tag.ISCSI_NAME, INIT), [], [Attr(Tag.ISCSI_NAME, INIT)])
        (pdu,) = encode_message(reg)
        u.sendto(pdu, (LOOPBACK, srv.port))
        data = u.recv(65536)
        reply = Reassembler().feed(unpack_header(data), data[HEADER_SIZE:])
        assert reply is not None and reply.xid == 7 and reply.status == Status.SUCCESS
        u.sendto(pdu[:HEADER_SIZE] + b"\x00\x00\x00\x20\x00\x00\x01\x00", (LOOPBACK, srv.port))
        data = u.recv(65536)
        assert int.from_bytes(data[HEADER_SIZE:HEADER_SIZE + 4], "big") == Status.MESSAGE_FORMAT_ERROR
        assert INIT in registry.nodes  # the server goes on


def test_heartbeat_is_announced() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind((LOOPBACK, 0))
        u.settimeout(5)
        srv = IsnsServer(Registry(), LOOPBACK, free_port(), heartbeat=(LOOPBACK, u.getsockname()[1], 1))
        with serving(srv.start, srv.stop):
            first, second = u.recv(1024), u.recv(1024)
    header = unpack_header(first)
    assert header.function == Function.HEARTBEAT
    one, two = Heartbeat.unpack(first[HEADER_SIZE:]), Heartbeat.unpack(second[HEADER_SIZE:])
    assert one.address == address(LOOPBACK) and one.tcp_port == srv.port and one.interval == 1
    assert two.counter == one.counter + 1


def test_restart_keeps_registrations_dds_and_scn(tmp_path: Path, listener: Listener) -> None:
    path = tmp_path / "isns.db"
    port = free_port()

    def server() -> tuple[IsnsServer, Registry]:
        registry = Registry(control_nodes={ADMIN})
        Store(path).load(registry, time.time())
        return IsnsServer(registry, LOOPBACK, port, store=Store(path)), registry

    srv, _ = server()
    with serving(srv.start, srv.stop), socket.create_connection((LOOPBACK, srv.port), 5) as s:
        s.settimeout(5)
        call(s, INIT, Function.DEV_ATTR_REG, [], registration("host1", INIT, NodeType.INITIATOR, 3260,
                                                              scn=listener.port))
        call(s, INIT, Function.SCN_REG, [Attr(Tag.ISCSI_NAME, INIT)], [Attr(Tag.ISCSI_SCN_BITMAP, 0x1F)])
        assert call(s, ADMIN, Function.DD_REG, [], [Attr(Tag.DD_SYMBOLIC_NAME, "boot-node01"),
                                                    Attr(Tag.DD_MEMBER_ISCSI_NAME, INIT),
                                                    Attr(Tag.DD_MEMBER_ISCSI_NAME, TARGET)]).status == Status.SUCCESS
    srv, registry = server()
    with serving(srv.start, srv.stop), socket.create_connection((LOOPBACK, srv.port), 5) as s:
        s.settimeout(5)
        assert INIT in registry.nodes and registry.dds[1].members == [INIT, TARGET]
        before = len(listener.received)
        call(s, TARGET, Function.DEV_ATTR_REG, [], registration("target", TARGET, NodeType.TARGET, 3261))
        assert wait_for(lambda: len(listener.received) > before)  # the SCN registration survived too
