"""iSNSP codec (RFC 4171 §5): round trips, PDUs split and joined, the bytes
open-isns's isnsadm really sends, and garbage raising only IsnsFormatError."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isns.codec import (
    Attr,
    IsnsFormatError,
    Message,
    Port,
    Reassembler,
    address,
    decode_attrs,
    encode_message,
    request,
    response,
    unpack_header,
)
from isns.protocol import HEADER_SIZE, Flags, Function, Status, Tag

# isnsadm --register entity=myentity target=iqn.2026-11.test:disk1,alias=disk1 portal=127.0.0.1:3260
ISNSADM_REGISTER = bytes.fromhex(
    "00010001009c8c0000010000000000200000001869716e2e323032362d31312e746573743a6469736b31000000000001"
    "0000000c6d79656e74697479000000000000000000000000000000200000001869716e2e323032362d31312e74657374"
    "3a6469736b31000000000021000000040000000100000022000000086469736b31000000000000100000001000000000"
    "00000000000000007f000001000000110000000400000cbc")


def join(pdus: list[bytes]) -> Message:
    r = Reassembler()
    out = None
    for pdu in pdus:
        h = unpack_header(pdu)
        out = r.feed(h, pdu[HEADER_SIZE:HEADER_SIZE + h.length])
    assert out is not None
    return out


def test_isnsadm_registration_decodes() -> None:
    msg = join([ISNSADM_REGISTER])
    assert msg.function == Function.DEV_ATTR_REG and msg.xid == 1 and not msg.is_response
    assert msg.source == Attr(Tag.ISCSI_NAME, "iqn.2026-11.test:disk1")
    keys, operating = msg.split()
    assert keys == [Attr(Tag.ENTITY_IDENTIFIER, "myentity")]
    # open-isns writes IPv4 as ::a.b.c.d; it reads back as the mapped form
    assert operating[-2:] == [Attr(Tag.PORTAL_IP_ADDRESS, address("127.0.0.1")), Attr(Tag.PORTAL_PORT, Port(3260))]
    assert str(operating[-2]) == "PORTAL_IP_ADDRESS=127.0.0.1"


attr_values = st.one_of(
    st.builds(Attr, st.just(Tag.ISCSI_NAME), st.text(st.characters(blacklist_characters="\0",
                                                                   blacklist_categories=("Cs",)), max_size=300)),
    st.builds(Attr, st.just(Tag.ISCSI_NODE_TYPE), st.integers(0, 2**32 - 1)),
    st.builds(Attr, st.just(Tag.TIMESTAMP), st.integers(0, 2**64 - 1)),
    st.builds(Attr, st.just(Tag.PORTAL_IP_ADDRESS), st.ip_addresses(v=6).filter(
        lambda ip: ip.packed[:12] != bytes(12) or ip.packed[12:] in (bytes(4), b"\0\0\0\1"))),
    st.builds(Attr, st.just(Tag.PORTAL_PORT), st.builds(Port, st.integers(0, 65535), st.booleans())),
    st.builds(Attr, st.just(Tag.DELIMITER)),
    st.builds(Attr, st.just(Tag.DD_MEMBER_ISCSI_NAME), st.none()),
)


@given(st.lists(attr_values, max_size=40), st.integers(0, 0xFFFF), st.booleans(), st.integers(64, 65523))
@settings(max_examples=300)
def test_round_trip_through_any_number_of_pdus(attrs: list[Attr], xid: int, is_response: bool,
                                               max_payload: int) -> None:
    msg = Message(Function.DEV_ATTR_QRY, xid, tuple(attrs))
    if is_response:
        msg = response(msg, Status.SUCCESS, attrs)
    pdus = encode_message(msg, max_payload=max(max_payload, 400))
    back = join(pdus)
    assert back.attrs == msg.attrs and back.xid == xid and back.status == msg.status
    flags = [unpack_header(p).flags for p in pdus]
    assert flags[0] & Flags.FIRST_PDU and flags[-1] & Flags.LAST_PDU
    assert all(f & (Flags.SERVER if is_response else Flags.CLIENT) for f in flags)


def test_strings_are_nul_terminated_and_padded() -> None:
    (pdu,) = encode_message(request(Function.DEV_ATTR_QRY, 7, Attr(Tag.ISCSI_NAME, "iqn.x")))
    assert pdu[HEADER_SIZE:HEADER_SIZE + 16] == bytes.fromhex("0000002000000008") + b"iqn.x\0\0\0"


@given(st.binary(max_size=400))
@settings(max_examples=500)
def test_garbage_raises_only_format_errors(blob: bytes) -> None:
    try:
        h = unpack_header(blob)
        Reassembler().feed(h, blob[HEADER_SIZE:HEADER_SIZE + h.length])
    except IsnsFormatError:
        pass
    try:
        decode_attrs(blob)
    except IsnsFormatError:
        pass


def test_bad_lengths_and_sequences() -> None:
    with pytest.raises(IsnsFormatError, match="runs past"):
        decode_attrs(bytes.fromhex("0000002000000100"))
    with pytest.raises(IsnsFormatError, match="16 are expected"):
        decode_attrs(bytes.fromhex("00000010000000040a000001"))
    pdus = encode_message(Message(Function.DEV_ATTR_QRY, 1, tuple(Attr(Tag.ISCSI_NAME, "x" * 100)
                                                                  for _ in range(20))), max_payload=400)
    assert len(pdus) > 2
    r = Reassembler()
    h = unpack_header(pdus[0])
    r.feed(h, pdus[0][HEADER_SIZE:])
    h2 = unpack_header(pdus[2])
    with pytest.raises(IsnsFormatError, match="sequence"):
        r.feed(h2, pdus[2][HEADER_SIZE:])


def test_ipv4_is_mapped() -> None:
    assert address("10.0.0.1") == ipaddress.IPv6Address("::ffff:10.0.0.1")


def test_registry_refuses_without_changing_anything() -> None:
    """A registration with one bad object registers none of it (§5.6.5.1)."""
    from isns.registry import Registry

    reg = Registry()
    src = Attr(Tag.ISCSI_NAME, "iqn.2026-11.test:a")
    ok = reg.handle(request(Function.DEV_ATTR_REG, 1, src, [], [Attr(Tag.ISCSI_NAME, "iqn.2026-11.test:a")]), 0.0)
    assert ok is not None and ok.status == Status.SUCCESS
    bad = request(Function.DEV_ATTR_REG, 2, Attr(Tag.ISCSI_NAME, "iqn.2026-11.test:b"), [],
                  [Attr(Tag.ISCSI_NAME, "iqn.2026-11.test:b"), Attr(Tag.ISCSI_NAME, "iqn.2026-11.test:a")])
    assert reg.handle(bad, 0.0).status == Status.INVALID_REGISTRATION  # type: ignore[union-attr]
    dd = request(Function.DEV_ATTR_REG, 3, src, [], [Attr(Tag.DD_ID, 4)])
    assert reg.handle(dd, 0.0).status == Status.INVALID_REGISTRATION  # type: ignore[union-attr]
    assert list(reg.nodes) == ["iqn.2026-11.test:a"] and len(reg.entities) == 1
    nosrc = Message(Function.DEV_ATTR_QRY, 4, (Attr(Tag.DELIMITER),))
    assert reg.handle(nosrc, 0.0).status == Status.SOURCE_ABSENT  # type: ignore[union-attr]
    unknown = Message(0x0042, 5, (src,))
    assert reg.handle(unknown, 0.0).status == Status.MESSAGE_NOT_SUPPORTED  # type: ignore[union-attr]
