"""What a hostile iSNS client may cost the server and take from others, on
real sockets on loopback (isns/limits.py, docs/security.md): messages
begun and never ended (RFC 4171 §5.4) over TCP and UDP, idle and too many
connections, unlimited registrations, a control node's name sent from
anywhere, and a REPLACE registration (§5.6.5.1) taking over another
source's entity. A stranger is a client bound to 127.0.0.2, where the
server (on 127.0.0.1) trusts only 127.0.0.1 for control nodes."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from isns.codec import HEADER, Attr, Message, Port, Reassembler, address, encode_message, request, unpack_header
from isns.limits import ControlAddresses, Limits
from isns.protocol import HEADER_SIZE, VERSION, Flags, Function, Status, Tag
from isns.registry import Registry
from isns.server import IsnsServer
from isns.store import Store
from tests.e2e.peers import LOOPBACK, free_port
from tests.loop_thread import serving
from tests.test_isns_server import call, wait_for

ADMIN, TARGET = "iqn.2026-11.test:admin", "iqn.2026-11.test:boot.node01"
STRANGER, INIT = "iqn.2026-11.test:stranger", "iqn.2026-11.test:node01"
ELSEWHERE = "127.0.0.2"  # another host, as far as the server can tell
_FIRST = int(Flags.CLIENT | Flags.FIRST_PDU)


@contextmanager
def server(limits: Limits = Limits(), registry: Registry | None = None,
           events: list[tuple[str, dict[str, object]]] | None = None) -> Iterator[IsnsServer]:
    told = events if events is not None else []

    def on_event(what: str, fields: dict[str, object]) -> None:
        told.append((what, fields))

    registry = registry or Registry(control_nodes={ADMIN}, on_event=on_event)
    srv = IsnsServer(registry, LOOPBACK, free_port(), limits=limits, control_addresses=["127.0.0.1/32"],
                     on_event=on_event)
    with serving(srv.start, srv.stop):
        yield srv


def connect(srv: IsnsServer, host: str = LOOPBACK) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, srv.port), 5, source_address=(host, 0))
    sock.settimeout(5)
    return sock


def first_only(xid: int, payload: bytes = b"", seq: int = 0, flags: int = _FIRST) -> bytes:
    """One PDU of a DevAttrQry that says more follow (no LAST_PDU)."""
    return HEADER.pack(VERSION, Function.DEV_ATTR_QRY, len(payload), flags, xid, seq) + payload


def closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Does the server close ``sock`` (what it says first is read past)?"""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


# -- 1. messages begun and never ended ----------------------------------------------------


def test_tcp_messages_begun_and_never_ended_are_bounded() -> None:
    """Five messages flagged FIRST and never LAST, each with a new
    transaction ID: the fifth closes the connection (the old server kept
    them all: +108 MiB in 4 s over one connection)."""
    events: list[tuple[str, dict[str, object]]] = []
    with server(events=events) as srv, connect(srv) as s:
        for xid in range(1, 5):
            s.sendall(first_only(xid, b"\0" * 1024))
        assert wait_for(lambda: srv.held() == 4096)
        assert not closed(s, 0.3)  # four may be open: a client's own traffic is never refused
        s.sendall(first_only(5, b"\0" * 1024))
        assert closed(s)
        assert wait_for(lambda: srv.held() == 0)
    assert any(what == "isns.malformed" and "messages begun" in str(f["why"]) for what, f in events)


def test_tcp_message_bytes_and_age_are_bounded() -> None:
    with server(Limits(message_bytes=100_000, reassembly_timeout=0.3)) as srv:
        with connect(srv) as s:
            s.sendall(first_only(1, b"\0" * 60_000) + first_only(1, b"\0" * 60_000, 1, int(Flags.CLIENT)))
            assert closed(s)  # 120 000 bytes of one message, over the bound
        with connect(srv) as s:
            s.sendall(first_only(2, b"\0" * 1000))
            assert wait_for(lambda: srv.held() == 1000)
            assert wait_for(lambda: srv.held() == 0, 3)  # dropped after the timeout, connection or not


def test_udp_messages_begun_and_never_ended_are_bounded() -> None:
    """Per sender 4 messages, answered with a format error past that; a
    message is dropped after the timeout (the old server kept it until
    that sender ended a message); all senders together are bounded."""
    limits = Limits(reassembly_timeout=0.5, udp_senders=4)
    with server(limits) as srv, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(5)
        for xid in range(1, 5):
            u.sendto(first_only(xid, b"\0" * 100), (LOOPBACK, srv.port))
        u.sendto(first_only(5, b"\0" * 100), (LOOPBACK, srv.port))
        answer = u.recv(65536)
        assert unpack_header(answer).xid == 5
        assert int.from_bytes(answer[HEADER_SIZE:HEADER_SIZE + 4], "big") == Status.MESSAGE_FORMAT_ERROR
        u.sendto(first_only(6, b"\0" * 100), (LOOPBACK, srv.port))
        assert wait_for(lambda: srv.held() == 100)
        assert wait_for(lambda: srv.held() == 0, 3)  # the timeout, with nothing more from that sender
        with ExitStack() as stack:
            senders = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) for _ in range(10)]
            for one in senders:
                one.sendto(first_only(1, b"\0" * 100), (LOOPBACK, srv.port))
            assert wait_for(lambda: srv.held() == 400)  # the 4 senders heard last
            time.sleep(0.1)
            assert len(srv._udp.senders) == 4


# -- 2. idle and too many connections ---------------------------------------------------------


def test_idle_connections_are_closed_unless_an_entity_uses_them() -> None:
    events: list[tuple[str, dict[str, object]]] = []
    with server(Limits(idle_timeout=0.4), events=events) as srv, connect(srv) as idle, connect(srv) as used:
        reg = call(used, INIT, Function.DEV_ATTR_REG, [], [Attr(Tag.ENTITY_IDENTIFIER, "host1"),
                                                            Attr(Tag.ISCSI_NAME, INIT)])
        assert reg.status == Status.SUCCESS
        assert closed(idle, 3)
        time.sleep(0.6)  # its SCNs would come over it: it stays
        assert call(used, INIT, Function.DEV_ATTR_QRY, [Attr(Tag.ISCSI_NAME, INIT)]).status == Status.SUCCESS
    assert any(what == "isns.limited" and f["reason"] == "idle" for what, f in events)


def test_connections_are_capped_per_address_and_in_all() -> None:
    events: list[tuple[str, dict[str, object]]] = []
    with server(Limits(connections=5, connections_per_host=3), events=events) as srv, ExitStack() as stack:
        mine = [stack.enter_context(connect(srv)) for _ in range(3)]
        fourth = stack.enter_context(connect(srv))
        assert closed(fourth)
        others = [stack.enter_context(connect(srv, ELSEWHERE)) for _ in range(2)]
        sixth = stack.enter_context(connect(srv, ELSEWHERE))
        assert closed(sixth)
        for s in [*mine, *others]:  # those admitted are served
            assert call(s, INIT, Function.DEV_ATTR_QRY, [Attr(Tag.ISCSI_NAME, INIT)]).status is not None
        mine[0].close()
        assert wait_for(lambda: srv._connections.total == 4)
        with connect(srv) as again:  # a slot given back is taken again
            assert call(again, INIT, Function.DEV_ATTR_QRY, [Attr(Tag.ISCSI_NAME, INIT)]).status is not None
    limited = [f for what, f in events if what == "isns.limited"]
    assert [f["reason"] for f in limited] == ["connections"]  # the second within the second is held back


# -- 3. registrations per source ----------------------------------------------------------------


def test_a_source_registers_a_bounded_number_of_entities_and_portals() -> None:
    with server(registry=Registry(control_nodes={ADMIN}, max_per_source=3)) as srv, connect(srv) as s:
        for i in range(3):
            ops = [Attr(Tag.ENTITY_IDENTIFIER, f"e{i}"), Attr(Tag.ISCSI_NAME, f"{STRANGER}.{i}")]
            assert call(s, STRANGER, Function.DEV_ATTR_REG, [], ops).status == Status.SUCCESS
        ops = [Attr(Tag.ENTITY_IDENTIFIER, "e3"), Attr(Tag.ISCSI_NAME, f"{STRANGER}.3")]
        assert call(s, STRANGER, Function.DEV_ATTR_REG, [], ops).status == Status.INVALID_REGISTRATION
        portals = [a for i in range(4) for a in (Attr(Tag.PORTAL_IP_ADDRESS, address(LOOPBACK)),
                                                  Attr(Tag.PORTAL_PORT, Port(3260 + i)))]
        ops = [Attr(Tag.ENTITY_IDENTIFIER, "p"), *portals, Attr(Tag.ISCSI_NAME, INIT)]
        assert call(s, INIT, Function.DEV_ATTR_REG, [], ops).status == Status.INVALID_REGISTRATION
        assert "e3" not in srv.registry.entities and "p" not in srv.registry.entities
        assert call(s, ADMIN, Function.DEV_ATTR_REG, [], [Attr(Tag.ENTITY_IDENTIFIER, "a"), *portals,
                                                          Attr(Tag.ISCSI_NAME, ADMIN)]).status == Status.SUCCESS


# -- 4. control nodes by address ---------------------------------------------------------------


def test_a_control_nodes_name_counts_only_from_a_control_address() -> None:
    dd = [Attr(Tag.DD_SYMBOLIC_NAME, "boot-node01"), Attr(Tag.DD_MEMBER_ISCSI_NAME, STRANGER)]
    events: list[tuple[str, dict[str, object]]] = []
    with server(events=events) as srv, connect(srv, ELSEWHERE) as stranger, connect(srv) as local:
        assert call(stranger, ADMIN, Function.DD_REG, [], dd).status == Status.SOURCE_UNAUTHORIZED
        assert call(stranger, ADMIN, Function.DEV_ATTR_QRY, [Attr(Tag.ISCSI_NAME, INIT)],
                    [Attr(Tag.ISCSI_NAME)]).status == Status.SOURCE_UNAUTHORIZED
        ops = [Attr(Tag.ENTITY_IDENTIFIER, "x"), Attr(Tag.ISCSI_NAME, STRANGER), Attr(Tag.ISCSI_NAME, ADMIN)]
        assert call(stranger, STRANGER, Function.DEV_ATTR_REG, [], ops).status == Status.SOURCE_UNAUTHORIZED
        assert srv.registry.dds == {} and ADMIN not in srv.registry.nodes
        assert call(local, ADMIN, Function.DD_REG, [], dd).status == Status.SUCCESS
    refused = [f for what, f in events if what == "isns.refused"]
    assert refused[0]["peer"] == ELSEWHERE and refused[0]["status"] == "SOURCE_UNAUTHORIZED"


def test_control_rights_over_udp_come_with_the_address_too() -> None:
    dd = [Attr(Tag.DD_SYMBOLIC_NAME, "boot-node01"), Attr(Tag.DD_MEMBER_ISCSI_NAME, STRANGER)]
    with server() as srv, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind((ELSEWHERE, 0))
        u.settimeout(5)
        for pdu in encode_message(request(Function.DD_REG, 9, Attr(Tag.ISCSI_NAME, ADMIN), [], dd)):
            u.sendto(pdu, (LOOPBACK, srv.port))
        data = u.recv(65536)
        reply = Reassembler().feed(unpack_header(data), data[HEADER_SIZE:])
        assert reply is not None and reply.status == Status.SOURCE_UNAUTHORIZED


# -- 5. REPLACE takes over nobody's entity ----------------------------------------------------------


def replace(eid: str, node: str) -> Message:
    ops = [Attr(Tag.ENTITY_IDENTIFIER, eid), Attr(Tag.ISCSI_NAME, node), Attr(Tag.ISCSI_NODE_TYPE, 2)]
    return Message(Function.DEV_ATTR_REG, 77, (Attr(Tag.ISCSI_NAME, node), Attr(Tag.ENTITY_IDENTIFIER, eid),
                                               Attr(Tag.DELIMITER), *ops), Flags.REPLACE)


def exchange(sock: socket.socket, msg: Message) -> Message:
    for pdu in encode_message(msg):
        sock.sendall(pdu)
    joined = Reassembler()
    while True:
        head = sock.recv(HEADER_SIZE, socket.MSG_WAITALL)
        header = unpack_header(head)
        reply = joined.feed(header, sock.recv(header.length, socket.MSG_WAITALL) if header.length else b"")
        if reply is not None:
            return reply


def test_replace_from_elsewhere_does_not_take_over_an_entity() -> None:
    """bootsvc's entity (its control node and targets) registered over
    loopback; a stranger's REPLACE naming that EID and itself is refused
    and every target stays (the old server dropped them all). tgt's own
    REPLACE after a restart, from the address that registered the entity,
    still replaces it."""
    ops = [Attr(Tag.ENTITY_IDENTIFIER, "bootsvc"), Attr(Tag.ISCSI_NAME, ADMIN), Attr(Tag.ISCSI_NODE_TYPE, 4),
           Attr(Tag.ISCSI_NAME, TARGET), Attr(Tag.ISCSI_NODE_TYPE, 1)]
    with server() as srv, connect(srv) as local, connect(srv, ELSEWHERE) as stranger:
        assert call(local, ADMIN, Function.DEV_ATTR_REG, [], ops).status == Status.SUCCESS
        assert exchange(stranger, replace("bootsvc", STRANGER)).status == Status.SOURCE_UNAUTHORIZED
        assert set(srv.registry.entities["bootsvc"].nodes) == {ADMIN, TARGET}
        tgt = [Attr(Tag.ENTITY_IDENTIFIER, LOOPBACK), Attr(Tag.ISCSI_NAME, TARGET + ".tgt")]
        assert call(local, TARGET + ".tgt", Function.DEV_ATTR_REG, [], tgt).status == Status.SUCCESS
        assert exchange(stranger, replace(LOOPBACK, STRANGER)).status == Status.SOURCE_UNAUTHORIZED
        assert exchange(local, replace(LOOPBACK, TARGET + ".tgt2")).status == Status.SUCCESS
        assert set(srv.registry.entities[LOOPBACK].nodes) == {TARGET + ".tgt2"}
        assert srv.registry.entities[LOOPBACK].registrar_host == LOOPBACK


def test_the_registrar_survives_the_store(tmp_path: Path) -> None:
    path = tmp_path / "isns.db"
    registry = Registry()
    store = Store(path)
    registry.handle(request(Function.DEV_ATTR_REG, 1, Attr(Tag.ISCSI_NAME, INIT), [],
                            [Attr(Tag.ENTITY_IDENTIFIER, "e"), Attr(Tag.ISCSI_NAME, INIT)]), 0.0,
                    ControlAddresses().origin("10.0.0.7"))
    store.save(registry)
    again = Registry()
    Store(path).load(again, 0.0)
    assert (again.entities["e"].registrar, again.entities["e"].registrar_host) == (INIT, "10.0.0.7")
    assert again._ctx.db.registered_by[INIT] == 1



def test_all_connections_together_hold_a_bounded_number_of_bytes() -> None:
    """Each connection under its own bound, all of them over the server's:
    the connection that would pass it is closed."""
    with server(Limits(tcp_bytes=150_000)) as srv, connect(srv) as one, connect(srv) as two, \
            connect(srv, ELSEWHERE) as three:
        one.sendall(first_only(1, b"\0" * 60_000))
        two.sendall(first_only(1, b"\0" * 60_000))
        assert wait_for(lambda: srv.held() == 120_000)
        three.sendall(first_only(1, b"\0" * 60_000))
        assert closed(three)
        assert not closed(one, 0.2) and wait_for(lambda: srv.held() == 120_000)
        one.close()
        assert wait_for(lambda: srv.held() == 60_000)


def test_rss_stays_bounded_under_a_first_not_last_flood() -> None:
    """The server in a process of its own (bench/isns_hostile.py): 64
    connections x 60 PDUs x 60,000 B flagged FIRST and never LAST (230 MB
    sent; the code before the bounds kept all of it), then 50 UDP senders:
    RSS grows by less than 64 MiB."""
    bench = Path(__file__).resolve().parent.parent / "bench" / "isns_hostile.py"
    out = subprocess.run([sys.executable, str(bench), "--connections", "64", "--pdus", "60", "--hosts", "8",
                          "--settle", "1"], capture_output=True, text=True, timeout=120).stdout
    growth = re.search(r"RSS before [\d.]+ MiB, after [\d.]+ MiB \(\+([\d.]+)\)", out)
    assert growth is not None, out
    assert float(growth.group(1)) < 64, out
