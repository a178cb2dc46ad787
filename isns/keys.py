"""Reading a request's attributes (RFC 4171 §5.6.1): which object type a
message key names, operating attributes cut into objects (§5.6.5.1), the
portal an address and a port name, and which attributes a query's response
lists (§5.6.5.2). Pure functions of attributes."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

from .codec import Attr, Port, display
from .objects import DD_TAGS, DDS_TAGS, ENTITY_TAGS, NODE_TAGS, PG_TAGS, PORTAL_TAGS
from .protocol import Tag
from .scn import Address

DELIMITER = Attr(Tag.DELIMITER)
# the attributes that identify an object (§6.1 "key"): a query's response lists them whatever it asks for
KEY_TAGS = frozenset({Tag.ENTITY_IDENTIFIER, Tag.ISCSI_NAME, Tag.PORTAL_IP_ADDRESS, Tag.PORTAL_PORT,
                      Tag.PG_ISCSI_NAME, Tag.PG_PORTAL_IP_ADDR, Tag.PG_PORTAL_PORT, Tag.DD_ID, Tag.DDS_ID})
REGISTRATION_KEY_TAGS = frozenset(ENTITY_TAGS | NODE_TAGS | PORTAL_TAGS)  # what a DevAttrReg key may name

# the tag that starts each object among operating attributes (§5.6.5.1)
_STARTS: dict[int, str] = {Tag.ENTITY_IDENTIFIER: "entity", Tag.PORTAL_IP_ADDRESS: "portal",
                           Tag.ISCSI_NAME: "node", Tag.PG_ISCSI_NAME: "pg", Tag.DD_ID: "dd", Tag.DDS_ID: "dds"}
_KIND_OF_TAG: dict[int, str] = {}  # the object type each tag belongs to (the first listed)
for _kind, _tags in (("entity", ENTITY_TAGS), ("portal", PORTAL_TAGS), ("node", NODE_TAGS), ("pg", PG_TAGS),
                     ("dd", DD_TAGS), ("dds", DDS_TAGS)):
    for _tag in _tags:
        _KIND_OF_TAG.setdefault(_tag, _kind)
_KEEPS: dict[frozenset[int], frozenset[int]] = {}  # keep()'s sets, by the tags asked for


def kind_of(attrs: Iterable[Attr]) -> str | None:
    """The one object type a message key's attributes belong to, else None."""
    kinds = set()
    for a in attrs:
        kind = _KIND_OF_TAG.get(a.tag)
        if kind is None:
            return None
        kinds.add(kind)
    return kinds.pop() if len(kinds) == 1 else None


def groups(attrs: list[Attr]) -> Iterator[tuple[str, list[Attr]]]:
    """Operating attributes cut into objects (§5.6.5.1): the entity's own
    attributes first, then each portal from its address, each node from its
    name, each portal group from its node name (one group per portal of it)."""
    kind, current = "entity", []
    for a in attrs:
        if kind == "pg" and a.tag == Tag.PG_PORTAL_IP_ADDR and any(x.tag == a.tag for x in current):
            yield kind, current  # the same node's portal group on another portal
            current = [current[0]]
        elif (start := _STARTS.get(a.tag)) is not None:
            if current:
                yield kind, current
            kind, current = start, []
        current.append(a)
    if current:
        yield kind, current


def portal_key(attrs: Iterable[Attr]) -> Address | None:
    """The portal (address, port) the attributes name, else None."""
    values = {a.tag: a.value for a in attrs}
    addr, port = values.get(Tag.PORTAL_IP_ADDRESS), values.get(Tag.PORTAL_PORT)
    if isinstance(addr, ipaddress.IPv6Address) and isinstance(port, Port):
        return addr, port
    return None


def portal_text(key: Address) -> str:
    return f"{display(key[0])}:{key[1].number}"


def keep(operating: list[Attr]) -> frozenset[int] | None:
    """The tags a query's response lists: those asked for and every key
    (None: all, when none are asked for). One set object per choice of tags,
    as the objects keep their last choice by it (objects._Listed)."""
    if not operating:
        return None
    wanted = frozenset(a.tag for a in operating)
    kept = _KEEPS.get(wanted)
    if kept is None:
        if len(_KEEPS) >= 256:
            _KEEPS.clear()  # clients ask a few different things; a stranger's variety is not kept
        kept = _KEEPS[wanted] = wanted | KEY_TAGS
    return kept


def first_int(attrs: Iterable[Attr], tag: int) -> int | None:
    """The value of the first ``tag`` attribute holding a number."""
    return next((a.value for a in attrs if a.tag == tag and isinstance(a.value, int)), None)


def first_text(attrs: Iterable[Attr], tag: int) -> str | None:
    """The value of the first ``tag`` attribute that is not empty, as text."""
    return next((str(a.value) for a in attrs if a.tag == tag and a.value), None)
