"""The objects an iSNS server holds (RFC 4171 §6): network entities with
their portals and iSCSI nodes, portal groups, discovery domains (DDs) and
DD sets, each able to list itself as attributes and to round-trip through a
JSON-able dict for the store."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from .codec import Attr, Port
from .protocol import DDS_ENABLED, EntityProtocol, NodeType, Tag

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
DDS_TAGS = {Tag.DDS_ID, Tag.DDS_SYMBOLIC_NAME, Tag.DDS_STATUS}


def _opt(tag: int, value: object) -> list[Attr]:
    return [] if value is None else [Attr(tag, value)]  # type: ignore[arg-type]


# Queries list the same objects over and over, so an entity, portal, node or
# portal group keeps the Attrs it last listed (_memo), with the field values they
# were made from: while those are the same, attrs() hands out the same immutable
# Attrs, and the codec's encoding kept on each Attr is reused too. Comparing the
# values (identical objects compare without calling __eq__) needs no hook in
# every place that changes a field. A query lists only the attributes it asks
# for: every object also keeps its last such choice (_chosen), valid for the
# same Attrs and the same set of tags (the registry makes one set object per
# choice of tags, so "the same" is an identity test).
Memo = tuple[tuple[Any, ...], tuple[Attr, ...]] | None
Chosen = tuple[Any, frozenset[int], tuple[Attr, ...]] | None


def _memo_field() -> Any:
    return field(default=None, init=False, repr=False, compare=False)


class _Listed:
    """attrs_among() for the objects below, each with attrs() and a _chosen field."""

    _chosen: Chosen

    def attrs(self) -> tuple[Attr, ...] | list[Attr]:
        raise NotImplementedError

    def attrs_among(self, tags: frozenset[int]) -> tuple[Attr, ...]:
        """attrs() less those whose tag is not in ``tags``."""
        attrs = self.attrs()
        chosen = self._chosen
        if chosen is not None and chosen[0] is attrs and chosen[1] is tags:
            return chosen[2]
        picked = tuple(a for a in attrs if a.tag in tags)
        self._chosen = (attrs, tags, picked)
        return picked


class _Memoized(_Listed):
    """attrs() kept in _memo while the fields of _key() stay the same."""

    _memo: Memo

    def _key(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def _build(self) -> tuple[Attr, ...]:
        raise NotImplementedError

    def attrs(self) -> tuple[Attr, ...]:
        key = self._key()
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        attrs = self._build()
        self._memo = (key, attrs)
        return attrs


@dataclass
class Portal(_Memoized):
    address: ipaddress.IPv6Address
    port: Port
    index: int
    symbolic_name: str | None = None
    esi_interval: int | None = None
    esi_port: Port | None = None
    scn_port: Port | None = None
    # ESI bookkeeping (§5.6.5.13), not persisted: probes sent since the last answer, when the next is due
    esi_missed: int = field(default=0, compare=False)
    esi_next: float = field(default=0.0, compare=False)
    _memo: Memo = _memo_field()
    _chosen: Chosen = _memo_field()

    def _key(self) -> tuple[Any, ...]:
        return (self.address, self.port, self.symbolic_name, self.esi_interval, self.esi_port, self.index,
                self.scn_port)

    def _build(self) -> tuple[Attr, ...]:
        return (Attr(Tag.PORTAL_IP_ADDRESS, self.address), Attr(Tag.PORTAL_PORT, self.port),
                *_opt(Tag.PORTAL_SYMBOLIC_NAME, self.symbolic_name), *_opt(Tag.ESI_INTERVAL, self.esi_interval),
                *_opt(Tag.ESI_PORT, self.esi_port), Attr(Tag.PORTAL_INDEX, self.index),
                *_opt(Tag.SCN_PORT, self.scn_port))


@dataclass
class Node(_Memoized):
    name: str
    entity: str
    index: int
    type: NodeType = NodeType(0)
    alias: str | None = None
    scn_bitmap: int | None = None
    auth_method: str | None = None
    _memo: Memo = _memo_field()
    _chosen: Chosen = _memo_field()

    def _key(self) -> tuple[Any, ...]:
        return (self.name, self.type, self.alias, self.scn_bitmap, self.index, self.auth_method)

    def _build(self) -> tuple[Attr, ...]:
        return (Attr(Tag.ISCSI_NAME, self.name), Attr(Tag.ISCSI_NODE_TYPE, int(self.type)),
                *_opt(Tag.ISCSI_ALIAS, self.alias), *_opt(Tag.ISCSI_SCN_BITMAP, self.scn_bitmap),
                Attr(Tag.ISCSI_NODE_INDEX, self.index), *_opt(Tag.ISCSI_AUTH_METHOD, self.auth_method))


@dataclass
class PortalGroup(_Memoized):
    name: str
    address: ipaddress.IPv6Address
    port: Port
    tag: int | None  # None: the node may not be reached through that portal (§6.5.3)
    index: int
    _memo: Memo = _memo_field()
    _chosen: Chosen = _memo_field()

    def _key(self) -> tuple[Any, ...]:
        return (self.name, self.address, self.port, self.tag, self.index)

    def _build(self) -> tuple[Attr, ...]:
        return (Attr(Tag.PG_ISCSI_NAME, self.name), Attr(Tag.PG_PORTAL_IP_ADDR, self.address),
                Attr(Tag.PG_PORTAL_PORT, self.port), Attr(Tag.PG_TAG, self.tag), Attr(Tag.PG_INDEX, self.index))


@dataclass
class Entity(_Listed):
    eid: str
    index: int
    protocol: int = EntityProtocol.ISCSI
    period: int = DEFAULT_PERIOD
    registered: float = 0.0
    last_seen: float = 0.0
    management_ip: ipaddress.IPv6Address | None = None
    portals: dict[tuple[ipaddress.IPv6Address, Port], Portal] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    # who registered it, never listed: the source and the peer's address (None: a direct call),
    # so a REPLACE from elsewhere cannot take it over (§5.6.5.1) and a source's count is known
    registrar: str = ""
    registrar_host: str | None = None
    _memo: Memo = _memo_field()
    _chosen: Chosen = _memo_field()

    def attrs(self) -> tuple[Attr, ...]:
        key = (self.eid, self.protocol, self.management_ip, self.period, self.index, int(self.last_seen))
        memo = self._memo
        if memo is not None and memo[0] == key:
            return memo[1]
        stamp = Attr(Tag.TIMESTAMP, key[-1])
        if memo is not None and memo[0][:-1] == key[:-1]:
            # every request of the entity's refreshes it (§6.2.6): only the timestamp is new,
            # and a choice of attributes without it stands
            attrs = tuple(stamp if a.tag == Tag.TIMESTAMP else a for a in memo[1])
            chosen = self._chosen
            if chosen is not None and chosen[0] is memo[1] and Tag.TIMESTAMP not in chosen[1]:
                self._chosen = (attrs, chosen[1], chosen[2])
        else:
            attrs = (Attr(Tag.ENTITY_IDENTIFIER, self.eid), Attr(Tag.ENTITY_PROTOCOL, self.protocol),
                     *_opt(Tag.MGMT_IP_ADDRESS, self.management_ip), stamp,
                     Attr(Tag.REGISTRATION_PERIOD, self.period), Attr(Tag.ENTITY_INDEX, self.index))
        self._memo = (key, attrs)
        return attrs


@dataclass
class DiscoveryDomain(_Listed):
    id: int
    name: str
    members: list[str] = field(default_factory=list)  # iSCSI names, registered or not (§6.11.2.3)
    features: int = 0
    _chosen: Chosen = _memo_field()

    def attrs(self) -> list[Attr]:
        return [Attr(Tag.DD_ID, self.id), Attr(Tag.DD_SYMBOLIC_NAME, self.name),
                *(Attr(Tag.DD_MEMBER_ISCSI_NAME, m) for m in self.members), Attr(Tag.DD_FEATURES, self.features)]


@dataclass
class DiscoveryDomainSet(_Listed):
    """A DD set (§6.11.1): DDs switched on and off together. A DD is active
    when it belongs to no set or to at least one enabled set."""

    id: int
    name: str
    enabled: bool = True
    members: list[int] = field(default_factory=list)  # DD IDs
    _chosen: Chosen = _memo_field()

    def attrs(self) -> list[Attr]:
        return [Attr(Tag.DDS_ID, self.id), Attr(Tag.DDS_SYMBOLIC_NAME, self.name),
                Attr(Tag.DDS_STATUS, DDS_ENABLED if self.enabled else 0),
                *(Attr(Tag.DD_ID, m) for m in self.members)]


Object = Entity | Portal | Node | PortalGroup | DiscoveryDomain | DiscoveryDomainSet


