"""Target ports: what a logical unit says about the path a command came in
on (SPC-4 §7.8.6 device identification designators of the target port) and
the ports it can be reached through (§6.36 REPORT TARGET PORT GROUPS,
§5.15 asymmetric logical unit access).

For iSCSI a SCSI target port is a target portal group (RFC 7143 §4.4.1:
the port's name is ``<TargetName>,t,0x<TPGT>``). bootsvc numbers both the
relative target port identifier and the ALUA target port group after the
portal group tag, so one number names a path everywhere: in SendTargets'
TargetAddress, in the login's TargetPortalGroupTag, in VPD page 83h and in
REPORT TARGET PORT GROUPS. Every group is active/optimized and the access
is implicit (TPGS 01b): every path is as good as another, the initiator
(dm-multipath, libiscsi) picks.

An I_T nexus is ``(initiator name, ISID, target name, TPGT)``; the
reservations code reads the first three (the initiator port) and keeps the
fourth as part of the nexus's identity.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Sequence

from .sense import INVALID_FIELD_IN_CDB, ScsiError

MAINTENANCE_IN = 0xA3
SA_REPORT_TARGET_PORT_GROUPS = 0x0A
_ISCSI = 0x5  # SPC-4 table 362: protocol identifier of iSCSI


class AccessState(enum.IntEnum):
    """SPC-4 §6.36 ASYMMETRIC ACCESS STATE."""

    ACTIVE_OPTIMIZED = 0x0


def nexus_port(nexus: Hashable) -> tuple[str, int] | None:
    """(target name, TPGT) of an iSCSI nexus; None for anything else (an
    embedder's own nexus value, which names no target port)."""
    if isinstance(nexus, tuple) and len(nexus) == 4:
        return str(nexus[2]), int(nexus[3])
    return None


def _designator(piv_assoc_type: int, code_set: int, value: bytes) -> bytes:
    """One identification descriptor (SPC-4 §7.8.6.1) with the iSCSI
    protocol identifier."""
    return bytes([(_ISCSI << 4) | code_set, piv_assoc_type, 0, len(value)]) + value


def _name_string(text: str) -> bytes:
    """A SCSI name string designator's value (§7.8.6.11): UTF-8, NUL
    terminated, padded to a multiple of 4."""
    raw = text.encode() + b"\0"
    return raw + bytes(-len(raw) % 4)


def port_designators(nexus: Hashable) -> bytes:
    """The designators of the path ``nexus`` came in on, for VPD page 83h:
    relative target port (type 4h), target port group (5h), the target
    port's SCSI name (8h, association 01b) and the target device's (8h,
    association 10b). Empty for a nexus that names no target port."""
    port = nexus_port(nexus)
    if port is None:
        return b""
    target, tpgt = port
    number = bytes(2) + tpgt.to_bytes(2, "big")
    return (_designator(0x94, 0x1, number)  # PIV, target port, relative target port
            + _designator(0x95, 0x1, number)  # PIV, target port, target port group
            + _designator(0x98, 0x3, _name_string(f"{target},t,0x{tpgt:04x}"))
            + _designator(0xA8, 0x3, _name_string(target)))  # PIV, target device


def is_report_target_port_groups(cdb: bytes) -> bool:
    return cdb[0] == MAINTENANCE_IN and len(cdb) > 1 and cdb[1] & 0x1F == SA_REPORT_TARGET_PORT_GROUPS


def report_target_port_groups(groups: Sequence[int], cdb: bytes) -> bytes:
    """REPORT TARGET PORT GROUPS parameter data (SPC-4 §6.36): one group per
    portal group, holding the one target port of the same number, each
    active/optimized, the only state supported (AO_SUP), none preferred
    over another. The length and
    extended formats (PARAMETER DATA FORMAT 000b/001b) are both served."""
    if len(cdb) < 12:
        raise ScsiError(INVALID_FIELD_IN_CDB, field=0)
    data_format = cdb[1] >> 5
    if data_format not in (0, 1):
        raise ScsiError(INVALID_FIELD_IN_CDB, field=1, bit=5)
    body = b"".join(bytes([AccessState.ACTIVE_OPTIMIZED, 0x01]) + g.to_bytes(2, "big")
                    + bytes([0, 0, 0, 1]) + bytes(2) + g.to_bytes(2, "big") for g in groups)
    if data_format == 1:  # extended header: format type 001b, implicit transition time 0
        return (len(body) + 4).to_bytes(4, "big") + bytes([0x10, 0, 0, 0]) + body
    return len(body).to_bytes(4, "big") + body
