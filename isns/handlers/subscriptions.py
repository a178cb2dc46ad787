"""SCNReg (RFC 4171 §5.6.5.5), SCNDereg (§5.6.5.6) and SCNEvent
(§5.6.5.7): which changes a node is to be told of (isns/notifier.py
tells them)."""

from __future__ import annotations

from ..codec import Attr, Message, response
from ..context import Context
from ..errors import IsnsError
from ..keys import first_int
from ..objects import Node
from ..protocol import ScnBits, Status, Tag


def _subscriber(ctx: Context, keys: list[Attr], source: str) -> Node:
    """The one registered node an SCN (de)registration is keyed by, which
    ``source`` may change."""
    names = [a.value for a in keys if a.tag == Tag.ISCSI_NAME]
    if len(names) != 1:
        raise IsnsError(Status.SCN_REGISTRATION_REJECTED, "SCN registration is keyed by one iSCSI name")
    node = ctx.db.nodes.get(str(names[0]))
    if node is None:
        raise IsnsError(Status.NO_SUCH_ENTRY, f"{names[0]} is not registered")
    ctx.visibility.check_may_change(source, ctx.db.entities[node.entity])
    return node


def scn_reg(ctx: Context, msg: Message, source: str, now: float) -> Message:
    """SCNReg (§5.6.5.5): a node's SCN bitmap; management registrations
    (every change, every DD) are for control nodes."""
    keys, operating = msg.split()
    node = _subscriber(ctx, keys, source)
    bitmap = first_int(operating, Tag.ISCSI_SCN_BITMAP)
    if bitmap is None:
        raise IsnsError(Status.SCN_REGISTRATION_REJECTED, "SCNReg needs an iSCSI SCN bitmap")
    if bitmap & ScnBits.MANAGEMENT_REGISTRATION:
        ctx.visibility.check_may_manage(node.name)
    node.scn_bitmap = bitmap
    ctx.db.scn_nodes.add(node.name)
    ctx.db.dirty.add(("entity", node.entity))
    ctx.on_event("isns.scn_registered", {"node": node.name, "bitmap": bitmap})
    return response(msg, Status.SUCCESS)


def scn_dereg(ctx: Context, msg: Message, source: str, now: float) -> Message:
    """SCNDereg (§5.6.5.6): the node is told nothing more."""
    keys, _ = msg.split()
    node = _subscriber(ctx, keys, source)
    node.scn_bitmap = None
    ctx.db.scn_nodes.discard(node.name)
    ctx.db.dirty.add(("entity", node.entity))
    return response(msg, Status.SUCCESS)


def scn_event(ctx: Context, msg: Message, source: str, now: float) -> Message:
    """SCNEvent (§5.6.5.7): a node reports a change for the server to pass
    on: pairs of SCN bitmap and the changed node's name."""
    _, operating = msg.split()
    if not operating or len(operating) % 2:
        raise IsnsError(Status.SCN_EVENT_REJECTED, "SCNEvent holds SCN bitmap, iSCSI name pairs")
    for bits, name in zip(operating[::2], operating[1::2]):
        node = ctx.db.nodes.get(str(name.value))
        if bits.tag != Tag.ISCSI_SCN_BITMAP or name.tag != Tag.ISCSI_NAME or node is None:
            raise IsnsError(Status.SCN_EVENT_REJECTED, "SCNEvent holds SCN bitmap, iSCSI name pairs")
        ctx.notifier.object_changed(int(bits.value or 0), node)  # type: ignore[arg-type]
    return response(msg, Status.SUCCESS)
