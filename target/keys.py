"""Login and session keys (RFC 7143 §13) and the rules that settle each one.

Every key is declared once. A key that the session uses is a field of
:class:`SessionParams`, declared with :func:`key` (name, negotiation rule,
the RFC default, the target's preference, bounds); keys that only need an
answer are in ``_ANSWER_ONLY``. :data:`KEYS` is derived from both, and
:func:`negotiate` and :meth:`SessionParams.apply` work from it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any


class Rule(enum.Enum):
    DECLARATIVE = "declarative"  # the sender states a value; no answer owed
    BOOL_AND = "and"  # §6.2.2: result is Yes only if both say Yes
    BOOL_OR = "or"  # §6.2.2: result is Yes if either says Yes
    MIN = "min"  # numerical, result is the smaller value
    MAX = "max"  # numerical, result is the larger value
    LIST = "list"  # §6.2.1: the responder picks the first value it supports
    IRRELEVANT = "irrelevant"  # obsolete keys we answer with Irrelevant
    TARGET_ONLY = "target-only"  # only the target may send these


NOT_UNDERSTOOD = "NotUnderstood"
REJECT = "Reject"
IRRELEVANT = "Irrelevant"
NOT_SETTLED = (REJECT, NOT_UNDERSTOOD, IRRELEVANT)  # answers that leave a key as it was (§6.2)


class KeyValueError(ValueError):
    """An offer the target answers with Reject."""


def parse_number(value: str) -> int:
    """§5.1: decimal, or hex with 0x, or base64 with 0b (not used for numbers here)."""
    try:
        if value[:2] in ("0x", "0X"):
            return int(value[2:], 16)
        if not value.isdigit():
            raise ValueError
        return int(value)
    except ValueError:
        raise KeyValueError(f"not a number: {value!r}") from None


def parse_bool(value: str) -> bool:
    if value not in ("Yes", "No"):
        raise KeyValueError(f"not Yes or No: {value!r}")
    return value == "Yes"


def _is_crc32c(value: str) -> bool:
    return value == "CRC32C"


def _text(value: str) -> str:
    return value


@dataclass(frozen=True)
class KeySpec:
    name: str
    rule: Rule
    ours: str = ""  # the target's preference / supported list
    lo: int = 0  # numbers: the legal range (§13)
    hi: int = 0
    leading_only: bool = False  # §13: session-wide keys, leading connection only
    normal_only: bool = False  # §13: "Irrelevant when SessionType=Discovery"
    values: tuple[str, ...] = ()  # declarations: the only legal values, if limited
    field: str | None = None  # the SessionParams field that holds the outcome
    parse: Callable[[str], object] = _text  # settled text value -> field value
    # §13 "Use: IO": in a login only, never in a Text Request (leading-only keys are too)
    login_only: bool = False

    @property
    def full_feature(self) -> bool:
        """Whether the key may be negotiated or declared in a Text Request
        in Full Feature Phase (§6.6; §13 "Use: ALL" or "FFPO")."""
        return not (self.login_only or self.leading_only)


MAX_24 = (1 << 24) - 1
MAX_CONNECTIONS = 8  # the target's MaxConnections (§13.2) unless the operator says otherwise
# the highest ErrorRecoveryLevel the target agrees to (§13.20): 1 SNACK and
# digest error recovery (target/recovery.py), 2 connection recovery (target/allegiance.py)
MAX_ERROR_RECOVERY_LEVEL = 2
_METADATA = "iscsi_key"


def key(name: str, rule: Rule, default: Any, *, ours: object = "", lo: int = 0, hi: int = 0,
        leading_only: bool = False, normal_only: bool = False, values: tuple[str, ...] = (),
        parse: Callable[[str], object] | None = None, login_only: bool = False) -> Any:
    """A :class:`SessionParams` field holding the key ``name``: its RFC
    default and how it is negotiated. Numbers are parsed as numbers, Yes/No
    keys as booleans unless ``parse`` says otherwise."""
    if parse is None:
        parse = {bool: parse_bool, int: parse_number}.get(type(default), _text)
    spec = KeySpec(name, rule, str(ours), lo, hi, leading_only, normal_only, values, parse=parse,
                   login_only=login_only)
    return field(default=default, metadata={_METADATA: spec})


@dataclass
class SessionParams:
    """The outcome of negotiation, with the RFC's defaults (§13)."""

    # §13.1: chosen for a connection at its login (IO)
    header_digest: bool = key("HeaderDigest", Rule.LIST, False, ours="None,CRC32C", parse=_is_crc32c,
                              login_only=True)
    data_digest: bool = key("DataDigest", Rule.LIST, False, ours="None,CRC32C", parse=_is_crc32c,
                            login_only=True)
    # §13.2: connections one session may have (MC/S, target.allegiance); an
    # operator bounds it with the key preference MaxConnections
    max_connections: int = key("MaxConnections", Rule.MIN, 1, ours=MAX_CONNECTIONS, lo=1, hi=65535,
                               leading_only=True, normal_only=True)
    initial_r2t: bool = key("InitialR2T", Rule.BOOL_OR, True, ours="No", leading_only=True, normal_only=True)
    immediate_data: bool = key("ImmediateData", Rule.BOOL_AND, True, ours="Yes", leading_only=True,
                               normal_only=True)
    # §13.13: a READ of up to 16 MiB is one Data-In sequence, a write's R2T up
    # to as much (the session's write limit still bounds what is solicited)
    max_burst_length: int = key("MaxBurstLength", Rule.MIN, 262144, ours=MAX_24, lo=512, hi=MAX_24,
                                leading_only=True, normal_only=True)
    # §13.14: unsolicited data cannot be refused, so every command in the
    # CmdSN window may bring this much: kept at 256 KiB unless the operator
    # says otherwise (key preferences)
    first_burst_length: int = key("FirstBurstLength", Rule.MIN, 65536, ours=1 << 18, lo=512, hi=MAX_24,
                                  leading_only=True, normal_only=True)
    default_time2wait: int = key("DefaultTime2Wait", Rule.MAX, 2, ours=2, lo=0, hi=3600, leading_only=True)
    # §13.16: how long an ERL 2 session keeps a failed connection's tasks
    # for reassignment (nothing is kept below ERL 2, whatever is agreed)
    default_time2retain: int = key("DefaultTime2Retain", Rule.MIN, 20, ours=20, lo=0, hi=3600, leading_only=True)
    max_outstanding_r2t: int = key("MaxOutstandingR2T", Rule.MIN, 1, ours=16, lo=1, hi=65535, leading_only=True,
                                   normal_only=True)
    data_pdu_in_order: bool = key("DataPDUInOrder", Rule.BOOL_OR, True, ours="Yes", leading_only=True,
                                  normal_only=True)
    data_sequence_in_order: bool = key("DataSequenceInOrder", Rule.BOOL_OR, True, ours="Yes", leading_only=True,
                                       normal_only=True)
    # §13.20: the initiator's choice up to the target's most (unless the
    # operator's key preferences say less); ERL 1 is SNACK and digest error
    # recovery (§7.1.4.1, target.recovery), ERL 2 connection recovery
    # (target.allegiance); Debian's initiators ask 0
    error_recovery_level: int = key("ErrorRecoveryLevel", Rule.MIN, 0, ours=MAX_ERROR_RECOVERY_LEVEL, lo=0, hi=2,
                                    leading_only=True)
    # what the initiator said it can receive: our Data-In/Text PDUs stay below it
    initiator_max_recv: int = key("MaxRecvDataSegmentLength", Rule.DECLARATIVE, 8192, lo=512, hi=MAX_24)
    # what we told the initiator we accept (our own declaration, not an offer;
    # see :func:`declared_max_recv`)
    target_max_recv: int = 262144
    # InitiatorName and TargetName come in the first request of every
    # connection, not only the leading one (§13.5.1, §13.4)
    initiator_name: str = key("InitiatorName", Rule.DECLARATIVE, "", login_only=True)
    initiator_alias: str = key("InitiatorAlias", Rule.DECLARATIVE, "")  # §13.7: Use: ALL
    target_name: str = key("TargetName", Rule.DECLARATIVE, "", login_only=True)
    session_type: str = key("SessionType", Rule.DECLARATIVE, "Normal", leading_only=True,
                            values=("Normal", "Discovery"))
    auth_method: str = key("AuthMethod", Rule.LIST, "None", ours="None", login_only=True)  # §12: security stage
    extra: dict[str, str] = field(default_factory=dict)  # settled keys the session does not use
    chap_user: str = ""  # the CHAP name the initiator proved it holds the secret of (§12.1.3)

    def apply(self, name: str, value: str) -> None:
        """Record a settled value (our answer, or a declaration)."""
        spec = KEYS.get(name)
        if spec is None or spec.field is None:
            self.extra[name] = value
        else:
            setattr(self, spec.field, spec.parse(value))


# Keys the target answers but the session does not keep.
_ANSWER_ONLY = (
    KeySpec("iSCSIProtocolLevel", Rule.MIN, "1", 0, 31, leading_only=True),
    KeySpec("OFMarker", Rule.BOOL_AND, "No", login_only=True),
    KeySpec("IFMarker", Rule.BOOL_AND, "No", login_only=True),
    KeySpec("OFMarkInt", Rule.IRRELEVANT, login_only=True),
    KeySpec("IFMarkInt", Rule.IRRELEVANT, login_only=True),
    KeySpec("TaskReporting", Rule.LIST, "RFC3720", leading_only=True),  # §13.23: Use: LO
    KeySpec("TargetAlias", Rule.TARGET_ONLY),
    KeySpec("TargetAddress", Rule.TARGET_ONLY),
    KeySpec("TargetPortalGroupTag", Rule.TARGET_ONLY, login_only=True),
    KeySpec("SendTargets", Rule.TARGET_ONLY),
)

KEYS: dict[str, KeySpec] = {
    spec.name: spec
    for spec in (
        *(replace(f.metadata[_METADATA], field=f.name) for f in fields(SessionParams) if _METADATA in f.metadata),
        *_ANSWER_ONLY,
    )
}


def declared_max_recv(prefs: dict[str, str]) -> int:
    """Our MaxRecvDataSegmentLength (§13.12): the default, or the operator's
    preference up to 2**24-1. It takes effect in Full Feature Phase only (the
    login phase accepts 8 KiB), and is what one connection may make us hold
    for one PDU."""
    value = prefs.get("MaxRecvDataSegmentLength")
    if value is None:
        return SessionParams.target_max_recv
    return _in_range(KEYS["MaxRecvDataSegmentLength"], value)


# -- one answer per rule (§6.2) ------------------------------------------------


def _declared(spec: KeySpec, value: str, pref: str) -> None:
    if spec.hi:
        _in_range(spec, value)
    elif spec.values and value not in spec.values:
        raise KeyValueError(f"unknown {spec.name} {value!r}")
    return None


def _and(spec: KeySpec, value: str, pref: str) -> str:
    return "Yes" if parse_bool(value) and pref == "Yes" else "No"


def _or(spec: KeySpec, value: str, pref: str) -> str:
    return "Yes" if parse_bool(value) or pref == "Yes" else "No"


def _min(spec: KeySpec, value: str, pref: str) -> str:
    return str(min(_in_range(spec, value), int(pref)))


def _max(spec: KeySpec, value: str, pref: str) -> str:
    return str(max(_in_range(spec, value), int(pref)))


def _in_range(spec: KeySpec, value: str) -> int:
    n = parse_number(value)
    if not spec.lo <= n <= spec.hi:
        raise KeyValueError(f"{spec.name}={value} out of range {spec.lo}..{spec.hi}")
    return n


def _first_supported(spec: KeySpec, value: str, pref: str) -> str:
    supported = pref.split(",")
    return next((offered for offered in value.split(",") if offered in supported), REJECT)


def _irrelevant(spec: KeySpec, value: str, pref: str) -> str:
    return IRRELEVANT


def _target_only(spec: KeySpec, value: str, pref: str) -> str:
    raise KeyValueError(f"{spec.name} may only be sent by a target")


_ANSWER: dict[Rule, Callable[[KeySpec, str, str], str | None]] = {
    Rule.DECLARATIVE: _declared,
    Rule.BOOL_AND: _and,
    Rule.BOOL_OR: _or,
    Rule.MIN: _min,
    Rule.MAX: _max,
    Rule.LIST: _first_supported,
    Rule.IRRELEVANT: _irrelevant,
    Rule.TARGET_ONLY: _target_only,
}


def renegotiate(name: str, value: str, ours: dict[str, str] | None = None) -> str | None:
    """:func:`negotiate` for a Text Request in Full Feature Phase (§6.6): a
    key that may be used only in a login (§13 "Use: IO" or "LO", CHAP's
    keys of the security stage) is answered Reject, which leaves it at its
    current value (§6.2); the rest as in a login."""
    spec = KEYS.get(name)
    if name.startswith("CHAP_") or (spec is not None and not spec.full_feature):
        return REJECT
    return negotiate(name, value, ours)


def negotiate(name: str, value: str, ours: dict[str, str] | None = None) -> str | None:
    """The target's answer to ``name=value``, or None where no answer is owed.

    ``ours`` overrides the target's preferences from :data:`KEYS` (config).
    Raises :class:`KeyValueError` for values the RFC says to Reject.
    """
    spec = KEYS.get(name)
    if spec is None:
        return NOT_UNDERSTOOD
    return _ANSWER[spec.rule](spec, value, (ours or {}).get(name, spec.ours))
