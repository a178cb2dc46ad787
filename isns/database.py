"""The objects an iSNS server holds (RFC 4171 §6) and their lookup
indexes: network entities with their portals and nodes, portal groups,
discovery domains and DD sets, numbered by one index counter (§6.2.7,
§6.3.6, §6.4.5, §6.5.6). What changes here is marked ``dirty`` for the
store. Holds and finds objects; what a request may do with them is decided
elsewhere (isns/visibility.py, isns/handlers/)."""

from __future__ import annotations

import ipaddress
import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from .codec import Attr, Port
from .keys import portal_key
from .objects import DiscoveryDomain, DiscoveryDomainSet, Entity, Node, Object, Portal, PortalGroup
from .protocol import Tag
from .scn import Address

PortalGroupKey = tuple[str, ipaddress.IPv6Address, Port]  # node name, portal address, portal port
Dirty = tuple[str, str | int]  # ("entity", eid), ("dd", id), ("dds", id)


@dataclass
class Database:
    entities: dict[str, Entity] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    portal_groups: dict[PortalGroupKey, PortalGroup] = field(default_factory=dict)
    dds: dict[int, DiscoveryDomain] = field(default_factory=dict)
    dd_sets: dict[int, DiscoveryDomainSet] = field(default_factory=dict)
    dirty: set[Dirty] = field(default_factory=set)  # what the store is to write
    # indexes, rebuilt by restart_indexes(): who owns each portal, who registered for SCNs
    portal_owner: dict[Address, str] = field(default_factory=dict)
    scn_nodes: set[str] = field(default_factory=set)
    registered_by: Counter[str] = field(default_factory=Counter)  # entities per registering source
    _indexes: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def new_index(self) -> int:
        return next(self._indexes)

    def restart_indexes(self) -> None:
        """After loading from the store: go on numbering after the highest
        index, and rebuild the lookup indexes."""
        highest = max((o.index for o in self._all_indexed()), default=0)
        self._indexes = itertools.count(highest + 1)
        self.portal_owner = {key: e.eid for e in self.entities.values() for key in e.portals}
        self.scn_nodes = {n.name for n in self.nodes.values() if n.scn_bitmap}
        self.registered_by = Counter(e.registrar for e in self.entities.values())

    def _all_indexed(self) -> Iterator[Entity | Portal | Node | PortalGroup]:
        for e in self.entities.values():
            yield e
            yield from e.portals.values()
            yield from e.nodes.values()
        yield from self.portal_groups.values()

    # -- finding ------------------------------------------------------------------------

    def groups_of(self, entity: Entity) -> list[PortalGroup]:
        """The portal groups between an entity's nodes and its portals."""
        groups = self.portal_groups
        return [g for n in entity.nodes for addr, port in entity.portals
                if (g := groups.get((n, addr, port))) is not None]

    def owner(self, portal: Portal) -> Entity | None:
        """The entity a portal belongs to."""
        return self.entities.get(self.portal_owner.get((portal.address, portal.port), ""))

    def entity_by_key(self, keys: list[Attr]) -> str | None:
        """The entity a registration's key names by one of its nodes or portals."""
        for a in keys:
            if a.tag == Tag.ISCSI_NAME and a.value in self.nodes:
                return self.nodes[str(a.value)].entity
        key = portal_key(keys)
        for e in self.entities.values():
            if key is not None and key in e.portals:
                return e.eid
        return None

    def node_by_index(self, index: int) -> Node | None:
        return next((n for n in self.nodes.values() if n.index == index), None)

    def objects(self, kind: str) -> list[Object]:
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

    def candidates(self, kind: str, keys: list[Attr]) -> list[Object]:
        """The objects a query key can name: looked up when the key is an
        object's own key, else every object of the kind."""
        values = {a.tag: a.value for a in keys if a.value is not None}
        if kind == "node" and Tag.ISCSI_NAME in values:
            node = self.nodes.get(str(values[Tag.ISCSI_NAME]))
            return [node] if node is not None else []
        if kind == "entity" and Tag.ENTITY_IDENTIFIER in values:
            entity = self.entities.get(str(values[Tag.ENTITY_IDENTIFIER]))
            return [entity] if entity is not None else []
        key = portal_key(keys)
        if kind == "portal" and key is not None:
            owner = self.entities.get(self.portal_owner.get(key, ""))
            return [owner.portals[key]] if owner is not None else []
        return self.objects(kind)

    # -- adding and removing ---------------------------------------------------------------

    def add_entity(self, entity: Entity) -> None:
        old = self.entities.get(entity.eid)
        if old is not entity:
            if old is not None:
                self._uncount(old)
            self.registered_by[entity.registrar] += 1
        self.entities[entity.eid] = entity
        self.dirty.add(("entity", entity.eid))

    def add_portal(self, entity: Entity, key: Address, portal: Portal) -> None:
        entity.portals[key] = portal
        self.portal_owner[key] = entity.eid

    def add_node(self, entity: Entity, node: Node) -> None:
        entity.nodes[node.name] = node
        self.nodes[node.name] = node

    def add_default_groups(self, entity: Entity) -> list[PortalGroup]:
        """A node and a portal of one entity with no PG between them are
        related with PGT 1 (§5.6.5.1, as open-isns): so an initiator's
        query finds the portal of a target that registered no PGs."""
        made = []
        for name in entity.nodes:
            for addr, port in entity.portals:
                if (name, addr, port) not in self.portal_groups:
                    pg = PortalGroup(name, addr, port, 1, self.new_index())
                    self.portal_groups[(name, addr, port)] = pg
                    made.append(pg)
        return made

    def remove_portal(self, entity: Entity, key: Address) -> None:
        """The portal and its portal groups."""
        del entity.portals[key]
        self.portal_owner.pop(key, None)
        for pg in [k for k in self.portal_groups if k[1:] == key and k[0] in entity.nodes]:
            del self.portal_groups[pg]
        self.dirty.add(("entity", entity.eid))

    def remove_node(self, node: Node) -> None:
        """The node, its SCN registration and its portal groups."""
        del self.entities[node.entity].nodes[node.name]
        del self.nodes[node.name]
        self.scn_nodes.discard(node.name)
        for key in [k for k in self.portal_groups if k[0] == node.name]:
            del self.portal_groups[key]

    def remove_entity(self, entity: Entity) -> None:
        """An entity whose nodes are removed already, with its portals."""
        for key in entity.portals:
            self.portal_owner.pop(key, None)
        del self.entities[entity.eid]
        self._uncount(entity)
        self.dirty.add(("entity", entity.eid))

    def _uncount(self, entity: Entity) -> None:
        self.registered_by[entity.registrar] -= 1
        if not self.registered_by[entity.registrar]:
            del self.registered_by[entity.registrar]
