"""The router advertisement codec (RFC 4861 §4.1, §4.2): what bootsvc
answers and which solicitations it accepts; never an exception on garbage."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from bootsvc.dhcp.router_advert import ROUTER_ADVERTISEMENT, advertisement, parse_solicitation

MAC = bytes.fromhex("525400770011")


def test_advertisement_says_no_router_no_flags_no_prefixes() -> None:
    ra = advertisement(MAC)
    kind, code, _, hops, flags, lifetime, reachable, retrans = struct.unpack("!BBHBBHII", ra[:16])
    assert (kind, code, hops, flags, lifetime, reachable, retrans) == (ROUTER_ADVERTISEMENT, 0, 0, 0, 0, 0, 0)
    assert ra[16:] == b"\x01\x01" + MAC  # only the source link-layer address option
    assert len(advertisement()) == 16


def test_solicitation_with_and_without_link_layer_option() -> None:
    assert parse_solicitation(b"\x85\x00\x00\x00\x00\x00\x00\x00") is not None
    rs = parse_solicitation(b"\x85\x00\x12\x34\x00\x00\x00\x00\x01\x01" + MAC)
    assert rs is not None and rs.source_mac == "52:54:00:77:00:11"


def test_invalid_solicitations_are_ignored() -> None:
    assert parse_solicitation(b"\x85\x00\x00") is None  # short
    assert parse_solicitation(b"\x86" + bytes(7)) is None  # an advertisement
    assert parse_solicitation(b"\x85\x01" + bytes(6)) is None  # code must be 0
    assert parse_solicitation(b"\x85\x00" + bytes(6) + b"\x01\x00" + bytes(6)) is None  # zero-length option
    assert parse_solicitation(b"\x85\x00" + bytes(6) + b"\x01\x02" + bytes(6)) is None  # option past the end


@given(st.binary(max_size=64))
def test_fuzz_never_raises(data: bytes) -> None:
    rs = parse_solicitation(data)
    assert rs is None or data[0] == 133
    assert parse_solicitation(b"\x85\x00" + bytes(6) + data) is None or len(data) % 8 == 0
