"""The iSNS database in SQLite, so a restart keeps registrations, DDs, DD
sets and SCN registrations (RFC 4171 §5.6.5.5: SCN registrations last as
long as the node's registration).

One row per entity (its portals, nodes and portal groups as JSON), per DD
and per DD set; after each request the server writes the rows the registry
marked dirty, in one transaction, in WAL mode without an fsync per write
(a crash loses at most the last changes, which clients re-register anyway).
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
from pathlib import Path
from typing import Any

from .codec import Port
from .objects import DiscoveryDomain, DiscoveryDomainSet, Entity, Node, Portal, PortalGroup
from .protocol import NodeType
from .registry import Registry

SCHEMA_VERSION = 1


def _port(p: Port | None) -> list[Any] | None:
    return None if p is None else [p.number, p.udp]


def _unport(v: list[Any] | None) -> Port | None:
    return None if v is None else Port(int(v[0]), bool(v[1]))


def entity_to_dict(entity: Entity, groups: list[PortalGroup]) -> dict[str, Any]:
    return {
        "eid": entity.eid, "index": entity.index, "protocol": entity.protocol, "period": entity.period,
        "registered": entity.registered, "last_seen": entity.last_seen,
        "registrar": entity.registrar, "registrar_host": entity.registrar_host,
        "management_ip": None if entity.management_ip is None else str(entity.management_ip),
        "portals": [{"address": str(p.address), "port": _port(p.port), "index": p.index,
                     "symbolic_name": p.symbolic_name, "esi_interval": p.esi_interval,
                     "esi_port": _port(p.esi_port), "scn_port": _port(p.scn_port)} for p in entity.portals.values()],
        "nodes": [{"name": n.name, "index": n.index, "type": int(n.type), "alias": n.alias,
                   "scn_bitmap": n.scn_bitmap, "auth_method": n.auth_method} for n in entity.nodes.values()],
        "portal_groups": [{"name": g.name, "address": str(g.address), "port": _port(g.port), "tag": g.tag,
                           "index": g.index} for g in groups],
    }


def entity_from_dict(d: dict[str, Any]) -> tuple[Entity, list[PortalGroup]]:
    entity = Entity(d["eid"], d["index"], d["protocol"], d["period"], d["registered"], d["last_seen"],
                    None if d["management_ip"] is None else ipaddress.IPv6Address(d["management_ip"]),
                    registrar=d.get("registrar", ""), registrar_host=d.get("registrar_host"))  # older stores: unknown
    for p in d["portals"]:
        port = _unport(p["port"])
        assert port is not None
        portal = Portal(ipaddress.IPv6Address(p["address"]), port, p["index"], p["symbolic_name"],
                        p["esi_interval"], _unport(p["esi_port"]), _unport(p["scn_port"]))
        entity.portals[(portal.address, portal.port)] = portal
    for n in d["nodes"]:
        entity.nodes[n["name"]] = Node(n["name"], entity.eid, n["index"], NodeType(n["type"]), n["alias"],
                                       n["scn_bitmap"], n["auth_method"])
    groups = []
    for g in d["portal_groups"]:
        port = _unport(g["port"])
        assert port is not None
        groups.append(PortalGroup(g["name"], ipaddress.IPv6Address(g["address"]), port, g["tag"], g["index"]))
    return entity, groups


_TABLES = {"entity": ("entities", "eid"), "dd": ("dds", "id"), "dds": ("dd_sets", "id")}  # by Registry.dirty's kind


def _row(registry: Registry, kind: str, key: str | int) -> dict[str, Any] | None:
    """What the store keeps of one object the registry marked dirty (None: it is gone)."""
    if kind == "entity":
        entity = registry.entities.get(str(key))
        return None if entity is None else entity_to_dict(entity, registry.groups_of(entity))
    if kind == "dd":
        dd = registry.dds.get(int(key))
        return None if dd is None else {"id": dd.id, "name": dd.name, "members": dd.members, "features": dd.features}
    dds = registry.dd_sets.get(int(key))
    return None if dds is None else {"id": dds.id, "name": dds.name, "enabled": dds.enabled, "members": dds.members}


class StoreError(Exception):
    """The database file cannot be used (not SQLite, another schema)."""


class Store:
    def __init__(self, path: Path | str) -> None:
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            for table, key in (("entities", "eid TEXT"), ("dds", "id INTEGER"), ("dd_sets", "id INTEGER")):
                self.db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({key} PRIMARY KEY, data TEXT NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise StoreError(f"{path}: iSNS database schema {row[0]}, this version reads {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path}: {e}") from None

    def load(self, registry: Registry, now: float) -> None:
        """Fill an empty registry. Every entity gets a fresh registration
        period from ``now``: its clients could not refresh while we were down."""
        for (data,) in self.db.execute("SELECT data FROM entities"):
            entity, groups = entity_from_dict(json.loads(data))
            entity.last_seen = now
            for portal in entity.portals.values():
                if portal.esi_interval:
                    portal.esi_next = now + portal.esi_interval
            registry.entities[entity.eid] = entity
            registry.nodes.update(entity.nodes)
            for g in groups:
                registry.portal_groups[(g.name, g.address, g.port)] = g
        for (data,) in self.db.execute("SELECT data FROM dds"):
            d = json.loads(data)
            registry.dds[d["id"]] = DiscoveryDomain(d["id"], d["name"], d["members"], d["features"])
        for (data,) in self.db.execute("SELECT data FROM dd_sets"):
            d = json.loads(data)
            registry.dd_sets[d["id"]] = DiscoveryDomainSet(d["id"], d["name"], d["enabled"], d["members"])
        registry.restart_indexes()
        registry.due = registry.next_timer()

    def save(self, registry: Registry) -> int:
        """Write what changed since the last save; returns how many rows."""
        dirty, registry.dirty = registry.dirty, set()
        if not dirty:
            return 0
        with self.db:
            self.db.execute("BEGIN")
            for kind, key in dirty:
                table, column = _TABLES[kind]
                row = _row(registry, kind, key)
                if row is None:
                    self.db.execute(f"DELETE FROM {table} WHERE {column} = ?", (key,))
                else:
                    self._put(table, column, key, row)
        return len(dirty)

    def _put(self, table: str, column: str, key: object, data: dict[str, Any]) -> None:
        self.db.execute(f"INSERT OR REPLACE INTO {table} ({column}, data) VALUES (?, ?)", (key, json.dumps(data)))

    def close(self) -> None:
        self.db.close()
