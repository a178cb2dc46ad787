"""DevAttrReg (RFC 4171 §5.6.5.1) and DevDereg (§5.6.5.4): network
entities, their portals, nodes and portal groups come and go."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from ..codec import Attr, Message, Port, Value, response
from ..context import Context
from ..errors import IsnsError
from ..keys import DELIMITER, REGISTRATION_KEY_TAGS, groups, portal_key, portal_text
from ..objects import Entity, Node, Object, Portal, PortalGroup
from ..policy import Policy
from ..protocol import Flags, NodeType, ScnBits, Status, Tag

Groups = list[tuple[str, list[Attr]]]  # operating attributes cut into objects (keys.groups)


def dev_attr_reg(ctx: Context, msg: Message, source: str, now: float) -> Message:
    """DevAttrReg (§5.6.5.1): register or update an entity and the objects
    the operating attributes list. Everything is checked before anything
    changes; the response lists the entity and each object registered."""
    keys, operating = msg.split()
    eid = _entity_named(ctx, keys, operating, source)
    entity = ctx.db.entities.get(str(eid)) if eid else None
    objects = list(groups(operating))
    for kind, attrs in objects:
        _CHECKS[kind](ctx, attrs, entity)
    _check_counts(ctx, source, entity, objects)
    if entity is not None:
        entity = _replaced(ctx, msg, source, entity, objects)
    if entity is None:
        entity = Entity(str(eid) if eid else f"isns:entity:{ctx.db.new_index()}", ctx.db.new_index(),
                        period=ctx.default_period, registered=now, registrar=source,
                        registrar_host=ctx.origin.host)
    entity.last_seen = now
    ctx.db.add_entity(entity)
    added: list[Object] = [_PUTS[kind](ctx, entity, attrs) for kind, attrs in objects]
    added += ctx.db.add_default_groups(entity)
    if entity.period:
        ctx.due = min(ctx.due, now + entity.period)
    ctx.on_event("isns.registered", {"entity": entity.eid, "source": source,
                                     "nodes": ",".join(entity.nodes), "portals": len(entity.portals)})
    out: list[Attr] = [*entity.attrs()]
    for obj in added:
        if not isinstance(obj, Entity):
            out.extend(obj.attrs())
    return response(msg, Status.SUCCESS, [Attr(Tag.ENTITY_IDENTIFIER, entity.eid), DELIMITER, *out])


def _entity_named(ctx: Context, keys: list[Attr], operating: list[Attr], source: str) -> Value | Port:
    """The EID a registration is for: the key's, else the entity of a node
    or portal the key names, else the operating attributes', else under
    the open policy the entity of the source's node (open-isns's "lazy
    clients": isnsadm adds to its host's entity) (None: a new entity the
    server names)."""
    eid = next((a.value for a in keys if a.tag == Tag.ENTITY_IDENTIFIER), None)
    if any(a.tag not in REGISTRATION_KEY_TAGS for a in keys):
        raise IsnsError(Status.INVALID_REGISTRATION, "the message key names no entity, node or portal")
    if eid is None:
        eid = ctx.db.entity_by_key(keys) or next(
            (a.value for a in operating if a.tag == Tag.ENTITY_IDENTIFIER and a.value), None)
    if eid is None and ctx.visibility.policy is Policy.OPEN and source in ctx.db.nodes:
        eid = ctx.db.nodes[source].entity
    return eid


def _replaced(ctx: Context, msg: Message, source: str, entity: Entity, objects: Groups) -> Entity | None:
    """The existing entity a registration updates, or None when REPLACE
    drops it for a new one. A source replacing an entity with a
    registration of itself may, from the address that registered the
    entity (tgt restarted with another first target, keeping its EID: the
    host address); otherwise only the entity's own nodes may change it. A
    REPLACE from another address would hand a stranger the entity
    (§5.6.5.1: the source must be authorized). Under the open policy
    anyone may (isns/policy.py)."""
    replace = bool(msg.flags & Flags.REPLACE)
    claims = replace and any(kind == "node" and attrs[0].value == source for kind, attrs in objects)
    vis = ctx.visibility
    if not claims or source in entity.nodes or vis.is_control(source) or vis.policy is Policy.OPEN:
        vis.check_may_change(source, entity)
    elif entity.registrar_host != ctx.origin.host:
        raise IsnsError(Status.SOURCE_UNAUTHORIZED, f"{source} may not replace entity {entity.eid}, registered "
                                                    f"by {entity.registrar or 'another source'} from another address")
    if replace:
        ctx.drop_entity(entity, "replaced")
        return None
    return entity


# -- checks: a refused registration changes nothing ----------------------------------------------


def _check_nothing(ctx: Context, attrs: list[Attr], entity: Entity | None) -> None:
    """The entity's own attributes: any will do."""


def _check_node(ctx: Context, attrs: list[Attr], entity: Entity | None) -> None:
    name = str(attrs[0].value or "")
    other = ctx.db.nodes.get(name)
    if not name:
        raise IsnsError(Status.INVALID_REGISTRATION, "an iSCSI node without a name")
    if not ctx.origin.control and ctx.visibility.is_control(name):
        # a node named as a control node would hear of every change (SCNs go to who may see them)
        raise IsnsError(Status.SOURCE_UNAUTHORIZED, f"control node {name} registered from {ctx.origin.host}")
    if other is not None and (entity is None or other.entity != entity.eid):
        raise IsnsError(Status.INVALID_REGISTRATION, f"{name} belongs to entity {other.entity}")


def _check_portal(ctx: Context, attrs: list[Attr], entity: Entity | None) -> None:
    key = portal_key(attrs)
    if key is None:
        raise IsnsError(Status.INVALID_REGISTRATION, "a portal needs an address and a port")
    owner = ctx.db.portal_owner.get(key)
    if owner is not None and (entity is None or owner != entity.eid):
        raise IsnsError(Status.INVALID_REGISTRATION, f"portal {portal_text(key)} belongs to entity {owner}")


def _check_domain(ctx: Context, attrs: list[Attr], entity: Entity | None) -> None:
    raise IsnsError(Status.INVALID_REGISTRATION, "DDs and DD sets are registered with DDReg/DDSReg")


def _check_counts(ctx: Context, source: str, entity: Entity | None, objects: Groups) -> None:
    """A source other than a control node registers at most
    ``max_per_source`` entities, each with at most that many portals and
    ``max_nodes`` nodes: each is memory and store rows kept for as long as the
    registration lasts, and a source name costs nothing to invent. RFC
    4171 has no status for "too many"; Invalid Registration (§6.4) says
    this registration was not taken."""
    cap = ctx.max_per_source
    if ctx.visibility.is_control(source):
        return
    if entity is None and ctx.db.registered_by[source] >= cap:
        raise IsnsError(Status.INVALID_REGISTRATION, f"{source} registered {cap} entities already")
    nodes, portals = (entity.nodes, entity.portals) if entity is not None else ({}, {})
    for kind, held, cap in (("node", nodes, ctx.max_nodes), ("portal", portals, ctx.max_per_source)):
        new = {_key(kind, attrs) for k, attrs in objects if k == kind} - held.keys()
        if len(held) + len(new) > cap:
            raise IsnsError(Status.INVALID_REGISTRATION, f"more than {cap} {kind}s in one entity")


def _key(kind: str, attrs: list[Attr]) -> object:
    return attrs[0].value if kind == "node" else portal_key(attrs)


_CHECKS: dict[str, Callable[[Context, list[Attr], Entity | None], None]] = {
    "entity": _check_nothing, "pg": _check_nothing, "node": _check_node, "portal": _check_portal,
    "dd": _check_domain, "dds": _check_domain}


# -- applying each object's attributes ----------------------------------------------------


def _put_entity(ctx: Context, entity: Entity, attrs: list[Attr]) -> Entity:
    for a in attrs:
        if a.tag == Tag.ENTITY_PROTOCOL and isinstance(a.value, int):
            entity.protocol = a.value
        elif a.tag == Tag.REGISTRATION_PERIOD and isinstance(a.value, int):
            entity.period = a.value
        elif a.tag == Tag.MGMT_IP_ADDRESS and isinstance(a.value, ipaddress.IPv6Address):
            entity.management_ip = a.value
    return entity


def _put_portal(ctx: Context, entity: Entity, attrs: list[Attr]) -> Portal:
    key = portal_key(attrs)
    assert key is not None  # _check_portal
    portal = entity.portals.get(key) or Portal(key[0], key[1], ctx.db.new_index())
    for a in attrs:
        if a.tag == Tag.PORTAL_SYMBOLIC_NAME:
            portal.symbolic_name = str(a.value)
        elif a.tag == Tag.ESI_INTERVAL and isinstance(a.value, int):
            portal.esi_interval = max(a.value, ctx.min_esi_interval)
            portal.esi_next = entity.last_seen + portal.esi_interval
            ctx.due = min(ctx.due, portal.esi_next)
        elif a.tag == Tag.ESI_PORT and isinstance(a.value, Port):
            portal.esi_port = a.value
        elif a.tag == Tag.SCN_PORT and isinstance(a.value, Port):
            portal.scn_port = a.value
    ctx.db.add_portal(entity, key, portal)
    return portal


def _put_node(ctx: Context, entity: Entity, attrs: list[Attr]) -> Node:
    name = str(attrs[0].value)
    node = ctx.db.nodes.get(name)
    if node is None:
        node = Node(name, entity.eid, ctx.db.new_index())
        change = ScnBits.OBJECT_ADDED
    else:
        change = ScnBits.OBJECT_UPDATED
    for a in attrs[1:]:
        if a.tag == Tag.ISCSI_NODE_TYPE and isinstance(a.value, int):
            node.type = NodeType(a.value & 7)
        elif a.tag == Tag.ISCSI_ALIAS:
            node.alias = None if a.value is None else str(a.value)
        elif a.tag == Tag.ISCSI_SCN_BITMAP and isinstance(a.value, int):
            node.scn_bitmap = a.value
            ctx.db.scn_nodes.add(name)
        elif a.tag == Tag.ISCSI_AUTH_METHOD:
            node.auth_method = None if a.value is None else str(a.value)
    ctx.db.add_node(entity, node)
    ctx.notifier.object_changed(change, node)
    return node


def _put_pg(ctx: Context, entity: Entity, attrs: list[Attr]) -> PortalGroup:
    values = {a.tag: a.value for a in attrs}
    name = str(values.get(Tag.PG_ISCSI_NAME, ""))
    addr, port = values.get(Tag.PG_PORTAL_IP_ADDR), values.get(Tag.PG_PORTAL_PORT)
    if not name or not isinstance(addr, ipaddress.IPv6Address) or not isinstance(port, Port):
        raise IsnsError(Status.INVALID_REGISTRATION, "a portal group needs a name, an address and a port")
    tag = values.get(Tag.PG_TAG)
    key = (name, addr, port)
    pg = ctx.db.portal_groups.get(key) or PortalGroup(name, addr, port, None, ctx.db.new_index())
    pg.tag = tag if isinstance(tag, int) else None
    ctx.db.portal_groups[key] = pg
    return pg


_PUTS: dict[str, Callable[[Context, Entity, list[Attr]], Object]] = {
    "entity": _put_entity, "portal": _put_portal, "node": _put_node, "pg": _put_pg}


# -- DevDereg (§5.6.5.4) -----------------------------------------------------------------


def dev_dereg(ctx: Context, msg: Message, source: str, now: float) -> Message:
    """DevDereg (§5.6.5.4): entities, nodes and portals leave; what is gone
    already is not an error (deregistration is idempotent)."""
    _, operating = msg.split()
    for kind, attrs in groups(operating):
        drop = _DROPS.get(kind)
        if drop is None:
            raise IsnsError(Status.INVALID_DEREGISTRATION, f"cannot deregister a {kind} with DevDereg")
        drop(ctx, attrs, source)
    return response(msg, Status.SUCCESS)


def _drop_entity(ctx: Context, attrs: list[Attr], source: str) -> None:
    entity = ctx.db.entities.get(str(attrs[0].value))
    if entity is not None:
        ctx.visibility.check_may_change(source, entity)
        ctx.drop_entity(entity, "deregistered")


def _drop_node(ctx: Context, attrs: list[Attr], source: str) -> None:
    node = ctx.db.nodes.get(str(attrs[0].value))
    if node is None:
        return
    entity = ctx.db.entities[node.entity]
    ctx.visibility.check_may_change(source, entity)
    if len(entity.nodes) == 1:  # an entity without nodes goes with its last one (§5.6.5.4)
        ctx.drop_entity(entity, "emptied")
        return
    ctx.drop_node(node)
    ctx.db.dirty.add(("entity", entity.eid))
    ctx.on_event("isns.deregistered", {"node": node.name, "source": source})


def _drop_portal(ctx: Context, attrs: list[Attr], source: str) -> None:
    key = portal_key(attrs)
    for entity in list(ctx.db.entities.values()):
        if key in entity.portals:
            ctx.visibility.check_may_change(source, entity)
            ctx.db.remove_portal(entity, key)  # type: ignore[arg-type]


_DROPS: dict[str, Callable[[Context, list[Attr], str], None]] = {
    "entity": _drop_entity, "node": _drop_node, "portal": _drop_portal}
