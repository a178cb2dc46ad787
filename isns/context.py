"""What the request handlers (isns/handlers/) and the timers
(isns/timers.py) work on: the objects, who may see them, who hears of
changes, the event callback and the settings; and the changes both make
(a node, an entity leaving; a DD or DD set changed)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .database import Database
from .events import OnEvent, ignore_event
from .limits import DIRECT, Origin
from .notifier import Notifier
from .objects import DEFAULT_PERIOD, Entity, Node
from .protocol import ScnBits
from .visibility import Visibility

MIN_ESI_INTERVAL = 1  # seconds: a smaller registered interval is raised to this
# what a source other than a control node may register: entities, and portals and nodes in one entity
# (a target host may serve hundreds of targets from one entity: tgt registers them all in one)
MAX_PER_SOURCE = 64
MAX_NODES = 1024


@dataclass
class Context:
    db: Database
    visibility: Visibility
    notifier: Notifier
    on_event: OnEvent = ignore_event
    default_period: int = DEFAULT_PERIOD  # for entities that name no registration period
    min_esi_interval: int = MIN_ESI_INTERVAL
    due: float = math.inf  # no expiry or ESI probe is due before this (it may come early, never late)
    max_per_source: int = MAX_PER_SOURCE  # entities per source, portals per entity
    max_nodes: int = MAX_NODES  # nodes per entity
    origin: Origin = DIRECT  # where the request being handled came from (Registry.handle sets it)

    def drop_node(self, node: Node) -> None:
        self.notifier.object_changed(ScnBits.OBJECT_REMOVED, node)  # while those who saw it still do
        self.db.remove_node(node)

    def drop_entity(self, entity: Entity, why: str) -> None:
        for node in list(entity.nodes.values()):
            self.drop_node(node)
        self.db.remove_entity(entity)
        self.on_event("isns.entity_removed", {"entity": entity.eid, "why": why})

    def domains_changed(self, kind: str, key: int) -> None:
        """A DD (``kind`` "dd") or DD set ("dds") changed: the store writes
        it, visibility is recomputed."""
        self.db.dirty.add((kind, key))
        self.visibility.forget()
