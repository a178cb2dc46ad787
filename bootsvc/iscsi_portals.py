"""listen.iscsi: the target's portals and their portal groups.

Each entry is ``HOST[:PORT]`` or, with its target portal group tag,
``HOST[:PORT],TAG`` (the form SendTargets and ``iscsiadm -m discovery``
print). Without tags every portal is its own group, numbered from
``iscsi.portal_group_tag`` (default 1) in the order written: one group is
one SCSI target port (RFC 7143 §4.4.1), so each path of a multipathed disk
has its own port and the initiator's multipath layer sees distinct paths
(docs/multipath.md). Tags put several portals in one group; then either
every entry has one or none does, so no automatic number lands in a group
by accident.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .address import HostPort

MAX_TAG = 65535  # a 16-bit tag (RFC 7143 §13.9); 0 is left out: SPC-4 reserves relative port 0


@dataclass(frozen=True)
class IscsiPortal(HostPort):
    """A portal and its target portal group tag."""

    tpgt: int = 1


def describe(portals: Sequence[IscsiPortal]) -> str:
    """The portals for the operator; their groups once there are several."""
    if len(portals) < 2:
        return ", ".join(map(str, portals))
    return ", ".join(f"{p} (portal group {p.tpgt})" for p in portals)


class PortalError(ValueError):
    """A listen.iscsi entry that cannot be served, in words for the operator."""


def parse_portal(text: str, default_tag: int) -> tuple[IscsiPortal, bool]:
    """One entry; the bool says whether it named its tag."""
    address, comma, tag = text.rpartition(",") if "," in text else (text, "", "")
    portal = HostPort.parse(address, default_port=3260, what="portal")
    if not comma:
        return IscsiPortal(portal.host, portal.port, default_tag), False
    if not tag.strip().isdigit() or not 1 <= int(tag) <= MAX_TAG:
        raise PortalError(f"{text}: the portal group tag after ',' must be a whole number 1 ... {MAX_TAG}")
    return IscsiPortal(portal.host, portal.port, int(tag)), True


def parse_portals(texts: Sequence[str], first_tag: int) -> tuple[list[IscsiPortal], list[str]]:
    """The portals of ``texts`` and what is wrong with them (one line each)."""
    portals: list[IscsiPortal] = []
    tagged: list[bool] = []
    problems: list[str] = []
    for i, text in enumerate(texts):
        try:
            portal, named = parse_portal(text, first_tag + i)
        except ValueError as e:
            problems.append(str(e))
            continue
        if any((p.host, p.port) == (portal.host, portal.port) for p in portals):
            problems.append(f"{text}: listed twice")
            continue
        portals.append(portal)
        tagged.append(named)
    if any(tagged) and not all(tagged):
        problems.append("give every portal its group tag (HOST:PORT,TAG) or none of them")
    if not any(tagged) and portals and portals[-1].tpgt > MAX_TAG:
        problems.append(f"iscsi.portal_group_tag {first_tag} leaves no tag for portal {len(portals)} "
                        f"(tags are at most {MAX_TAG})")
    return portals, problems
