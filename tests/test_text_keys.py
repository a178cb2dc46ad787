"""Text key=value codec and the RFC 7143 §13 negotiation rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from target.keys import KEYS, KeySpec, KeyValueError, Rule, SessionParams, negotiate, renegotiate
from target.text import TextFormatError, decode_text, encode_text


def test_text_round_trip() -> None:
    pairs = [("InitiatorName", "iqn.2026-11.test:a"), ("SessionType", "Normal"), ("X-odd", "a=b")]
    assert decode_text(encode_text(pairs)) == pairs
    assert decode_text(encode_text(pairs) + b"\0\0") == pairs


@pytest.mark.parametrize("raw", [b"novalue\0", b"=x\0", b"k" * 64 + b"=1\0", b"k=\xff\xfe\0"])
def test_text_errors(raw: bytes) -> None:
    with pytest.raises(TextFormatError):
        decode_text(raw)


@given(st.binary(max_size=200))
def test_text_garbage_raises_only_text_errors(raw: bytes) -> None:
    try:
        decode_text(raw)
    except TextFormatError:
        pass


@pytest.mark.parametrize(("key", "offer", "answer"), [
    ("HeaderDigest", "CRC32C,None", "CRC32C"),
    ("HeaderDigest", "None", "None"),
    ("DataDigest", "MD5", "Reject"),
    ("InitialR2T", "Yes", "Yes"),  # OR
    ("InitialR2T", "No", "No"),
    ("ImmediateData", "No", "No"),  # AND
    ("ImmediateData", "Yes", "Yes"),
    ("MaxBurstLength", "16776192", "16776192"),  # min with ours (2**24-1)
    ("MaxBurstLength", "65536", "65536"),
    ("FirstBurstLength", "0x10000", "65536"),
    ("DefaultTime2Wait", "0", "2"),  # max
    ("DefaultTime2Retain", "20", "20"),  # min
    ("DefaultTime2Retain", "0", "0"),
    ("MaxOutstandingR2T", "1", "1"),
    ("ErrorRecoveryLevel", "2", "2"),  # min with the target's most
    ("ErrorRecoveryLevel", "1", "1"),
    ("ErrorRecoveryLevel", "0", "0"),  # what every Debian initiator asks
    ("MaxConnections", "16", "8"),
    ("MaxConnections", "1", "1"),
    ("OFMarker", "Yes", "No"),
    ("IFMarkInt", "2048~8192", "Irrelevant"),
    ("X-com.example.Thing", "1", "NotUnderstood"),
    ("FancyNewKey", "1", "NotUnderstood"),
])
def test_negotiation_rules(key: str, offer: str, answer: str) -> None:
    assert negotiate(key, offer) == answer


@pytest.mark.parametrize(("key", "offer"), [
    ("MaxBurstLength", "abc"), ("MaxBurstLength", "100"), ("InitialR2T", "Maybe"),
    ("MaxRecvDataSegmentLength", "16777216"), ("SessionType", "Weird"), ("TargetAlias", "x"),
])
def test_values_that_are_rejected(key: str, offer: str) -> None:
    with pytest.raises(KeyValueError):
        negotiate(key, offer)


def test_declarations_need_no_answer() -> None:
    assert negotiate("MaxRecvDataSegmentLength", "65536") is None
    assert negotiate("InitiatorName", "iqn.2026-11.test:x") is None
    p = SessionParams()
    p.apply("MaxRecvDataSegmentLength", "65536")
    assert p.initiator_max_recv == 65536


@pytest.mark.parametrize("spec", [s for s in KEYS.values() if s.field], ids=lambda s: s.name)
def test_a_settled_key_lands_in_its_field(spec: KeySpec) -> None:
    """The table is the one place a key is declared: negotiating it and
    applying the answer fill the SessionParams field it names."""
    p = SessionParams()
    offer = {Rule.LIST: spec.ours.split(",")[-1], Rule.BOOL_AND: "Yes", Rule.BOOL_OR: "No"}.get(
        spec.rule, str(spec.hi) if spec.hi else "Discovery" if spec.values else "iqn.2026-11.test:x")
    answer = negotiate(spec.name, offer)
    settled = offer if answer is None else answer
    p.apply(spec.name, settled)
    assert getattr(p, spec.field) == spec.parse(settled) and not p.extra


# RFC 7143 §13's "Use:" line of every key the target knows: IO and LO keys
# belong to a login, ALL and FFPO ones may come in a Text Request too
USE = {
    "HeaderDigest": "IO", "DataDigest": "IO", "MaxConnections": "LO", "SendTargets": "FFPO",
    "TargetName": "IO", "InitiatorName": "IO", "TargetAlias": "ALL", "InitiatorAlias": "ALL",
    "TargetAddress": "ALL", "TargetPortalGroupTag": "IO", "InitialR2T": "LO", "ImmediateData": "LO",
    "MaxRecvDataSegmentLength": "ALL", "MaxBurstLength": "LO", "FirstBurstLength": "LO",
    "DefaultTime2Wait": "LO", "DefaultTime2Retain": "LO", "MaxOutstandingR2T": "LO", "DataPDUInOrder": "LO",
    "DataSequenceInOrder": "LO", "ErrorRecoveryLevel": "LO", "SessionType": "LO", "TaskReporting": "LO",
    "iSCSIProtocolLevel": "LO", "AuthMethod": "IO", "OFMarker": "IO", "IFMarker": "IO", "OFMarkInt": "IO",
    "IFMarkInt": "IO",
}


def test_every_key_has_its_use() -> None:
    assert set(USE) == set(KEYS)
    assert {name for name, spec in KEYS.items() if spec.leading_only} == {k for k, u in USE.items() if u == "LO"}
    assert {name for name, spec in KEYS.items() if spec.full_feature} == {k for k, u in USE.items()
                                                                          if u in ("ALL", "FFPO")}


@pytest.mark.parametrize("name", [k for k, u in USE.items() if u in ("IO", "LO")])
def test_a_login_key_in_full_feature_phase_is_rejected(name: str) -> None:
    """§6.2: Reject leaves the key at its current value; the value offered
    does not matter, even a good one."""
    spec = KEYS[name]
    offer = spec.ours.split(",")[0] if spec.ours else "1"
    assert renegotiate(name, offer) == "Reject"


@pytest.mark.parametrize("name", ["CHAP_A", "CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C"])
def test_chap_in_full_feature_phase_is_rejected(name: str) -> None:
    assert renegotiate(name, "5") == "Reject"  # §12.1.3: security stage only, not "not understood"


def test_what_may_change_in_full_feature_phase() -> None:
    assert renegotiate("MaxRecvDataSegmentLength", "4096") is None  # a declaration, taken as it is
    assert renegotiate("InitiatorAlias", "node01") is None
    assert renegotiate("X-com.example.thing", "1") == "NotUnderstood"
    with pytest.raises(KeyValueError):
        renegotiate("MaxRecvDataSegmentLength", "100")  # out of range: the session answers Reject
    with pytest.raises(KeyValueError):
        renegotiate("TargetAddress", "10.0.0.1:3260,1")  # only a target sends it
