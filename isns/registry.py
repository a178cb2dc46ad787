"""The iSNS database and what each request does to it (RFC 4171 §5.6.5),
without sockets or clocks: ``Registry.handle(message, now)`` returns the
response.

Objects (§6, isns/objects.py): network entities holding portals and iSCSI
nodes, portal groups, discovery domains (DDs) and DD sets. Who sees what
(§3.2.1, §5.6.5.2): a node sees the nodes it shares an active DD with (a DD
is active in no DD set or in an enabled one); a node in no active DD sees
the other nodes in none when ``default_dd_visible`` (open-isns's
DefaultDiscoveryDomain), else only itself; control nodes see and may change
everything, and only they (and sources allowed by ``open_dd_registration``)
register DDs and DD sets.

What the server must do besides answering is left in the registry:
``notices`` (SCNs to deliver, §5.6.5.8; ESI probes, §5.6.5.13, from
:meth:`Registry.esi_due`) and ``dirty`` (objects the store must write).
"""

from __future__ import annotations

import ipaddress
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .codec import Attr, Message, Port, display, response
from .objects import (DD_TAGS, DDS_TAGS, DEFAULT_PERIOD, ENTITY_TAGS, NODE_TAGS, PG_TAGS, PORTAL_TAGS,
                      DiscoveryDomain, DiscoveryDomainSet, Entity, Node, Object, Portal, PortalGroup)
from .protocol import DDS_ENABLED, Flags, Function, NodeType, ScnBits, Status, Tag
from .scn import Address, Notice, ScnBatch

ESI_RETRIES = 3  # unanswered probes before a portal is dropped (open-isns's ESIRetries)
MIN_ESI_INTERVAL = 1  # seconds: a smaller registered interval is raised to this

class IsnsError(Exception):
    """A request refused with ``status``."""

    def __init__(self, status: Status, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass
class Registry:
    control_nodes: set[str] = field(default_factory=set)
    default_dd_visible: bool = True
    open_dd_registration: bool = False
    entities: dict[str, Entity] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    portal_groups: dict[tuple[str, ipaddress.IPv6Address, Port], PortalGroup] = field(default_factory=dict)
    dds: dict[int, DiscoveryDomain] = field(default_factory=dict)
    dd_sets: dict[int, DiscoveryDomainSet] = field(default_factory=dict)
    default_period: int = DEFAULT_PERIOD  # for entities that name no registration period
    min_esi_interval: int = MIN_ESI_INTERVAL
    on_event: Callable[[str, dict[str, object]], None] = lambda what, fields: None
    notices: list[Notice] = field(default_factory=list)  # for the server to send
    due: float = math.inf  # no expiry or ESI probe is due before this (it may come early, never late)
    dirty: set[tuple[str, str | int]] = field(default_factory=set)  # ("entity", eid), ("dd", id), ("dds", id)
    _scn: ScnBatch = field(default_factory=ScnBatch)
    _scn_queued: bool = False  # _scn holds events (_queue_scn)
    # indexes, rebuilt by restart_indexes(): who owns each portal, who registered for SCNs,
    # and (rebuilt lazily after any DD or DD set change) the active DDs of each member
    portal_owner: dict[Address, str] = field(default_factory=dict)
    _scn_nodes: set[str] = field(default_factory=set)
    _member_of: dict[str, list[DiscoveryDomain]] | None = None  # None: to be rebuilt
    _indexes: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def _index(self) -> int:
        return next(self._indexes)

    def restart_indexes(self) -> None:
        """After loading from the store: go on numbering after the highest
        index, and rebuild the lookup indexes."""
        highest = max((o.index for o in self._all_indexed()), default=0)
        self._indexes = itertools.count(highest + 1)
        self.portal_owner = {key: e.eid for e in self.entities.values() for key in e.portals}
        self._scn_nodes = {n.name for n in self.nodes.values() if n.scn_bitmap}
        self._member_of = None

    def groups_of(self, entity: Entity) -> list[PortalGroup]:
        """The portal groups between an entity's nodes and its portals."""
        groups = self.portal_groups
        return [g for n in entity.nodes for addr, port in entity.portals
                if (g := groups.get((n, addr, port))) is not None]

    def _all_indexed(self) -> Iterator[Entity | Portal | Node | PortalGroup]:
        for e in self.entities.values():
            yield e
            yield from e.portals.values()
            yield from e.nodes.values()
        yield from self.portal_groups.values()

    def take_notices(self) -> list[Notice]:
        out, self.notices = self.notices, []
        return out

    # -- entry point ----------------------------------------------------------------

    def handle(self, msg: Message, now: float) -> Message | None:
        """The response to ``msg`` (None for messages that get none)."""
        function = _FUNCTIONS.get(msg.function)  # as Function(...), without the enum machinery's call
        if function is None:
            return response(msg, Status.MESSAGE_NOT_SUPPORTED)
        if function is Function.HEARTBEAT:
            return None  # another server's announcement: no response (§5.6.5.14)
        name = _HANDLERS.get(function)
        if name is None:
            return response(msg, Status.MESSAGE_NOT_SUPPORTED)
        handler: Callable[[Message, str, float], Message] = getattr(self, name)
        source = msg.source
        if source is None or source.tag != Tag.ISCSI_NAME or not isinstance(source.value, str) or not source.value:
            return response(msg, Status.SOURCE_ABSENT)
        node = self.nodes.get(source.value)
        if node is not None:  # any request from an entity's node refreshes its registration (§6.2.6)
            self.entities[node.entity].last_seen = now
        try:
            return handler(msg, source.value, now)
        except IsnsError as e:
            self.on_event("isns.refused", {"function": function.name, "source": source.value,
                                           "status": e.status.name, "why": str(e)})
            return response(msg, e.status)
        finally:
            self._flush_scn(now)

    # -- who may see and change what --------------------------------------------------

    def is_control(self, source: str) -> bool:
        # configured, never self-declared: a node registering itself with the
        # CONTROL type bit must not gain the right to rearrange every DD
        return source in self.control_nodes

    def _active_dds_of(self, name: str) -> list[DiscoveryDomain]:
        """The active DDs (in no DD set or in an enabled one, §6.11.1.3)
        that hold ``name``; the index is rebuilt after DD changes only, so a
        query costs a lookup, not a walk over every DD."""
        return self._membership().get(name, [])

    def _membership(self) -> dict[str, list[DiscoveryDomain]]:
        if self._member_of is None:
            in_sets = {d for s in self.dd_sets.values() for d in s.members}
            enabled = {d for s in self.dd_sets.values() if s.enabled for d in s.members}
            self._member_of = {}
            for dd in self.dds.values():
                if dd.id not in in_sets or dd.id in enabled:
                    for m in dd.members:
                        self._member_of.setdefault(m, []).append(dd)
        return self._member_of

    def _dd_changed(self, kind: str, key: int) -> None:
        """A DD or DD set changed: the store writes it, visibility is recomputed."""
        self.dirty.add((kind, key))
        self._member_of = None

    def sees(self, source: str, name: str) -> bool:
        """May ``source`` see the node ``name``? Through a shared active DD;
        a source in no DD sees itself, and the nodes in no DD when
        ``default_dd_visible``; control nodes see everything."""
        if source in self.control_nodes:  # is_control, asked for every object a query lists
            return True
        member_of = self._membership()
        mine = member_of.get(source)
        if mine:
            return any(name in dd.members for dd in mine)
        return name == source or (self.default_dd_visible and not member_of.get(name))

    def _may_see(self, obj: Object, source: str, seen: dict[str, bool] | None = None) -> bool:
        """``seen``: what ``source`` was found to see so far in one request,
        by node name: a query asks about its node several times over (the
        node, its entity, its portals through the entity, its portal groups)."""
        if isinstance(obj, (Node, PortalGroup)):
            return self._sees(source, obj.name, seen)
        if isinstance(obj, Entity):
            return any(self._sees(source, n, seen) for n in obj.nodes)
        if isinstance(obj, Portal):
            owner = self.entities.get(self.portal_owner.get((obj.address, obj.port), ""))
            return owner is not None and self._may_see(owner, source, seen)
        if isinstance(obj, DiscoveryDomainSet):
            return any(self._may_see(self.dds[d], source, seen) for d in obj.members if d in self.dds)
        return any(self._sees(source, m, seen) for m in obj.members)  # a DD: one of its members

    def _sees(self, source: str, name: str, seen: dict[str, bool] | None) -> bool:
        """sees(), remembered in ``seen`` (see _may_see)."""
        if seen is None:
            return self.sees(source, name)
        known = seen.get(name)
        if known is None:
            known = seen[name] = self.sees(source, name)
        return known

    def _may_change(self, source: str, entity: Entity) -> None:
        if self.is_control(source) or source in entity.nodes:
            return
        raise IsnsError(Status.SOURCE_UNAUTHORIZED, f"{source} is not a node of entity {entity.eid}")

    # -- DevAttrReg (§5.6.5.1) ---------------------------------------------------------

    def _register(self, msg: Message, source: str, now: float) -> Message:
        keys, operating = msg.split()
        eid = next((a.value for a in keys if a.tag == Tag.ENTITY_IDENTIFIER), None)
        if any(a.tag not in _REGISTRATION_KEY_TAGS for a in keys):
            raise IsnsError(Status.INVALID_REGISTRATION, "the message key names no entity, node or portal")
        if eid is None:  # keyed by a node or portal of an existing entity (§5.6.5.1), else a new entity
            eid = self._entity_by_key(keys) or next(
                (a.value for a in operating if a.tag == Tag.ENTITY_IDENTIFIER and a.value), None)
        entity = self.entities.get(str(eid)) if eid else None
        groups = list(_groups(operating))
        # check everything before changing anything: a refused registration changes nothing
        for kind, attrs in groups:
            if kind == "node":
                name = str(attrs[0].value or "")
                other = self.nodes.get(name)
                if not name:
                    raise IsnsError(Status.INVALID_REGISTRATION, "an iSCSI node without a name")
                if other is not None and (entity is None or other.entity != entity.eid):
                    raise IsnsError(Status.INVALID_REGISTRATION, f"{name} belongs to entity {other.entity}")
            elif kind == "portal":
                key = _portal_key(attrs)
                if key is None:
                    raise IsnsError(Status.INVALID_REGISTRATION, "a portal needs an address and a port")
                owner = self.portal_owner.get(key)
                if owner is not None and (entity is None or owner != entity.eid):
                    raise IsnsError(Status.INVALID_REGISTRATION, f"portal {_portal_text(key)} belongs to "
                                    f"entity {owner}")
            elif kind in ("dd", "dds"):
                raise IsnsError(Status.INVALID_REGISTRATION, "DDs and DD sets are registered with DDReg/DDSReg")
        if entity is not None:
            # A source replacing an entity with a registration of itself may
            # (tgt restarted with another first target, keeping its EID: the
            # host address); otherwise only the entity's own nodes may change it.
            claims = bool(msg.flags & Flags.REPLACE) and any(
                kind == "node" and attrs[0].value == source for kind, attrs in groups)
            if not claims:
                self._may_change(source, entity)
            if msg.flags & Flags.REPLACE:
                self._drop_entity(entity, "replaced")
                entity = None
        if entity is None:
            entity = Entity(str(eid) if eid else f"isns:entity:{self._index()}", self._index(),
                            period=self.default_period, registered=now)
        entity.last_seen = now
        self.entities[entity.eid] = entity
        self.dirty.add(("entity", entity.eid))
        added: list[Object] = []
        for kind, attrs in groups:
            added.append(getattr(self, f"_put_{kind}")(entity, attrs))
        added += self._default_groups(entity)
        if entity.period:
            self.due = min(self.due, now + entity.period)
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
                portal.esi_interval = max(a.value, self.min_esi_interval)
                portal.esi_next = entity.last_seen + portal.esi_interval
                self.due = min(self.due, portal.esi_next)
            elif a.tag == Tag.ESI_PORT and isinstance(a.value, Port):
                portal.esi_port = a.value
            elif a.tag == Tag.SCN_PORT and isinstance(a.value, Port):
                portal.scn_port = a.value
        entity.portals[key] = portal
        self.portal_owner[key] = entity.eid
        return portal

    def _put_node(self, entity: Entity, attrs: list[Attr]) -> Node:
        name = str(attrs[0].value)
        node = self.nodes.get(name)
        if node is None:
            node = Node(name, entity.eid, self._index())
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
                self._scn_nodes.add(name)
            elif a.tag == Tag.ISCSI_AUTH_METHOD:
                node.auth_method = None if a.value is None else str(a.value)
        entity.nodes[name] = node
        self.nodes[name] = node
        self._notify(change, node)
        return node

    def _default_groups(self, entity: Entity) -> list[PortalGroup]:
        """A node and a portal of one entity with no PG between them are
        related with PGT 1 (§5.6.5.1, as open-isns): so an initiator's
        query finds the portal of a target that registered no PGs."""
        made = []
        for name in entity.nodes:
            for addr, port in entity.portals:
                if (name, addr, port) not in self.portal_groups:
                    pg = PortalGroup(name, addr, port, 1, self._index())
                    self.portal_groups[(name, addr, port)] = pg
                    made.append(pg)
        return made

    def _drop_portal(self, entity: Entity, key: Address) -> None:
        del entity.portals[key]
        self.portal_owner.pop(key, None)
        for pg in [k for k in self.portal_groups if k[1:] == key and k[0] in entity.nodes]:
            del self.portal_groups[pg]
        self.dirty.add(("entity", entity.eid))

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
        if kind == "dds":
            return sorted(self.dd_sets.values(), key=lambda d: d.id)
        return sorted(self.dds.values(), key=lambda d: d.id)

    def _candidates(self, kind: str, keys: list[Attr]) -> list[Object]:
        """The objects a query key can name: looked up when the key is an
        object's own key, else every object of the kind."""
        values = {a.tag: a.value for a in keys if a.value is not None}
        if kind == "node" and Tag.ISCSI_NAME in values:
            node = self.nodes.get(str(values[Tag.ISCSI_NAME]))
            return [node] if node is not None else []
        if kind == "entity" and Tag.ENTITY_IDENTIFIER in values:
            entity = self.entities.get(str(values[Tag.ENTITY_IDENTIFIER]))
            return [entity] if entity is not None else []
        key = _portal_key(keys)
        if kind == "portal" and key is not None:
            owner = self.entities.get(self.portal_owner.get(key, ""))
            return [owner.portals[key]] if owner is not None else []
        return self._objects(kind)

    def _matches(self, obj: Object, keys: list[Attr]) -> bool:
        if isinstance(obj, Node):  # the common queries, by name or type, without a table of attributes
            for a in keys:
                if a.tag == Tag.ISCSI_NAME:
                    if a.value is not None and a.value != obj.name:
                        return False
                elif a.tag == Tag.ISCSI_NODE_TYPE:
                    if a.value is not None and a.value != int(obj.type):
                        return False
                else:
                    break
            else:
                return True
        have = {}
        for a in obj.attrs():
            have.setdefault(a.tag, []).append(a.value)
        return all(a.value is None or a.value in have.get(a.tag, []) for a in keys)

    def _related(self, obj: Object, source: str, seen: dict[str, bool]) -> list[Object]:
        """The object with its entity and the entity's other objects and
        portal groups: what a query keyed by one of them answers with
        (§5.6.5.2); less what ``source`` may not see. An entity and its
        portals are seen with any of its nodes (_may_see), so that is asked
        once for them all."""
        if isinstance(obj, Entity):
            entity = obj
        elif isinstance(obj, Node):
            entity = self.entities[obj.entity]
        elif isinstance(obj, Portal):
            entity = self.entities[self.portal_owner[(obj.address, obj.port)]]
        else:
            return [obj] if self._may_see(obj, source, seen) else []
        nodes = [n for n in entity.nodes.values() if self._sees(source, n.name, seen)]
        if not nodes:
            return []  # nor its portals, nor its portal groups (each one of its nodes')
        return [entity, *entity.portals.values(), *nodes,
                *(g for g in self.groups_of(entity) if self._sees(source, g.name, seen))]

    def _query(self, msg: Message, source: str, now: float) -> Message:
        keys, operating = msg.split()
        keep = _keep(operating)  # None: every attribute
        out: list[Attr] = []
        done: set[int] = set()
        seen: dict[str, bool] = {}
        if len(keys) == 1 and keys[0].tag == Tag.ISCSI_NAME and isinstance(keys[0].value, str):
            # what initiators ask (one node by name): the node itself is the only
            # candidate and it matches; what _kind_of, _candidates and _matches find
            node = self.nodes.get(keys[0].value)
            candidates: list[Object] = [node] if node is not None else []
            keys_match = False
        else:
            kind = _kind_of(keys) if keys else "entity"
            if kind is None:
                raise IsnsError(Status.INVALID_QUERY, "the message key mixes object types")
            candidates = self._candidates(kind, keys)
            keys_match = True
        for obj in candidates:
            if not self._may_see(obj, source, seen) or keys_match and not self._matches(obj, keys):
                continue
            for rel in self._related(obj, source, seen):
                if id(rel) in done:
                    continue
                done.add(id(rel))
                out.extend(rel.attrs() if keep is None else rel.attrs_among(keep))
        return response(msg, Status.SUCCESS, (*keys, _DELIMITER, *out))

    def _get_next(self, msg: Message, source: str, now: float) -> Message:
        keys, operating = msg.split()
        kind = _kind_of(keys)
        if kind is None or not keys:
            raise IsnsError(Status.INVALID_QUERY, "DevGetNext needs the key of one object type")
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
            if self._may_see(obj, source) and self._matches(obj, filters):
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
                if len(entity.nodes) == 1:  # an entity without nodes goes with its last one (§5.6.5.4)
                    self._drop_entity(entity, "emptied")
                    continue
                self._drop_node(node)
                self.dirty.add(("entity", entity.eid))
                self.on_event("isns.deregistered", {"node": node.name, "source": source})
            elif kind == "portal":
                key = _portal_key(attrs)
                for entity in list(self.entities.values()):
                    if key in entity.portals:
                        self._may_change(source, entity)
                        self._drop_portal(entity, key)
            else:
                raise IsnsError(Status.INVALID_DEREGISTRATION, f"cannot deregister a {kind} with DevDereg")
        return response(msg, Status.SUCCESS)

    def _drop_node(self, node: Node) -> None:
        self._notify(ScnBits.OBJECT_REMOVED, node)  # while those who saw it still do
        del self.entities[node.entity].nodes[node.name]
        del self.nodes[node.name]
        self._scn_nodes.discard(node.name)
        for key in [k for k in self.portal_groups if k[0] == node.name]:
            del self.portal_groups[key]

    def _drop_entity(self, entity: Entity, why: str) -> None:
        for node in list(entity.nodes.values()):
            self._drop_node(node)
        for key in entity.portals:
            self.portal_owner.pop(key, None)
        del self.entities[entity.eid]
        self.dirty.add(("entity", entity.eid))
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
        if dd is not None and name is not None and name != dd.name:
            if any(d.name == name for d in self.dds.values()):
                raise IsnsError(Status.INVALID_REGISTRATION, f"a DD named {name} exists")
        added = []
        for a in values:  # resolve every member before changing anything
            if a.tag == Tag.DD_MEMBER_ISCSI_NAME and a.value:
                added.append(str(a.value))
            elif a.tag == Tag.DD_MEMBER_ISCSI_INDEX and isinstance(a.value, int):
                node = next((n for n in self.nodes.values() if n.index == a.value), None)
                if node is None:
                    raise IsnsError(Status.INVALID_REGISTRATION, f"no node with index {a.value}")
                added.append(node.name)
        if dd is None:
            new_id = max(self.dds, default=0) + 1
            dd = DiscoveryDomain(new_id, name or f"isns:dd:{new_id}")
            self.dds[dd.id] = dd
        elif name is not None:
            dd.name = name
        for a in values:
            if a.tag == Tag.DD_FEATURES and isinstance(a.value, int):
                dd.features = a.value
        for member in dict.fromkeys(added):
            if member not in dd.members:
                dd.members.append(member)
                self._notify_members(ScnBits.DD_MEMBER_ADDED, member, dd)
        self._dd_changed("dd", dd.id)
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
            members = list(dd.members)
        missing = [m for m in members if m not in dd.members]
        if missing:
            raise IsnsError(Status.NO_SUCH_ENTRY, f"not members of DD {dd.id}: {', '.join(missing)}")
        for member in members:  # told while they are still members, so they hear of it
            self._notify_members(ScnBits.DD_MEMBER_REMOVED, member, dd)
        dd.members = [m for m in dd.members if m not in members]
        self._dd_changed("dd", dd.id)
        if not operating:
            del self.dds[dd.id]
            for dds in self.dd_sets.values():
                if dd.id in dds.members:
                    dds.members.remove(dd.id)
                    self._dd_changed("dds", dds.id)
            self.on_event("isns.dd_removed", {"dd": dd.id, "name": dd.name})
        else:
            self.on_event("isns.dd_members_removed", {"dd": dd.id, "members": ",".join(members)})
        return response(msg, Status.SUCCESS)

    # -- DDSReg (§5.6.5.11), DDSDereg (§5.6.5.12) ----------------------------------------------

    def _dds_register(self, msg: Message, source: str, now: float) -> Message:
        self._dd_allowed(source)
        keys, operating = msg.split()
        dds_id = next((a.value for a in keys if a.tag == Tag.DDS_ID and isinstance(a.value, int)), None)
        name = next((str(a.value) for a in operating if a.tag == Tag.DDS_SYMBOLIC_NAME and a.value), None)
        status = next((a.value for a in operating if a.tag == Tag.DDS_STATUS and isinstance(a.value, int)), None)
        members = [a.value for a in operating if a.tag == Tag.DD_ID and isinstance(a.value, int)]
        dds = self.dd_sets.get(dds_id) if dds_id is not None else None
        if dds is None and dds_id is not None:
            raise IsnsError(Status.INVALID_REGISTRATION, f"no DD set {dds_id}")
        if dds is None and name is not None:
            dds = next((d for d in self.dd_sets.values() if d.name == name), None)
        unknown = [m for m in members if m not in self.dds]
        if unknown:
            raise IsnsError(Status.INVALID_REGISTRATION, f"no DD {unknown[0]}")
        if dds is None:
            new_id = max(self.dd_sets, default=0) + 1
            dds = DiscoveryDomainSet(new_id, name or f"isns:dds:{new_id}")
            self.dd_sets[dds.id] = dds
        elif name is not None:
            dds.name = name
        if status is not None:
            dds.enabled = bool(status & DDS_ENABLED)
        dds.members += [m for m in dict.fromkeys(members) if m not in dds.members]
        self._dd_changed("dds", dds.id)
        self.on_event("isns.dds_registered", {"dds": dds.id, "name": dds.name, "enabled": dds.enabled,
                                              "dds_members": ",".join(map(str, dds.members))})
        return response(msg, Status.SUCCESS, [Attr(Tag.DDS_ID, dds.id), Attr(Tag.DELIMITER), *dds.attrs()])

    def _dds_deregister(self, msg: Message, source: str, now: float) -> Message:
        self._dd_allowed(source)
        keys, operating = msg.split()
        dds_id = next((a.value for a in keys if a.tag == Tag.DDS_ID), None)
        dds = self.dd_sets.get(dds_id) if isinstance(dds_id, int) else None
        if dds is None:
            raise IsnsError(Status.INVALID_DEREGISTRATION, f"no DD set {dds_id}")
        members = [a.value for a in operating if a.tag == Tag.DD_ID]
        if not members:
            del self.dd_sets[dds.id]
        else:
            dds.members = [m for m in dds.members if m not in members]
        self._dd_changed("dds", dds.id)
        self.on_event("isns.dds_removed" if not members else "isns.dds_members_removed", {"dds": dds.id})
        return response(msg, Status.SUCCESS)

    # -- SCNReg (§5.6.5.5), SCNDereg (§5.6.5.6), SCNEvent (§5.6.5.7) ------------------------------

    def _scn_node(self, keys: list[Attr], source: str) -> Node:
        names = [a.value for a in keys if a.tag == Tag.ISCSI_NAME]
        if len(names) != 1:
            raise IsnsError(Status.SCN_REGISTRATION_REJECTED, "SCN registration is keyed by one iSCSI name")
        node = self.nodes.get(str(names[0]))
        if node is None:
            raise IsnsError(Status.NO_SUCH_ENTRY, f"{names[0]} is not registered")
        self._may_change(source, self.entities[node.entity])
        return node

    def _scn_register(self, msg: Message, source: str, now: float) -> Message:
        keys, operating = msg.split()
        node = self._scn_node(keys, source)
        bitmap = next((a.value for a in operating if a.tag == Tag.ISCSI_SCN_BITMAP and isinstance(a.value, int)), None)
        if bitmap is None:
            raise IsnsError(Status.SCN_REGISTRATION_REJECTED, "SCNReg needs an iSCSI SCN bitmap")
        if bitmap & ScnBits.MANAGEMENT_REGISTRATION and not self.is_control(node.name):
            raise IsnsError(Status.SCN_REGISTRATION_REJECTED, "management SCNs are for control nodes")
        node.scn_bitmap = bitmap
        self._scn_nodes.add(node.name)
        self.dirty.add(("entity", node.entity))
        self.on_event("isns.scn_registered", {"node": node.name, "bitmap": bitmap})
        return response(msg, Status.SUCCESS)

    def _scn_deregister(self, msg: Message, source: str, now: float) -> Message:
        keys, _ = msg.split()
        node = self._scn_node(keys, source)
        node.scn_bitmap = None
        self._scn_nodes.discard(node.name)
        self.dirty.add(("entity", node.entity))
        return response(msg, Status.SUCCESS)

    def _scn_event(self, msg: Message, source: str, now: float) -> Message:
        """A node reports a change for the server to pass on: pairs of SCN
        bitmap and the changed node's name."""
        _, operating = msg.split()
        attrs = list(operating)
        if not attrs or len(attrs) % 2:
            raise IsnsError(Status.SCN_EVENT_REJECTED, "SCNEvent holds SCN bitmap, iSCSI name pairs")
        for bits, name in zip(attrs[::2], attrs[1::2]):
            node = self.nodes.get(str(name.value))
            if bits.tag != Tag.ISCSI_SCN_BITMAP or name.tag != Tag.ISCSI_NAME or node is None:
                raise IsnsError(Status.SCN_EVENT_REJECTED, "SCNEvent holds SCN bitmap, iSCSI name pairs")
            self._notify(int(bits.value or 0), node)  # type: ignore[arg-type]
        return response(msg, Status.SUCCESS)

    def _notify(self, bits: int, changed: Node) -> None:
        """Queue an object event for every registered node that may hear of
        it (§5.6.5.5): management registrations hear everything; others hear
        of nodes they see, narrowed by the TARGET/INITIATOR_AND_SELF bits."""
        for recipient in map(self.nodes.__getitem__, self._scn_nodes):
            mask = recipient.scn_bitmap
            if not mask or not bits & mask:
                continue
            if not mask & ScnBits.MANAGEMENT_REGISTRATION and not self.sees(recipient.name, changed.name):
                continue
            if recipient is not changed:
                if mask & ScnBits.TARGET_AND_SELF_ONLY and not changed.type & NodeType.TARGET:
                    continue
                if mask & ScnBits.INITIATOR_AND_SELF_ONLY and not changed.type & NodeType.INITIATOR:
                    continue
            self._queue_scn(recipient.name, bits & mask, changed.name)

    def _notify_members(self, bits: int, member: str, dd: DiscoveryDomain) -> None:
        """A DD membership change: told to the DD's registered members
        whatever their bitmap (as open-isns: otherwise a node would not learn
        that it lost sight of a target) and to management registrations, with
        the DD's ID."""
        for recipient in map(self.nodes.__getitem__, self._scn_nodes):
            mask = recipient.scn_bitmap
            if not mask:
                continue
            if mask & ScnBits.MANAGEMENT_REGISTRATION:
                self._queue_scn(recipient.name, bits | ScnBits.MANAGEMENT_REGISTRATION, member, dd.id)
            elif recipient.name in dd.members:
                self._queue_scn(recipient.name, bits, member)

    def _queue_scn(self, recipient: str, bits: int, changed: str, dd: int | None = None) -> None:
        self._scn.add(recipient, bits, changed, dd)
        self._scn_queued = True

    def _flush_scn(self, now: float) -> None:
        if not self._scn_queued:
            return  # as after most requests: nothing to send (and no batch to empty)
        self._scn_queued = False
        for recipient, message in self._scn.flush(now):
            node = self.nodes.get(recipient)
            if node is None:
                continue  # gone in the same request
            entity = self.entities[node.entity]
            targets = tuple((p.address, p.scn_port) for p in entity.portals.values() if p.scn_port)
            self.notices.append(Notice(entity.eid, message, targets))

    # -- timers: registration period (§6.2.6), ESI (§5.6.5.13) ------------------------------------

    def expire(self, now: float) -> list[str]:
        """Drop entities whose registration period passed without a refresh."""
        gone = [e for e in self.entities.values() if e.period and now - e.last_seen > e.period]
        for e in gone:
            self._drop_entity(e, "expired")
        self._flush_scn(now)
        return [e.eid for e in gone]

    def esi_due(self, now: float) -> None:
        """Queue an ESI probe for every portal whose interval has come; a
        portal that left ``ESI_RETRIES`` probes unanswered is dropped, and its
        entity with its last monitored portal (as open-isns)."""
        for entity in list(self.entities.values()):
            for key, portal in list(entity.portals.items()):
                if not portal.esi_interval or portal.esi_next > now:
                    continue
                if portal.esi_missed >= ESI_RETRIES:
                    self._drop_portal(entity, key)
                    self.on_event("isns.esi_lost", {"entity": entity.eid, "portal": _portal_text(key)})
                    if not any(p.esi_interval for p in entity.portals.values()):
                        self._drop_entity(entity, "esi")
                        break
                    continue
                portal.esi_missed += 1
                portal.esi_next = now + portal.esi_interval
                probe = Message(Function.ESI, self._scn.xid(), (Attr(Tag.ENTITY_IDENTIFIER, entity.eid),
                                Attr(Tag.PORTAL_IP_ADDRESS, key[0]), Attr(Tag.PORTAL_PORT, key[1])))
                targets = ((key[0], portal.esi_port),) if portal.esi_port else ()
                self.notices.append(Notice(entity.eid, probe, targets, key))
        self._flush_scn(now)

    def esi_answered(self, eid: str, portal: Address, now: float) -> None:
        """An ESI response came: the portal is alive and the entity's
        registration is refreshed (§5.6.5.13)."""
        entity = self.entities.get(eid)
        if entity is not None and portal in entity.portals:
            entity.portals[portal].esi_missed = 0
            entity.last_seen = now

    def next_timer(self) -> float:
        """When ``esi_due`` or ``expire`` next has work (inf: never)."""
        times = [e.last_seen + e.period for e in self.entities.values() if e.period]
        times += [p.esi_next for e in self.entities.values() for p in e.portals.values() if p.esi_interval]
        return min(times, default=math.inf)


_DELIMITER = Attr(Tag.DELIMITER)
_FUNCTIONS: dict[int, Function] = Function._value2member_map_  # type: ignore[assignment]
# each request's handler, by name: one table for every request rather than a
# dict of bound methods made for each
_HANDLERS: dict[Function, str] = {
    Function.DEV_ATTR_REG: "_register",
    Function.DEV_ATTR_QRY: "_query",
    Function.DEV_GET_NEXT: "_get_next",
    Function.DEV_DEREG: "_deregister",
    Function.DD_REG: "_dd_register",
    Function.DD_DEREG: "_dd_deregister",
    Function.DDS_REG: "_dds_register",
    Function.DDS_DEREG: "_dds_deregister",
    Function.SCN_REG: "_scn_register",
    Function.SCN_DEREG: "_scn_deregister",
    Function.SCN_EVENT: "_scn_event",
}
_REGISTRATION_KEY_TAGS = frozenset(ENTITY_TAGS | NODE_TAGS | PORTAL_TAGS)
_KEEPS: dict[frozenset[int], frozenset[int]] = {}  # _keep()'s sets, by the tags asked for


def _keep(operating: list[Attr]) -> frozenset[int] | None:
    """The tags a query's response lists: those asked for and every key
    (None: all, when none are asked for). One set object per choice of tags,
    as the objects keep their last choice by it (objects._Listed)."""
    if not operating:
        return None
    wanted = frozenset(a.tag for a in operating)
    keep = _KEEPS.get(wanted)
    if keep is None:
        if len(_KEEPS) >= 256:
            _KEEPS.clear()  # clients ask a few different things; a stranger's variety is not kept
        keep = _KEEPS[wanted] = wanted | _KEY_TAGS
    return keep


def _portal_text(key: Address) -> str:
    return f"{display(key[0])}:{key[1].number}"


_KEY_TAGS = {Tag.ENTITY_IDENTIFIER, Tag.ISCSI_NAME, Tag.PORTAL_IP_ADDRESS, Tag.PORTAL_PORT, Tag.PG_ISCSI_NAME,
             Tag.PG_PORTAL_IP_ADDR, Tag.PG_PORTAL_PORT, Tag.DD_ID, Tag.DDS_ID}
_STARTS: dict[int, str] = {Tag.ENTITY_IDENTIFIER: "entity", Tag.PORTAL_IP_ADDRESS: "portal",
                           Tag.ISCSI_NAME: "node", Tag.PG_ISCSI_NAME: "pg", Tag.DD_ID: "dd", Tag.DDS_ID: "dds"}


_KIND_OF_TAG: dict[int, str] = {}  # the object type each tag belongs to (the first listed)
for _kind, _tags in (("entity", ENTITY_TAGS), ("portal", PORTAL_TAGS), ("node", NODE_TAGS), ("pg", PG_TAGS),
                     ("dd", DD_TAGS), ("dds", DDS_TAGS)):
    for _tag in _tags:
        _KIND_OF_TAG.setdefault(_tag, _kind)


def _kind_of(attrs: Iterable[Attr]) -> str | None:
    """The one object type a message key's attributes belong to, else None."""
    kinds = set()
    for a in attrs:
        kind = _KIND_OF_TAG.get(a.tag)
        if kind is None:
            return None
        kinds.add(kind)
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
