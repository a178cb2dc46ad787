"""DevAttrQry (RFC 4171 §5.6.5.2) and DevGetNext (§5.6.5.3): what a source
may see of the objects a message key names."""

from __future__ import annotations

from ..codec import Attr, Message, response
from ..context import Context
from ..errors import IsnsError
from ..keys import DELIMITER, KEY_TAGS, keep, kind_of
from ..objects import Entity, Node, Object, Portal
from ..protocol import Status, Tag
from ..visibility import Seen


def dev_attr_qry(ctx: Context, msg: Message, source: str, now: float) -> Message:
    """DevAttrQry (§5.6.5.2): the objects the key names that ``source`` may
    see, each with its entity's related objects, listing the attributes the
    operating attributes ask for (all when none)."""
    keys, operating = msg.split()
    kept = keep(operating)  # None: every attribute
    visibility = ctx.visibility
    out: list[Attr] = []
    done: set[int] = set()
    seen: Seen = {}
    if len(keys) == 1 and keys[0].tag == Tag.ISCSI_NAME and isinstance(keys[0].value, str):
        # what initiators ask (one node by name): the node itself is the only
        # candidate and it matches; what kind_of, candidates and matches find
        node = ctx.db.nodes.get(keys[0].value)
        candidates: list[Object] = [node] if node is not None else []
        keys_match = False
    else:
        kind = kind_of(keys) if keys else "entity"
        if kind is None:
            raise IsnsError(Status.INVALID_QUERY, "the message key mixes object types")
        candidates = ctx.db.candidates(kind, keys)
        keys_match = True
    for obj in candidates:
        if not visibility.may_see(obj, source, seen) or keys_match and not matches(obj, keys):
            continue
        for rel in _related(ctx, obj, source, seen):
            if id(rel) in done:
                continue
            done.add(id(rel))
            out.extend(rel.attrs() if kept is None else rel.attrs_among(kept))
    return response(msg, Status.SUCCESS, (*keys, DELIMITER, *out))


def dev_get_next(ctx: Context, msg: Message, source: str, now: float) -> Message:
    """DevGetNext (§5.6.5.3): the object of the key's type after the one the
    key names (the first when the key's values are empty), in index order,
    that ``source`` may see and the operating attributes match."""
    keys, operating = msg.split()
    kind = kind_of(keys)
    if kind is None or not keys:
        raise IsnsError(Status.INVALID_QUERY, "DevGetNext needs the key of one object type")
    objects = ctx.db.objects(kind)
    start = 0
    if not all(a.value is None for a in keys):
        start = next((i + 1 for i, obj in enumerate(objects) if matches(obj, keys)), 0)
        if not start:
            raise IsnsError(Status.NO_SUCH_ENTRY, "no object has that key")
    filters = [a for a in operating if a.value is not None]
    for obj in objects[start:]:
        if ctx.visibility.may_see(obj, source) and matches(obj, filters):
            attrs = obj.attrs()
            key = [a for a in attrs if a.tag in KEY_TAGS]
            return response(msg, Status.SUCCESS, [*key, DELIMITER, *attrs])
    return response(msg, Status.NO_SUCH_ENTRY)  # the end of the walk, not a refusal


def matches(obj: Object, keys: list[Attr]) -> bool:
    """Does every key attribute with a value name one of ``obj``'s?"""
    if isinstance(obj, Node):  # the common queries, by name or type, without a table of attributes
        for a in keys:
            if a.tag == Tag.ISCSI_NAME:
                if a.value is not None and a.value != obj.name:
                    return False
            elif a.tag == Tag.ISCSI_NODE_TYPE:
                if a.value is not None and a.value != int(obj.type):
                    return False
            else:
                break
        else:
            return True
    have: dict[int, list[object]] = {}
    for a in obj.attrs():
        have.setdefault(a.tag, []).append(a.value)
    return all(a.value is None or a.value in have.get(a.tag, []) for a in keys)


def _related(ctx: Context, obj: Object, source: str, seen: Seen) -> list[Object]:
    """The object with its entity and the entity's other objects and
    portal groups: what a query keyed by one of them answers with
    (§5.6.5.2); less what ``source`` may not see. An entity and its
    portals are seen with any of its nodes (Visibility.may_see), so that is
    asked once for them all."""
    if isinstance(obj, Entity):
        entity = obj
    elif isinstance(obj, Node):
        entity = ctx.db.entities[obj.entity]
    elif isinstance(obj, Portal):
        entity = ctx.db.entities[ctx.db.portal_owner[(obj.address, obj.port)]]
    else:
        return [obj] if ctx.visibility.may_see(obj, source, seen) else []
    sees_in = ctx.visibility.sees_in
    nodes = [n for n in entity.nodes.values() if sees_in(source, n.name, seen)]
    if not nodes:
        return []  # nor its portals, nor its portal groups (each one of its nodes')
    return [entity, *entity.portals.values(), *nodes,
            *(g for g in ctx.db.groups_of(entity) if sees_in(source, g.name, seen))]
