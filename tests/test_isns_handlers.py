"""The registry's request handlers under random requests (RFC 4171
§5.6.5): whatever comes, each request gets a response to it that encodes,
and the objects and their indexes stay consistent with each other."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isns.codec import Attr, Message, Port, address, decode_message, encode_message, request
from isns.protocol import KINDS, RESPONSE, Flags, Function, Kind, Status, Tag
from isns.registry import Registry
from tests.isns_replay import random_message

NAMES = [f"iqn.2026-11.test:n{i}" for i in range(4)]
ADMIN = "iqn.2026-11.test:admin"
_VALUES = {
    Kind.STRING: st.sampled_from([*NAMES, ADMIN, "e0", "e1", "", "dd-a"]),
    Kind.UINT32: st.integers(0, 8) | st.integers(0, 2**32 - 1),
    Kind.UINT64: st.integers(0, 2**64 - 1),
    Kind.ADDRESS: st.sampled_from([address("10.0.0.1"), address("10.0.0.2"), address("::1")]),
    Kind.PORT: st.builds(Port, st.sampled_from([3260, 3261]), st.booleans()),
}
TAGS = [t for t in KINDS if KINDS[t] in _VALUES]


@st.composite
def attributes(draw: st.DrawFn) -> Attr:
    tag = draw(st.sampled_from(TAGS))
    return Attr(tag, draw(st.none() | _VALUES[KINDS[tag]]))


@st.composite
def requests(draw: st.DrawFn) -> Message:
    """Any attributes in any request, or (as often) requests of the shapes
    clients send (isns_replay's), and either way through the codec, as the
    server sees them."""
    shape = draw(st.integers(0, 4))
    if shape < 2:
        msg = random_message(draw(st.randoms(use_true_random=False)), draw(st.integers(0, 0xFFFF)))
    else:
        msg = draw(_subscription() if shape == 2 else _wild())
    raw = b"".join(p[12:] for p in encode_message(msg))
    return decode_message(msg.function, msg.xid, int(msg.flags), raw)


@st.composite
def _subscription(draw: st.DrawFn) -> Message:
    """SCN requests a node makes about itself (random ones are nearly always
    refused), and the registration of itself they need: by few sources, so they meet."""
    source = draw(st.sampled_from([NAMES[0], ADMIN]))
    function = draw(st.sampled_from([Function.DEV_ATTR_REG, Function.SCN_REG, Function.SCN_DEREG,
                                     Function.SCN_EVENT]))
    if function == Function.DEV_ATTR_REG:
        port = Port(draw(st.integers(1, 9)))
        portal = [Attr(Tag.PORTAL_IP_ADDRESS, address("10.0.0.9")), Attr(Tag.PORTAL_PORT, port)]
        return request(function, 1, Attr(Tag.ISCSI_NAME, source), [],
                       [Attr(Tag.ENTITY_IDENTIFIER, f"e-{source}"), *portal, Attr(Tag.ISCSI_NAME, source),
                        Attr(Tag.ISCSI_NODE_TYPE, draw(st.integers(1, 3)))])
    bitmap = Attr(Tag.ISCSI_SCN_BITMAP, draw(st.integers(0, 255)))
    if function == Function.SCN_EVENT:
        return request(function, 1, Attr(Tag.ISCSI_NAME, source), [],
                       [bitmap, Attr(Tag.ISCSI_NAME, draw(st.sampled_from(NAMES)))])
    return request(function, 1, Attr(Tag.ISCSI_NAME, source), [Attr(Tag.ISCSI_NAME, source)], [bitmap])


@st.composite
def _wild(draw: st.DrawFn) -> Message:
    function = draw(st.sampled_from([f for f in Function if f not in (Function.SCN, Function.ESI)]))
    source = Attr(Tag.ISCSI_NAME, draw(st.sampled_from([*NAMES, ADMIN])))
    keys = draw(st.lists(attributes(), max_size=3))
    operating = draw(st.lists(attributes(), max_size=10))
    flags = draw(st.sampled_from([Flags(0), Flags.REPLACE]))
    return request(function, draw(st.integers(0, 0xFFFF)), source, keys, operating, flags)


def _consistent(reg: Registry) -> None:
    for eid, entity in reg.entities.items():
        assert entity.eid == eid
        for name, node in entity.nodes.items():
            assert reg.nodes[name] is node and node.entity == eid
        for key in entity.portals:
            assert reg.portal_owner[key] == eid
    assert sum(len(e.nodes) for e in reg.entities.values()) == len(reg.nodes)
    assert all(reg.entities[eid].portals.get(key) for key, eid in reg.portal_owner.items())
    assert all(reg.dds.get(d) for s in reg.dd_sets.values() for d in s.members)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.lists(st.tuples(requests(), st.integers(0, 50)), min_size=1, max_size=25))
def test_any_requests_get_responses_and_keep_the_registry_consistent(
        default_dd_visible: bool, steps: list[tuple[Message, int]]) -> None:
    reg = Registry(control_nodes={ADMIN}, default_dd_visible=default_dd_visible)
    now = 0.0
    for msg, wait in steps:
        now += wait
        reply = reg.handle(msg, now)
        if msg.function == Function.HEARTBEAT:
            assert reply is None
            continue
        assert reply is not None and reply.function == msg.function | RESPONSE and reply.xid == msg.xid
        assert isinstance(reply.status, Status)
        encode_message(reply)
        for notice in reg.take_notices():
            encode_message(notice.message)
        reg.expire(now)
        reg.esi_due(now)
        _consistent(reg)
