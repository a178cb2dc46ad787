"""SCSI status, sense keys and fixed-format sense data (SPC-4 §4.5.3)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ScsiStatus(enum.IntEnum):
    """SAM-5 §5.3.1."""

    GOOD = 0x00
    CHECK_CONDITION = 0x02
    CONDITION_MET = 0x04
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28
    ACA_ACTIVE = 0x30
    TASK_ABORTED = 0x40


class SenseKey(enum.IntEnum):
    """SPC-4 §4.5.6, table 48."""

    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    COPY_ABORTED = 0xA
    ABORTED_COMMAND = 0xB
    MISCOMPARE = 0xE


@dataclass(frozen=True)
class Asc:
    """An additional sense code and qualifier pair (SPC-4 annex D)."""

    key: SenseKey
    asc: int
    ascq: int


NO_SENSE = Asc(SenseKey.NO_SENSE, 0x00, 0x00)
INVALID_OPCODE = Asc(SenseKey.ILLEGAL_REQUEST, 0x20, 0x00)
LBA_OUT_OF_RANGE = Asc(SenseKey.ILLEGAL_REQUEST, 0x21, 0x00)
INVALID_FIELD_IN_CDB = Asc(SenseKey.ILLEGAL_REQUEST, 0x24, 0x00)
LUN_NOT_SUPPORTED = Asc(SenseKey.ILLEGAL_REQUEST, 0x25, 0x00)
INVALID_FIELD_IN_PARAMETER_LIST = Asc(SenseKey.ILLEGAL_REQUEST, 0x26, 0x00)
PARAMETER_LIST_LENGTH_ERROR = Asc(SenseKey.ILLEGAL_REQUEST, 0x1A, 0x00)
SAVING_PARAMETERS_NOT_SUPPORTED = Asc(SenseKey.ILLEGAL_REQUEST, 0x39, 0x00)
WRITE_PROTECTED = Asc(SenseKey.DATA_PROTECT, 0x27, 0x00)
SPACE_ALLOCATION_FAILED = Asc(SenseKey.DATA_PROTECT, 0x27, 0x07)
POWER_ON_RESET = Asc(SenseKey.UNIT_ATTENTION, 0x29, 0x00)
LUN_RESET_OCCURRED = Asc(SenseKey.UNIT_ATTENTION, 0x29, 0x03)
RESERVATIONS_PREEMPTED = Asc(SenseKey.UNIT_ATTENTION, 0x2A, 0x03)
RESERVATIONS_RELEASED = Asc(SenseKey.UNIT_ATTENTION, 0x2A, 0x04)
REGISTRATIONS_PREEMPTED = Asc(SenseKey.UNIT_ATTENTION, 0x2A, 0x05)
INVALID_RELEASE_OF_PERSISTENT_RESERVATION = Asc(SenseKey.ILLEGAL_REQUEST, 0x26, 0x04)
MISCOMPARE_DURING_VERIFY = Asc(SenseKey.MISCOMPARE, 0x1D, 0x00)
UNRECOVERED_READ_ERROR = Asc(SenseKey.MEDIUM_ERROR, 0x11, 0x00)
WRITE_ERROR = Asc(SenseKey.MEDIUM_ERROR, 0x0C, 0x00)
# EXTENDED COPY (SPC-4 §6.3, annex D)
TOO_MANY_TARGET_DESCRIPTORS = Asc(SenseKey.ILLEGAL_REQUEST, 0x26, 0x06)
UNSUPPORTED_TARGET_DESCRIPTOR_TYPE = Asc(SenseKey.ILLEGAL_REQUEST, 0x26, 0x07)
TOO_MANY_SEGMENT_DESCRIPTORS = Asc(SenseKey.ILLEGAL_REQUEST, 0x26, 0x08)
UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE = Asc(SenseKey.ILLEGAL_REQUEST, 0x26, 0x09)
OPERATION_IN_PROGRESS = Asc(SenseKey.ILLEGAL_REQUEST, 0x00, 0x16)
COPY_ABORTED = Asc(SenseKey.COPY_ABORTED, 0x00, 0x00)
COPY_TARGET_NOT_REACHABLE = Asc(SenseKey.COPY_ABORTED, 0x0D, 0x02)
INCORRECT_COPY_TARGET_DEVICE_TYPE = Asc(SenseKey.COPY_ABORTED, 0x0D, 0x03)
# SANITIZE (SBC-3 §5.30)
SANITIZE_IN_PROGRESS = Asc(SenseKey.NOT_READY, 0x04, 0x1B)
SANITIZE_FAILED = Asc(SenseKey.MEDIUM_ERROR, 0x31, 0x03)


class ScsiError(Exception):
    """A command ends in CHECK CONDITION with this sense.

    ``field`` is the byte of the CDB (or parameter list) at fault, for the
    sense-key specific field pointer (SPC-4 §4.5.2.4.2); ``information`` goes
    to the INFORMATION field (e.g. the miscompare offset)."""

    def __init__(self, asc: Asc, *, field: int | None = None, bit: int | None = None, in_cdb: bool = True,
                 information: int | None = None) -> None:
        super().__init__(f"{asc.key.name} {asc.asc:02x}/{asc.ascq:02x}")
        self.asc = asc
        self.field = field
        self.bit = bit
        self.in_cdb = in_cdb
        self.information = information

    def sense(self) -> bytes:
        return fixed_sense(self.asc, field=self.field, bit=self.bit, in_cdb=self.in_cdb,
                           information=self.information)


def fixed_sense(asc: Asc, *, field: int | None = None, bit: int | None = None, in_cdb: bool = True,
                information: int | None = None) -> bytes:
    """18 bytes of fixed-format sense data (SPC-4 §4.5.3, response code 70h)."""
    b = bytearray(18)
    b[0] = 0x70 | (0x80 if information is not None else 0)
    b[2] = asc.key
    if information is not None:
        b[3:7] = (information & 0xFFFFFFFF).to_bytes(4, "big")
    b[7] = 10  # additional sense length
    b[12] = asc.asc
    b[13] = asc.ascq
    if field is not None and asc.key == SenseKey.ILLEGAL_REQUEST:
        b[15] = 0x80 | (0x40 if in_cdb else 0) | ((0x08 | bit) if bit is not None else 0)
        b[16:18] = field.to_bytes(2, "big")
    return bytes(b)
