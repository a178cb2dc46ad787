"""PDU codec and framing: round trips for every opcode, digests, and
garbage that must only ever raise the codec's own errors."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from target.framing import DIRECT_MIN, DigestError, OversizedPdu, PduReader, crc32c_digest, frame
from target.pdu import (
    BHS_LEN,
    PDU_CLASSES,
    DataIn,
    LoginRequest,
    NopOut,
    Pdu,
    PduFormatError,
    ScsiCommand,
    _Bits,
    decode,
    encode,
    extended_cdb,
)


def _field_strategy(cls: type[Pdu], name: str) -> st.SearchStrategy[object]:
    spec = cls.LAYOUT[name]
    if isinstance(spec, _Bits):
        return st.booleans() if spec.is_flag else st.integers(0, spec.mask >> spec.shift)
    _, code = spec
    if code.endswith("s"):
        return st.binary(min_size=int(code[:-1]), max_size=int(code[:-1]))
    bits = {"B": 8, "H": 16, "I": 32, "Q": 64}[code]
    return st.integers(0, (1 << bits) - 1)


@st.composite
def pdus(draw: st.DrawFn) -> Pdu:
    cls = draw(st.sampled_from(sorted(PDU_CLASSES.values(), key=lambda c: c.OPCODE)))
    values = {name: draw(_field_strategy(cls, name)) for name in cls.LAYOUT}
    ahs = draw(st.binary(max_size=16).map(lambda b: b + bytes(-len(b) % 4)))
    data = draw(st.binary(max_size=300))
    return cls(immediate=draw(st.booleans()), ahs=ahs, data=data, **values)


@given(pdus())
def test_round_trip_every_opcode(pdu: Pdu) -> None:
    raw = encode(pdu)
    assert len(raw) % 4 == 0
    ahs_len = len(pdu.ahs)
    got = decode(raw[:BHS_LEN], raw[BHS_LEN:BHS_LEN + ahs_len],
                 raw[BHS_LEN + ahs_len:BHS_LEN + ahs_len + len(pdu.data)])
    assert got == pdu


@given(pdus(), st.booleans(), st.booleans(), st.integers(1, 97))
def test_reader_splits_stream_at_any_boundary(pdu: Pdu, hd: bool, dd: bool, chunk: int) -> None:
    reader = PduReader(max_data=1 << 16)
    reader.digests.header, reader.digests.data = hd, dd
    stream = b"".join(bytes(p) for p in frame(pdu, reader.digests)) * 2
    out = []
    for i in range(0, len(stream), chunk):
        reader.feed(stream[i:i + chunk])
        out += list(reader.pdus())
    assert out == [pdu, pdu]
    assert reader.pending == 0


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=400), st.booleans())
def test_garbage_raises_only_codec_errors(blob: bytes, digests: bool) -> None:
    reader = PduReader(max_data=256)
    reader.digests.header = reader.digests.data = digests
    reader.feed(blob)
    try:
        for _ in range(20):
            if reader.next_pdu() is None:
                break
    except (PduFormatError, DigestError):
        pass


@pytest.mark.parametrize("hd,dd", [(False, False), (True, True)])
@pytest.mark.parametrize("chunk", [1000, 65536, 1 << 20])
@pytest.mark.parametrize("into", [False, True])
def test_large_segment_is_received_into_its_own_buffer(hd: bool, dd: bool, chunk: int, into: bool) -> None:
    """A segment of DIRECT_MIN or more (§13.12: up to 2**24-1) is not
    gathered in the stream buffer: the transport receives into the buffer
    the reader names, or feeds as usual; the PDUs around it are unharmed."""
    reader = PduReader(max_data=1 << 24)
    reader.digests.header, reader.digests.data = hd, dd
    big = NopOut(itt=1, data=bytes(range(256)) * ((2 * DIRECT_MIN + 3) // 256) + b"xyz")
    pdus = [NopOut(itt=0, data=b"before"), big, NopOut(itt=2, data=b"after"), big]
    stream = memoryview(b"".join(bytes(p) for pdu in pdus for p in frame(pdu, reader.digests)))
    out: list[Pdu] = []
    pos = 0
    while pos < len(stream):
        target = reader.receive_buffer() if into else None
        if target is not None:
            n = min(chunk, len(target), len(stream) - pos)
            target[:n] = stream[pos:pos + n]
            reader.received(n)
        else:
            n = min(reader.read_size(chunk), len(stream) - pos)
            reader.feed(stream[pos:pos + n])
        pos += n
        out += list(reader.pdus())
        assert len(reader.buf) <= chunk + BHS_LEN + 8  # the large segment never sits in the stream buffer
    assert out == pdus
    assert not reader.partial and reader.completed == 4


def test_after_a_large_segment_only_a_header_is_read() -> None:
    """The next PDU of a long write is likely large too: reading just its
    header keeps its segment out of the stream buffer (no copy out of it)."""
    reader = PduReader(max_data=1 << 24)
    big = encode(NopOut(itt=1, data=bytes(DIRECT_MIN)))
    assert reader.read_size(1 << 18) == 1 << 18
    reader.feed(big[:1000])  # the header and the start of the segment: the rest goes direct
    assert reader.next_pdu() is None
    reader.feed(big[1000:])
    assert reader.next_pdu() is not None
    assert reader.read_size(1 << 18) == BHS_LEN
    reader.digests.header = True
    assert reader.read_size(1 << 18) == BHS_LEN + 4
    reader.digests.header = False
    reader.feed(encode(NopOut(itt=2)))
    assert reader.next_pdu() == NopOut(itt=2)
    assert reader.read_size(1 << 18) == 1 << 18


def test_large_segment_data_digest_is_checked() -> None:
    reader = PduReader(max_data=1 << 24)
    reader.digests.data = True
    raw = bytearray(b"".join(bytes(p) for p in frame(NopOut(itt=1, data=bytes(DIRECT_MIN)), reader.digests)))
    raw[-1] ^= 1
    reader.feed(bytes(raw[:100]))
    assert reader.next_pdu() is None and reader.receive_buffer() is not None
    reader.feed(bytes(raw[100:]) + encode(NopOut(itt=2)))
    with pytest.raises(DigestError) as e:
        reader.next_pdu()
    assert not e.value.header
    assert reader.next_pdu() == NopOut(itt=2)


def test_unknown_opcode_is_consumed_and_reported() -> None:
    raw = bytearray(encode(NopOut(itt=1)))
    raw[0] = 0x1E
    reader = PduReader()
    reader.feed(bytes(raw) + encode(NopOut(itt=2)))
    with pytest.raises(PduFormatError) as e:
        reader.next_pdu()
    assert e.value.bhs[:1] == b"\x1e"
    assert reader.next_pdu() == NopOut(itt=2)


def test_oversized_segment_is_skipped_with_its_header() -> None:
    reader = PduReader(max_data=512)
    big = NopOut(itt=7, data=bytes(1000))
    reader.feed(encode(big) + encode(NopOut(itt=8)))
    with pytest.raises(OversizedPdu) as e:
        reader.next_pdu()
    assert decode(e.value.bhs).itt == 7  # type: ignore[attr-defined]
    assert reader.next_pdu() == NopOut(itt=8)


def test_absurd_length_is_not_an_iscsi_stream() -> None:
    reader = PduReader(hard_limit=1 << 20)
    raw = bytearray(encode(NopOut()))
    raw[5:8] = (0xFFFFFF).to_bytes(3, "big")
    reader.feed(bytes(raw))
    with pytest.raises(PduFormatError) as e:
        reader.next_pdu()
    assert not e.value.bhs


def test_digest_mismatch_names_header_or_data() -> None:
    reader = PduReader()
    reader.digests.header = reader.digests.data = True
    raw = bytearray(b"".join(bytes(p) for p in frame(NopOut(itt=1, data=b"ping"), reader.digests)))
    bad_data = bytearray(raw)
    bad_data[-1] ^= 1
    reader.feed(bytes(bad_data))
    with pytest.raises(DigestError) as e:
        reader.next_pdu()
    assert not e.value.header
    raw[10] ^= 1
    reader.feed(bytes(raw))
    with pytest.raises(DigestError) as e:
        reader.next_pdu()
    assert e.value.header


def test_crc32c_known_answer() -> None:
    # RFC 3720 appendix B.4: 32 bytes of zeros
    assert crc32c_digest(bytes(32)) == (0x8A9136AA).to_bytes(4, "little")


def test_field_layout_matches_rfc_offsets() -> None:
    """Spot checks against RFC 7143 §11 figures."""
    cmd = ScsiCommand(read=True, attr=1, lun=0x0001000000000000, itt=0x11223344, edtl=0x1000, cmdsn=5,
                      expstatsn=6, cdb=bytes([0x28]) + bytes(15))
    raw = cmd.encode_bhs()
    assert raw[0] == 0x01 and raw[1] == 0x80 | 0x40 | 0x01
    assert raw[8:10] == b"\x00\x01" and raw[16:20] == bytes.fromhex("11223344")
    assert raw[20:24] == (0x1000).to_bytes(4, "big") and raw[32] == 0x28
    login = LoginRequest(immediate=True, transit=True, csg=1, nsg=3, isid=bytes.fromhex("400001370000"),
                         cid=1)
    raw = login.encode_bhs()
    assert raw[0] == 0x43 and raw[1] == 0x87 and raw[8:14] == bytes.fromhex("400001370000")
    din = DataIn(final=True, status_present=True, underflow=True, status=0, datasn=3, residual=512)
    raw = din.encode_bhs(4096)
    assert raw[0] == 0x25 and raw[1] == 0x83 and raw[5:8] == (4096).to_bytes(3, "big")
    assert raw[36:40] == (3).to_bytes(4, "big") and raw[44:48] == (512).to_bytes(4, "big")


def test_extended_cdb_ahs() -> None:
    ext = bytes(range(16, 32))
    body = b"\x00" + ext  # reserved byte, then CDB bytes 16..31
    ahs = len(body).to_bytes(2, "big") + b"\x01" + body
    ahs += bytes(-len(ahs) % 4)
    assert extended_cdb(ahs) == ext
    cmd = ScsiCommand(cdb=bytes(range(16)), ahs=ahs)
    assert cmd.full_cdb == bytes(range(32))


def test_pdus_compare_by_value() -> None:
    a = NopOut(itt=1)
    assert a == dataclasses.replace(a) and a != NopOut(itt=2)


def test_oversized_segment_is_refused_from_its_header_and_never_buffered() -> None:
    """The header alone is enough to refuse it; its bytes are dropped as
    they come, so the reader holds a chunk at most, not the segment."""
    reader = PduReader(max_data=512)
    big = encode(NopOut(itt=7, data=bytes(1 << 20)))
    reader.feed(big[:100])
    with pytest.raises(OversizedPdu) as e:
        reader.next_pdu()
    assert decode(e.value.bhs).itt == 7  # type: ignore[attr-defined]
    for i in range(100, len(big), 4096):
        reader.feed(big[i:i + 4096])
        assert reader.pending == 0 and len(reader.buf) <= 4096 and reader.next_pdu() is None
    reader.feed(encode(NopOut(itt=8)))
    assert reader.next_pdu() == NopOut(itt=8)
