"""isns.client against two real servers: bootsvc's IsnsServer (in a thread)
and open-isns's isnsd (Debian open-isns-server, started here on a loopback
port with an in-memory database and security off). The same operations
must give the same answers where the two agree; where they do not, the
test pins each server's behaviour (see test_where_isnsd_and_bootsvc_differ).

Every client sources its requests as a node it registers itself. The
administrator is a control node to both: bootsvc's by configuration
(Registry.control_nodes), isnsd's by registering with node type CONTROL
(§6.4.2), which the administrator also does. isnsd with security off lets
any source change anything, but like bootsvc shows a node only what its
discovery domains hold unless it is a control node."""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from isns.client import (
    AsyncIsnsClient,
    IsnsClient,
    IsnsClientError,
    IsnsProtocolError,
    NodeSpec,
    PortalGroupSpec,
    PortalSpec,
    objects,
)
from isns.codec import Attr, Message, Port, address, encode_message, response
from isns.protocol import MAX_PDU_PAYLOAD, Flags, Function, NodeType, Status, Tag
from isns.registry import Registry
from isns.server import IsnsServer
from tests.e2e.peers import LOOPBACK, free_port, isnsd
from tests.loop_thread import serving

ADMIN = "iqn.2026-11.test:admin"
TARGET1, TARGET2 = "iqn.2026-11.test:disk1", "iqn.2026-11.test:disk2"
INIT1, INIT2 = "iqn.2026-11.test:node01", "iqn.2026-11.test:node02"
SERVERS = ["bootsvc", "isnsd"]


@pytest.fixture
def bootsvc_port() -> Iterator[int]:
    # bootsvc's control nodes are configured; isnsd's declare themselves (node type CONTROL, see the differences)
    srv = IsnsServer(Registry(control_nodes={ADMIN}), LOOPBACK, 0)
    with serving(srv.start, srv.stop):
        yield srv.port


@pytest.fixture
def isnsd_port(tmp_path: Path) -> Iterator[int]:
    if not shutil.which("isnsd"):
        pytest.skip("needs isnsd (open-isns-server)")
    # in memory; a default DD like bootsvc's default_dd_visible
    with isnsd(tmp_path, "iqn.2026-11.test:isnsd", default_dd=True) as port:
        yield port


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> tuple[str, int]:
    return request.param, request.getfixturevalue(f"{request.param}_port")


def client(port: int, source: str) -> IsnsClient:
    return IsnsClient(LOOPBACK, port, source, timeout=5)


def names(objs: list[dict]) -> list[str]:
    return sorted(o["ISCSI_NAME"] for o in objs)


def dds(admin: IsnsClient) -> dict[str, list[str]]:
    """DD name -> sorted member names; without isnsd's virtual default DD (ID 0)."""
    return {d["DD_SYMBOLIC_NAME"]: sorted(d.get("DD_MEMBER_ISCSI_NAME", [])) for d in admin.list("dd") if d["DD_ID"]}


def setup_admin(port: int) -> IsnsClient:
    admin = client(port, ADMIN)
    assert admin.register("admin", [NodeSpec(ADMIN, NodeType.CONTROL)]) == "admin"
    return admin


def test_portal_groups_registered(server: tuple[str, int]) -> None:
    """A multipath target (§6.5): one node on two portals, each portal its
    own portal group; what an initiator's query gets back is each portal
    with its tag."""
    _, port = server
    with setup_admin(port) as admin, client(port, TARGET1) as target:
        target.register("storage", [NodeSpec(TARGET1, NodeType.TARGET)],
                        [PortalSpec("127.0.0.1", 3260), PortalSpec("127.0.0.2", 3260)],
                        groups=[PortalGroupSpec(TARGET1, "127.0.0.1", 3260, 1),
                                PortalGroupSpec(TARGET1, "127.0.0.2", 3260, 2)])
        target.register("storage", [NodeSpec(TARGET2, NodeType.CONTROL)],
                        groups=[PortalGroupSpec(TARGET2, "127.0.0.1", 3260, None)])
        pgs = [g for g in admin.list("pg") if g["PG_ISCSI_NAME"] in (TARGET1, TARGET2)]
        assert sorted((g["PG_ISCSI_NAME"], g["PG_PORTAL_IP_ADDR"], g["PG_PORTAL_PORT"], g.get("PG_TAG"))
                      for g in pgs) == [(TARGET1, "127.0.0.1", Port(3260), 1), (TARGET1, "127.0.0.2", Port(3260), 2),
                                        (TARGET2, "127.0.0.1", Port(3260), None),
                                        (TARGET2, "127.0.0.2", Port(3260), 1)]  # the server's default


def test_register_query_list_deregister(server: tuple[str, int]) -> None:
    _, port = server
    with setup_admin(port) as admin, client(port, TARGET1) as target, client(port, INIT1) as init:
        eid = target.register("storage", [NodeSpec(TARGET1, NodeType.TARGET, "disk one"),
                                          NodeSpec(TARGET2, NodeType.TARGET)],
                              [PortalSpec("127.0.0.1", 3260), PortalSpec("127.0.0.2", 3261)])
        assert eid == "storage"
        generated = init.register(None, [NodeSpec(INIT1, NodeType.INITIATOR)])
        assert generated and generated not in ("storage", "admin")  # the server names the entity

        # what an initiator discovers (open-iscsi's query: node type target)
        found = init.query_nodes(NodeType.TARGET)
        assert sorted((n["ISCSI_NAME"], n["ISCSI_NODE_TYPE"], n.get("ISCSI_ALIAS")) for n in found) == [
            (TARGET1, 1, "disk one"), (TARGET2, 1, None)]
        assert names(init.query_nodes()) == sorted([ADMIN, TARGET1, TARGET2, INIT1])
        assert names(init.query_nodes(NodeType.INITIATOR)) == [INIT1]

        # DevGetNext walks (order is the server's own: compare as sets)
        assert names(admin.list("node")) == sorted([ADMIN, TARGET1, TARGET2, INIT1])
        nodes = {n["ISCSI_NAME"]: n for n in admin.list("node")}
        assert nodes[TARGET1]["ISCSI_ALIAS"] == "disk one" and isinstance(nodes[TARGET1]["ISCSI_NODE_INDEX"], int)
        assert sorted(e["ENTITY_IDENTIFIER"] for e in admin.list("entity")) == sorted(["admin", "storage", generated])
        assert sorted((p["PORTAL_IP_ADDRESS"], p["PORTAL_PORT"]) for p in admin.list("portal")) == [
            ("127.0.0.1", Port(3260)), ("127.0.0.2", Port(3261))]

        # an update keyed by the entity adds a portal; REPLACE swaps the whole entity
        target.register("storage", [], [PortalSpec("127.0.0.3", 3262)])
        assert len(admin.list("portal")) == 3
        target.register("storage", [NodeSpec(TARGET1, NodeType.TARGET)], [PortalSpec("127.0.0.1", 3260)],
                        replace=True)
        assert names(admin.list("node")) == sorted([ADMIN, TARGET1, INIT1])
        assert [p["PORTAL_IP_ADDRESS"] for p in admin.list("portal")] == ["127.0.0.1"]
        assert "ISCSI_ALIAS" not in {n["ISCSI_NAME"]: n for n in admin.list("node")}[TARGET1]

        # a node deregisters itself; its entity goes with its last node (§5.6.5.4)
        init.deregister_node(INIT1)
        assert names(admin.list("node")) == sorted([ADMIN, TARGET1])
        assert generated not in [e["ENTITY_IDENTIFIER"] for e in admin.list("entity")]
        admin.deregister_entity("storage")
        assert names(admin.list("node")) == [ADMIN] and admin.list("portal") == []
        # deregistering what is gone succeeds (§5.6.5.4)
        admin.deregister_entity("storage")
        admin.deregister_node(TARGET2)


def test_discovery_domains(server: tuple[str, int]) -> None:
    _, port = server
    with setup_admin(port) as admin, client(port, TARGET1) as target, client(port, INIT1) as init1, \
            client(port, INIT2) as init2:
        target.register("storage", [NodeSpec(TARGET1, NodeType.TARGET), NodeSpec(TARGET2, NodeType.TARGET)],
                        [PortalSpec("127.0.0.1", 3260)])
        init1.register("node01", [NodeSpec(INIT1, NodeType.INITIATOR)])
        init2.register("node02", [NodeSpec(INIT2, NodeType.INITIATOR)])
        # in no DD yet: the default DD holds everyone
        assert names(init1.query_nodes(NodeType.TARGET)) == [TARGET1, TARGET2]

        dd1 = admin.dd_register("boot-node01", [TARGET1, INIT1])
        assert isinstance(dd1, int) and dd1 > 0
        assert dds(admin) == {"boot-node01": sorted([TARGET1, INIT1])}
        assert names(init1.query_nodes(NodeType.TARGET)) == [TARGET1]
        assert names(init1.list("node")) == sorted([TARGET1, INIT1])
        # node02 is in no DD: it sees the others in none (the default DD), not node01's target
        assert names(init2.query_nodes(NodeType.TARGET)) == [TARGET2]

        dd2 = admin.dd_register("boot-node02", [INIT2])
        assert dd2 != dd1
        admin.dd_add_members(dd2, [TARGET2])
        assert dds(admin) == {"boot-node01": sorted([TARGET1, INIT1]), "boot-node02": sorted([INIT2, TARGET2])}
        assert names(init2.query_nodes(NodeType.TARGET)) == [TARGET2]
        # a node in two DDs sees both (added to an existing DD: see the differences test for a new one)
        admin.dd_add_members(dd2, [INIT1])
        assert names(init1.query_nodes(NodeType.TARGET)) == [TARGET1, TARGET2]

        admin.dd_remove_members(dd1, [TARGET1])
        assert dds(admin)["boot-node01"] == [INIT1]
        assert names(init1.query_nodes(NodeType.TARGET)) == [TARGET2]
        admin.dd_deregister(dd1)
        admin.dd_deregister(dd2)
        assert dds(admin) == {}
        # (whether node01 is back in the default DD now: the differences test)

        for refused in (lambda: admin.dd_deregister(dd1), lambda: admin.dd_add_members(dd1, [INIT2])):
            with pytest.raises(IsnsClientError) as e:
                refused()
            assert e.value.status in (Status.INVALID_DEREGISTRATION, Status.INVALID_REGISTRATION)


def test_where_isnsd_and_bootsvc_differ(bootsvc_port: int, isnsd_port: int) -> None:
    """Each server's answer where they part (isnsd 0.101, Security = 0). The
    RFC's side: §5.6.1 (a change must come from a control node or a node of
    the entity), §5.6.5.9 (DDReg), §6.11.2.3 (DD members by name)."""
    seen: dict[str, dict[str, object]] = {}
    for name, port in (("bootsvc", bootsvc_port), ("isnsd", isnsd_port)):
        out: dict[str, object] = {}
        with setup_admin(port) as admin, client(port, INIT1) as init1, client(port, INIT2) as init2, \
                client(port, "iqn.2026-11.test:someone") as someone:
            # a registration whose source is not among the nodes it registers
            someone.register("storage", [NodeSpec(TARGET1, NodeType.TARGET)], [PortalSpec("127.0.0.1", 3260)])
            out["dummy source node"] = "iqn.2026-11.test:someone" in names(admin.list("node"))
            # portal groups: a PG (tag 1) for every node x portal (§5.6.5.1), on both
            assert [(p["PG_ISCSI_NAME"], p["PG_TAG"]) for p in admin.list("pg")
                    if p["PG_ISCSI_NAME"] != "iqn.2026-11.test:someone"] == [(TARGET1, 1)]
            init1.register("node01", [NodeSpec(INIT1, NodeType.INITIATOR)], period=3600)
            init2.register("node02", [NodeSpec(INIT2, NodeType.INITIATOR)])
            out["registration period kept"] = [e.get("REGISTRATION_PERIOD") for e in admin.list("entity")
                                               if e["ENTITY_IDENTIFIER"] == "node01"]
            # a storage node changing what is not its own
            out["node deregisters another"] = _status(lambda: init1.deregister_node(INIT2))
            init2.register("node02", [NodeSpec(INIT2, NodeType.INITIATOR)])  # back, where it went
            out["node registers a DD"] = _status(lambda: init1.dd_register("mine", [INIT1]))
            dd = admin.dd_register("first", [TARGET1, "iqn.2026-11.test:unregistered"])
            assert "iqn.2026-11.test:unregistered" in dds(admin)["first"]  # both list members by name
            out["remove a non-member"] = _status(lambda: admin.dd_remove_members(dd, [INIT2]))  # noqa: B023 (called at once)
            out["same DD name again"] = _status(lambda: admin.dd_register("first", [INIT2]))
            # a new DD naming a member of another DD
            second = admin.dd_register("second", [TARGET1, INIT1])
            out["new DD keeps a member of another"] = TARGET1 in dds(admin).get("second", [])
            # a node that registers itself as a control node, not configured as one
            with client(port, "iqn.2026-11.test:rogue") as rogue:
                rogue.register("rogue", [NodeSpec("iqn.2026-11.test:rogue", NodeType.CONTROL)])
                out["self-declared control node sees all"] = INIT1 in names(rogue.query_nodes())
                rogue.deregister_entity("rogue")
            # back in the default DD once out of every DD?
            admin.dd_deregister(dd)
            admin.dd_deregister(second)
            out["back in the default DD"] = TARGET1 in names(init2.query_nodes())
            # messages over 8 KiB: 40 long-named nodes (about 240 bytes each) in one registration
            # (2 PDUs) and in one answer
            long = [NodeSpec(f"iqn.2026-11.test:{i:02d}." + "x" * 200, NodeType.TARGET) for i in range(40)]
            with client(port, long[0].name) as big:
                out["register 9 KiB"] = _status(lambda: big.register("big", long))  # noqa: B023
                big.register("big", long[:10])
                big.register("big", long[10:20])
                big.register("big", long[20:30])
                big.register("big", long[30:])
                out["answer 9 KiB"] = _status(lambda: big.query_nodes(NodeType.TARGET))
        seen[name] = out
    assert seen["bootsvc"] == {
        "dummy source node": False,
        "node deregisters another": "SOURCE_UNAUTHORIZED",  # §5.6.1
        "node registers a DD": "SOURCE_UNAUTHORIZED",  # control nodes only (open_dd_registration off)
        "remove a non-member": "NO_SUCH_ENTRY",
        "same DD name again": "SUCCESS",  # adds to the DD of that name
        "new DD keeps a member of another": True,
        "self-declared control node sees all": False,  # control nodes are configured (Registry.control_nodes)
        "back in the default DD": True,  # the default DD is every node in no DD, at any time
        "registration period kept": [3600],  # as asked (§6.2.6: the server may also change it)
        "register 9 KiB": "SUCCESS",
        "answer 9 KiB": "SUCCESS",
    }
    assert seen["isnsd"] == {
        "dummy source node": True,  # register.c: "implicitly create a dummy storage node" (with a PG)
        "node deregisters another": "SUCCESS",  # policy.c: security off allows everything
        "node registers a DD": "SUCCESS",
        "remove a non-member": "SUCCESS",
        "same DD name again": "INVALID_REGISTRATION",
        "new DD keeps a member of another": False,  # dropped without an error; DDReg to an existing DD works
        "self-declared control node sees all": True,  # scope.c: node type CONTROL gets the global scope
        "back in the default DD": False,  # a node once in a DD stays out of the default DD
        "registration period kept": [0],  # its own RegistrationPeriod (0 here) wins
        # ISNS_MAX_MESSAGE: a request over 8 KiB (in any number of PDUs) closes the connection,
        # an answer over 8 KiB is an error
        "register 9 KiB": "ConnectionError",
        "answer 9 KiB": "INTERNAL_ERROR",
    }


def _status(do: object) -> str:
    try:
        do()  # type: ignore[operator]
    except IsnsClientError as e:
        return e.status.name if isinstance(e.status, Status) else str(e.status)
    except ConnectionError as e:
        return type(e).__name__
    return "SUCCESS"


def test_async_client(server: tuple[str, int]) -> None:
    _, port = server

    async def run() -> None:
        async with AsyncIsnsClient(LOOPBACK, port, ADMIN) as admin, AsyncIsnsClient(LOOPBACK, port, INIT1) as init:
            await admin.register("admin", [NodeSpec(ADMIN, NodeType.CONTROL)])
            eid = await init.register(None, [NodeSpec(INIT1, NodeType.INITIATOR)], [PortalSpec("127.0.0.1", 3260)])
            assert names(await init.query_nodes(NodeType.INITIATOR)) == [INIT1]
            assert names(await admin.list("node")) == sorted([ADMIN, INIT1])
            # concurrent callers on one client take turns on its connection
            lists = await asyncio.gather(*(admin.list("entity") for _ in range(5)))
            assert all(sorted(e["ENTITY_IDENTIFIER"] for e in x) == sorted(["admin", eid]) for x in lists)
            dd = await admin.dd_register("dd", [INIT1])
            await admin.dd_add_members(dd, [ADMIN])
            await admin.dd_remove_members(dd, [ADMIN])
            assert [d.get("DD_MEMBER_ISCSI_NAME") for d in await admin.list("dd") if d["DD_ID"]] == [[INIT1]]
            await admin.dd_deregister(dd)
            await init.deregister_entity(eid)
            assert names(await admin.list("node")) == [ADMIN]
            with pytest.raises(IsnsClientError):
                await init.dd_deregister(dd)

    asyncio.run(asyncio.wait_for(run(), 30))


def test_messages_longer_than_one_pdu(bootsvc_port: int) -> None:
    """A registration and a query answer over 64 KiB each span several PDUs
    (§5.4). (isnsd takes neither: the differences test.)"""
    port = bootsvc_port
    many = [NodeSpec(f"iqn.2026-11.test:{i:04d}." + "x" * 200, NodeType.TARGET, "a" * 200) for i in range(200)]
    with setup_admin(port) as admin, client(port, many[0].name) as c:
        c.register("big", many)
        found = c.query_nodes(NodeType.TARGET)
        assert names(found) == sorted(n.name for n in many)
        assert all(n["ISCSI_ALIAS"] == "a" * 200 for n in found)
        assert len(admin.list("node")) == 201
        admin.deregister_entity("big")


def test_objects_are_cut_by_key_and_tag_block() -> None:
    attrs = [Attr(Tag.ENTITY_IDENTIFIER, "e"), Attr(Tag.ENTITY_INDEX, 1),
             Attr(Tag.PORTAL_IP_ADDRESS, address("127.0.0.1")), Attr(Tag.PORTAL_PORT, Port(3260)),
             Attr(Tag.ISCSI_NAME, TARGET1), Attr(Tag.ISCSI_NAME, TARGET2), Attr(Tag.ISCSI_NODE_TYPE, 1),
             Attr(Tag.DD_ID, 4), Attr(Tag.DD_MEMBER_ISCSI_NAME, TARGET1), Attr(Tag.DD_MEMBER_ISCSI_NAME, INIT1),
             Attr(Tag.DDS_ID, 2), Attr(Tag.DDS_STATUS, 1), Attr(Tag.DD_ID, 4), Attr(Tag.DD_ID, 5)]
    assert objects(attrs) == [
        ("entity", {"ENTITY_IDENTIFIER": "e", "ENTITY_INDEX": 1}),
        ("portal", {"PORTAL_IP_ADDRESS": "127.0.0.1", "PORTAL_PORT": Port(3260)}),
        ("node", {"ISCSI_NAME": TARGET1}),
        ("node", {"ISCSI_NAME": TARGET2, "ISCSI_NODE_TYPE": 1}),
        ("dd", {"DD_ID": 4, "DD_MEMBER_ISCSI_NAME": [TARGET1, INIT1]}),
        ("dds", {"DDS_ID": 2, "DDS_STATUS": 1, "DD_ID": [4, 5]}),  # a DD set's member DDs stay in the set
    ]


def test_call_returns_any_status_and_helpers_raise(bootsvc_port: int) -> None:
    with client(bootsvc_port, INIT1) as c:
        refused = c.call(Function.DD_DEREG, [Attr(Tag.DD_ID, 77)])  # not a control node
        assert refused.status == Status.SOURCE_UNAUTHORIZED and refused.function == 0x800A
        with pytest.raises(IsnsClientError, match="DD_DEREG: SOURCE_UNAUTHORIZED") as e:
            c.dd_deregister(77)
        assert e.value.status == Status.SOURCE_UNAUTHORIZED and e.value.function == Function.DD_DEREG
        ok = c.call(Function.DEV_ATTR_REG, [Attr(Tag.ENTITY_IDENTIFIER, "e")],
                    [Attr(Tag.ISCSI_NAME, INIT1), Attr(Tag.ISCSI_NODE_TYPE, 2)], Flags.REPLACE)
        assert ok.status == Status.SUCCESS
        assert [k for k, _ in objects(ok.split()[1])] == ["entity", "node"]
        with pytest.raises(ValueError):
            c.list("things")


def test_reconnects_once_when_the_server_closed(tmp_path: Path) -> None:
    port = free_port()
    with client(port, INIT1) as c:
        for _ in range(2):  # the second server closed the first one's connection on stop
            srv = IsnsServer(Registry(), LOOPBACK, port)
            with serving(srv.start, srv.stop):
                c.register("e", [NodeSpec(INIT1, NodeType.INITIATOR)])
                assert names(c.query_nodes()) == [INIT1]
        with pytest.raises(ConnectionError):  # nobody listens: no retry loop
            c.query_nodes()


def fake_server(*answers: bytes) -> tuple[int, threading.Thread, list[bytes]]:
    """One connection: for each answer, read one request PDU and send the
    answer; then close. Yields the requests it read."""
    lsock = socket.create_server((LOOPBACK, 0))
    lsock.settimeout(10)
    got: list[bytes] = []

    def serve() -> None:
        with lsock, lsock.accept()[0] as conn:
            conn.settimeout(10)
            for answer in answers:
                head = conn.recv(12, socket.MSG_WAITALL)
                body = conn.recv(struct.unpack("!H", head[4:6])[0], socket.MSG_WAITALL)
                got.append(head + body)
                conn.sendall(answer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return lsock.getsockname()[1], t, got


def test_transaction_ids_count_up_and_must_match(bootsvc_port: int) -> None:
    with client(bootsvc_port, INIT1) as c:
        xids = [c.call(Function.DEV_ATTR_QRY, [Attr(Tag.ISCSI_NAME)]).xid for _ in range(3)]
        assert xids == [xids[0], xids[0] + 1, xids[0] + 2]
    # a response carrying another transaction ID is refused and the connection dropped
    wrong = b"".join(encode_message(response(Message(Function.DEV_ATTR_QRY, 99), Status.SUCCESS)))
    port, t, got = fake_server(wrong)
    with client(port, INIT1) as c, pytest.raises(IsnsProtocolError, match="/99"):
        c.query_nodes()
    t.join(10)
    assert struct.unpack("!H", got[0][8:10])[0] == 1  # the first transaction ID is 1


def test_a_response_in_several_pdus_from_a_server_is_joined() -> None:
    reply = response(Message(Function.DEV_ATTR_QRY, 1), Status.SUCCESS,
                     [Attr(Tag.DELIMITER), *(Attr(Tag.ISCSI_NAME, f"iqn.2026-11.test:{i}") for i in range(50))])
    pdus = encode_message(reply, max_payload=256)
    assert len(pdus) > 5 and MAX_PDU_PAYLOAD > 256
    port, t, _ = fake_server(b"".join(pdus))
    with client(port, INIT1) as c:
        assert len(c.query_nodes()) == 50
    t.join(10)


def test_a_walk_that_goes_round_is_stopped() -> None:
    """A server answering DevGetNext with the same key again would keep a
    walk going for ever (isnsadm --list does: it has no bound)."""
    portal = [Attr(Tag.PORTAL_IP_ADDRESS, "127.0.0.1"), Attr(Tag.PORTAL_PORT, Port(3260))]
    answers = [b"".join(encode_message(response(Message(Function.DEV_GET_NEXT, xid), Status.SUCCESS,
                                                [*portal, Attr(Tag.DELIMITER), *portal])))
               for xid in (1, 2)]
    port, t, got = fake_server(*answers)
    with client(port, INIT1) as c, pytest.raises(IsnsProtocolError, match="twice"):
        c.list("portal")
    t.join(10)
    assert len(got) == 2  # the NIL key, then the portal's key, answered with the portal again


@pytest.mark.parametrize("name", ["bootsvc", "isnsd"])
def test_a_portal_belongs_to_one_entity(name: str, request: pytest.FixtureRequest) -> None:
    """Portal IP address and port are the portal's key (§6.3): a second
    entity registering the same portal is refused, as isnsd does."""
    port = request.getfixturevalue(f"{name}_port")
    with client(port, TARGET1) as a, client(port, TARGET2) as b:
        a.register("first", [NodeSpec(TARGET1, NodeType.TARGET)], [PortalSpec("127.0.0.1", 3260)])
        with pytest.raises(IsnsClientError) as e:
            b.register("second", [NodeSpec(TARGET2, NodeType.TARGET)], [PortalSpec("127.0.0.1", 3260)])
        assert e.value.status == Status.INVALID_REGISTRATION
        assert len(a.list("portal")) == 1
