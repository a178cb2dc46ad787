"""The iSNS registry without sockets: SCN registration and what each change
tells whom (RFC 4171 §5.6.5.5-8), DD sets (§5.6.5.11-12), registration
periods and ESI monitoring (§5.6.5.13), and the SQLite store across a
restart."""

from __future__ import annotations

import itertools
from pathlib import Path

from isns.codec import Attr, Message, Port, address, request
from isns.protocol import DDS_ENABLED, Flags, Function, NodeType, ScnBits, Status, Tag
from isns.registry import ESI_RETRIES, Registry
from isns.store import Store

ADMIN = "iqn.2026-11.test:admin"
TARGET = "iqn.2026-11.test:boot.node01"
OTHER_TARGET = "iqn.2026-11.test:boot.node02"
INIT1, INIT2 = "iqn.2026-11.test:node01", "iqn.2026-11.test:node02"
_xids = itertools.count(1)


def call(reg: Registry, source: str, function: Function, keys: list[Attr] = [], operating: list[Attr] = [],
         now: float = 0.0) -> Message:
    reply = reg.handle(request(function, next(_xids), Attr(Tag.ISCSI_NAME, source), keys, operating), now)
    assert reply is not None
    return reply


def register(reg: Registry, eid: str, node: str, kind: NodeType, *, period: int | None = None,
             portal: tuple[str, int] | None = None, esi: tuple[int, int] | None = None,
             scn_port: int | None = None, now: float = 0.0) -> None:
    ops = [Attr(Tag.ENTITY_IDENTIFIER, eid), Attr(Tag.ENTITY_PROTOCOL, 2)]
    if period is not None:
        ops.append(Attr(Tag.REGISTRATION_PERIOD, period))
    if portal is not None:
        ops += [Attr(Tag.PORTAL_IP_ADDRESS, address(portal[0])), Attr(Tag.PORTAL_PORT, Port(portal[1]))]
        if esi is not None:
            ops += [Attr(Tag.ESI_INTERVAL, esi[0]), Attr(Tag.ESI_PORT, Port(esi[1]))]
        if scn_port is not None:
            ops.append(Attr(Tag.SCN_PORT, Port(scn_port)))
    ops += [Attr(Tag.ISCSI_NAME, node), Attr(Tag.ISCSI_NODE_TYPE, int(kind))]
    assert call(reg, node, Function.DEV_ATTR_REG, [], ops, now).status == Status.SUCCESS


def scn_events(msg: Message) -> list[tuple[int, str]]:
    """(bitmap, changed node) pairs of an SCN (after destination and timestamp)."""
    attrs = msg.attrs[2:]
    out = []
    for i, a in enumerate(attrs):
        if a.tag == Tag.ISCSI_SCN_BITMAP:
            out.append((int(a.value), str(attrs[i + 1].value)))  # type: ignore[arg-type]
    return out


def dd(reg: Registry, name: str, *members: str) -> int:
    reply = call(reg, ADMIN, Function.DD_REG, [], [Attr(Tag.DD_SYMBOLIC_NAME, name),
                                                   *(Attr(Tag.DD_MEMBER_ISCSI_NAME, m) for m in members)])
    assert reply.status == Status.SUCCESS
    return int(reply.attrs[0].value)  # type: ignore[arg-type]


def test_scn_goes_to_who_may_see_the_change() -> None:
    reg = Registry(control_nodes={ADMIN})
    register(reg, "host1", INIT1, NodeType.INITIATOR, portal=("127.0.0.1", 0), scn_port=4001)
    register(reg, "host2", INIT2, NodeType.INITIATOR)
    dd(reg, "boot-node01", INIT1, TARGET)
    dd(reg, "boot-node02", INIT2, OTHER_TARGET)
    bits = ScnBits.OBJECT_ADDED | ScnBits.OBJECT_REMOVED | ScnBits.OBJECT_UPDATED
    for node in (INIT1, INIT2):
        reply = call(reg, node, Function.SCN_REG, [Attr(Tag.ISCSI_NAME, node)], [Attr(Tag.ISCSI_SCN_BITMAP, bits)])
        assert reply.status == Status.SUCCESS
    reg.take_notices()

    register(reg, "target", TARGET, NodeType.TARGET)
    notices = reg.take_notices()
    # node01 shares a DD with the new target and hears of it at its SCN port; node02 hears nothing
    assert [n.entity for n in notices] == ["host1"]
    scn = notices[0].message
    assert scn.function == Function.SCN and scn.attrs[0] == Attr(Tag.ISCSI_NAME, INIT1)
    assert scn_events(scn) == [(ScnBits.OBJECT_ADDED, TARGET)]
    assert notices[0].targets == ((address("127.0.0.1"), Port(4001)),)

    call(reg, TARGET, Function.DEV_DEREG, [], [Attr(Tag.ISCSI_NAME, TARGET)])
    assert [scn_events(n.message) for n in reg.take_notices()] == [[(ScnBits.OBJECT_REMOVED, TARGET)]]

    # SCNDereg: no more notices; another node may not deregister it
    assert call(reg, INIT2, Function.SCN_DEREG, [Attr(Tag.ISCSI_NAME, INIT1)]).status == Status.SOURCE_UNAUTHORIZED
    assert call(reg, INIT1, Function.SCN_DEREG, [Attr(Tag.ISCSI_NAME, INIT1)]).status == Status.SUCCESS
    register(reg, "target", TARGET, NodeType.TARGET)
    assert reg.take_notices() == []


def test_dd_membership_and_management_scns() -> None:
    reg = Registry(control_nodes={ADMIN})
    register(reg, "admin", ADMIN, NodeType.CONTROL)
    register(reg, "host1", INIT1, NodeType.INITIATOR)
    register(reg, "target", TARGET, NodeType.TARGET)
    # a plain node may not ask for management SCNs; the control node may
    refused = call(reg, INIT1, Function.SCN_REG, [Attr(Tag.ISCSI_NAME, INIT1)],
                   [Attr(Tag.ISCSI_SCN_BITMAP, ScnBits.MANAGEMENT_REGISTRATION | ScnBits.OBJECT_ADDED)])
    assert refused.status == Status.SCN_REGISTRATION_REJECTED
    for node, bits in ((INIT1, ScnBits.OBJECT_ADDED), (ADMIN, ScnBits.MANAGEMENT_REGISTRATION | 0x1F)):
        assert call(reg, node, Function.SCN_REG, [Attr(Tag.ISCSI_NAME, node)],
                    [Attr(Tag.ISCSI_SCN_BITMAP, bits)]).status == Status.SUCCESS
    dd_id = dd(reg, "boot-node01", INIT1, TARGET)
    by = {n.entity: n.message for n in reg.take_notices()}
    # the member hears that it and the target joined whatever its bitmap; management hears with the DD
    assert scn_events(by["host1"]) == [(ScnBits.DD_MEMBER_ADDED, INIT1), (ScnBits.DD_MEMBER_ADDED, TARGET)]
    assert Attr(Tag.DD_ID, dd_id) in by["admin"].attrs
    call(reg, ADMIN, Function.DD_DEREG, [Attr(Tag.DD_ID, dd_id)], [Attr(Tag.DD_MEMBER_ISCSI_NAME, TARGET)])
    by = {n.entity: n.message for n in reg.take_notices()}
    assert scn_events(by["host1"]) == [(ScnBits.DD_MEMBER_REMOVED, TARGET)]
    # SCNEvent: a node reports a change for the server to pass on
    event = call(reg, TARGET, Function.SCN_EVENT, [], [Attr(Tag.ISCSI_SCN_BITMAP, ScnBits.OBJECT_UPDATED),
                                                       Attr(Tag.ISCSI_NAME, TARGET)])
    assert event.status == Status.SUCCESS
    assert [n.entity for n in reg.take_notices()] == ["admin"]
    bad = call(reg, TARGET, Function.SCN_EVENT, [], [Attr(Tag.ISCSI_NAME, TARGET)])
    assert bad.status == Status.SCN_EVENT_REJECTED


def test_dd_sets_switch_their_dds_on_and_off() -> None:
    reg = Registry(control_nodes={ADMIN}, default_dd_visible=False)
    register(reg, "host1", INIT1, NodeType.INITIATOR)
    register(reg, "target", TARGET, NodeType.TARGET)
    dd_id = dd(reg, "boot-node01", INIT1, TARGET)

    def sees() -> set[str]:
        reply = call(reg, INIT1, Function.DEV_ATTR_QRY, [], [Attr(Tag.ISCSI_NAME)])
        return {str(a.value) for a in reply.attrs if a.tag == Tag.ISCSI_NAME}

    assert TARGET in sees()
    reply = call(reg, ADMIN, Function.DDS_REG, [], [Attr(Tag.DDS_SYMBOLIC_NAME, "lab"), Attr(Tag.DDS_STATUS, 0),
                                                    Attr(Tag.DD_ID, dd_id)])
    assert reply.status == Status.SUCCESS
    dds_id = int(reply.attrs[0].value)  # type: ignore[arg-type]
    assert TARGET not in sees()  # its only DD is in a disabled set
    call(reg, ADMIN, Function.DDS_REG, [Attr(Tag.DDS_ID, dds_id)], [Attr(Tag.DDS_STATUS, DDS_ENABLED)])
    assert TARGET in sees()
    assert call(reg, INIT1, Function.DDS_REG, [], [Attr(Tag.DDS_SYMBOLIC_NAME, "x")]).status == \
        Status.SOURCE_UNAUTHORIZED
    assert call(reg, ADMIN, Function.DDS_REG, [], [Attr(Tag.DD_ID, 99)]).status == Status.INVALID_REGISTRATION
    listed = call(reg, ADMIN, Function.DEV_GET_NEXT, [Attr(Tag.DDS_ID)], [])
    assert listed.status == Status.SUCCESS and Attr(Tag.DDS_SYMBOLIC_NAME, "lab") in listed.attrs
    call(reg, ADMIN, Function.DDS_REG, [Attr(Tag.DDS_ID, dds_id)], [Attr(Tag.DDS_STATUS, 0)])
    assert call(reg, ADMIN, Function.DDS_DEREG, [Attr(Tag.DDS_ID, dds_id)]).status == Status.SUCCESS
    assert TARGET in sees() and not reg.dd_sets
    assert call(reg, ADMIN, Function.DDS_DEREG, [Attr(Tag.DDS_ID, dds_id)]).status == Status.INVALID_DEREGISTRATION


def test_registration_period_and_refresh() -> None:
    reg = Registry()
    register(reg, "host1", INIT1, NodeType.INITIATOR, period=60, now=1000.0)
    register(reg, "forever", INIT2, NodeType.INITIATOR, now=1000.0)
    assert reg.due == 1060.0
    call(reg, INIT1, Function.DEV_ATTR_QRY, [Attr(Tag.ISCSI_NAME, INIT1)], [], now=1050.0)  # a refresh
    assert reg.expire(1100.0) == []
    assert reg.next_timer() == 1110.0
    assert reg.expire(1111.0) == ["host1"]
    assert set(reg.nodes) == {INIT2}


def test_esi_drops_a_silent_portal_and_its_entity() -> None:
    reg = Registry(min_esi_interval=1)
    register(reg, "host1", INIT1, NodeType.INITIATOR, portal=("127.0.0.1", 3260), esi=(10, 4002), now=0.0)
    key = (address("127.0.0.1"), Port(3260))
    reg.esi_due(5.0)
    assert reg.take_notices() == []  # not yet
    reg.esi_due(10.0)
    (probe,) = reg.take_notices()
    assert probe.message.function == Function.ESI and probe.targets == ((key[0], Port(4002)),)
    assert [a.tag for a in probe.message.attrs] == [Tag.ENTITY_IDENTIFIER, Tag.PORTAL_IP_ADDRESS, Tag.PORTAL_PORT]
    reg.esi_answered("host1", key, 11.0)  # alive: the count starts again
    for i in range(ESI_RETRIES):
        reg.esi_due(20.0 + 10 * i)
    assert len(reg.take_notices()) == ESI_RETRIES and "host1" in reg.entities
    reg.esi_due(20.0 + 10 * ESI_RETRIES)
    assert "host1" not in reg.entities and INIT1 not in reg.nodes


def test_store_keeps_everything_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "isns.db"
    reg = Registry(control_nodes={ADMIN})
    store = Store(path)
    register(reg, "host1", INIT1, NodeType.INITIATOR, portal=("127.0.0.1", 3260), scn_port=4001, period=600)
    register(reg, "target", TARGET, NodeType.TARGET, portal=("127.0.0.1", 3261))
    register(reg, "gone", INIT2, NodeType.INITIATOR)
    call(reg, INIT1, Function.SCN_REG, [Attr(Tag.ISCSI_NAME, INIT1)], [Attr(Tag.ISCSI_SCN_BITMAP, 0x1F)])
    dd_id = dd(reg, "boot-node01", INIT1, TARGET)
    call(reg, ADMIN, Function.DDS_REG, [], [Attr(Tag.DDS_SYMBOLIC_NAME, "lab"), Attr(Tag.DD_ID, dd_id)])
    call(reg, INIT2, Function.DEV_DEREG, [], [Attr(Tag.ENTITY_IDENTIFIER, "gone")])
    assert store.save(reg) > 0 and store.save(reg) == 0
    store.close()

    again = Registry(control_nodes={ADMIN})
    Store(path).load(again, now=5000.0)
    assert set(again.entities) == {"host1", "target"}
    assert again.nodes[INIT1].scn_bitmap == 0x1F
    assert again.entities["host1"].portals[(address("127.0.0.1"), Port(3260))].scn_port == Port(4001)
    assert again.dds[dd_id].members == [INIT1, TARGET] and again.dd_sets[1].members == [dd_id]
    assert again.entities["host1"].last_seen == 5000.0  # a fresh period from the restart
    assert again.due == 5600.0
    # numbering goes on after the loaded objects
    highest = max(n.index for n in again.nodes.values())
    register(again, "new", INIT2, NodeType.INITIATOR)
    assert again.nodes[INIT2].index > highest


def test_store_refuses_a_foreign_file(tmp_path: Path) -> None:
    import pytest

    from isns.store import StoreError

    bad = tmp_path / "not.db"
    bad.write_bytes(b"this is no database at all" * 100)
    with pytest.raises(StoreError):
        Store(bad)


def test_default_portal_groups() -> None:
    """Nodes and portals registered without PGs are related with PGT 1
    (§5.6.5.1); a deregistered portal takes its PGs along."""
    reg = Registry()
    register(reg, "target", TARGET, NodeType.TARGET, portal=("127.0.0.1", 3260))
    key = (TARGET, address("127.0.0.1"), Port(3260))
    assert reg.portal_groups[key].tag == 1
    reply = call(reg, TARGET, Function.DEV_ATTR_QRY, [Attr(Tag.ISCSI_NAME, TARGET)],
                 [Attr(Tag.PG_PORTAL_IP_ADDR), Attr(Tag.PG_PORTAL_PORT), Attr(Tag.PG_TAG)])
    assert Attr(Tag.PG_TAG, 1) in reply.attrs
    call(reg, TARGET, Function.DEV_DEREG, [], [Attr(Tag.PORTAL_IP_ADDRESS, address("127.0.0.1")),
                                               Attr(Tag.PORTAL_PORT, Port(3260))])
    assert key not in reg.portal_groups


def test_replace_by_a_new_node_of_the_same_entity() -> None:
    """tgt names its entity after its host address and registers with
    REPLACE from its first target: restarted with another first target it
    replaces its old entity; a registration that claims someone else's
    portal or node is refused and changes nothing."""
    reg = Registry()
    register(reg, "127.0.0.1", TARGET, NodeType.TARGET, portal=("127.0.0.1", 3260))
    ops = [Attr(Tag.ENTITY_IDENTIFIER, "127.0.0.1"), Attr(Tag.PORTAL_IP_ADDRESS, address("127.0.0.1")),
           Attr(Tag.PORTAL_PORT, Port(3260)), Attr(Tag.ISCSI_NAME, OTHER_TARGET), Attr(Tag.ISCSI_NODE_TYPE, 1)]
    plain = reg.handle(request(Function.DEV_ATTR_REG, 1, Attr(Tag.ISCSI_NAME, OTHER_TARGET),
                               [Attr(Tag.ENTITY_IDENTIFIER, "127.0.0.1")], ops), 0.0)
    assert plain is not None and plain.status == Status.SOURCE_UNAUTHORIZED
    replace = Message(Function.DEV_ATTR_REG, 2, (Attr(Tag.ISCSI_NAME, OTHER_TARGET),
                                                 Attr(Tag.ENTITY_IDENTIFIER, "127.0.0.1"), Attr(Tag.DELIMITER),
                                                 *ops), Flags.REPLACE)
    assert reg.handle(replace, 0.0).status == Status.SUCCESS  # type: ignore[union-attr]
    assert set(reg.nodes) == {OTHER_TARGET}
    thief = [Attr(Tag.ENTITY_IDENTIFIER, "thief"), Attr(Tag.PORTAL_IP_ADDRESS, address("127.0.0.1")),
             Attr(Tag.PORTAL_PORT, Port(3260)), Attr(Tag.ISCSI_NAME, INIT1)]
    assert call(reg, INIT1, Function.DEV_ATTR_REG, [], thief).status == Status.INVALID_REGISTRATION
    assert "thief" not in reg.entities and INIT1 not in reg.nodes
