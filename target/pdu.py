"""iSCSI PDUs (RFC 7143 §11): the 48-byte Basic Header Segment of every
opcode as a frozen dataclass, with ``decode_bhs`` and ``Pdu.encode_bhs``.

Framing (AHS, padding, digests, data segments) lives in :mod:`target.framing`.
Fields are named after the RFC; byte 1 flag bits are separate boolean or
small-integer fields, so that ``decode(encode(x)) == x`` holds field by field.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field, fields
from typing import ClassVar

BHS_LEN = 48
RESERVED_TAG = 0xFFFFFFFF


class Opcode(enum.IntEnum):
    """§11.1.1: initiator opcodes 0x00-0x1f, target opcodes 0x20-0x3f."""

    NOP_OUT = 0x00
    SCSI_COMMAND = 0x01
    TASK_MGMT_REQUEST = 0x02
    LOGIN_REQUEST = 0x03
    TEXT_REQUEST = 0x04
    DATA_OUT = 0x05
    LOGOUT_REQUEST = 0x06
    SNACK_REQUEST = 0x10
    NOP_IN = 0x20
    SCSI_RESPONSE = 0x21
    TASK_MGMT_RESPONSE = 0x22
    LOGIN_RESPONSE = 0x23
    TEXT_RESPONSE = 0x24
    DATA_IN = 0x25
    LOGOUT_RESPONSE = 0x26
    R2T = 0x31
    ASYNC_MESSAGE = 0x32
    REJECT = 0x3F


class RejectReason(enum.IntEnum):
    """§11.17.1."""

    DATA_DIGEST_ERROR = 0x02
    SNACK_REJECT = 0x03
    PROTOCOL_ERROR = 0x04
    COMMAND_NOT_SUPPORTED = 0x05
    IMMEDIATE_COMMAND_REJECT = 0x06
    TASK_IN_PROGRESS = 0x07
    INVALID_DATA_ACK = 0x08
    INVALID_PDU_FIELD = 0x09
    LONG_OPERATION_REJECT = 0x0A
    DEPRECATED = 0x0B
    WAITING_FOR_LOGOUT = 0x0C


class TmfFunction(enum.IntEnum):
    """§11.5.1."""

    ABORT_TASK = 1
    ABORT_TASK_SET = 2
    CLEAR_ACA = 3
    CLEAR_TASK_SET = 4
    LOGICAL_UNIT_RESET = 5
    TARGET_WARM_RESET = 6
    TARGET_COLD_RESET = 7
    TASK_REASSIGN = 8


class TmfResponse(enum.IntEnum):
    """§11.6.1."""

    FUNCTION_COMPLETE = 0
    TASK_DOES_NOT_EXIST = 1
    LUN_DOES_NOT_EXIST = 2
    TASK_STILL_ALLEGIANT = 3
    REASSIGNMENT_NOT_SUPPORTED = 4
    NOT_SUPPORTED = 5
    AUTHORIZATION_FAILED = 6
    REJECTED = 255


class LogoutReason(enum.IntEnum):
    """§11.14.1."""

    CLOSE_SESSION = 0
    CLOSE_CONNECTION = 1
    REMOVE_FOR_RECOVERY = 2


class LogoutResponse(enum.IntEnum):
    """§11.15.1."""

    SUCCESS = 0
    CID_NOT_FOUND = 1
    RECOVERY_NOT_SUPPORTED = 2
    CLEANUP_FAILED = 3


class Stage(enum.IntEnum):
    """§11.12.3: CSG/NSG values."""

    SECURITY = 0
    OPERATIONAL = 1
    FULL_FEATURE = 3


class PduFormatError(ValueError):
    """Bytes that are not a valid BHS; ``reason`` says how to reject them."""

    def __init__(self, message: str, reason: RejectReason = RejectReason.PROTOCOL_ERROR,
                 bhs: bytes = b"") -> None:
        super().__init__(message)
        self.reason = reason
        # the offending header, once its PDU has been consumed from the stream;
        # empty when the stream itself cannot be followed any more
        self.bhs = bhs


# Field kinds: a struct code at a byte offset, or a bit field of byte 1.
@dataclass(frozen=True)
class _Bits:
    mask: int
    shift: int = 0

    @property
    def is_flag(self) -> bool:
        return self.mask & (self.mask - 1) == 0


def _bits(mask: int) -> _Bits:
    shift = (mask & -mask).bit_length() - 1
    return _Bits(mask, shift)


_U8, _U16, _U32, _U64 = "B", "H", "I", "Q"


@dataclass(slots=True)
class Pdu:
    """Base of every PDU. ``ahs`` and ``data`` are the raw additional header
    segments and data segment (without padding or digests).

    PDUs are values: nothing changes one after it is made. They are not
    ``frozen`` dataclasses only because a frozen one's ``__init__`` costs
    eight times as much (measured: 5.4 vs 0.7 us for a Data-In), and two
    PDUs are made for every 4 KiB read."""

    OPCODE: ClassVar[Opcode]
    # name -> struct code at offset, or _Bits in byte 1; filled per subclass
    LAYOUT: ClassVar[dict[str, tuple[int, str] | _Bits]]

    immediate: bool = field(default=False, kw_only=True)
    ahs: bytes = field(default=b"", kw_only=True, repr=False)
    data: bytes | memoryview = field(default=b"", kw_only=True, repr=False)

    def encode_bhs(self, data_length: int | None = None) -> bytes:
        """The 48-byte BHS; ``data_length`` overrides len(data) for callers
        that send the data segment from elsewhere (sendfile)."""
        raise NotImplementedError  # generated per class by _compile_codec

    @classmethod
    def _decode(cls, bhs: bytes | memoryview, ahs: bytes, data: bytes | memoryview) -> Pdu:
        raise NotImplementedError  # generated per class by _compile_codec


def _compile_codec(cls: type[Pdu]) -> None:
    """Generate ``encode_bhs`` and ``_decode`` for a PDU class from its
    LAYOUT: straight-line code with one struct call, because these run for
    every PDU on the data path and a generic loop costs several times more."""
    # Bytes 0 and 1 (opcode, flag bits) lead; bytes 4-7 (TotalAHSLength and
    # DataSegmentLength) are one 32-bit word no LAYOUT uses.
    parts: list[tuple[int, str, str]] = [(0, "B", "_b0"), (1, "B", "_b1"), (4, "I", "_lens")]
    bits: list[tuple[str, _Bits]] = []
    for name, spec in cls.LAYOUT.items():
        if isinstance(spec, _Bits):
            bits.append((name, spec))
        else:
            parts.append((spec[0], spec[1], name))
    parts.sort()
    fmt = ">"
    pos = 0
    for off, code, name in parts:
        if off < pos:
            raise TypeError(f"{cls.__name__}.{name}: overlapping layout")
        fmt += "x" * (off - pos) + code
        pos = off + struct.calcsize(">" + code)
    fmt += "x" * (BHS_LEN - pos)
    st = struct.Struct(fmt)
    names = [n for _, _, n in parts if not n.startswith("_")]
    b1 = " | ".join(f"((int(self.{n}) << {b.shift}) & {b.mask})" for n, b in bits) or "0"
    pack_args = ", ".join(f"self.{n}" if not n.startswith("_") else n for _, _, n in parts)
    unpacked = ", ".join(n for _, _, n in parts)
    # positional arguments in field order: a dataclass __init__ binds them
    # faster than keywords, and this runs for every PDU received
    exprs = {n: f"bool(_b1 & {b.mask})" if b.is_flag else f"(_b1 & {b.mask}) >> {b.shift}" for n, b in bits}
    exprs.update({n: n for n in names})
    positional = "".join(f"{exprs[f.name]}, " for f in fields(cls) if f.name in exprs)
    src = f"""
def encode_bhs(self, data_length=None):
    ahs = self.ahs
    if len(ahs) & 3:
        raise ValueError("AHS length must be a multiple of 4")
    _lens = (len(ahs) << 22) | (len(self.data) if data_length is None else data_length)
    _b0 = {0x40 | int(cls.OPCODE)} if self.immediate else {int(cls.OPCODE)}
    _b1 = {b1}
    return _pack({pack_args})

def _decode(cls, bhs, ahs, data):
    {unpacked}, = _unpack(bhs)
    return cls({positional}immediate=bool(_b0 & 0x40), ahs=ahs, data=data)
"""
    ns: dict[str, object] = {"_pack": st.pack, "_unpack": st.unpack_from}
    exec(compile(src, f"<pdu codec {cls.__name__}>", "exec"), ns)  # noqa: S102 - generated from LAYOUT
    cls.encode_bhs = ns["encode_bhs"]  # type: ignore[assignment,method-assign]
    cls._decode = classmethod(ns["_decode"])  # type: ignore[assignment,method-assign,arg-type]


F = _bits(0x80)


# -- initiator PDUs ---------------------------------------------------------


@dataclass(slots=True)
class NopOut(Pdu):
    """§11.18."""

    OPCODE = Opcode.NOP_OUT
    LAYOUT = {"final": F, "lun": (8, _U64), "itt": (16, _U32), "ttt": (20, _U32),
              "cmdsn": (24, _U32), "expstatsn": (28, _U32)}
    final: bool = True
    lun: int = 0
    itt: int = RESERVED_TAG
    ttt: int = RESERVED_TAG
    cmdsn: int = 0
    expstatsn: int = 0


@dataclass(slots=True)
class ScsiCommand(Pdu):
    """§11.3. ``cdb`` is the 16-byte CDB field; longer CDBs continue in an
    Extended CDB AHS (§11.3.5), joined by :attr:`full_cdb`."""

    OPCODE = Opcode.SCSI_COMMAND
    LAYOUT = {"final": F, "read": _bits(0x40), "write": _bits(0x20), "attr": _bits(0x07),
              "lun": (8, _U64), "itt": (16, _U32), "edtl": (20, _U32), "cmdsn": (24, _U32),
              "expstatsn": (28, _U32), "cdb": (32, "16s")}
    final: bool = True
    read: bool = False
    write: bool = False
    attr: int = 0
    lun: int = 0
    itt: int = 0
    edtl: int = 0
    cmdsn: int = 0
    expstatsn: int = 0
    cdb: bytes = bytes(16)

    @property
    def full_cdb(self) -> bytes:
        ext = extended_cdb(self.ahs)
        return self.cdb + ext if ext else self.cdb


@dataclass(slots=True)
class TaskMgmtRequest(Pdu):
    """§11.5."""

    OPCODE = Opcode.TASK_MGMT_REQUEST
    LAYOUT = {"final": F, "function": _bits(0x7F), "lun": (8, _U64), "itt": (16, _U32),
              "rtt": (20, _U32), "cmdsn": (24, _U32), "expstatsn": (28, _U32),
              "refcmdsn": (32, _U32), "expdatasn": (36, _U32)}
    final: bool = True
    function: int = TmfFunction.ABORT_TASK
    lun: int = 0
    itt: int = 0
    rtt: int = RESERVED_TAG
    cmdsn: int = 0
    expstatsn: int = 0
    refcmdsn: int = 0
    expdatasn: int = 0


@dataclass(slots=True)
class LoginRequest(Pdu):
    """§11.12."""

    OPCODE = Opcode.LOGIN_REQUEST
    LAYOUT = {"transit": _bits(0x80), "cont": _bits(0x40), "csg": _bits(0x0C), "nsg": _bits(0x03),
              "version_max": (2, _U8), "version_min": (3, _U8), "isid": (8, "6s"),
              "tsih": (14, _U16), "itt": (16, _U32), "cid": (20, _U16), "cmdsn": (24, _U32),
              "expstatsn": (28, _U32)}
    transit: bool = False
    cont: bool = False
    csg: int = 0
    nsg: int = 0
    version_max: int = 0
    version_min: int = 0
    isid: bytes = bytes(6)
    tsih: int = 0
    itt: int = 0
    cid: int = 0
    cmdsn: int = 0
    expstatsn: int = 0


@dataclass(slots=True)
class TextRequest(Pdu):
    """§11.10."""

    OPCODE = Opcode.TEXT_REQUEST
    LAYOUT = {"final": F, "cont": _bits(0x40), "lun": (8, _U64), "itt": (16, _U32),
              "ttt": (20, _U32), "cmdsn": (24, _U32), "expstatsn": (28, _U32)}
    final: bool = True
    cont: bool = False
    lun: int = 0
    itt: int = 0
    ttt: int = RESERVED_TAG
    cmdsn: int = 0
    expstatsn: int = 0


@dataclass(slots=True)
class DataOut(Pdu):
    """§11.7."""

    OPCODE = Opcode.DATA_OUT
    LAYOUT = {"final": F, "lun": (8, _U64), "itt": (16, _U32), "ttt": (20, _U32),
              "expstatsn": (28, _U32), "datasn": (36, _U32), "buffer_offset": (40, _U32)}
    final: bool = False
    lun: int = 0
    itt: int = 0
    ttt: int = RESERVED_TAG
    expstatsn: int = 0
    datasn: int = 0
    buffer_offset: int = 0


@dataclass(slots=True)
class LogoutRequest(Pdu):
    """§11.14."""

    OPCODE = Opcode.LOGOUT_REQUEST
    LAYOUT = {"final": F, "reason": _bits(0x7F), "itt": (16, _U32), "cid": (20, _U16),
              "cmdsn": (24, _U32), "expstatsn": (28, _U32)}
    final: bool = True
    reason: int = LogoutReason.CLOSE_SESSION
    itt: int = 0
    cid: int = 0
    cmdsn: int = 0
    expstatsn: int = 0


@dataclass(slots=True)
class SnackRequest(Pdu):
    """§11.16."""

    OPCODE = Opcode.SNACK_REQUEST
    LAYOUT = {"final": F, "type": _bits(0x0F), "lun": (8, _U64), "itt": (16, _U32),
              "ttt": (20, _U32), "expstatsn": (28, _U32), "begrun": (40, _U32),
              "runlength": (44, _U32)}
    final: bool = True
    type: int = 0
    lun: int = 0
    itt: int = RESERVED_TAG
    ttt: int = RESERVED_TAG
    expstatsn: int = 0
    begrun: int = 0
    runlength: int = 0


# -- target PDUs -------------------------------------------------------------


@dataclass(slots=True)
class NopIn(Pdu):
    """§11.19."""

    OPCODE = Opcode.NOP_IN
    LAYOUT = {"final": F, "lun": (8, _U64), "itt": (16, _U32), "ttt": (20, _U32),
              "statsn": (24, _U32), "expcmdsn": (28, _U32), "maxcmdsn": (32, _U32)}
    final: bool = True
    lun: int = 0
    itt: int = RESERVED_TAG
    ttt: int = RESERVED_TAG
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0


@dataclass(slots=True)
class ScsiResponse(Pdu):
    """§11.4. ``data`` carries SenseLength + sense data (§11.4.7)."""

    OPCODE = Opcode.SCSI_RESPONSE
    LAYOUT = {"final": F, "bidi_overflow": _bits(0x10), "bidi_underflow": _bits(0x08),
              "overflow": _bits(0x04), "underflow": _bits(0x02), "response": (2, _U8),
              "status": (3, _U8), "itt": (16, _U32), "snack_tag": (20, _U32),
              "statsn": (24, _U32), "expcmdsn": (28, _U32), "maxcmdsn": (32, _U32),
              "expdatasn": (36, _U32), "bidi_residual": (40, _U32), "residual": (44, _U32)}
    final: bool = True
    bidi_overflow: bool = False
    bidi_underflow: bool = False
    overflow: bool = False
    underflow: bool = False
    response: int = 0
    status: int = 0
    itt: int = 0
    snack_tag: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    expdatasn: int = 0
    bidi_residual: int = 0
    residual: int = 0


@dataclass(slots=True)
class TaskMgmtResponse(Pdu):
    """§11.6."""

    OPCODE = Opcode.TASK_MGMT_RESPONSE
    LAYOUT = {"final": F, "response": (2, _U8), "itt": (16, _U32), "statsn": (24, _U32),
              "expcmdsn": (28, _U32), "maxcmdsn": (32, _U32)}
    final: bool = True
    response: int = 0
    itt: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0


@dataclass(slots=True)
class LoginResponse(Pdu):
    """§11.13."""

    OPCODE = Opcode.LOGIN_RESPONSE
    LAYOUT = {"transit": _bits(0x80), "cont": _bits(0x40), "csg": _bits(0x0C), "nsg": _bits(0x03),
              "version_max": (2, _U8), "version_active": (3, _U8), "isid": (8, "6s"),
              "tsih": (14, _U16), "itt": (16, _U32), "statsn": (24, _U32),
              "expcmdsn": (28, _U32), "maxcmdsn": (32, _U32), "status_class": (36, _U8),
              "status_detail": (37, _U8)}
    transit: bool = False
    cont: bool = False
    csg: int = 0
    nsg: int = 0
    version_max: int = 0
    version_active: int = 0
    isid: bytes = bytes(6)
    tsih: int = 0
    itt: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    status_class: int = 0
    status_detail: int = 0


@dataclass(slots=True)
class TextResponse(Pdu):
    """§11.11."""

    OPCODE = Opcode.TEXT_RESPONSE
    LAYOUT = {"final": F, "cont": _bits(0x40), "lun": (8, _U64), "itt": (16, _U32),
              "ttt": (20, _U32), "statsn": (24, _U32), "expcmdsn": (28, _U32),
              "maxcmdsn": (32, _U32)}
    final: bool = True
    cont: bool = False
    lun: int = 0
    itt: int = 0
    ttt: int = RESERVED_TAG
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0


@dataclass(slots=True)
class DataIn(Pdu):
    """§11.7. With ``status_present`` the PDU also ends the command (§11.7.4)."""

    OPCODE = Opcode.DATA_IN
    LAYOUT = {"final": F, "ack": _bits(0x40), "overflow": _bits(0x04), "underflow": _bits(0x02),
              "status_present": _bits(0x01), "status": (3, _U8), "lun": (8, _U64),
              "itt": (16, _U32), "ttt": (20, _U32), "statsn": (24, _U32),
              "expcmdsn": (28, _U32), "maxcmdsn": (32, _U32), "datasn": (36, _U32),
              "buffer_offset": (40, _U32), "residual": (44, _U32)}
    final: bool = False
    ack: bool = False
    overflow: bool = False
    underflow: bool = False
    status_present: bool = False
    status: int = 0
    lun: int = 0
    itt: int = 0
    ttt: int = RESERVED_TAG
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    datasn: int = 0
    buffer_offset: int = 0
    residual: int = 0


@dataclass(slots=True)
class LogoutResponsePdu(Pdu):
    """§11.15."""

    OPCODE = Opcode.LOGOUT_RESPONSE
    LAYOUT = {"final": F, "response": (2, _U8), "itt": (16, _U32), "statsn": (24, _U32),
              "expcmdsn": (28, _U32), "maxcmdsn": (32, _U32), "time2wait": (40, _U16),
              "time2retain": (42, _U16)}
    final: bool = True
    response: int = 0
    itt: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    time2wait: int = 0
    time2retain: int = 0


@dataclass(slots=True)
class R2T(Pdu):
    """§11.8."""

    OPCODE = Opcode.R2T
    LAYOUT = {"final": F, "lun": (8, _U64), "itt": (16, _U32), "ttt": (20, _U32),
              "statsn": (24, _U32), "expcmdsn": (28, _U32), "maxcmdsn": (32, _U32),
              "r2tsn": (36, _U32), "buffer_offset": (40, _U32), "desired_length": (44, _U32)}
    final: bool = True
    lun: int = 0
    itt: int = 0
    ttt: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    r2tsn: int = 0
    buffer_offset: int = 0
    desired_length: int = 0


@dataclass(slots=True)
class AsyncMessage(Pdu):
    """§11.9."""

    OPCODE = Opcode.ASYNC_MESSAGE
    LAYOUT = {"final": F, "lun": (8, _U64), "itt": (16, _U32), "statsn": (24, _U32),
              "expcmdsn": (28, _U32), "maxcmdsn": (32, _U32), "event": (36, _U8),
              "vcode": (37, _U8), "param1": (38, _U16), "param2": (40, _U16),
              "param3": (42, _U16)}
    final: bool = True
    lun: int = 0
    itt: int = RESERVED_TAG
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    event: int = 0
    vcode: int = 0
    param1: int = 0
    param2: int = 0
    param3: int = 0


@dataclass(slots=True)
class Reject(Pdu):
    """§11.17. ``data`` is the header of the rejected PDU."""

    OPCODE = Opcode.REJECT
    LAYOUT = {"final": F, "reason": (2, _U8), "itt": (16, _U32), "statsn": (24, _U32),
              "expcmdsn": (28, _U32), "maxcmdsn": (32, _U32), "datasn": (36, _U32)}
    final: bool = True
    reason: int = RejectReason.PROTOCOL_ERROR
    itt: int = RESERVED_TAG
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    datasn: int = 0


PDU_CLASSES: dict[int, type[Pdu]] = {
    cls.OPCODE: cls
    for cls in (NopOut, ScsiCommand, TaskMgmtRequest, LoginRequest, TextRequest, DataOut,
                LogoutRequest, SnackRequest, NopIn, ScsiResponse, TaskMgmtResponse,
                LoginResponse, TextResponse, DataIn, LogoutResponsePdu, R2T, AsyncMessage, Reject)
}

for _cls in PDU_CLASSES.values():
    _compile_codec(_cls)


def decode(bhs: bytes | memoryview, ahs: bytes = b"", data: bytes | memoryview = b"") -> Pdu:
    """Decode a BHS (plus its AHS and data segment) into its PDU class."""
    if len(bhs) < BHS_LEN:
        raise PduFormatError(f"BHS is {len(bhs)} bytes, not {BHS_LEN}")
    opcode = bhs[0] & 0x3F
    cls = PDU_CLASSES.get(opcode)
    if cls is None:
        raise PduFormatError(f"unknown opcode 0x{opcode:02x}", RejectReason.COMMAND_NOT_SUPPORTED)
    return cls._decode(bhs, ahs, data)


def encode(pdu: Pdu) -> bytes:
    """BHS + AHS + data, padded to 4 bytes, no digests (tests, login)."""
    data = bytes(pdu.data)
    return pdu.encode_bhs() + pdu.ahs + data + bytes(-len(data) % 4)


# §11.2.2: AHS types
AHS_EXTENDED_CDB = 1
AHS_BIDI_READ_LENGTH = 2


def iter_ahs(ahs: bytes) -> list[tuple[int, bytes]]:
    """(AHSType, AHS-specific bytes) for each AHS (§11.2.2); length includes
    the reserved byte that follows the type, as in the RFC's AHSLength."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(ahs):
        if pos + 3 > len(ahs):
            raise PduFormatError("truncated AHS header", RejectReason.INVALID_PDU_FIELD)
        length = int.from_bytes(ahs[pos:pos + 2], "big")
        ahs_type = ahs[pos + 2]
        body = ahs[pos + 3:pos + 3 + length]
        if len(body) < length:
            raise PduFormatError("AHS longer than TotalAHSLength", RejectReason.INVALID_PDU_FIELD)
        out.append((ahs_type, body))
        pos += 3 + length + (-(3 + length) % 4)
    return out


def extended_cdb(ahs: bytes) -> bytes:
    """The CDB bytes beyond 16 from an Extended CDB AHS, or b"" (§11.3.5)."""
    if not ahs:
        return b""
    for ahs_type, body in iter_ahs(ahs):
        if ahs_type == AHS_EXTENDED_CDB:
            return body[1:]  # the first byte is reserved
    return b""
