"""isns.policy without sockets (isns/policy.py): each decision the strict
and the open policy differ on, made by Registry.handle on one request, and
what both keep (the per-source bounds, control names from control
addresses only)."""

from __future__ import annotations

import pytest

from isns.codec import Attr, Message, Port, address, request
from isns.limits import Origin
from isns.policy import Policy
from isns.protocol import Flags, Function, NodeType, ScnBits, Status, Tag
from isns.registry import Registry

P = "iqn.2026-11.test"
OWNER, STRANGER, CONTROL = f"{P}:owner", f"{P}:stranger", f"{P}:control"
REMOTE = Origin("192.0.2.7", control=False)  # a peer on the network, no control address


def node(name: str, kind: NodeType = NodeType.INITIATOR) -> list[Attr]:
    return [Attr(Tag.ISCSI_NAME, name), Attr(Tag.ISCSI_NODE_TYPE, int(kind))]


def portal(port: int) -> list[Attr]:
    return [Attr(Tag.PORTAL_IP_ADDRESS, address("127.0.0.1")), Attr(Tag.PORTAL_PORT, Port(port))]


def reg(source: str, *operating: Attr, eid: str | None = "E", flags: Flags = Flags(0)) -> Message:
    keys = [Attr(Tag.ENTITY_IDENTIFIER, eid)] if eid else []
    head = [Attr(Tag.ENTITY_IDENTIFIER, eid)] if eid else []
    return request(Function.DEV_ATTR_REG, 1, Attr(Tag.ISCSI_NAME, source), keys, [*head, *operating], flags)


def dereg(source: str, *operating: Attr) -> Message:
    return request(Function.DEV_DEREG, 1, Attr(Tag.ISCSI_NAME, source), [], list(operating))


def dd_reg(source: str, *members: str, dd: int | None = None) -> Message:
    keys = [Attr(Tag.DD_ID, dd)] if dd is not None else []
    name = [Attr(Tag.DD_SYMBOLIC_NAME, "dd")] if dd is None else []
    return request(Function.DD_REG, 1, Attr(Tag.ISCSI_NAME, source), keys,
                   [*name, *(Attr(Tag.DD_MEMBER_ISCSI_NAME, m) for m in members)])


def dd_dereg(source: str, dd: int, *members: str) -> Message:
    return request(Function.DD_DEREG, 1, Attr(Tag.ISCSI_NAME, source), [Attr(Tag.DD_ID, dd)],
                   [Attr(Tag.DD_MEMBER_ISCSI_NAME, m) for m in members])


def status(registry: Registry, msg: Message, origin: Origin = REMOTE) -> Status | int | None:
    answer = registry.handle(msg, 0.0, origin)
    assert answer is not None
    return answer.status


def with_owner(policy: Policy, **kw: int) -> Registry:
    """An entity E holding the node OWNER and a portal, registered by OWNER."""
    registry = Registry(control_nodes={CONTROL}, policy=policy, **kw)  # type: ignore[arg-type]
    assert status(registry, reg(OWNER, *node(OWNER), *portal(860))) == Status.SUCCESS
    return registry


OPEN_ONLY = {  # what a stranger may do to E under open, and strict refuses (§5.6.1)
    "add a portal": reg(STRANGER, *portal(3260)),
    "add a node": reg(STRANGER, *node(STRANGER)),
    "replace": reg(STRANGER, *node(f"{P}:other"), flags=Flags.REPLACE),
    "deregister a node": dereg(STRANGER, Attr(Tag.ISCSI_NAME, OWNER)),
    "deregister a portal": dereg(STRANGER, *portal(860)),
    "deregister the entity": dereg(STRANGER, Attr(Tag.ENTITY_IDENTIFIER, "E")),
}


@pytest.mark.parametrize("what", sorted(OPEN_ONLY))
def test_a_stranger_changes_an_entity_under_open_only(what: str) -> None:
    strict = with_owner(Policy.STRICT)
    assert status(strict, OPEN_ONLY[what]) == Status.SOURCE_UNAUTHORIZED
    assert OWNER in strict.nodes and len(strict.entities["E"].portals) == 1
    assert status(with_owner(Policy.OPEN), OPEN_ONLY[what]) == Status.SUCCESS


def test_the_owner_changes_its_entity_under_both() -> None:
    for policy in Policy:
        registry = with_owner(policy)
        assert status(registry, reg(OWNER, *portal(3260))) == Status.SUCCESS
        assert len(registry.entities["E"].portals) == 2


def test_a_registration_naming_no_entity_joins_the_sources_under_open() -> None:
    """isnsadm --register portal=... (no entity=): open-isns adds to the
    source's entity; strict makes a new one, which can't take the node."""
    for policy, entities in ((Policy.OPEN, 1), (Policy.STRICT, 2)):
        registry = with_owner(policy)
        assert status(registry, reg(OWNER, *portal(861), eid=None)) == Status.SUCCESS
        assert len(registry.entities) == entities
    strict, open_ = with_owner(Policy.STRICT), with_owner(Policy.OPEN)
    renamed = [Attr(Tag.ISCSI_NAME, OWNER), Attr(Tag.ISCSI_ALIAS, "renamed")]
    assert status(strict, reg(OWNER, *renamed, eid=None)) == Status.INVALID_REGISTRATION
    assert status(open_, reg(OWNER, *renamed, eid=None)) == Status.SUCCESS
    assert open_.nodes[OWNER].alias == "renamed"


def test_discovery_domains_by_anyone_under_open_by_control_nodes_under_strict() -> None:
    strict, open_ = with_owner(Policy.STRICT), with_owner(Policy.OPEN)
    assert status(strict, dd_reg(STRANGER, OWNER)) == Status.SOURCE_UNAUTHORIZED
    assert status(strict, dd_reg(CONTROL, OWNER), Origin("127.0.0.1")) == Status.SUCCESS
    assert status(strict, dd_reg(STRANGER, STRANGER, dd=1)) == Status.SOURCE_UNAUTHORIZED
    assert status(strict, dd_dereg(STRANGER, 1)) == Status.SOURCE_UNAUTHORIZED
    assert status(open_, dd_reg(STRANGER, OWNER)) == Status.SUCCESS
    assert status(open_, dd_reg(OWNER, STRANGER, dd=1)) == Status.SUCCESS
    assert open_.dds[1].members == [OWNER, STRANGER]
    assert status(open_, dd_dereg(STRANGER, 1, OWNER)) == Status.SUCCESS
    assert status(open_, dd_dereg(OWNER, 1)) == Status.SUCCESS and not open_.dds


def test_a_self_declared_control_node_sees_everything_under_open_only() -> None:
    """open-isns gives a node registered with the Control type bit the
    global scope (scope.c); strict believes only configured names."""
    for policy, sees in ((Policy.OPEN, True), (Policy.STRICT, False)):
        registry = with_owner(policy)
        assert status(registry, reg(f"{P}:disk", *node(f"{P}:disk", NodeType.TARGET), eid="T")) == Status.SUCCESS
        assert status(registry, dd_reg(CONTROL, OWNER, f"{P}:disk"), Origin("127.0.0.1")) == Status.SUCCESS
        assert status(registry, reg(STRANGER, *node(STRANGER, NodeType.CONTROL), eid="S")) == Status.SUCCESS
        assert registry.sees(STRANGER, OWNER) is sees
        assert registry.sees(f"{P}:else", OWNER) is False  # a plain source still sees through DDs only


def test_management_scns_for_anyone_under_open() -> None:
    scn = request(Function.SCN_REG, 1, Attr(Tag.ISCSI_NAME, OWNER), [Attr(Tag.ISCSI_NAME, OWNER)],
                  [Attr(Tag.ISCSI_SCN_BITMAP, int(ScnBits.MANAGEMENT_REGISTRATION | ScnBits.OBJECT_ADDED))])
    assert status(with_owner(Policy.STRICT), scn) == Status.SCN_REGISTRATION_REJECTED
    assert status(with_owner(Policy.OPEN), scn) == Status.SUCCESS


def test_open_keeps_the_per_source_bounds() -> None:
    registry = with_owner(Policy.OPEN, max_per_source=2)
    assert status(registry, reg(STRANGER, *portal(3260))) == Status.SUCCESS
    assert status(registry, reg(STRANGER, *portal(3261))) == Status.INVALID_REGISTRATION  # 3 portals in E
    for i in range(2):
        assert status(registry, reg(STRANGER, *portal(4000 + i), eid=f"S{i}")) == Status.SUCCESS
    assert status(registry, reg(STRANGER, *portal(4002), eid="S2")) == Status.INVALID_REGISTRATION


def test_open_keeps_control_names_to_control_addresses() -> None:
    registry = with_owner(Policy.OPEN)
    assert status(registry, dd_reg(CONTROL, OWNER)) == Status.SOURCE_UNAUTHORIZED  # the name, from afar
    assert status(registry, reg(STRANGER, *node(CONTROL, NodeType.CONTROL), eid="C")) == Status.SOURCE_UNAUTHORIZED
