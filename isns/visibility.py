"""Who may see and change what (RFC 4171 §3.2.1, §5.6.5.2, §6.11).

A node sees the nodes it shares an active DD with (a DD is active in no DD
set or in an enabled one, §6.11.1.3); a node in no active DD sees the other
nodes in none when ``default_dd_visible`` (open-isns's
DefaultDiscoveryDomain), else only itself. Control nodes see and may change
everything, and only they (and any source when ``open_dd_registration``)
register DDs and DD sets; other sources change only their own entity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .database import Database
from .errors import IsnsError
from .objects import DiscoveryDomain, DiscoveryDomainSet, Entity, Node, Object, Portal, PortalGroup
from .policy import Policy
from .protocol import NodeType, Status

Seen = dict[str, bool]  # what one source was found to see in one request, by node name


@dataclass
class Visibility:
    db: Database
    control_nodes: set[str] = field(default_factory=set)
    default_dd_visible: bool = True
    open_dd_registration: bool = False
    policy: Policy = Policy.STRICT
    # the active DDs of each member, rebuilt after a DD or DD set change
    # (forget()), so a query costs a lookup, not a walk over every DD
    _member_of: dict[str, list[DiscoveryDomain]] | None = None  # None: to be rebuilt

    def forget(self) -> None:
        """A DD or DD set changed: membership is recomputed when next asked."""
        self._member_of = None

    def _membership(self) -> dict[str, list[DiscoveryDomain]]:
        if self._member_of is None:
            dd_sets = self.db.dd_sets.values()
            in_sets = {d for s in dd_sets for d in s.members}
            enabled = {d for s in dd_sets if s.enabled for d in s.members}
            self._member_of = {}
            for dd in self.db.dds.values():
                if dd.id not in in_sets or dd.id in enabled:
                    for m in dd.members:
                        self._member_of.setdefault(m, []).append(dd)
        return self._member_of

    def is_control(self, source: str) -> bool:
        # configured, never self-declared: a node registering itself with the
        # CONTROL type bit must not gain the right to rearrange every DD
        return source in self.control_nodes

    def sees(self, source: str, name: str) -> bool:
        """May ``source`` see the node ``name``? Through a shared active DD;
        a source in no DD sees itself, and the nodes in no DD when
        ``default_dd_visible``; control nodes see everything."""
        if source in self.control_nodes:  # is_control, asked for every object a query lists
            return True
        if self.policy is Policy.OPEN and self._declared_control(source):
            return True
        member_of = self._membership()
        mine = member_of.get(source)
        if mine:
            return any(name in dd.members for dd in mine)
        return name == source or (self.default_dd_visible and not member_of.get(name))

    def _declared_control(self, source: str) -> bool:
        """Is ``source`` registered with the Control type bit? open-isns
        gives such a node the global scope (scope.c); strict believes
        only the configured names."""
        node = self.db.nodes.get(source)
        return node is not None and bool(node.type & NodeType.CONTROL)

    def sees_in(self, source: str, name: str, seen: Seen | None) -> bool:
        """sees(), remembered in ``seen`` (see may_see)."""
        if seen is None:
            return self.sees(source, name)
        known = seen.get(name)
        if known is None:
            known = seen[name] = self.sees(source, name)
        return known

    def may_see(self, obj: Object, source: str, seen: Seen | None = None) -> bool:
        """May ``source`` see ``obj``: a node or portal group by its node, an
        entity and its portals by any of its nodes, a DD by any member, a DD
        set by any of its DDs. ``seen``: what ``source`` was found to see so
        far in one request: a query asks about its node several times over
        (the node, its entity, its portals through the entity, its portal
        groups)."""
        if isinstance(obj, (Node, PortalGroup)):
            return self.sees_in(source, obj.name, seen)
        if isinstance(obj, Entity):
            return any(self.sees_in(source, n, seen) for n in obj.nodes)
        if isinstance(obj, Portal):
            owner = self.db.owner(obj)
            return owner is not None and self.may_see(owner, source, seen)
        if isinstance(obj, DiscoveryDomainSet):
            dds = self.db.dds
            return any(self.may_see(dds[d], source, seen) for d in obj.members if d in dds)
        return any(self.sees_in(source, m, seen) for m in obj.members)  # a DD: one of its members

    def check_may_change(self, source: str, entity: Entity) -> None:
        """Refuse unless ``source`` is a control node or one of the entity's
        nodes (§5.6.1); under the open policy anyone may."""
        if self.policy is Policy.OPEN or self.is_control(source) or source in entity.nodes:
            return
        raise IsnsError(Status.SOURCE_UNAUTHORIZED, f"{source} is not a node of entity {entity.eid}")

    def check_may_change_domains(self, source: str) -> None:
        """Refuse unless ``source`` may register and deregister DDs and DD sets."""
        if not (self.policy is Policy.OPEN or self.open_dd_registration or self.is_control(source)):
            raise IsnsError(Status.SOURCE_UNAUTHORIZED, f"{source} is not a control node")

    def check_may_manage(self, source: str) -> None:
        """Refuse unless ``source`` may register for management SCNs
        (§6.4.4: control nodes only; under the open policy anyone)."""
        if not (self.policy is Policy.OPEN or self.is_control(source)):
            raise IsnsError(Status.SCN_REGISTRATION_REJECTED, "management SCNs are for control nodes")
