"""The objects an iSNS server holds (RFC 4171 §6): network entities with
their portals and iSCSI nodes, portal groups, discovery domains (DDs) and
DD sets, each able to list itself as attributes and to round-trip through a
JSON-able dict for the store."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

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


@dataclass
class Portal:
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


@dataclass
class DiscoveryDomainSet:
    """A DD set (§6.11.1): DDs switched on and off together. A DD is active
    when it belongs to no set or to at least one enabled set."""

    id: int
    name: str
    enabled: bool = True
    members: list[int] = field(default_factory=list)  # DD IDs

    def attrs(self) -> list[Attr]:
        return [Attr(Tag.DDS_ID, self.id), Attr(Tag.DDS_SYMBOLIC_NAME, self.name),
                Attr(Tag.DDS_STATUS, DDS_ENABLED if self.enabled else 0),
                *(Attr(Tag.DD_ID, m) for m in self.members)]


Object = Entity | Portal | Node | PortalGroup | DiscoveryDomain | DiscoveryDomainSet


