"""Login and session keys (RFC 7143 §13) and the rules that settle each one.

Each key has a :class:`KeySpec`: how its value is negotiated (§6.2), the
target's preference, and the legal range. :func:`negotiate` answers one
offer from the initiator; :class:`SessionParams` holds the outcome.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Rule(enum.Enum):
    DECLARATIVE = "declarative"  # the sender states a value; no answer owed
    BOOL_AND = "and"  # §6.2.2: result is Yes only if both say Yes
    BOOL_OR = "or"  # §6.2.2: result is Yes if either says Yes
    MIN = "min"  # numerical, result is the smaller value
    MAX = "max"  # numerical, result is the larger value
    LIST = "list"  # §6.2.1: the responder picks the first value it supports
    IRRELEVANT = "irrelevant"  # obsolete keys we answer with Irrelevant
    TARGET_ONLY = "target-only"  # only the target may send these


@dataclass(frozen=True)
class KeySpec:
    name: str
    rule: Rule
    ours: str = ""  # the target's preference / supported list
    lo: int = 0
    hi: int = 0
    leading_only: bool = False  # §13: session-wide keys, leading connection only


def _num(name: str, rule: Rule, ours: int, lo: int, hi: int, leading: bool = True) -> KeySpec:
    return KeySpec(name, rule, str(ours), lo, hi, leading)


MAX_24 = (1 << 24) - 1

KEYS: dict[str, KeySpec] = {
    k.name: k
    for k in (
        KeySpec("AuthMethod", Rule.LIST, "None"),
        KeySpec("HeaderDigest", Rule.LIST, "None,CRC32C"),
        KeySpec("DataDigest", Rule.LIST, "None,CRC32C"),
        _num("MaxConnections", Rule.MIN, 1, 1, 65535),
        KeySpec("InitialR2T", Rule.BOOL_OR, "No", leading_only=True),
        KeySpec("ImmediateData", Rule.BOOL_AND, "Yes", leading_only=True),
        _num("MaxBurstLength", Rule.MIN, 1 << 20, 512, MAX_24),
        _num("FirstBurstLength", Rule.MIN, 1 << 18, 512, MAX_24),
        _num("DefaultTime2Wait", Rule.MAX, 2, 0, 3600),
        _num("DefaultTime2Retain", Rule.MIN, 0, 0, 3600),
        _num("MaxOutstandingR2T", Rule.MIN, 16, 1, 65535),
        KeySpec("DataPDUInOrder", Rule.BOOL_OR, "Yes", leading_only=True),
        KeySpec("DataSequenceInOrder", Rule.BOOL_OR, "Yes", leading_only=True),
        _num("ErrorRecoveryLevel", Rule.MIN, 0, 0, 2),
        _num("iSCSIProtocolLevel", Rule.MIN, 1, 0, 31),
        KeySpec("MaxRecvDataSegmentLength", Rule.DECLARATIVE, lo=512, hi=MAX_24),
        KeySpec("InitiatorName", Rule.DECLARATIVE, leading_only=True),
        KeySpec("InitiatorAlias", Rule.DECLARATIVE),
        KeySpec("TargetName", Rule.DECLARATIVE, leading_only=True),
        KeySpec("SessionType", Rule.DECLARATIVE, leading_only=True),
        KeySpec("OFMarker", Rule.BOOL_AND, "No"),
        KeySpec("IFMarker", Rule.BOOL_AND, "No"),
        KeySpec("OFMarkInt", Rule.IRRELEVANT),
        KeySpec("IFMarkInt", Rule.IRRELEVANT),
        KeySpec("TaskReporting", Rule.LIST, "RFC3720"),
        KeySpec("TargetAlias", Rule.TARGET_ONLY),
        KeySpec("TargetAddress", Rule.TARGET_ONLY),
        KeySpec("TargetPortalGroupTag", Rule.TARGET_ONLY),
        KeySpec("SendTargets", Rule.TARGET_ONLY),
    )
}

NOT_UNDERSTOOD = "NotUnderstood"
REJECT = "Reject"
IRRELEVANT = "Irrelevant"


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


@dataclass
class SessionParams:
    """The outcome of negotiation, with the RFC's defaults (§13)."""

    header_digest: bool = False
    data_digest: bool = False
    max_connections: int = 1
    initial_r2t: bool = True
    immediate_data: bool = True
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    default_time2wait: int = 2
    default_time2retain: int = 20
    max_outstanding_r2t: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    error_recovery_level: int = 0
    # what the initiator said it can receive: our Data-In/Text PDUs stay below it
    initiator_max_recv: int = 8192
    # what we told the initiator we accept
    target_max_recv: int = 262144
    initiator_name: str = ""
    initiator_alias: str = ""
    target_name: str = ""
    session_type: str = "Normal"
    auth_method: str = "None"
    extra: dict[str, str] = field(default_factory=dict)

    def apply(self, key: str, value: str) -> None:
        """Record a settled value (our answer, or a declaration)."""
        match key:
            case "HeaderDigest":
                self.header_digest = value == "CRC32C"
            case "DataDigest":
                self.data_digest = value == "CRC32C"
            case "MaxConnections":
                self.max_connections = int(value)
            case "InitialR2T":
                self.initial_r2t = value == "Yes"
            case "ImmediateData":
                self.immediate_data = value == "Yes"
            case "MaxBurstLength":
                self.max_burst_length = int(value)
            case "FirstBurstLength":
                self.first_burst_length = int(value)
            case "DefaultTime2Wait":
                self.default_time2wait = int(value)
            case "DefaultTime2Retain":
                self.default_time2retain = int(value)
            case "MaxOutstandingR2T":
                self.max_outstanding_r2t = int(value)
            case "DataPDUInOrder":
                self.data_pdu_in_order = value == "Yes"
            case "DataSequenceInOrder":
                self.data_sequence_in_order = value == "Yes"
            case "ErrorRecoveryLevel":
                self.error_recovery_level = int(value)
            case "MaxRecvDataSegmentLength":
                self.initiator_max_recv = parse_number(value)
            case "InitiatorName":
                self.initiator_name = value
            case "InitiatorAlias":
                self.initiator_alias = value
            case "TargetName":
                self.target_name = value
            case "SessionType":
                self.session_type = value
            case "AuthMethod":
                self.auth_method = value
            case _:
                self.extra[key] = value


def negotiate(key: str, value: str, ours: dict[str, str] | None = None) -> str | None:
    """The target's answer to ``key=value``, or None where no answer is owed.

    ``ours`` overrides the target's preferences from :data:`KEYS` (config).
    Raises :class:`KeyValueError` for values the RFC says to Reject.
    """
    spec = KEYS.get(key)
    if spec is None:
        return NOT_UNDERSTOOD
    pref = (ours or {}).get(key, spec.ours)
    match spec.rule:
        case Rule.DECLARATIVE:
            if key == "MaxRecvDataSegmentLength":
                n = parse_number(value)
                if not spec.lo <= n <= spec.hi:
                    raise KeyValueError(f"{key}={value} out of range")
            elif key == "SessionType" and value not in ("Normal", "Discovery"):
                raise KeyValueError(f"unknown SessionType {value!r}")
            return None
        case Rule.BOOL_AND:
            return "Yes" if parse_bool(value) and pref == "Yes" else "No"
        case Rule.BOOL_OR:
            return "Yes" if parse_bool(value) or pref == "Yes" else "No"
        case Rule.MIN | Rule.MAX:
            n = parse_number(value)
            if not spec.lo <= n <= spec.hi:
                raise KeyValueError(f"{key}={value} out of range {spec.lo}..{spec.hi}")
            mine = int(pref)
            return str(min(n, mine) if spec.rule is Rule.MIN else max(n, mine))
        case Rule.LIST:
            supported = pref.split(",")
            for offered in value.split(","):
                if offered in supported:
                    return offered
            return REJECT
        case Rule.IRRELEVANT:
            return IRRELEVANT
        case Rule.TARGET_ONLY:
            raise KeyValueError(f"{key} may only be sent by a target")
    raise AssertionError(spec.rule)
