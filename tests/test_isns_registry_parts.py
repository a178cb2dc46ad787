"""The registry's parts on their own: reading request attributes
(isns/keys.py), the object store (isns/database.py), who sees whom
(isns/visibility.py) and the timers (isns/timers.py)."""

from __future__ import annotations

import math

import pytest

from isns.codec import Attr, Port, address
from isns.database import Database
from isns.errors import IsnsError
from isns.keys import KEY_TAGS, first_int, first_text, groups, keep, kind_of, portal_key, portal_text
from isns.objects import DiscoveryDomain, DiscoveryDomainSet, Entity, Node, Portal
from isns.protocol import Status, Tag
from isns.registry import Registry
from isns.timers import next_timer
from isns.visibility import Visibility

A, B, C, ADMIN = "iqn.2026-11.test:a", "iqn.2026-11.test:b", "iqn.2026-11.test:c", "iqn.2026-11.test:admin"
IP = address("10.0.0.1")
PORT = Port(3260)


def test_operating_attributes_cut_into_objects() -> None:
    """§5.6.5.1: entity attributes, then each portal, node and portal group from its first attribute."""
    attrs = [Attr(Tag.ENTITY_IDENTIFIER, "e"), Attr(Tag.ENTITY_PROTOCOL, 2),
             Attr(Tag.PORTAL_IP_ADDRESS, IP), Attr(Tag.PORTAL_PORT, PORT),
             Attr(Tag.ISCSI_NAME, A), Attr(Tag.ISCSI_NODE_TYPE, 1), Attr(Tag.ISCSI_NAME, B),
             Attr(Tag.PG_ISCSI_NAME, A), Attr(Tag.PG_PORTAL_IP_ADDR, IP), Attr(Tag.PG_PORTAL_PORT, PORT),
             Attr(Tag.PG_PORTAL_IP_ADDR, IP), Attr(Tag.PG_PORTAL_PORT, Port(3261))]
    assert [(kind, len(a)) for kind, a in groups(attrs)] == [("entity", 2), ("portal", 2), ("node", 2), ("node", 1),
                                                             ("pg", 3), ("pg", 3)]
    assert list(groups([Attr(Tag.ISCSI_NODE_TYPE, 1)])) == [("entity", [Attr(Tag.ISCSI_NODE_TYPE, 1)])]


def test_message_keys() -> None:
    assert kind_of([Attr(Tag.ISCSI_NAME), Attr(Tag.ISCSI_NODE_TYPE, 1)]) == "node"
    assert kind_of([Attr(Tag.ISCSI_NAME), Attr(Tag.PORTAL_PORT)]) is None  # mixed
    assert kind_of([Attr(0x7777)]) is None  # unknown
    assert portal_key([Attr(Tag.PORTAL_PORT, PORT), Attr(Tag.PORTAL_IP_ADDRESS, IP)]) == (IP, PORT)
    assert portal_key([Attr(Tag.PORTAL_IP_ADDRESS, IP)]) is None
    assert portal_text((IP, PORT)) == "10.0.0.1:3260"
    assert first_int([Attr(Tag.DD_ID), Attr(Tag.DD_ID, 4)], Tag.DD_ID) == 4
    assert first_text([Attr(Tag.DD_SYMBOLIC_NAME, ""), Attr(Tag.DD_SYMBOLIC_NAME, "x")], Tag.DD_SYMBOLIC_NAME) == "x"


def test_keep_lists_what_is_asked_and_every_key() -> None:
    assert keep([]) is None
    kept = keep([Attr(Tag.ISCSI_ALIAS)])
    assert kept is not None and Tag.ISCSI_ALIAS in kept and KEY_TAGS <= kept
    assert keep([Attr(Tag.ISCSI_ALIAS)]) is kept  # one set per choice: objects keep their last choice by identity


def _db_with(*names: str) -> Database:
    db = Database()
    for i, name in enumerate(names):
        entity = Entity(f"e{i}", db.new_index())
        db.add_entity(entity)
        db.add_portal(entity, (address(f"10.0.0.{i + 1}"), PORT), Portal(address(f"10.0.0.{i + 1}"), PORT,
                                                                          db.new_index()))
        db.add_node(entity, Node(name, entity.eid, db.new_index()))
        db.add_default_groups(entity)
    return db


def test_database_indexes_and_removal() -> None:
    db = _db_with(A, B)
    e0 = db.entities["e0"]
    (pg,) = db.groups_of(e0)
    assert pg.name == A and pg.tag == 1  # the default portal group (§5.6.5.1)
    assert db.entity_by_key([Attr(Tag.ISCSI_NAME, A)]) == "e0"
    assert db.entity_by_key([Attr(Tag.PORTAL_IP_ADDRESS, address("10.0.0.2")), Attr(Tag.PORTAL_PORT, PORT)]) == "e1"
    assert db.candidates("node", [Attr(Tag.ISCSI_NAME, B)]) == [db.nodes[B]]
    assert db.candidates("node", [Attr(Tag.ISCSI_NODE_TYPE, 1)]) == [db.nodes[A], db.nodes[B]]  # every node
    assert db.node_by_index(db.nodes[B].index) is db.nodes[B]
    db.remove_portal(e0, (address("10.0.0.1"), PORT))
    assert not db.groups_of(e0) and not e0.portals and (address("10.0.0.1"), PORT) not in db.portal_owner
    db.remove_node(db.nodes[A])
    db.remove_entity(e0)
    assert list(db.entities) == ["e1"] and list(db.nodes) == [B] and ("entity", "e0") in db.dirty
    db.restart_indexes()
    assert db.new_index() == max(o.index for o in db._all_indexed()) + 1


def test_visibility_through_active_dds() -> None:
    """§6.11.1.3: a DD counts when in no DD set or in an enabled one."""
    db = _db_with(A, B, C)
    v = Visibility(db, {ADMIN}, default_dd_visible=False)
    assert v.sees(A, A) and not v.sees(A, B) and v.sees(ADMIN, B)
    db.dds[1] = DiscoveryDomain(1, "ab", [A, B])
    v.forget()
    assert v.sees(A, B) and v.sees(B, A) and not v.sees(A, C) and not v.sees(C, A)
    db.dd_sets[1] = DiscoveryDomainSet(1, "off", enabled=False, members=[1])
    v.forget()
    assert not v.sees(A, B)
    assert v.may_see(db.entities["e0"], A) and not v.may_see(db.entities["e1"], A)
    seen: dict[str, bool] = {}
    assert v.may_see(db.nodes[A], A, seen) and seen == {A: True}
    v.default_dd_visible = True
    assert v.sees(A, C)


def test_visibility_refusals() -> None:
    db = _db_with(A, B)
    v = Visibility(db, {ADMIN})
    v.check_may_change(A, db.entities["e0"])
    v.check_may_change(ADMIN, db.entities["e0"])
    with pytest.raises(IsnsError) as refused:
        v.check_may_change(B, db.entities["e0"])
    assert refused.value.status == Status.SOURCE_UNAUTHORIZED
    with pytest.raises(IsnsError):
        v.check_may_change_domains(A)
    Visibility(db, set(), open_dd_registration=True).check_may_change_domains(A)


def test_next_timer() -> None:
    db = _db_with(A)
    assert next_timer(db) == math.inf
    entity = db.entities["e0"]
    entity.period, entity.last_seen = 30, 100.0
    assert next_timer(db) == 130.0
    (portal,) = entity.portals.values()
    portal.esi_interval, portal.esi_next = 5, 105.0
    assert next_timer(db) == 105.0


def test_registry_settings_are_the_parts_settings() -> None:
    """Callers set what they had as the registry's fields; the parts see it."""
    control = {ADMIN}
    reg = Registry(control_nodes=control)
    control.add(A)
    assert reg.is_control(A)
    reg.default_dd_visible = False
    assert reg._ctx.visibility.default_dd_visible is False
    reg.dirty = {("dd", 1)}
    assert reg._ctx.db.dirty == {("dd", 1)}
    reg.due = 5.0
    assert reg._ctx.due == 5.0
