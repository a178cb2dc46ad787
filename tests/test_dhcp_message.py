"""The DHCP codec: requests decode with the options a boot
server needs, replies encode so scapy (and clients) read them back, and
garbage raises DhcpFormatError only."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP

from bootsvc.dhcp.message import DhcpFormatError, IPv4, MessageType, Option, Reply, decode, encode

MAC = bytes.fromhex("525400770001")


def request(*options: object, op: int = 1) -> bytes:
    return bytes(BOOTP(op=op, xid=0x1234, flags=0x8000, chaddr=MAC + bytes(10)) / DHCP(options=[*options, "end"]))


def test_ipxe_request_decodes() -> None:
    r = decode(request(("message-type", "request"), ("requested_addr", "10.77.0.11"), ("server_id", "10.77.0.1"),
                       (93, b"\x00\x07"), ("vendor_class_id", b"PXEClient:Arch:00007:UNDI:003016"),
                       ("user_class", b"iPXE"), (175, b"\xb1\x05\x01\x80\x86\x10\x0e"), ("hostname", b"node01"),
                       ("param_req_list", [1, 3, 6, 17, 203])))
    assert (r.mac, r.xid, r.msg_type, r.broadcast) == ("52:54:00:77:00:01", 0x1234, MessageType.REQUEST, True)
    assert (r.requested_ip, r.server_id, r.arch) == (IPv4("10.77.0.11"), IPv4("10.77.0.1"), 7)
    assert r.pxe and r.ipxe and r.hostname == "node01" and 203 in r.param_request


def test_pxe_rom_is_not_ipxe() -> None:
    r = decode(request(("message-type", "discover"), (93, b"\x00\x00"), ("vendor_class_id", b"PXEClient:Arch:00000")))
    assert r.pxe and not r.ipxe and r.arch == 0


def test_reply_round_trip_and_long_options() -> None:
    r = decode(request(("message-type", "discover")))
    rep = Reply(r, MessageType.OFFER, IPv4("10.77.0.1"), yiaddr=IPv4("10.77.0.50"), siaddr=IPv4("10.77.0.1"),
                bootfile="undionly.kpxe")
    rep.add(Option.SUBNET_MASK, IPv4("255.255.255.0"))
    rep.add(Option.LEASE_TIME, 3600)
    rep.add(Option.ROOT_PATH, "iscsi:10.77.0.1::3260::" + "x" * 300)  # longer than one option: split (RFC 3396)
    pkt = BOOTP(encode(rep))
    assert pkt.op == 2 and pkt.xid == 0x1234 and pkt.yiaddr == "10.77.0.50" and pkt.flags == 0x8000
    assert pkt.file.rstrip(b"\0") == b"undionly.kpxe"
    opts = [o for o in pkt[DHCP].options if isinstance(o, tuple)]
    assert ("message-type", 2) in opts and ("lease_time", 3600) in opts
    root = b"".join(v for k, v in opts if k == "root_disk_path")
    assert root == b"iscsi:10.77.0.1::3260::" + b"x" * 300


def test_bad_packets_are_named() -> None:
    cases = {
        b"\x01" * 10: "truncated",
        request(("message-type", "discover"), op=2): "not BOOTREQUEST",
        request(("message-type", "offer")): "server message",
        request(("hostname", b"x")): "no message type",
        request(("message-type", "discover"), ("dhcp-option-overload", 3)): "overload",
        request(("message-type", "discover"))[:-1] + bytes([12, 200, 65]): "past the end",
        request(("message-type", 99)): "unknown",
    }
    for data, why in cases.items():
        try:
            decode(data)
        except DhcpFormatError as e:
            assert why in str(e), (why, str(e))
        else:
            raise AssertionError(f"accepted: {why}")


def test_a_repeated_option_is_one_option_concatenated() -> None:
    # RFC 3396 §5: busybox udhcpc sends its own option 60 beside one given
    # with -x 0x3c:..., and iPXE splits long options; the pieces are one value
    r = decode(request(("message-type", "discover"), ("vendor_class_id", b"PXEClient:Arch:00007"),
                       ("vendor_class_id", b":UNDI:003016"), ("hostname", b"no"), ("hostname", b"de01"),
                       (93, b"\x00"), (93, b"\x07")))
    assert r.vendor_class == b"PXEClient:Arch:00007:UNDI:003016" and r.pxe
    assert (r.hostname, r.arch) == ("node01", 7)
    long = b"x" * 300  # longer than one option can hold
    r = decode(request(("message-type", "discover"), (77, long[:255]), (77, long[255:])))
    assert r.user_class == long


def test_an_address_option_of_several_addresses_is_a_format_error() -> None:
    # found by bench/fuzz.py: option 50 of 8 bytes came from scapy as a tuple of two
    # addresses and escaped decode as a TypeError
    base = request(("message-type", "request"))[:-1]  # without "end"
    for code, what in ((50, "option 50"), (54, "option 54")):
        data = base + bytes([code, 8, 10, 77, 0, 11, 10, 77, 0, 12, 255])
        try:
            decode(data)
        except DhcpFormatError as e:
            assert what in str(e)
        else:
            raise AssertionError(f"accepted {what} of 8 bytes")


@settings(max_examples=400)
@given(st.binary(max_size=600), st.binary(max_size=80))
def test_garbage_raises_only_format_errors(blob: bytes, options: bytes) -> None:
    header = request(("message-type", "discover"))[:240]
    for data in (blob, header + options, header[:236] + blob):
        try:
            decode(data)
        except DhcpFormatError:
            pass
