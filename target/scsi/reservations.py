"""Reservations of one logical unit: SPC-4 persistent reservations
(PERSISTENT RESERVE IN/OUT, §5.12, §6.15, §6.16) and the SPC-2 RESERVE(6)/
RELEASE(6) they coexist with (SPC-4 annex B).

Sans-I/O: :class:`Reservations` takes decoded requests and an I_T nexus and
answers data or raises (:class:`ReservationConflict`, ``ScsiError``); the
only I/O is the optional APTPL file its owner names, written atomically.

An I_T nexus here is whatever the transport hands the LUN; for iSCSI it is
``(initiator name, ISID, target name, TPGT)`` (RFC 7143 §4.4.1: the
initiator port is the name plus ISID, which TransportIDs (SPC-4 §7.6.4.6)
are made of; the target port is the target's portal group). A nexus of the
first three alone (before portal groups) is read the same way.
"""

from __future__ import annotations

import enum
import json
import os
import struct
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .sense import (
    INVALID_FIELD_IN_CDB,
    INVALID_FIELD_IN_PARAMETER_LIST,
    INVALID_RELEASE_OF_PERSISTENT_RESERVATION,
    PARAMETER_LIST_LENGTH_ERROR,
    REGISTRATIONS_PREEMPTED,
    RESERVATIONS_PREEMPTED,
    RESERVATIONS_RELEASED,
    Asc,
    ScsiError,
)

Nexus = Hashable


class ReservationConflict(Exception):
    """The command ends with RESERVATION CONFLICT status (SAM-5 §5.3.1)."""


class PrType(enum.IntEnum):
    """Persistent reservation types (SPC-4 §6.16.3, table 174)."""

    WRITE_EXCLUSIVE = 1
    EXCLUSIVE_ACCESS = 3
    WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 5
    EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 6
    WRITE_EXCLUSIVE_ALL_REGISTRANTS = 7
    EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 8

    @property
    def all_registrants(self) -> bool:
        return self in (PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS, PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS)

    @property
    def registrants_hold(self) -> bool:
        """Every registrant has the holder's access (the RO and AR types)."""
        return self not in (PrType.WRITE_EXCLUSIVE, PrType.EXCLUSIVE_ACCESS)

    @property
    def exclusive_access(self) -> bool:
        """Reads conflict too, not only writes."""
        return self in (PrType.EXCLUSIVE_ACCESS, PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
                        PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS)


class PrIn(enum.IntEnum):
    """PERSISTENT RESERVE IN service actions (SPC-4 §6.15.1)."""

    READ_KEYS = 0
    READ_RESERVATION = 1
    REPORT_CAPABILITIES = 2
    READ_FULL_STATUS = 3


class PrOut(enum.IntEnum):
    """PERSISTENT RESERVE OUT service actions (SPC-4 §6.16.2)."""

    REGISTER = 0
    RESERVE = 1
    RELEASE = 2
    CLEAR = 3
    PREEMPT = 4
    PREEMPT_AND_ABORT = 5
    REGISTER_AND_IGNORE_EXISTING_KEY = 6
    REGISTER_AND_MOVE = 7


# SPC-4 §6.15.4 table 171: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX (byte 4), EX_AC_AR (byte 5)
_TYPE_MASK = (0x80 | 0x40 | 0x20 | 0x08 | 0x02) << 8 | 0x01
_ISCSI = 0x05  # protocol identifier (SPC-4 §7.6.1)


@dataclass(frozen=True)
class ProutParams:
    """A PERSISTENT RESERVE OUT parameter list (SPC-4 §6.16.3/§6.16.4)."""

    key: int
    sa_key: int
    spec_i_pt: bool = False
    all_tg_pt: bool = False
    aptpl: bool = False
    unreg: bool = False  # REGISTER AND MOVE only
    transport_id: bytes = b""  # REGISTER AND MOVE only


def parse_prout(service_action: int, data: bytes) -> ProutParams:
    """Decode the parameter list; ``ScsiError`` says what is wrong with it."""
    if service_action == PrOut.REGISTER_AND_MOVE:
        if len(data) < 24:
            raise ScsiError(PARAMETER_LIST_LENGTH_ERROR)
        key, sa_key, flags, tid_len = struct.unpack_from(">QQxBxxI", data)
        if 24 + tid_len != len(data) or tid_len < 24:
            raise ScsiError(PARAMETER_LIST_LENGTH_ERROR)
        return ProutParams(key, sa_key, aptpl=bool(flags & 0x01), unreg=bool(flags & 0x02),
                           transport_id=data[24:])
    if len(data) != 24:  # SPC-4 §6.16.3: exactly 24 bytes unless SPEC_I_PT
        raise ScsiError(PARAMETER_LIST_LENGTH_ERROR)
    key, sa_key, flags = struct.unpack_from(">QQ4xB", data)
    return ProutParams(key, sa_key, spec_i_pt=bool(flags & 0x08), all_tg_pt=bool(flags & 0x04),
                       aptpl=bool(flags & 0x01))


def iscsi_port(nexus: Nexus) -> tuple[str, bytes, str]:
    """(initiator name, ISID, target name) of an iSCSI nexus; anything else
    (an embedder's own nexus value) is named by its text."""
    if isinstance(nexus, tuple) and len(nexus) in (3, 4):
        name, isid, target = nexus[:3]
        return str(name), bytes(isid), str(target)
    return str(nexus), b"", ""


def transport_id(nexus: Nexus) -> bytes:
    """An iSCSI initiator port TransportID, format 01b (SPC-4 §7.6.4.6)."""
    name, isid, _ = iscsi_port(nexus)
    text = f"{name},i,0x{isid.hex()}".encode() + b"\0"
    text += bytes(-len(text) % 4)
    return bytes([0x40 | _ISCSI, 0]) + len(text).to_bytes(2, "big") + text


def parse_transport_id(data: bytes) -> tuple[str, bytes | None]:
    """Initiator name and ISID (None: format 00b names the device, not a
    port) from an iSCSI TransportID (SPC-4 §7.6.4.6)."""
    if len(data) < 4 or data[0] & 0x0F != _ISCSI or data[0] >> 6 not in (0, 1):
        raise ScsiError(INVALID_FIELD_IN_PARAMETER_LIST, field=24, in_cdb=False)
    length = int.from_bytes(data[2:4], "big")
    text = data[4:4 + length].split(b"\0", 1)[0]
    try:
        name = text.decode("utf-8")
    except UnicodeDecodeError:
        raise ScsiError(INVALID_FIELD_IN_PARAMETER_LIST, field=28, in_cdb=False) from None
    if data[0] >> 6 == 0:
        return name, None
    name, sep, isid = name.partition(",i,0x")
    try:
        port = bytes.fromhex(isid)
    except ValueError:
        port = b""
    if not sep or not name or len(port) != 6:
        raise ScsiError(INVALID_FIELD_IN_PARAMETER_LIST, field=28, in_cdb=False)
    return name, port


class Reservations:
    """The reservation state of one LUN (SPC-4 §5.12) and the SPC-2
    reservation (annex B); ``path``: where APTPL state is kept, if anywhere."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.keys: dict[Nexus, int] = {}  # registrations, in registration order
        self.holder: Nexus | None = None  # for the all-registrants types: any registrant
        self.type: PrType | None = None
        self.generation = 0
        self.aptpl = False
        self.spc2_holder: Nexus | None = None  # RESERVE(6) holder
        self.attentions: dict[Nexus, list[Asc]] = {}
        # the nexuses the last PERSISTENT RESERVE OUT preempted: a PREEMPT
        # AND ABORT's transport aborts their tasks (SPC-4 §5.12.11.4.5)
        self.preempted: frozenset[Nexus] = frozenset()
        self.load()

    @property
    def engaged(self) -> bool:
        """Whether any command may be refused or owes a unit attention: the
        READ hot path skips the checks when not."""
        return self.type is not None or self.spc2_holder is not None or bool(self.attentions)

    # -- what other commands may do (SPC-4 §5.12.1 table 62, SBC-3 table 13, annex B) --

    def check(self, nexus: Nexus, access: Access) -> None:
        """Raise :class:`ReservationConflict` when a command of kind
        ``access`` from ``nexus`` conflicts with a reservation."""
        if access is Access.ANY:
            return
        if self.spc2_holder is not None and self.spc2_holder != nexus and access is not Access.RELEASE6:
            raise ReservationConflict
        if self.type is None or access in (Access.PR, Access.INFO, Access.RELEASE6):
            return
        if self.holder == nexus or (self.type.registrants_hold and nexus in self.keys):
            return
        if access is Access.WRITE or self.type.exclusive_access:
            raise ReservationConflict

    def attention(self, nexus: Nexus) -> Asc | None:
        """The oldest unit attention pending for ``nexus``, now reported."""
        pending = self.attentions.get(nexus)
        if not pending:
            return None
        asc = pending.pop(0)
        if not pending:
            del self.attentions[nexus]
        return asc

    def _tell(self, nexuses: Iterable[Nexus], asc: Asc) -> None:
        for n in nexuses:
            self.attentions.setdefault(n, []).append(asc)

    # -- RESERVE(6) / RELEASE(6) (SPC-2 §7.21, §7.17; SPC-4 annex B) -------------

    def reserve6(self, nexus: Nexus) -> None:
        if self.keys or (self.spc2_holder is not None and self.spc2_holder != nexus):
            raise ReservationConflict
        self.spc2_holder = nexus

    def release6(self, nexus: Nexus) -> None:
        if self.keys:
            raise ReservationConflict
        if self.spc2_holder == nexus:
            self.spc2_holder = None

    def reset(self) -> None:
        """A LUN or target reset ends the SPC-2 reservation; persistent
        reservations survive it (SPC-4 §5.12.1)."""
        self.spc2_holder = None

    def nexus_lost(self, nexus: Nexus) -> None:
        if self.spc2_holder == nexus:
            self.spc2_holder = None
        self.attentions.pop(nexus, None)

    # -- PERSISTENT RESERVE IN (SPC-4 §6.15) ------------------------------------

    def read(self, service_action: int) -> bytes:
        if service_action == PrIn.READ_KEYS:
            keys = b"".join(k.to_bytes(8, "big") for k in self.keys.values())
            return struct.pack(">II", self.generation, len(keys)) + keys
        if service_action == PrIn.READ_RESERVATION:
            if self.type is None:
                return struct.pack(">II", self.generation, 0)
            key = 0 if self.type.all_registrants else self.keys.get(self.holder, 0)
            return struct.pack(">IIQ4xxBxx", self.generation, 16, key, self.type)
        if service_action == PrIn.REPORT_CAPABILITIES:
            # CRH 0, SIP_C 0, ATP_C 0, PTPL_C; TMV 1, ALLOW COMMANDS 0, PTPL_A
            return struct.pack(">HBBHxx", 8, 0x01 if self.path is not None else 0,
                               0x80 | (0x01 if self.aptpl else 0), _TYPE_MASK)
        if service_action == PrIn.READ_FULL_STATUS:
            return self._full_status()
        raise ScsiError(INVALID_FIELD_IN_CDB, field=1)

    def _full_status(self) -> bytes:
        out = bytearray()
        for nexus, key in self.keys.items():
            tid = transport_id(nexus)
            holds = self.type is not None and (self.holder == nexus or self.type.all_registrants)
            scope_type = self.type if holds and self.type is not None else 0
            out += struct.pack(">Q4xBB4xHI", key, 0x01 if holds else 0, scope_type, 1, len(tid)) + tid
        return struct.pack(">II", self.generation, len(out)) + bytes(out)

    # -- PERSISTENT RESERVE OUT (SPC-4 §6.16, §5.12.5-§5.12.11) ---------------------

    def out(self, nexus: Nexus, service_action: int, scope_type: int, params: ProutParams,
            known: frozenset[Nexus] = frozenset()) -> None:
        """One PERSISTENT RESERVE OUT. ``known``: the nexuses the target has,
        to find a REGISTER AND MOVE destination given by initiator name."""
        self.preempted = frozenset()
        if self.spc2_holder is not None and self.spc2_holder != nexus:
            raise ReservationConflict  # SPC-4 annex B
        if params.spec_i_pt:  # SIP_C 0 (REPORT CAPABILITIES)
            raise ScsiError(INVALID_FIELD_IN_PARAMETER_LIST, field=20, bit=3, in_cdb=False)
        if params.all_tg_pt:  # ATP_C 0: one target port
            raise ScsiError(INVALID_FIELD_IN_PARAMETER_LIST, field=20, bit=2, in_cdb=False)
        if params.aptpl and self.path is None:  # PTPL_C 0: nowhere to keep it
            raise ScsiError(INVALID_FIELD_IN_PARAMETER_LIST, field=20, bit=0, in_cdb=False)
        if service_action == PrOut.REGISTER:
            self._register(nexus, params, ignore_key=False)
        elif service_action == PrOut.REGISTER_AND_IGNORE_EXISTING_KEY:
            self._register(nexus, params, ignore_key=True)
        elif service_action == PrOut.REGISTER_AND_MOVE:
            self._registered(nexus, params.key)
            self._move(nexus, _checked_type(scope_type), params, known)
        else:
            self._registered(nexus, params.key)
            if service_action == PrOut.RESERVE:
                self._reserve(nexus, _checked_type(scope_type))
            elif service_action == PrOut.RELEASE:
                self._release(nexus, scope_type)
            elif service_action == PrOut.CLEAR:
                self._clear(nexus)
            elif service_action in (PrOut.PREEMPT, PrOut.PREEMPT_AND_ABORT):
                self._preempt(nexus, scope_type, params.sa_key)
            else:
                raise ScsiError(INVALID_FIELD_IN_CDB, field=1)
        self.save()

    def _registered(self, nexus: Nexus, key: int) -> None:
        if self.keys.get(nexus) != key or nexus not in self.keys:
            raise ReservationConflict

    def _register(self, nexus: Nexus, params: ProutParams, ignore_key: bool) -> None:
        """REGISTER / REGISTER AND IGNORE EXISTING KEY (SPC-4 §5.12.7)."""
        current = self.keys.get(nexus)
        if not ignore_key and params.key != (current or 0):
            raise ReservationConflict
        if current is None and params.sa_key == 0:
            return  # nothing to register or remove; APTPL is left alone
        if params.sa_key == 0:
            self._unregister(nexus)
        else:
            self.keys[nexus] = params.sa_key
        self.aptpl = params.aptpl
        self.generation += 1

    def _unregister(self, nexus: Nexus, tell: bool = True) -> None:
        """Removing a registration also ends a reservation it held
        (SPC-4 §5.12.11.2): with the last registrant for the all-registrants
        types, telling the others of a registrants-only one (§5.12.11.2)
        unless ``tell`` is off (a PREEMPT, which tells them otherwise)."""
        del self.keys[nexus]
        if self.type is None:
            return
        if self.type.all_registrants:
            if not self.keys:
                self._drop_reservation()
        elif self.holder == nexus:
            if self.type.registrants_hold and tell:
                self._tell(self.keys, RESERVATIONS_RELEASED)
            self._drop_reservation()

    def _drop_reservation(self) -> None:
        self.holder = None
        self.type = None

    def _reserve(self, nexus: Nexus, pr_type: PrType) -> None:
        """RESERVE (SPC-4 §5.12.9)."""
        if self.type is not None:
            holds = self.holder == nexus or self.type.all_registrants
            if not holds or self.type != pr_type:
                raise ReservationConflict
            return
        self.holder, self.type = nexus, pr_type

    def _release(self, nexus: Nexus, scope_type: int) -> None:
        """RELEASE (SPC-4 §5.12.11.2): only the holder releases; anyone
        else's RELEASE does nothing."""
        if self.type is None or not (self.holder == nexus or self.type.all_registrants):
            return
        if scope_type != self.type:  # scope 0 is the only scope; the type must match
            raise ScsiError(INVALID_RELEASE_OF_PERSISTENT_RESERVATION)
        if self.type.registrants_hold:
            self._tell((n for n in self.keys if n != nexus), RESERVATIONS_RELEASED)
        self._drop_reservation()

    def _clear(self, nexus: Nexus) -> None:
        """CLEAR (SPC-4 §5.12.11.6)."""
        self._tell((n for n in self.keys if n != nexus), RESERVATIONS_PREEMPTED)
        self.keys.clear()
        self._drop_reservation()
        self.generation += 1

    def _preempt(self, nexus: Nexus, scope_type: int, sa_key: int) -> None:
        """PREEMPT / PREEMPT AND ABORT (SPC-4 §5.12.11.4). The tasks of
        the preempted nexuses (``preempted``) are the transport's to abort."""
        if self.type is not None and self.type.all_registrants and sa_key == 0:
            pr_type = _checked_type(scope_type)
            self._remove(nexus, [n for n in self.keys if n != nexus])
            self.holder, self.type = nexus, pr_type
        elif self.type is not None and not self.type.all_registrants and sa_key == self.keys.get(self.holder):
            pr_type = _checked_type(scope_type)
            self._remove(nexus, [n for n, k in self.keys.items() if k == sa_key and n != nexus])
            self.holder, self.type = nexus, pr_type
        else:
            if sa_key == 0:
                raise ScsiError(INVALID_FIELD_IN_PARAMETER_LIST, field=8, in_cdb=False)
            victims = [n for n, k in self.keys.items() if k == sa_key]
            if not victims:
                raise ReservationConflict
            self._remove(nexus, victims)
        self.generation += 1

    def _remove(self, nexus: Nexus, victims: list[Nexus]) -> None:
        self.preempted = frozenset(victims) - {nexus}
        for victim in victims:
            self._unregister(victim, tell=False)
            if victim != nexus:
                self._tell((victim,), REGISTRATIONS_PREEMPTED)

    def _move(self, nexus: Nexus, pr_type: PrType, params: ProutParams, known: frozenset[Nexus]) -> None:
        """REGISTER AND MOVE (SPC-4 §5.12.8)."""
        if self.type is None or self.holder != nexus or self.type.all_registrants:
            raise ReservationConflict
        if params.sa_key == 0:
            raise ScsiError(INVALID_FIELD_IN_PARAMETER_LIST, field=8, in_cdb=False)
        destination = _destination(params.transport_id, nexus, known)
        if destination == nexus:
            raise ScsiError(INVALID_FIELD_IN_PARAMETER_LIST, field=24, in_cdb=False)
        self.keys[destination] = params.sa_key
        self.holder, self.type = destination, pr_type
        if params.unreg:
            del self.keys[nexus]
        self.aptpl = params.aptpl
        self.generation += 1

    # -- APTPL: kept across power loss (SPC-4 §5.12.5) --------------------------

    def save(self) -> None:
        """Write the state when APTPL asks for it, atomically; without
        APTPL a restart forgets everything, so the file goes."""
        if self.path is None:
            return
        if not self.aptpl:
            self.path.unlink(missing_ok=True)
            return
        state = {"generation": self.generation,
                 "registrations": [_registration_json(n, k) for n, k in self.keys.items()],
                 "holder": _port_json(self.holder) if self.holder is not None else None,
                 "type": self.type}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def load(self) -> None:
        """Restore APTPL state; a file that cannot be read is ignored (the
        initiators register again), never a reason not to serve the disk."""
        if self.path is None or not self.path.exists():
            return
        try:
            state = json.loads(self.path.read_text())
            keys = {_port_from_json(r[:3] + r[4:5]): int(r[3]) for r in state["registrations"]}
            holder = _port_from_json(state["holder"]) if state["holder"] is not None else None
            pr_type = PrType(state["type"]) if state["type"] is not None else None
            generation = int(state["generation"])
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return
        if (holder is None) != (pr_type is None):
            return
        self.keys, self.holder, self.type = keys, holder, pr_type
        self.generation, self.aptpl = generation, True


class Access(enum.Enum):
    """How a command meets a reservation (SPC-4 table 62, SBC-3 table 13)."""

    ANY = "any"  # allowed whatever is reserved
    INFO = "info"  # allowed under persistent reservations, not under RESERVE(6)
    READ = "read"  # conflicts with the exclusive access types
    WRITE = "write"  # conflicts with every type
    PR = "pr"  # PERSISTENT RESERVE IN/OUT: their own rules
    RELEASE6 = "release6"


def _checked_type(scope_type: int) -> PrType:
    if scope_type >> 4:  # SCOPE: only LU_SCOPE (0h)
        raise ScsiError(INVALID_FIELD_IN_CDB, field=2, bit=4)
    try:
        return PrType(scope_type & 0x0F)
    except ValueError:
        raise ScsiError(INVALID_FIELD_IN_CDB, field=2, bit=0) from None


def _destination(data: bytes, nexus: Nexus, known: frozenset[Nexus]) -> Nexus:
    """The I_T nexus REGISTER AND MOVE names: the TransportID's initiator
    port through the target port ``nexus`` came in on."""
    name, isid = parse_transport_id(data)
    target_port = nexus[2:] if isinstance(nexus, tuple) else ("",)
    if isid is not None:
        return (name, isid, *target_port)
    ports = sorted((n for n in known if iscsi_port(n)[0] == name and isinstance(n, tuple)
                    and n[2:] == target_port), key=lambda n: iscsi_port(n)[1])
    if not ports:
        raise ScsiError(INVALID_FIELD_IN_PARAMETER_LIST, field=24, in_cdb=False)
    return ports[0]


def _port_json(nexus: Nexus) -> list[str | int]:
    name, isid, target = iscsi_port(nexus)
    tpgt = list(nexus[3:4]) if isinstance(nexus, tuple) else []
    return [name, isid.hex(), target, *tpgt]


def _registration_json(nexus: Nexus, key: int) -> list[str | int]:
    """[name, ISID, target, key, TPGT]: the key stays fourth, where files
    written before portal groups have it."""
    port = _port_json(nexus)
    return [*port[:3], key, *port[3:]]


def _port_from_json(row: list[str | int]) -> Nexus:
    name, isid, target, *tpgt = row
    return (str(name), bytes.fromhex(str(isid)), str(target), *(int(t) for t in tpgt[:1]))
