"""What happens with time rather than requests: registrations that were not
refreshed within their period expire (RFC 4171 §6.2.6), and portals that
asked for Entity Status Inquiries are probed, and dropped when they stop
answering (§5.6.5.13)."""

from __future__ import annotations

import math

from .codec import Attr, Message
from .context import Context
from .database import Database
from .keys import portal_text
from .protocol import Function, Tag
from .scn import Address, Notice

ESI_RETRIES = 3  # unanswered probes before a portal is dropped (open-isns's ESIRetries)


def expire(ctx: Context, now: float) -> list[str]:
    """Drop entities whose registration period passed without a refresh;
    their EIDs."""
    gone = [e for e in ctx.db.entities.values() if e.period and now - e.last_seen > e.period]
    for e in gone:
        ctx.drop_entity(e, "expired")
    ctx.notifier.flush(now)
    return [e.eid for e in gone]


def esi_due(ctx: Context, now: float) -> None:
    """Queue an ESI probe for every portal whose interval has come; a
    portal that left ``ESI_RETRIES`` probes unanswered is dropped, and its
    entity with its last monitored portal (as open-isns)."""
    for entity in list(ctx.db.entities.values()):
        for key, portal in list(entity.portals.items()):
            if not portal.esi_interval or portal.esi_next > now:
                continue
            if portal.esi_missed < ESI_RETRIES:
                portal.esi_missed += 1
                portal.esi_next = now + portal.esi_interval
                probe = Message(Function.ESI, ctx.notifier.xid(), (Attr(Tag.ENTITY_IDENTIFIER, entity.eid),
                                Attr(Tag.PORTAL_IP_ADDRESS, key[0]), Attr(Tag.PORTAL_PORT, key[1])))
                targets = ((key[0], portal.esi_port),) if portal.esi_port else ()
                ctx.notifier.probe(Notice(entity.eid, probe, targets, key))
                continue
            ctx.db.remove_portal(entity, key)
            ctx.on_event("isns.esi_lost", {"entity": entity.eid, "portal": portal_text(key)})
            if not any(p.esi_interval for p in entity.portals.values()):
                ctx.drop_entity(entity, "esi")
                break
    ctx.notifier.flush(now)


def esi_answered(db: Database, eid: str, portal: Address, now: float) -> None:
    """An ESI response came: the portal is alive and the entity's
    registration is refreshed (§5.6.5.13)."""
    entity = db.entities.get(eid)
    if entity is not None and portal in entity.portals:
        entity.portals[portal].esi_missed = 0
        entity.last_seen = now


def next_timer(db: Database) -> float:
    """When ``esi_due`` or ``expire`` next has work (inf: never)."""
    times = [e.last_seen + e.period for e in db.entities.values() if e.period]
    times += [p.esi_next for e in db.entities.values() for p in e.portals.values() if p.esi_interval]
    return min(times, default=math.inf)
