"""CHAP for the login's security stage (RFC 7143 §12.1.3, RFC 1994), sans I/O.

The target challenges, the initiator answers ``H(id || secret || challenge)``
with the secret they share; with mutual CHAP the initiator then challenges
the target the same way with a second secret. :class:`ChapExchange` holds
one login's side of that: it picks the hash (``CHAP_A``) in the initiator's
order of preference, makes a random identifier and challenge, checks the
response in constant time, and answers the initiator's challenge.

What it refuses, and why:

- a reflected challenge (the initiator sending our own challenge back for
  us to answer): with it an attacker who knows no secret would get the
  response it needs from us;
- a mutual secret equal to the forward one, for the same reason
  (:class:`ChapAuth` refuses it when made);
- a response of the wrong length, a second response, keys out of order.

Every refusal is a :class:`ChapError`, which the login turns into status
0201 (authentication failure) with the reason for the operator; the
initiator learns only the status.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

MIN_SECRET = 12  # bytes; RFC 7143 §12.1.3 wants secrets an attacker cannot guess
MAX_SECRET = 255  # what initiators keep (open-iscsi's AUTH_STR_MAX_LEN is 256 with the NUL)
MIN_CHALLENGE = 16  # bytes, at least; the hash's own length when longer
MAX_BINARY = 1024  # §12.1.3: CHAP_C and CHAP_R values are at most 1024 bytes


class ChapAlgorithm(enum.IntEnum):
    """CHAP_A values (IANA "PPP Authentication Algorithms"; RFC 7143 §12.1.3
    names 5; 6, 7 and 8 are those open-iscsi and LIO added)."""

    MD5 = 5
    SHA1 = 6
    SHA256 = 7
    SHA3_256 = 8

    @property
    def hash(self) -> Callable[[bytes], hashlib._Hash]:
        return _HASHES[self]

    @property
    def digest_size(self) -> int:
        return self.hash(b"").digest_size


_HASHES: dict[ChapAlgorithm, Callable[[bytes], hashlib._Hash]] = {
    ChapAlgorithm.MD5: hashlib.md5,
    ChapAlgorithm.SHA1: hashlib.sha1,
    ChapAlgorithm.SHA256: hashlib.sha256,
    ChapAlgorithm.SHA3_256: hashlib.sha3_256,
}

# Strongest first: what we say when the initiator's list leaves us a choice
# of order (it does not: §12.1.3 has the target take the first it supports).
ALL_ALGORITHMS = (ChapAlgorithm.SHA3_256, ChapAlgorithm.SHA256, ChapAlgorithm.SHA1, ChapAlgorithm.MD5)


class ChapError(Exception):
    """The initiator failed CHAP (or broke its rules): status 0201."""


@dataclass(frozen=True)
class ChapSecret:
    """A CHAP name and the secret that goes with it. ``repr`` never shows
    the secret, so it cannot end up in a log line or a traceback."""

    user: str
    secret: bytes

    def __post_init__(self) -> None:
        if not self.user:
            raise ValueError("a CHAP user name may not be empty")
        if "\0" in self.user or len(self.user.encode()) > MAX_SECRET:
            raise ValueError("a CHAP user name is at most 255 bytes, without NUL")
        if not MIN_SECRET <= len(self.secret) <= MAX_SECRET:
            raise ValueError(f"a CHAP secret has {MIN_SECRET} to {MAX_SECRET} bytes, not {len(self.secret)}")

    def __repr__(self) -> str:
        return f"ChapSecret(user={self.user!r}, secret=<{len(self.secret)} bytes>)"


@dataclass(frozen=True)
class ChapAuth:
    """What a target asks of an initiator: ``forward`` is the name and
    secret the initiator proves it knows; ``reverse`` (mutual CHAP), when
    set, what the target answers with when the initiator challenges it."""

    forward: ChapSecret
    reverse: ChapSecret | None = None

    def __post_init__(self) -> None:
        if self.reverse is not None and hmac.compare_digest(self.reverse.secret, self.forward.secret):
            raise ValueError("the mutual CHAP secret must differ from the forward one (reflection)")

    @property
    def mutual(self) -> bool:
        return self.reverse is not None


def response(algorithm: ChapAlgorithm, ident: int, secret: bytes, challenge: bytes) -> bytes:
    """RFC 1994 §4.1: H(identifier || secret || challenge)."""
    return algorithm.hash(bytes([ident]) + secret + challenge).digest()


def decode_binary(value: str, what: str) -> bytes:
    """§6.1: a binary value in hex (``0x``) or base64 (``0b``)."""
    prefix, body = value[:2].lower(), value[2:]
    try:
        if prefix == "0x":
            data = bytes.fromhex(body if len(body) % 2 == 0 else "0" + body)
        elif prefix == "0b":
            data = base64.b64decode(body, validate=True)
        else:
            raise ValueError
    except (ValueError, binascii.Error):
        raise ChapError(f"{what} is not a hex (0x) or base64 (0b) value") from None
    if not 0 < len(data) <= MAX_BINARY:
        raise ChapError(f"{what} has {len(data)} bytes (1 to {MAX_BINARY})")
    return data


def encode_binary(data: bytes) -> str:
    return "0x" + data.hex()


def pick_algorithm(offer: str, supported: tuple[ChapAlgorithm, ...]) -> ChapAlgorithm | None:
    """§12.1.3: the first of the initiator's CHAP_A values we support."""
    for item in offer.split(","):
        if item.strip().isdigit() and int(item) in supported:
            return ChapAlgorithm(int(item))
    return None


class Step(enum.Enum):
    ALGORITHM = "algorithm"  # waiting for CHAP_A
    RESPONSE = "response"  # challenged; waiting for CHAP_N and CHAP_R
    DONE = "done"  # the initiator proved itself (and we answered its challenge)


@dataclass
class ChapExchange:
    """One login's CHAP (§12.1.3): :meth:`receive` takes the CHAP keys of
    each Login Request and returns the keys to answer with."""

    auth: ChapAuth
    supported: tuple[ChapAlgorithm, ...] = ALL_ALGORITHMS
    step: Step = Step.ALGORITHM
    algorithm: ChapAlgorithm | None = None
    ident: int = 0
    challenge: bytes = b""
    answered: bool = False  # we proved the reverse secret (mutual CHAP)

    @property
    def done(self) -> bool:
        return self.step is Step.DONE

    @property
    def method(self) -> str:
        """How the initiator authenticated, e.g. ``chap-md5`` or
        ``mutual-chap-sha256`` (for the login event)."""
        if not self.done or self.algorithm is None:
            return "none"
        return ("mutual-" if self.answered else "") + "chap-" + self.algorithm.name.lower().replace("_", "-")

    def receive(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        if self.step is Step.ALGORITHM:
            return self._challenge(keys)
        if self.step is Step.RESPONSE:
            return self._verify(keys)
        raise ChapError("CHAP keys after CHAP completed")

    def _challenge(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        if "CHAP_A" not in keys or set(keys) - {"CHAP_A"}:
            raise ChapError("expected CHAP_A first")
        algorithm = pick_algorithm(keys["CHAP_A"], self.supported)
        if algorithm is None:
            # §12.1.3 has the target answer CHAP_A=Reject and fail the login
            raise ChapError(f"no supported CHAP_A in {keys['CHAP_A'][:64]!r} "
                            f"(bootsvc offers {','.join(str(int(a)) for a in self.supported)})")
        self.algorithm = algorithm
        self.ident = secrets.randbelow(256)
        self.challenge = secrets.token_bytes(max(MIN_CHALLENGE, algorithm.digest_size))
        self.step = Step.RESPONSE
        return [("CHAP_A", str(int(algorithm))), ("CHAP_I", str(self.ident)),
                ("CHAP_C", encode_binary(self.challenge))]

    def _verify(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        assert self.algorithm is not None
        if "CHAP_N" not in keys or "CHAP_R" not in keys:
            raise ChapError("expected CHAP_N and CHAP_R")
        if set(keys) - {"CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C"}:
            raise ChapError(f"unexpected CHAP keys {sorted(set(keys) - {'CHAP_N', 'CHAP_R', 'CHAP_I', 'CHAP_C'})}")
        got = decode_binary(keys["CHAP_R"], "CHAP_R")
        want = response(self.algorithm, self.ident, self.auth.forward.secret, self.challenge)
        # both compared in full, in constant time: neither the name nor the
        # response may be probed byte by byte through timing
        name_ok = hmac.compare_digest(keys["CHAP_N"].encode(), self.auth.forward.user.encode())
        response_ok = hmac.compare_digest(got, want)
        if not (name_ok and response_ok):
            raise ChapError("wrong CHAP name" if not name_ok else "wrong CHAP response (secret)")
        answer = self._answer_mutual(keys)
        self.step = Step.DONE
        return answer

    def _answer_mutual(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        """The initiator's challenge to us (mutual CHAP), if it sent one."""
        has_i, has_c = "CHAP_I" in keys, "CHAP_C" in keys
        if has_i != has_c:
            raise ChapError("CHAP_I and CHAP_C come together")
        reverse = self.auth.reverse
        if not has_c:
            if reverse is not None:
                raise ChapError("mutual CHAP is required but the initiator sent no challenge")
            return []
        if reverse is None:
            raise ChapError("the initiator asked for mutual CHAP, which this target has no secret for")
        assert self.algorithm is not None
        ident_text = keys["CHAP_I"]
        if not ident_text.isdigit() or int(ident_text) > 255:
            raise ChapError(f"CHAP_I {ident_text[:16]!r} is not 0-255")
        theirs = decode_binary(keys["CHAP_C"], "CHAP_C")
        if hmac.compare_digest(theirs, self.challenge):
            raise ChapError("the initiator sent our own challenge back (reflection)")
        ours = response(self.algorithm, int(ident_text), reverse.secret, theirs)
        self.answered = True
        return [("CHAP_N", reverse.user), ("CHAP_R", encode_binary(ours))]
