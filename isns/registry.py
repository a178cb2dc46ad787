"""The iSNS database and what each request does to it (RFC 4171 §5.6.5),
without sockets or clocks: ``Registry.handle(message, now)`` returns the
response.

Objects (§6): network entities holding portals and iSCSI nodes, portal
groups, discovery domains (DDs). Who sees what (§3.2.1, §5.6.5.2): a node
sees the nodes it shares a DD with; a node in no DD sees the other nodes in
no DD when ``default_dd_visible`` (open-isns's DefaultDiscoveryDomain), else
only itself; control nodes see and may change everything, and only they
(and sources allowed by ``open_dd_registration``) register DDs.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .codec import Attr, Message, Port, response
from .protocol import EntityProtocol, Flags, Function, NodeType, Status, Tag

DEFAULT_PERIOD = 0  # registration period (s) when the client names none: 0 = never expires

ENTITY_TAGS = {Tag.ENTITY_IDENTIFIER, Tag.ENTITY_PROTOCOL, Tag.MGMT_IP_ADDRESS, Tag.TIMESTAMP,
               Tag.PROTOCOL_VERSION_RANGE, Tag.REGISTRATION_PERIOD, Tag.ENTITY_INDEX}
PORTAL_TAGS = {Tag.PORTAL_IP_ADDRESS, Tag.PORTAL_PORT, Tag.PORTAL_SYMBOLIC_NAME, Tag.ESI_INTERVAL, Tag.ESI_PORT,
               Tag.PORTAL_INDEX, Tag.SCN_PORT, Tag.PORTAL_SECURITY_BITMAP}
NODE_TAGS = {Tag.ISCSI_NAME, Tag.ISCSI_NODE_TYPE, Tag.ISCSI_ALIAS, Tag.ISCSI_SCN_BITMAP, Tag.ISCSI_NODE_INDEX,
             Tag.ISCSI_AUTH_METHOD}
PG_TAGS = {Tag.PG_ISCSI_NAME, Tag.PG_PORTAL_IP_ADDR, Tag.PG_PORTAL_PORT, Tag.PG_TAG, Tag.PG_INDEX}
DD_TAGS = {Tag.DD_ID, Tag.DD_SYMBOLIC_NAME, Tag.DD_MEMBER_ISCSI_NAME, Tag.DD_MEMBER_ISCSI_INDEX, Tag.DD_FEATURES,
           Tag.DD_MEMBER_PORTAL_IP_ADDR, Tag.DD_MEMBER_PORTAL_PORT, Tag.DD_MEMBER_PORTAL_INDEX}


class IsnsError(Exception):
    """A request refused with ``status``."""

    def __init__(self, status: Status, why: str) -> None:
        super().__init__(why)
        self.status = status


def _opt(tag: int, value: object) -> list[Attr]:
    return [] if value is None else [Attr(tag, value)]  # type: ignore[arg-type]


@dataclass
class Portal:
    address: ipaddress.IPv6Address
    port: Port
    index: int
    symbolic_name: str | None = None
    esi_interval: int | None = None
    esi_port: Port | None = None
    scn_port: Port | None = None

    def attrs(self) -> list[Attr]:
        return [Attr(Tag.PORTAL_IP_ADDRESS, self.address), Attr(Tag.PORTAL_PORT, self.port),
                *_opt(Tag.PORTAL_SYMBOLIC_NAME, self.symbolic_name), *_opt(Tag.ESI_INTERVAL, self.esi_interval),
                *_opt(Tag.ESI_PORT, self.esi_port), Attr(Tag.PORTAL_INDEX, self.index),
                *_opt(Tag.SCN_PORT, self.scn_port)]


@dataclass
class Node:
    name: str
    entity: str
    index: int
    type: NodeType = NodeType(0)
    alias: str | None = None
    scn_bitmap: int | None = None
    auth_method: str | None = None

    def attrs(self) -> list[Attr]:
        return [Attr(Tag.ISCSI_NAME, self.name), Attr(Tag.ISCSI_NODE_TYPE, int(self.type)),
                *_opt(Tag.ISCSI_ALIAS, self.alias), *_opt(Tag.ISCSI_SCN_BITMAP, self.scn_bitmap),
                Attr(Tag.ISCSI_NODE_INDEX, self.index), *_opt(Tag.ISCSI_AUTH_METHOD, self.auth_method)]


@dataclass
class PortalGroup:
    name: str
    address: ipaddress.IPv6Address
    port: Port
    tag: int | None  # None: the node may not be reached through that portal (§6.5.3)
    index: int

    def attrs(self) -> list[Attr]:
        return [Attr(Tag.PG_ISCSI_NAME, self.name), Attr(Tag.PG_PORTAL_IP_ADDR, self.address),
                Attr(Tag.PG_PORTAL_PORT, self.port), Attr(Tag.PG_TAG, self.tag), Attr(Tag.PG_INDEX, self.index)]


@dataclass
class Entity:
    eid: str
    index: int
    protocol: int = EntityProtocol.ISCSI
    period: int = DEFAULT_PERIOD
    registered: float = 0.0
    last_seen: float = 0.0
    management_ip: ipaddress.IPv6Address | None = None
    portals: dict[tuple[ipaddress.IPv6Address, Port], Portal] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)

    def attrs(self) -> list[Attr]:
        return [Attr(Tag.ENTITY_IDENTIFIER, self.eid), Attr(Tag.ENTITY_PROTOCOL, self.protocol),
                *_opt(Tag.MGMT_IP_ADDRESS, self.management_ip), Attr(Tag.TIMESTAMP, int(self.last_seen)),
                Attr(Tag.REGISTRATION_PERIOD, self.period), Attr(Tag.ENTITY_INDEX, self.index)]


@dataclass
class DiscoveryDomain:
    id: int
    name: str
    members: list[str] = field(default_factory=list)  # iSCSI names, registered or not (§6.11.2.3)
    features: int = 0

    def attrs(self) -> list[Attr]:
        return [Attr(Tag.DD_ID, self.id), Attr(Tag.DD_SYMBOLIC_NAME, self.name),
                *(Attr(Tag.DD_MEMBER_ISCSI_NAME, m) for m in self.members), Attr(Tag.DD_FEATURES, self.features)]


Object = Entity | Portal | Node | PortalGroup | DiscoveryDomain


@dataclass
class Registry:
    control_nodes: set[str] = field(default_factory=set)
    default_dd_visible: bool = True
    open_dd_registration: bool = False
    entities: dict[str, Entity] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    portal_groups: dict[tuple[str, ipaddress.IPv6Address, Port], PortalGroup] = field(default_factory=dict)
    dds: dict[int, DiscoveryDomain] = field(default_factory=dict)
    on_event: Callable[[str, dict[str, object]], None] = lambda what, fields: None
    _indexes: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def _index(self) -> int:
        return next(self._indexes)

    # -- entry point ----------------------------------------------------------------

    def handle(self, msg: Message, now: float) -> Message | None:
        """The response to ``msg`` (None for messages that get none)."""
        try:
            function = Function(msg.function)
        except ValueError:
            return response(msg, Status.MESSAGE_NOT_SUPPORTED)
        handler = {
            Function.DEV_ATTR_REG: self._register,
            Function.DEV_ATTR_QRY: self._query,
            Function.DEV_GET_NEXT: self._get_next,
            Function.DEV_DEREG: self._deregister,
            Function.DD_REG: self._dd_register,
            Function.DD_DEREG: self._dd_deregister,
        }.get(function)
        if handler is None:
            return response(msg, Status.MESSAGE_NOT_SUPPORTED)
        source = msg.source
        if source is None or source.tag != Tag.ISCSI_NAME or not isinstance(source.value, str) or not source.value:
            return response(msg, Status.SOURCE_ABSENT)
        try:
            return handler(msg, source.value, now)
        except IsnsError as e:
            self.on_event("isns.refused", {"function": function.name, "source": source.value,
                                           "status": e.status.name, "why": str(e)})
            return response(msg, e.status)

    # -- who may see and change what --------------------------------------------------

    def is_control(self, source: str) -> bool:
        node = self.nodes.get(source)
        return source in self.control_nodes or (node is not None and bool(node.type & NodeType.CONTROL))

    def _dds_of(self, name: str) -> list[DiscoveryDomain]:
        return [dd for dd in self.dds.values() if name in dd.members]

    def visible_names(self, source: str) -> set[str] | None:
        """The iSCSI names ``source`` may see; None: all of them (control)."""
        if self.is_control(source):
            return None
        domains = self._dds_of(source)
        if domains:
            return {m for dd in domains for m in dd.members}
        if self.default_dd_visible:
            in_some = {m for dd in self.dds.values() for m in dd.members}
            return {n for n in self.nodes if n not in in_some} | {source}
        return {source}

    def _may_see(self, obj: Object, seen: set[str] | None) -> bool:
        if seen is None:
            return True
        if isinstance(obj, Node):
            return obj.name in seen
        if isinstance(obj, Entity):
            return any(n in seen for n in obj.nodes)
        if isinstance(obj, Portal):
            return any(self._may_see(e, seen) for e in self.entities.values() if obj in e.portals.values())
        if isinstance(obj, PortalGroup):
            return obj.name in seen
        return any(m in seen for m in obj.members)  # a DD: one of its members

    def _may_change(self, source: str, entity: Entity) -> None:
        if self.is_control(source) or source in entity.nodes:
            return
        raise IsnsError(Status.SOURCE_UNAUTHORIZED, f"{source} is not a node of entity {entity.eid}")

    # -- DevAttrReg (§5.6.5.1) ---------------------------------------------------------

    def _register(self, msg: Message, source: str, now: float) -> Message:
        keys, operating = msg.split()
        eid = next((a.value for a in keys if a.tag == Tag.ENTITY_IDENTIFIER), None)
        if any(a.tag not in ENTITY_TAGS | NODE_TAGS | PORTAL_TAGS for a in keys):
            raise IsnsError(Status.INVALID_REGISTRATION, "the message key names no entity, node or portal")
        if eid is None:  # keyed by a node or portal of an existing entity (§5.6.5.1), else a new entity
            eid = self._entity_by_key(keys) or next(
                (a.value for a in operating if a.tag == Tag.ENTITY_IDENTIFIER and a.value), None)
        entity = self.entities.get(str(eid)) if eid else None
        if entity is not None:
            self._may_change(source, entity)
            if msg.flags & Flags.REPLACE:
                self._drop_entity(entity, "replaced")
                entity = None
        if entity is None:
            entity = Entity(str(eid) if eid else f"isns:entity:{self._index()}", self._index(), registered=now)
        entity.last_seen = now
        groups = list(_groups(operating))
        # check everything before changing anything: a refused registration changes nothing
        for kind, attrs in groups:
            if kind == "node":
                name = str(attrs[0].value or "")
                other = self.nodes.get(name)
                if not name:
                    raise IsnsError(Status.INVALID_REGISTRATION, "an iSCSI node without a name")
                if other is not None and other.entity != entity.eid:
                    raise IsnsError(Status.INVALID_REGISTRATION, f"{name} belongs to entity {other.entity}")
            elif kind == "portal" and not _portal_key(attrs):
                raise IsnsError(Status.INVALID_REGISTRATION, "a portal needs an address and a port")
            elif kind == "dd":
                raise IsnsError(Status.INVALID_REGISTRATION, "discovery domains are registered with DDReg")
        self.entities[entity.eid] = entity
        added: list[Object] = []
        for kind, attrs in groups:
            added.append(getattr(self, f"_put_{kind}")(entity, attrs))
        self.on_event("isns.registered", {"entity": entity.eid, "source": source,
                                          "nodes": ",".join(entity.nodes), "portals": len(entity.portals)})
        out: list[Attr] = [*entity.attrs()]
        for obj in added:
            if not isinstance(obj, Entity):
                out.extend(obj.attrs())
        return response(msg, Status.SUCCESS, [Attr(Tag.ENTITY_IDENTIFIER, entity.eid), Attr(Tag.DELIMITER), *out])

    def _entity_by_key(self, keys: list[Attr]) -> str | None:
        for a in keys:
            if a.tag == Tag.ISCSI_NAME and a.value in self.nodes:
                return self.nodes[str(a.value)].entity
        key = _portal_key(keys)
        for e in self.entities.values():
            if key is not None and key in e.portals:
                return e.eid
        return None

    def _put_entity(self, entity: Entity, attrs: list[Attr]) -> Entity:
        for a in attrs:
            if a.tag == Tag.ENTITY_PROTOCOL and isinstance(a.value, int):
                entity.protocol = a.value
            elif a.tag == Tag.REGISTRATION_PERIOD and isinstance(a.value, int):
                entity.period = a.value
            elif a.tag == Tag.MGMT_IP_ADDRESS and isinstance(a.value, ipaddress.IPv6Address):
                entity.management_ip = a.value
        return entity

    def _put_portal(self, entity: Entity, attrs: list[Attr]) -> Portal:
        key = _portal_key(attrs)
        assert key is not None
        portal = entity.portals.get(key) or Portal(key[0], key[1], self._index())
        for a in attrs:
            if a.tag == Tag.PORTAL_SYMBOLIC_NAME:
                portal.symbolic_name = str(a.value)
            elif a.tag == Tag.ESI_INTERVAL and isinstance(a.value, int):
                portal.esi_interval = a.value
            elif a.tag == Tag.ESI_PORT and isinstance(a.value, Port):
                portal.esi_port = a.value
            elif a.tag == Tag.SCN_PORT and isinstance(a.value, Port):
                portal.scn_port = a.value
        entity.portals[key] = portal
        return portal

    def _put_node(self, entity: Entity, attrs: list[Attr]) -> Node:
        name = str(attrs[0].value)
        node = self.nodes.get(name) or Node(name, entity.eid, self._index())
        for a in attrs[1:]:
            if a.tag == Tag.ISCSI_NODE_TYPE and isinstance(a.value, int):
                node.type = NodeType(a.value & 7)
            elif a.tag == Tag.ISCSI_ALIAS:
                node.alias = None if a.value is None else str(a.value)
            elif a.tag == Tag.ISCSI_SCN_BITMAP and isinstance(a.value, int):
                node.scn_bitmap = a.value
            elif a.tag == Tag.ISCSI_AUTH_METHOD:
                node.auth_method = None if a.value is None else str(a.value)
        entity.nodes[name] = node
        self.nodes[name] = node
        return node

    def _put_pg(self, entity: Entity, attrs: list[Attr]) -> PortalGroup:
        values = {a.tag: a.value for a in attrs}
        name = str(values.get(Tag.PG_ISCSI_NAME, ""))
        addr, port = values.get(Tag.PG_PORTAL_IP_ADDR), values.get(Tag.PG_PORTAL_PORT)
        if not name or not isinstance(addr, ipaddress.IPv6Address) or not isinstance(port, Port):
            raise IsnsError(Status.INVALID_REGISTRATION, "a portal group needs a name, an address and a port")
        tag = values.get(Tag.PG_TAG)
        key = (name, addr, port)
        pg = self.portal_groups.get(key) or PortalGroup(name, addr, port, None, self._index())
        pg.tag = tag if isinstance(tag, int) else None
        self.portal_groups[key] = pg
        return pg

    # -- DevAttrQry (§5.6.5.2) and DevGetNext (§5.6.5.3) -----------------------------------

    def _objects(self, kind: str) -> list[Object]:
        """Every object of a kind, in index order (DevGetNext walks it)."""
        if kind == "entity":
            return sorted(self.entities.values(), key=lambda e: e.index)
        if kind == "node":
            return sorted(self.nodes.values(), key=lambda n: n.index)
        if kind == "portal":
            return sorted((p for e in self.entities.values() for p in e.portals.values()), key=lambda p: p.index)
        if kind == "pg":
            return sorted(self.portal_groups.values(), key=lambda p: p.index)
        return sorted(self.dds.values(), key=lambda d: d.id)

    def _matches(self, obj: Object, keys: list[Attr]) -> bool:
        have = {}
        for a in obj.attrs():
            have.setdefault(a.tag, []).append(a.value)
        return all(a.value is None or a.value in have.get(a.tag, []) for a in keys)

    def _related(self, obj: Object) -> list[Object]:
        """The object with its entity and the entity's other objects: what a
        query keyed by one of them answers with (§5.6.5.2)."""
        if isinstance(obj, Entity):
            entity = obj
        elif isinstance(obj, Node):
            entity = self.entities[obj.entity]
        elif isinstance(obj, Portal):
            entity = next(e for e in self.entities.values() if obj in e.portals.values())
        else:
            return [obj]
        return [entity, *entity.portals.values(), *entity.nodes.values()]

    def _query(self, msg: Message, source: str, now: float) -> Message:
        keys, operating = msg.split()
        kind = _kind_of(keys) if keys else "entity"
        if kind is None:
            raise IsnsError(Status.INVALID_QUERY, "the message key mixes object types")
        seen = self.visible_names(source)
        wanted = {a.tag for a in operating}
        out: list[Attr] = []
        done: set[int] = set()
        for obj in self._objects(kind):
            if not self._matches(obj, keys) or not self._may_see(obj, seen):
                continue
            for rel in self._related(obj):
                if id(rel) in done or not self._may_see(rel, seen):
                    continue
                done.add(id(rel))
                attrs = rel.attrs()
                out.extend(a for a in attrs if not wanted or a.tag in wanted or a.tag in _KEY_TAGS)
        return response(msg, Status.SUCCESS, [*keys, Attr(Tag.DELIMITER), *out])

    def _get_next(self, msg: Message, source: str, now: float) -> Message:
        keys, operating = msg.split()
        kind = _kind_of(keys)
        if kind is None or not keys:
            raise IsnsError(Status.INVALID_QUERY, "DevGetNext needs the key of one object type")
        seen = self.visible_names(source)
        after = None if all(a.value is None for a in keys) else keys
        objects = self._objects(kind)
        start = 0
        if after is not None:
            for i, obj in enumerate(objects):
                if self._matches(obj, after):
                    start = i + 1
                    break
            else:
                raise IsnsError(Status.NO_SUCH_ENTRY, "no object has that key")
        filters = [a for a in operating if a.value is not None]
        for obj in objects[start:]:
            if self._may_see(obj, seen) and self._matches(obj, filters):
                attrs = obj.attrs()
                key = [a for a in attrs if a.tag in _KEY_TAGS]
                return response(msg, Status.SUCCESS, [*key, Attr(Tag.DELIMITER), *attrs])
        return response(msg, Status.NO_SUCH_ENTRY)  # the end of the walk, not a refusal

    # -- DevDereg (§5.6.5.4) ---------------------------------------------------------------

    def _deregister(self, msg: Message, source: str, now: float) -> Message:
        _, operating = msg.split()
        for kind, attrs in _groups(operating):
            if kind == "entity":
                entity = self.entities.get(str(attrs[0].value))
                if entity is None:
                    continue  # gone already: deregistration is idempotent (§5.6.5.4)
                self._may_change(source, entity)
                self._drop_entity(entity, "deregistered")
            elif kind == "node":
                node = self.nodes.get(str(attrs[0].value))
                if node is None:
                    continue
                entity = self.entities[node.entity]
                self._may_change(source, entity)
                del entity.nodes[node.name]
                del self.nodes[node.name]
                self.on_event("isns.deregistered", {"node": node.name, "source": source})
                if not entity.nodes:  # an entity without nodes goes with its last one (§5.6.5.4)
                    self._drop_entity(entity, "emptied")
            elif kind == "portal":
                key = _portal_key(attrs)
                for entity in list(self.entities.values()):
                    if key in entity.portals:
                        self._may_change(source, entity)
                        del entity.portals[key]
            else:
                raise IsnsError(Status.INVALID_DEREGISTRATION, f"cannot deregister a {kind} with DevDereg")
        return response(msg, Status.SUCCESS)

    def _drop_entity(self, entity: Entity, why: str) -> None:
        for name in entity.nodes:
            self.nodes.pop(name, None)
        for key in [k for k in self.portal_groups if k[0] in entity.nodes]:
            del self.portal_groups[key]
        del self.entities[entity.eid]
        self.on_event("isns.entity_removed", {"entity": entity.eid, "why": why})

    # -- DDReg (§5.6.5.9), DDDereg (§5.6.5.10) -------------------------------------------------

    def _dd_allowed(self, source: str) -> None:
        if not (self.open_dd_registration or self.is_control(source)):
            raise IsnsError(Status.SOURCE_UNAUTHORIZED, f"{source} is not a control node")

    def _dd_register(self, msg: Message, source: str, now: float) -> Message:
        self._dd_allowed(source)
        keys, operating = msg.split()
        values = [a for a in operating if a.tag in DD_TAGS]
        dd_id = next((a.value for a in keys if a.tag == Tag.DD_ID and isinstance(a.value, int)), None)
        name = next((str(a.value) for a in values if a.tag == Tag.DD_SYMBOLIC_NAME and a.value), None)
        dd = self.dds.get(dd_id) if dd_id is not None else None
        if dd is None and dd_id is not None:
            raise IsnsError(Status.INVALID_REGISTRATION, f"no DD {dd_id}")
        if dd is None and name is not None:
            dd = next((d for d in self.dds.values() if d.name == name), None)
        if dd is None:
            new_id = max(self.dds, default=0) + 1
            dd = DiscoveryDomain(new_id, name or f"isns:dd:{new_id}")
            self.dds[dd.id] = dd
        elif name is not None and name != dd.name:
            if any(d.name == name for d in self.dds.values()):
                raise IsnsError(Status.INVALID_REGISTRATION, f"a DD named {name} exists")
            dd.name = name
        for a in values:
            if a.tag == Tag.DD_MEMBER_ISCSI_NAME and a.value and a.value not in dd.members:
                dd.members.append(str(a.value))
            elif a.tag == Tag.DD_MEMBER_ISCSI_INDEX and isinstance(a.value, int):
                node = next((n for n in self.nodes.values() if n.index == a.value), None)
                if node is None:
                    raise IsnsError(Status.INVALID_REGISTRATION, f"no node with index {a.value}")
                if node.name not in dd.members:
                    dd.members.append(node.name)
            elif a.tag == Tag.DD_FEATURES and isinstance(a.value, int):
                dd.features = a.value
        self.on_event("isns.dd_registered", {"dd": dd.id, "name": dd.name, "members": ",".join(dd.members)})
        return response(msg, Status.SUCCESS, [Attr(Tag.DD_ID, dd.id), Attr(Tag.DELIMITER), *dd.attrs()])

    def _dd_deregister(self, msg: Message, source: str, now: float) -> Message:
        self._dd_allowed(source)
        keys, operating = msg.split()
        dd_id = next((a.value for a in keys if a.tag == Tag.DD_ID), None)
        dd = self.dds.get(dd_id) if isinstance(dd_id, int) else None
        if dd is None:
            raise IsnsError(Status.INVALID_DEREGISTRATION, f"no DD {dd_id}")
        members = [str(a.value) for a in operating if a.tag == Tag.DD_MEMBER_ISCSI_NAME and a.value]
        if not operating:
            del self.dds[dd.id]
            self.on_event("isns.dd_removed", {"dd": dd.id, "name": dd.name})
        else:
            missing = [m for m in members if m not in dd.members]
            if missing:
                raise IsnsError(Status.NO_SUCH_ENTRY, f"not members of DD {dd.id}: {', '.join(missing)}")
            dd.members = [m for m in dd.members if m not in members]
            self.on_event("isns.dd_members_removed", {"dd": dd.id, "members": ",".join(members)})
        return response(msg, Status.SUCCESS)

    # -- for the CLI and bootsvc --------------------------------------------------------

    def expire(self, now: float) -> list[str]:
        """Entities whose registration period passed without a refresh (§5.6.5.1)."""
        gone = [e for e in self.entities.values() if e.period and now - e.last_seen > e.period]
        for e in gone:
            self._drop_entity(e, "expired")
        return [e.eid for e in gone]


_KEY_TAGS = {Tag.ENTITY_IDENTIFIER, Tag.ISCSI_NAME, Tag.PORTAL_IP_ADDRESS, Tag.PORTAL_PORT, Tag.PG_ISCSI_NAME,
             Tag.PG_PORTAL_IP_ADDR, Tag.PG_PORTAL_PORT, Tag.DD_ID}
_STARTS: dict[int, str] = {Tag.ENTITY_IDENTIFIER: "entity", Tag.PORTAL_IP_ADDRESS: "portal",
                           Tag.ISCSI_NAME: "node", Tag.PG_ISCSI_NAME: "pg", Tag.DD_ID: "dd"}


def _kind_of(attrs: Iterable[Attr]) -> str | None:
    """The one object type a message key's attributes belong to, else None."""
    kinds = set()
    for a in attrs:
        for kind, tags in (("entity", ENTITY_TAGS), ("portal", PORTAL_TAGS), ("node", NODE_TAGS),
                           ("pg", PG_TAGS), ("dd", DD_TAGS)):
            if a.tag in tags:
                kinds.add(kind)
                break
        else:
            return None
    return kinds.pop() if len(kinds) == 1 else None


def _groups(attrs: list[Attr]) -> Iterator[tuple[str, list[Attr]]]:
    """Operating attributes cut into objects (§5.6.5.1): the entity's own
    attributes first, then each portal from its address, each node from its
    name, each portal group from its node name (one group per portal of it)."""
    kind, current = "entity", []
    for a in attrs:
        if kind == "pg" and a.tag == Tag.PG_PORTAL_IP_ADDR and any(x.tag == a.tag for x in current):
            yield kind, current  # the same node's portal group on another portal
            current = [current[0]]
        elif (start := _STARTS.get(a.tag)) is not None:
            if current:
                yield kind, current
            kind, current = start, []
        current.append(a)
    if current:
        yield kind, current


def _portal_key(attrs: Iterable[Attr]) -> tuple[ipaddress.IPv6Address, Port] | None:
    values = {a.tag: a.value for a in attrs}
    addr, port = values.get(Tag.PORTAL_IP_ADDRESS), values.get(Tag.PORTAL_PORT)
    if isinstance(addr, ipaddress.IPv6Address) and isinstance(port, Port):
        return addr, port
    return None
