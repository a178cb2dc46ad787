"""CHAP in the login's security stage (RFC 7143 §12.1.3, RFC 1994), without a
network: the exchange itself, and the login state machine around it (no
way past the security stage without the secret, status 0201 for every
failure). libiscsi and iPXE test it for real in tests/test_target_chap.py
and tests/e2e."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from target.chap import (
    ChapAlgorithm,
    ChapAuth,
    ChapError,
    ChapExchange,
    ChapSecret,
    decode_binary,
    pick_algorithm,
    response,
)
from target.login import Login, LoginStatus
from target.pdu import Stage
from target.text import decode_text
from tests.test_login import IQN_I, IQN_T, Ctx, FakeTarget, req, status

FORWARD = ChapSecret("node01", b"forward-secret-1")
REVERSE = ChapSecret("bootsvc", b"reverse-secret-2")
MUTUAL = ChapAuth(FORWARD, REVERSE)
CHALLENGE_I = bytes(range(16))


def answer(keys: list[tuple[str, str]], secret: bytes = FORWARD.secret, user: str = FORWARD.user) -> dict[str, str]:
    """What an initiator sends back to the target's CHAP_A/I/C."""
    got = dict(keys)
    algorithm = ChapAlgorithm(int(got["CHAP_A"]))
    r = response(algorithm, int(got["CHAP_I"]), secret, decode_binary(got["CHAP_C"], "CHAP_C"))
    return {"CHAP_N": user, "CHAP_R": "0x" + r.hex()}


def test_rfc1994_response_is_hash_of_id_secret_challenge() -> None:
    assert response(ChapAlgorithm.MD5, 7, b"secret", b"chal") == hashlib.md5(b"\x07secretchal").digest()
    assert response(ChapAlgorithm.SHA3_256, 0, b"s", b"c") == hashlib.sha3_256(b"\x00sc").digest()


def test_the_initiators_order_of_preference_wins() -> None:
    everything = tuple(ChapAlgorithm)
    assert pick_algorithm("7,5", everything) is ChapAlgorithm.SHA256
    assert pick_algorithm("5,7", everything) is ChapAlgorithm.MD5
    assert pick_algorithm("99, 8", everything) is ChapAlgorithm.SHA3_256
    assert pick_algorithm("5", (ChapAlgorithm.SHA256,)) is None
    assert pick_algorithm("x,,", everything) is None


@pytest.mark.parametrize("algorithm", list(ChapAlgorithm))
def test_each_algorithm_with_a_random_challenge_of_at_least_16_bytes(algorithm: ChapAlgorithm) -> None:
    seen = set()
    for _ in range(3):
        x = ChapExchange(ChapAuth(FORWARD))
        keys = x.receive({"CHAP_A": f"{int(algorithm)},5"})
        challenge = decode_binary(dict(keys)["CHAP_C"], "c")
        assert dict(keys)["CHAP_A"] == str(int(algorithm))
        assert len(challenge) >= max(16, algorithm.digest_size)
        seen.add(challenge)
        assert x.receive(answer(keys)) == []
        assert x.done
    assert len(seen) == 3


def test_wrong_secret_and_wrong_name_are_refused() -> None:
    x = ChapExchange(ChapAuth(FORWARD))
    keys = x.receive({"CHAP_A": "5"})
    with pytest.raises(ChapError, match="secret"):
        x.receive(answer(keys, secret=b"not-the-secret!"))
    x = ChapExchange(ChapAuth(FORWARD))
    keys = x.receive({"CHAP_A": "5"})
    with pytest.raises(ChapError, match="name"):
        x.receive(answer(keys, user="node02"))


def test_mutual_chap_answers_the_initiators_challenge() -> None:
    x = ChapExchange(MUTUAL)
    keys = x.receive({"CHAP_A": "7"})
    got = dict(x.receive({**answer(keys, user="node01"), "CHAP_I": "9", "CHAP_C": "0x" + CHALLENGE_I.hex()}))
    assert got["CHAP_N"] == "bootsvc"
    assert got["CHAP_R"] == "0x" + response(ChapAlgorithm.SHA256, 9, REVERSE.secret, CHALLENGE_I).hex()


def test_a_reflected_challenge_is_refused() -> None:
    x = ChapExchange(MUTUAL)
    keys = x.receive({"CHAP_A": "5"})
    ours = dict(keys)["CHAP_C"]
    with pytest.raises(ChapError, match="reflection"):
        x.receive({**answer(keys), "CHAP_I": "1", "CHAP_C": ours})


def test_mutual_secret_equal_to_forward_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="reflection"):
        ChapAuth(FORWARD, ChapSecret("bootsvc", FORWARD.secret))


def test_mutual_required_but_not_asked_and_asked_but_not_configured() -> None:
    x = ChapExchange(MUTUAL)
    keys = x.receive({"CHAP_A": "5"})
    with pytest.raises(ChapError, match="mutual CHAP is required"):
        x.receive(answer(keys))
    x = ChapExchange(ChapAuth(FORWARD))
    keys = x.receive({"CHAP_A": "5"})
    with pytest.raises(ChapError, match="no secret"):
        x.receive({**answer(keys), "CHAP_I": "1", "CHAP_C": "0x" + CHALLENGE_I.hex()})


def test_secrets_are_at_least_12_bytes_and_never_shown() -> None:
    with pytest.raises(ValueError, match="12"):
        ChapSecret("u", b"short")
    assert "forward-secret" not in repr(FORWARD) and "forward-secret" not in repr(MUTUAL)


@given(st.text(max_size=40))
def test_any_binary_value_decodes_or_is_a_chap_error(value: str) -> None:
    try:
        decode_binary(value, "CHAP_R")
    except ChapError:
        pass


def test_base64_values_are_accepted() -> None:
    assert decode_binary("0bAAEC", "x") == b"\x00\x01\x02"


# -- the login around it -------------------------------------------------------------


def chap_login(auth: ChapAuth | None = ChapAuth(FORWARD), **kw: object) -> Login:
    return Login(Ctx([FakeTarget(IQN_T, auth=auth)]), **kw)  # type: ignore[arg-type]


def first(login: Login, method: str = "CHAP,None"):  # type: ignore[no-untyped-def]
    return login.receive(req([("InitiatorName", IQN_I), ("TargetName", IQN_T), ("SessionType", "Normal"),
                              ("AuthMethod", method)], Stage.SECURITY, Stage.OPERATIONAL, transit=True))


def sec(login: Login, keys: dict[str, str], transit: bool = True):  # type: ignore[no-untyped-def]
    return login.receive(req(list(keys.items()), Stage.SECURITY, Stage.OPERATIONAL, transit=transit))


def test_login_with_chap_stays_in_security_until_the_secret_is_proved() -> None:
    login = chap_login()
    r = first(login)
    assert not r.failed and not r.response.transit  # T=0: CHAP first
    assert dict(decode_text(r.response.data))["AuthMethod"] == "CHAP"
    r = sec(login, {"CHAP_A": "5"})
    assert not r.response.transit
    keys = decode_text(r.response.data)
    r = sec(login, answer(keys))
    assert not r.failed and r.response.transit and r.response.nsg == Stage.OPERATIONAL
    r = login.receive(req([("MaxRecvDataSegmentLength", "65536")], Stage.OPERATIONAL, Stage.FULL_FEATURE,
                          transit=True))
    assert r.params is not None and r.params.chap_user == "node01"


def test_login_with_the_wrong_secret_is_0201() -> None:
    login = chap_login()
    first(login)
    keys = decode_text(sec(login, {"CHAP_A": "5"}).response.data)
    r = sec(login, answer(keys, secret=b"guessed-secret!!"))
    assert r.failed and status(r.response) == LoginStatus.AUTHENTICATION_FAILURE
    assert "secret" in r.why


@pytest.mark.parametrize("method", ["None", "SRP,None", "KRB5"])
def test_a_chap_target_refuses_other_methods(method: str) -> None:
    r = first(chap_login(), method)
    assert r.failed and status(r.response) == LoginStatus.AUTHENTICATION_FAILURE


def test_skipping_the_security_stage_is_refused() -> None:
    login = chap_login()
    r = login.receive(req([("InitiatorName", IQN_I), ("TargetName", IQN_T)], Stage.OPERATIONAL,
                          Stage.FULL_FEATURE, transit=True))
    assert r.failed and status(r.response) == LoginStatus.AUTHENTICATION_FAILURE and r.params is None


def test_leaving_security_without_authmethod_is_refused() -> None:
    login = chap_login()
    r = login.receive(req([("InitiatorName", IQN_I), ("TargetName", IQN_T)], Stage.SECURITY,
                          Stage.FULL_FEATURE, transit=True))
    assert r.failed and status(r.response) == LoginStatus.AUTHENTICATION_FAILURE


def test_chap_keys_without_chap_are_refused() -> None:
    login = chap_login(auth=None)
    first(login)
    r = login.receive(req([("CHAP_A", "5")], Stage.OPERATIONAL, Stage.FULL_FEATURE, transit=True))
    assert r.failed and status(r.response) == LoginStatus.AUTHENTICATION_FAILURE


def test_a_target_without_chap_still_takes_authmethod_none() -> None:
    login = chap_login(auth=None)
    r = first(login)
    assert not r.failed and r.response.transit
    assert dict(decode_text(r.response.data))["AuthMethod"] == "None"


def test_a_throttled_source_is_refused_before_the_response_is_checked() -> None:
    login = chap_login(throttled="too many failed logins from 10.0.0.9")
    first(login)
    keys = decode_text(sec(login, {"CHAP_A": "5"}).response.data)
    r = sec(login, answer(keys))  # even the right secret: no guessing while throttled
    assert r.failed and "too many" in r.why


def test_discovery_chap_when_configured() -> None:
    login = Login(Ctx([]), discovery_auth=ChapAuth(FORWARD))
    r = login.receive(req([("InitiatorName", IQN_I), ("SessionType", "Discovery"), ("AuthMethod", "None")],
                          Stage.SECURITY, Stage.OPERATIONAL, transit=True))
    assert r.failed and status(r.response) == LoginStatus.AUTHENTICATION_FAILURE
