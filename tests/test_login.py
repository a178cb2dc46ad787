"""The login state machine (RFC 7143 §6, §11.12-13) without a network."""

from __future__ import annotations

from dataclasses import dataclass

from target.chap import ChapAuth
from target.keys import SessionParams
from target.login import Login, LoginFailed, LoginStatus
from target.pdu import LoginRequest, Stage
from target.text import decode_text, encode_text

IQN_T = "iqn.2026-11.test:disk"
IQN_I = "iqn.2026-11.test:initiator"
ISID = bytes.fromhex("400001370000")


@dataclass
class FakeTarget:
    name: str
    alias: str = "disk"
    allowed: str | None = None
    auth: ChapAuth | None = None

    def allows(self, initiator_name: str) -> bool:
        return self.allowed is None or initiator_name == self.allowed


class Ctx:
    portal_group_tag = 1

    def __init__(self, targets: list[FakeTarget]) -> None:
        self.targets = {t.name: t for t in targets}
        self.admitted: list[SessionParams] = []

    def find_target(self, name: str) -> FakeTarget | None:
        return self.targets.get(name)

    def admit(self, isid: bytes, tsih: int, params: SessionParams) -> int:
        if tsih:
            raise LoginFailed(LoginStatus.SESSION_DOES_NOT_EXIST, "no such session")
        self.admitted.append(params)
        return 42


def req(pairs: list[tuple[str, str]], csg: int, nsg: int = 0, transit: bool = False, **kw: object) -> LoginRequest:
    return LoginRequest(immediate=True, transit=transit, csg=csg, nsg=nsg, isid=ISID, itt=1, cmdsn=10,
                        data=encode_text(pairs), **kw)  # type: ignore[arg-type]


def status(resp: object) -> int:
    return (resp.status_class << 8) | resp.status_detail  # type: ignore[attr-defined]


def test_security_then_operational_then_ffp() -> None:
    ctx = Ctx([FakeTarget(IQN_T)])
    login = Login(ctx, window=64)
    r = login.receive(req([("InitiatorName", IQN_I), ("TargetName", IQN_T), ("SessionType", "Normal"),
                           ("AuthMethod", "CHAP,None")], Stage.SECURITY, Stage.OPERATIONAL, transit=True))
    assert not r.failed and r.params is None
    assert r.response.transit and r.response.nsg == Stage.OPERATIONAL
    answers = dict(decode_text(r.response.data))
    assert answers["AuthMethod"] == "None"
    assert answers["TargetPortalGroupTag"] == "1"
    r = login.receive(req([("HeaderDigest", "None"), ("MaxRecvDataSegmentLength", "65536"),
                           ("ImmediateData", "Yes"), ("InitialR2T", "No"), ("X-foo", "1")],
                          Stage.OPERATIONAL, Stage.FULL_FEATURE, transit=True))
    assert r.params is not None and r.response.tsih == 42
    assert r.response.maxcmdsn == 10 + 63 and r.response.expcmdsn == 10
    answers = dict(decode_text(r.response.data))
    assert answers["X-foo"] == "NotUnderstood" and answers["InitialR2T"] == "No"
    assert r.params.initiator_max_recv == 65536 and not r.params.initial_r2t
    assert ctx.admitted and ctx.admitted[0].target_name == IQN_T


def test_straight_to_operational_stage() -> None:
    login = Login(Ctx([FakeTarget(IQN_T)]))
    r = login.receive(req([("InitiatorName", IQN_I), ("TargetName", IQN_T)], Stage.OPERATIONAL,
                          Stage.FULL_FEATURE, transit=True))
    assert r.params is not None and not r.failed


def test_statsn_advances_per_response() -> None:
    login = Login(Ctx([FakeTarget(IQN_T)]))
    a = login.receive(req([("InitiatorName", IQN_I), ("TargetName", IQN_T)], Stage.SECURITY))
    b = login.receive(req([("AuthMethod", "None")], Stage.SECURITY, Stage.OPERATIONAL, transit=True))
    assert b.response.statsn == a.response.statsn + 1


def test_discovery_needs_no_target_and_answers_irrelevant() -> None:
    login = Login(Ctx([]))
    r = login.receive(req([("InitiatorName", IQN_I), ("SessionType", "Discovery"), ("InitialR2T", "Yes")],
                          Stage.OPERATIONAL, Stage.FULL_FEATURE, transit=True))
    assert r.params is not None and r.params.session_type == "Discovery"
    assert dict(decode_text(r.response.data))["InitialR2T"] == "Irrelevant"


def test_failures_carry_the_rfc_status() -> None:
    cases = [
        ([("TargetName", IQN_T)], LoginStatus.MISSING_PARAMETER),
        ([("InitiatorName", IQN_I)], LoginStatus.MISSING_PARAMETER),
        ([("InitiatorName", IQN_I), ("TargetName", "iqn.2026-11.test:nope")], LoginStatus.NOT_FOUND),
        ([("InitiatorName", "iqn.2026-11.test:stranger"), ("TargetName", "iqn.2026-11.test:acl")],
         LoginStatus.AUTHORIZATION_FAILURE),
        ([("InitiatorName", IQN_I), ("TargetName", IQN_T), ("SessionType", "Weird")],
         LoginStatus.INITIATOR_ERROR),
    ]
    for pairs, expected in cases:
        login = Login(Ctx([FakeTarget(IQN_T), FakeTarget("iqn.2026-11.test:acl", allowed=IQN_I)]))
        r = login.receive(req(pairs, Stage.OPERATIONAL, Stage.FULL_FEATURE, transit=True))
        assert r.failed and status(r.response) == expected, pairs


def test_auth_method_we_cannot_do() -> None:
    login = Login(Ctx([FakeTarget(IQN_T)]))
    r = login.receive(req([("InitiatorName", IQN_I), ("TargetName", IQN_T), ("AuthMethod", "KRB5,SRP")],
                          Stage.SECURITY))
    assert r.failed and status(r.response) == LoginStatus.AUTHENTICATION_FAILURE


def test_bad_stage_transitions() -> None:
    for csg, nsg in ((Stage.OPERATIONAL, Stage.SECURITY), (Stage.SECURITY, 2), (Stage.FULL_FEATURE, 3)):
        login = Login(Ctx([FakeTarget(IQN_T)]))
        r = login.receive(req([("InitiatorName", IQN_I), ("TargetName", IQN_T)], csg, nsg, transit=True))
        assert r.failed and status(r.response) == LoginStatus.INITIATOR_ERROR


def test_unsupported_version() -> None:
    login = Login(Ctx([FakeTarget(IQN_T)]))
    r = login.receive(req([("InitiatorName", IQN_I)], Stage.SECURITY, version_min=1, version_max=1))
    assert r.failed and status(r.response) == LoginStatus.UNSUPPORTED_VERSION


def test_garbage_text_fails_cleanly() -> None:
    login = Login(Ctx([FakeTarget(IQN_T)]))
    bad = LoginRequest(immediate=True, csg=1, nsg=3, transit=True, isid=ISID, data=b"\xff\xfe garbage")
    r = login.receive(bad)
    assert r.failed and status(r.response) == LoginStatus.INITIATOR_ERROR


def test_continued_text_is_joined() -> None:
    login = Login(Ctx([FakeTarget(IQN_T)]))
    text = encode_text([("InitiatorName", IQN_I), ("TargetName", IQN_T)])
    first = LoginRequest(immediate=True, cont=True, csg=1, isid=ISID, data=text[:10])
    r = login.receive(first)
    assert not r.failed and not r.response.data
    r = login.receive(LoginRequest(immediate=True, transit=True, csg=1, nsg=3, isid=ISID, data=text[10:]))
    assert r.params is not None and r.params.target_name == IQN_T


def test_unknown_tsih_is_refused() -> None:
    login = Login(Ctx([FakeTarget(IQN_T)]))
    r = login.receive(req([("InitiatorName", IQN_I), ("TargetName", IQN_T)], Stage.OPERATIONAL,
                          Stage.FULL_FEATURE, transit=True, tsih=7))
    assert r.failed


def test_isid_change_mid_login() -> None:
    login = Login(Ctx([FakeTarget(IQN_T)]))
    login.receive(req([("InitiatorName", IQN_I), ("TargetName", IQN_T)], Stage.SECURITY))
    r = login.receive(LoginRequest(immediate=True, csg=0, isid=bytes(6), data=b""))
    assert r.failed


def test_endless_continuation_is_refused() -> None:
    login = Login(Ctx([FakeTarget(IQN_T)]))
    r = None
    for _ in range(20):
        r = login.receive(LoginRequest(immediate=True, cont=True, csg=1, isid=ISID, data=b"X" * 8000))
        if r.failed:
            break
    assert r is not None and r.failed and status(r.response) == LoginStatus.OUT_OF_RESOURCES


def test_login_timer() -> None:
    login = Login(Ctx([FakeTarget(IQN_T)]), started=100.0, timeout=30.0)
    assert login.next_timer() == 130.0
    assert not login.handle_timer(129.9) and login.handle_timer(130.0)


def test_a_long_answer_goes_in_pieces_within_8_kib() -> None:
    """Hundreds of keys we answer NotUnderstood (once 109 KB in one PDU): the
    answer leaves in pieces of at most 8 KiB with the C bit (§6.1), each
    asked for by an empty request; the last one carries the transition."""
    ctx = Ctx([FakeTarget(IQN_T)])
    login = Login(ctx)
    many = [(f"X-unknown-key-{i:04}", "v") for i in range(2000)]
    r = login.receive(req([("InitiatorName", IQN_I), ("TargetName", IQN_T), *many], Stage.OPERATIONAL,
                          Stage.FULL_FEATURE, transit=True))
    pieces = [r.response]
    while pieces[-1].cont:
        assert not pieces[-1].transit and len(pieces[-1].data) <= 8192 and r.params is None
        r = login.receive(req([], Stage.OPERATIONAL, Stage.FULL_FEATURE, transit=True))
        pieces.append(r.response)
    assert len(pieces) > 3 and pieces[-1].transit and r.params is not None and ctx.admitted
    answers = dict(decode_text(b"".join(p.data for p in pieces)))
    assert all(answers[k] == "NotUnderstood" for k, _ in many)


def test_text_while_the_answer_continues_is_refused() -> None:
    login = Login(Ctx([FakeTarget(IQN_T)]))
    many = [(f"X-unknown-key-{i:04}", "v") for i in range(2000)]
    r = login.receive(req([("InitiatorName", IQN_I), ("TargetName", IQN_T), *many], Stage.OPERATIONAL,
                          Stage.FULL_FEATURE, transit=True))
    assert r.response.cont
    r = login.receive(req([("HeaderDigest", "None")], Stage.OPERATIONAL, Stage.FULL_FEATURE, transit=True))
    assert r.failed and status(r.response) == LoginStatus.INITIATOR_ERROR
