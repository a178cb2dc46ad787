"""DDReg (RFC 4171 §5.6.5.9), DDDereg (§5.6.5.10), DDSReg (§5.6.5.11) and
DDSDereg (§5.6.5.12): discovery domains and DD sets, changed by control
nodes (isns/visibility.py)."""

from __future__ import annotations

from typing import TypeVar

from ..codec import Attr, Message, response
from ..context import Context
from ..errors import IsnsError
from ..keys import DELIMITER, first_int, first_text
from ..objects import DD_TAGS, DiscoveryDomain, DiscoveryDomainSet
from ..protocol import DDS_ENABLED, ScnBits, Status, Tag

Domain = TypeVar("Domain", DiscoveryDomain, DiscoveryDomainSet)


def _existing(table: dict[int, Domain], key: int | None, name: str | None, what: str) -> Domain | None:
    """The DD (set) a registration names: by the ID of its key, which must
    exist, else by symbolic name; None: a new one."""
    if key is None:
        return None if name is None else next((d for d in table.values() if d.name == name), None)
    found = table.get(key)
    if found is None:
        raise IsnsError(Status.INVALID_REGISTRATION, f"no {what} {key}")
    return found


def _deregistered(table: dict[int, Domain], keys: list[Attr], tag: int, what: str) -> Domain:
    """The DD (set) a deregistration's key names, which must exist."""
    key = next((a.value for a in keys if a.tag == tag), None)
    found = table.get(key) if isinstance(key, int) else None
    if found is None:
        raise IsnsError(Status.INVALID_DEREGISTRATION, f"no {what} {key}")
    return found


def _next_id(table: dict[int, Domain]) -> int:
    return max(table, default=0) + 1


# -- DDReg (§5.6.5.9), DDDereg (§5.6.5.10) -------------------------------------------------------


def dd_reg(ctx: Context, msg: Message, source: str, now: float) -> Message:
    """DDReg (§5.6.5.9): create a DD or add to one: name, features, members
    (by iSCSI name or node index). Members added are told (§5.6.5.8)."""
    ctx.visibility.check_may_change_domains(source)
    keys, operating = msg.split()
    values = [a for a in operating if a.tag in DD_TAGS]
    name = first_text(values, Tag.DD_SYMBOLIC_NAME)
    dd = _existing(ctx.db.dds, first_int(keys, Tag.DD_ID), name, "DD")
    if dd is not None and name is not None and name != dd.name and any(d.name == name for d in ctx.db.dds.values()):
        raise IsnsError(Status.INVALID_REGISTRATION, f"a DD named {name} exists")
    added = _members(ctx, values)  # resolved before anything changes
    if dd is None:
        new_id = _next_id(ctx.db.dds)
        dd = ctx.db.dds[new_id] = DiscoveryDomain(new_id, name or f"isns:dd:{new_id}")
    elif name is not None:
        dd.name = name
    for a in values:
        if a.tag == Tag.DD_FEATURES and isinstance(a.value, int):
            dd.features = a.value
    for member in dict.fromkeys(added):
        if member not in dd.members:
            dd.members.append(member)
            ctx.notifier.member_changed(ScnBits.DD_MEMBER_ADDED, member, dd)
    ctx.domains_changed("dd", dd.id)
    ctx.on_event("isns.dd_registered", {"dd": dd.id, "name": dd.name, "members": ",".join(dd.members)})
    return response(msg, Status.SUCCESS, [Attr(Tag.DD_ID, dd.id), DELIMITER, *dd.attrs()])


def _members(ctx: Context, values: list[Attr]) -> list[str]:
    """The iSCSI names of the members a DDReg adds, whether registered or
    not (§6.11.2.3); a member by index must be a registered node."""
    names = []
    for a in values:
        if a.tag == Tag.DD_MEMBER_ISCSI_NAME and a.value:
            names.append(str(a.value))
        elif a.tag == Tag.DD_MEMBER_ISCSI_INDEX and isinstance(a.value, int):
            node = ctx.db.node_by_index(a.value)
            if node is None:
                raise IsnsError(Status.INVALID_REGISTRATION, f"no node with index {a.value}")
            names.append(node.name)
    return names


def dd_dereg(ctx: Context, msg: Message, source: str, now: float) -> Message:
    """DDDereg (§5.6.5.10): members leave a DD (told while they still are
    members, so they hear of it); without operating attributes the DD
    goes, and leaves its DD sets."""
    ctx.visibility.check_may_change_domains(source)
    keys, operating = msg.split()
    dd = _deregistered(ctx.db.dds, keys, Tag.DD_ID, "DD")
    members = [str(a.value) for a in operating if a.tag == Tag.DD_MEMBER_ISCSI_NAME and a.value]
    if not operating:
        members = list(dd.members)
    missing = [m for m in members if m not in dd.members]
    if missing:
        raise IsnsError(Status.NO_SUCH_ENTRY, f"not members of DD {dd.id}: {', '.join(missing)}")
    for member in members:
        ctx.notifier.member_changed(ScnBits.DD_MEMBER_REMOVED, member, dd)
    dd.members = [m for m in dd.members if m not in members]
    ctx.domains_changed("dd", dd.id)
    if operating:
        ctx.on_event("isns.dd_members_removed", {"dd": dd.id, "members": ",".join(members)})
        return response(msg, Status.SUCCESS)
    del ctx.db.dds[dd.id]
    for dds in ctx.db.dd_sets.values():
        if dd.id in dds.members:
            dds.members.remove(dd.id)
            ctx.domains_changed("dds", dds.id)
    ctx.on_event("isns.dd_removed", {"dd": dd.id, "name": dd.name})
    return response(msg, Status.SUCCESS)


# -- DDSReg (§5.6.5.11), DDSDereg (§5.6.5.12) ----------------------------------------------------


def dds_reg(ctx: Context, msg: Message, source: str, now: float) -> Message:
    """DDSReg (§5.6.5.11): create a DD set or change one: name, status
    (enabled or not), member DDs, which must exist."""
    ctx.visibility.check_may_change_domains(source)
    keys, operating = msg.split()
    name = first_text(operating, Tag.DDS_SYMBOLIC_NAME)
    status = first_int(operating, Tag.DDS_STATUS)
    members = [a.value for a in operating if a.tag == Tag.DD_ID and isinstance(a.value, int)]
    dds = _existing(ctx.db.dd_sets, first_int(keys, Tag.DDS_ID), name, "DD set")
    unknown = [m for m in members if m not in ctx.db.dds]
    if unknown:
        raise IsnsError(Status.INVALID_REGISTRATION, f"no DD {unknown[0]}")
    if dds is None:
        new_id = _next_id(ctx.db.dd_sets)
        dds = ctx.db.dd_sets[new_id] = DiscoveryDomainSet(new_id, name or f"isns:dds:{new_id}")
    elif name is not None:
        dds.name = name
    if status is not None:
        dds.enabled = bool(status & DDS_ENABLED)
    dds.members += [m for m in dict.fromkeys(members) if m not in dds.members]
    ctx.domains_changed("dds", dds.id)
    ctx.on_event("isns.dds_registered", {"dds": dds.id, "name": dds.name, "enabled": dds.enabled,
                                         "dds_members": ",".join(map(str, dds.members))})
    return response(msg, Status.SUCCESS, [Attr(Tag.DDS_ID, dds.id), DELIMITER, *dds.attrs()])


def dds_dereg(ctx: Context, msg: Message, source: str, now: float) -> Message:
    """DDSDereg (§5.6.5.12): DDs leave a DD set; without any named the set goes."""
    ctx.visibility.check_may_change_domains(source)
    keys, operating = msg.split()
    dds = _deregistered(ctx.db.dd_sets, keys, Tag.DDS_ID, "DD set")
    members = [a.value for a in operating if a.tag == Tag.DD_ID]
    if not members:
        del ctx.db.dd_sets[dds.id]
    else:
        dds.members = [m for m in dds.members if m not in members]
    ctx.domains_changed("dds", dds.id)
    ctx.on_event("isns.dds_removed" if not members else "isns.dds_members_removed", {"dds": dds.id})
    return response(msg, Status.SUCCESS)
