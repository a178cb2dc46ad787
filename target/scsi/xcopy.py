"""EXTENDED COPY (LID1) and RECEIVE COPY RESULTS: the copy manager of a
LUN (SPC-4 r37 §5.17, §6.3, §6.18), as VMware's VAAI "full copy" uses it.

The parameter list is decoded here without I/O (:func:`parse_copy_list`);
:func:`copy_segment` moves one block-to-block segment through the backends
in bounded chunks (reads and writes go to the backends' worker threads, so
the event loop never waits on the disk). Which LUN a copy target names is
the caller's business (:class:`~target.scsi.lun.Lun` asks its resolver:
only the LUNs of the target the command came through).

Supported: CSCD (target) descriptors of type E4h (identification
descriptor, SPC-4 §6.3.6.2) naming a direct-access LU by its NAA
designator (VPD 83h), and block-to-block segment descriptors (02h, §6.3.7.5).
Everything else is refused with the sense SPC-4 gives for it.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ..backend import Backend
from .sense import (
    COPY_ABORTED,
    COPY_TARGET_NOT_REACHABLE,
    INCORRECT_COPY_TARGET_DEVICE_TYPE,
    INVALID_FIELD_IN_CDB,
    INVALID_FIELD_IN_PARAMETER_LIST,
    PARAMETER_LIST_LENGTH_ERROR,
    TOO_MANY_SEGMENT_DESCRIPTORS,
    TOO_MANY_TARGET_DESCRIPTORS,
    UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE,
    UNSUPPORTED_TARGET_DESCRIPTOR_TYPE,
    ScsiError,
)

EXTENDED_COPY = 0x83
RECEIVE_COPY_RESULTS = 0x84
SA_EXTENDED_COPY_LID1 = 0x00

HEADER_LENGTH = 16  # SPC-4 §6.3.2, table 104
TARGET_DESCRIPTOR_LENGTH = 32  # every CSCD descriptor type this copy manager knows (§6.3.6.1)
IDENTIFICATION_DESCRIPTOR = 0xE4  # CSCD descriptor type code (§6.3.6.2)
BLOCK_TO_BLOCK = 0x02  # segment descriptor type code (§6.3.7.5)
BLOCK_TO_BLOCK_LENGTH = 0x18  # its DESCRIPTOR LENGTH (bytes after the first four)
NAA = 0x3  # designator type (§7.8.6.1)
# the segment and CSCD descriptor types this copy manager takes (RECEIVE COPY RESULTS, VPD 8Fh)
IMPLEMENTED_DESCRIPTORS = bytes([BLOCK_TO_BLOCK, IDENTIFICATION_DESCRIPTOR])
DIRECT_ACCESS = 0x00  # peripheral device type


class RcrAction(enum.IntEnum):
    """RECEIVE COPY RESULTS service actions this copy manager answers (SPC-4 §6.18.1)."""

    COPY_STATUS = 0x00
    OPERATING_PARAMETERS = 0x03


class ListIdUsage(enum.IntEnum):
    """LIST ID USAGE (SPC-4 §6.3.2, table 105)."""

    HOLD = 0b00  # keep the status for RECEIVE COPY RESULTS
    NO_HOLD = 0b10  # list id unique while the copy runs, no status kept
    NONE = 0b11  # list id must be zero, no status kept


@dataclass(frozen=True)
class CopyLimits:
    """What RECEIVE COPY RESULTS (OPERATING PARAMETERS) promises (§6.18.4).
    ESXi issues one or two CSCDs and one segment per command; the room
    above that costs nothing but a longer parameter list."""

    max_targets: int = 4
    max_segments: int = 64
    max_descriptor_list: int = 4096

    @property
    def max_parameter_list(self) -> int:
        return HEADER_LENGTH + self.max_descriptor_list


LIMITS = CopyLimits()


@dataclass(frozen=True)
class CopyTarget:
    """A CSCD descriptor: the NAA designator of a direct-access LU."""

    designator: bytes
    block_size: int
    offset: int  # in the parameter list, for the sense field pointer


@dataclass(frozen=True)
class Segment:
    """A block-to-block segment descriptor (SPC-4 §6.3.7.5)."""

    source: int  # CSCD descriptor index
    destination: int
    blocks: int  # DC 0 or 1 alike: copy targets must have the same block size here
    source_lba: int
    destination_lba: int


@dataclass(frozen=True)
class CopyList:
    list_id: int
    usage: ListIdUsage
    targets: tuple[CopyTarget, ...]
    segments: tuple[Segment, ...]


def _bad_field(offset: int, bit: int | None = None) -> ScsiError:
    return ScsiError(INVALID_FIELD_IN_PARAMETER_LIST, field=offset, bit=bit, in_cdb=False)


def parse_copy_list(data: bytes, limits: CopyLimits = LIMITS) -> CopyList:
    """The EXTENDED COPY (LID1) parameter list (SPC-4 §6.3.2), checked
    against ``limits`` before any descriptor is looked at: a list longer
    than the descriptors it announces, or shorter, is a PARAMETER LIST
    LENGTH ERROR; more descriptors than advertised, TOO MANY ...
    DESCRIPTORS (§6.3.1)."""
    if len(data) < HEADER_LENGTH:
        raise ScsiError(PARAMETER_LIST_LENGTH_ERROR)
    list_id = data[0]
    if data[1] & 0xC0:  # reserved
        raise _bad_field(1, 7)
    if data[1] & 0x20:  # STR: no sequential striped copy targets
        raise _bad_field(1, 5)
    try:
        usage = ListIdUsage((data[1] >> 3) & 0x03)
    except ValueError:
        raise _bad_field(1, 4) from None
    if usage is ListIdUsage.NONE and list_id:
        raise _bad_field(0)
    target_length = int.from_bytes(data[2:4], "big")
    segment_length, inline_length = struct.unpack_from(">II", data, 8)
    if target_length + segment_length > limits.max_descriptor_list:
        raise ScsiError(PARAMETER_LIST_LENGTH_ERROR)
    if inline_length:  # MAXIMUM INLINE DATA LENGTH is 0
        raise _bad_field(12)
    if HEADER_LENGTH + target_length + segment_length + inline_length != len(data):
        raise ScsiError(PARAMETER_LIST_LENGTH_ERROR)
    targets = _parse_targets(data, HEADER_LENGTH, target_length, limits)
    segments = _parse_segments(data, HEADER_LENGTH + target_length, segment_length, limits)
    return CopyList(list_id, usage, targets, segments)


def _parse_targets(data: bytes, start: int, length: int, limits: CopyLimits) -> tuple[CopyTarget, ...]:
    if length % TARGET_DESCRIPTOR_LENGTH:
        raise ScsiError(PARAMETER_LIST_LENGTH_ERROR)
    if length // TARGET_DESCRIPTOR_LENGTH > limits.max_targets:
        raise ScsiError(TOO_MANY_TARGET_DESCRIPTORS)
    return tuple(_parse_target(data, pos) for pos in range(start, start + length, TARGET_DESCRIPTOR_LENGTH))


def _parse_target(data: bytes, pos: int) -> CopyTarget:
    """An identification CSCD descriptor (§6.3.6.2). LU ID TYPE is ignored
    and NUL obsolete in SPC-4, which this device claims (INQUIRY VERSION 6)."""
    if data[pos] != IDENTIFICATION_DESCRIPTOR:
        raise ScsiError(UNSUPPORTED_TARGET_DESCRIPTOR_TYPE, field=pos, in_cdb=False)
    if data[pos + 1] & 0x1F != DIRECT_ACCESS:
        raise ScsiError(INCORRECT_COPY_TARGET_DEVICE_TYPE)
    association, designator_type = (data[pos + 5] >> 4) & 0x03, data[pos + 5] & 0x0F
    length = data[pos + 7]
    if length > 20:  # the designator field holds 20 bytes
        raise _bad_field(pos + 7)
    designator = bytes(data[pos + 8:pos + 8 + length])
    if association != 0 or designator_type != NAA:  # only the LU's NAA name identifies it here
        designator = b""
    block_size = int.from_bytes(data[pos + 29:pos + 32], "big")
    return CopyTarget(designator, block_size, pos)


def _parse_segments(data: bytes, start: int, length: int, limits: CopyLimits) -> tuple[Segment, ...]:
    segments: list[Segment] = []
    pos, end = start, start + length
    while pos < end:
        if end - pos < 4:
            raise ScsiError(PARAMETER_LIST_LENGTH_ERROR)
        if data[pos] != BLOCK_TO_BLOCK:
            raise ScsiError(UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE, field=pos, in_cdb=False)
        if len(segments) == limits.max_segments:
            raise ScsiError(TOO_MANY_SEGMENT_DESCRIPTORS)
        size = 4 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if size - 4 != BLOCK_TO_BLOCK_LENGTH:
            raise _bad_field(pos + 2)
        if pos + size > end:
            raise ScsiError(PARAMETER_LIST_LENGTH_ERROR)
        source, destination, blocks, source_lba, destination_lba = struct.unpack_from(">HH2xHQQ", data, pos + 4)
        segments.append(Segment(source, destination, blocks, source_lba, destination_lba))
        pos += size
    return tuple(segments)


def check_cdb(cdb: bytes, limits: CopyLimits = LIMITS) -> int:
    """The PARAMETER LIST LENGTH of an EXTENDED COPY (LID1) CDB (§6.3.1)."""
    length = int.from_bytes(cdb[10:14], "big")
    if length > limits.max_parameter_list:
        raise ScsiError(PARAMETER_LIST_LENGTH_ERROR)
    return length


def max_segment_length(block_size: int) -> int:
    """MAXIMUM SEGMENT LENGTH in bytes: a block-to-block segment counts
    blocks in 16 bits (§6.3.7.5)."""
    return min(0xFFFF * block_size, 0xFFFFFFFF)


def operating_parameters(limits: CopyLimits, block_size: int) -> bytes:
    """RECEIVE COPY RESULTS, OPERATING PARAMETERS (SPC-4 §6.18.4): the
    limits, no inline or held data, one copy at a time per command, the
    one CSCD and segment descriptor type implemented."""
    body = bytearray(40)
    body[0] = 0x01  # SNLID: the list id space is per I_T nexus
    struct.pack_into(">HHIIIII", body, 4, limits.max_targets, limits.max_segments, limits.max_descriptor_list,
                     max_segment_length(block_size), 0, 0, 0)
    struct.pack_into(">HB", body, 30, 1, 1)  # TOTAL CONCURRENT COPIES, MAXIMUM CONCURRENT COPIES
    body[33] = block_size.bit_length() - 1  # DATA SEGMENT GRANULARITY (log2 bytes)
    body[39] = len(IMPLEMENTED_DESCRIPTORS)
    data = bytes(body) + IMPLEMENTED_DESCRIPTORS
    return len(data).to_bytes(4, "big") + data


class TpcDescriptor(enum.IntEnum):
    """Third-party copy descriptor types of VPD page 8Fh (SPC-4 §7.8.17.2):
    the five a copy manager of EXTENDED COPY (LID1) must report."""

    SUPPORTED_COMMANDS = 0x0001  # §7.8.17.4
    PARAMETER_DATA = 0x0004  # §7.8.17.5
    SUPPORTED_DESCRIPTORS = 0x0008  # §7.8.17.6
    SUPPORTED_CSCD_IDS = 0x000C  # §7.8.17.7
    GENERAL_COPY_OPERATIONS = 0x8001  # §7.8.17.10


def _tpc_descriptor(kind: TpcDescriptor, body: bytes) -> bytes:
    """One third-party copy descriptor, zero-padded to a multiple of four
    bytes (§7.8.17.2); its DESCRIPTOR LENGTH counts the padding."""
    body += bytes(-len(body) % 4)
    return struct.pack(">HH", kind, len(body)) + body


def third_party_copy_descriptors(limits: CopyLimits, block_size: int) -> bytes:
    """The descriptors of VPD page 8Fh (Third-party Copy, SPC-4 §7.8.17)
    for this copy manager, saying what RECEIVE COPY RESULTS (OPERATING
    PARAMETERS, :func:`operating_parameters`) says: the commands (EXTENDED
    COPY LID1; RECEIVE COPY RESULTS COPY STATUS and OPERATING PARAMETERS),
    the limits, no inline data, the one segment (02h block to block) and
    CSCD (E4h identification) descriptor type, no CSCD descriptor ids (a
    LID1 list names its CSCDs by index), one copy at a time."""
    commands = (bytes([EXTENDED_COPY, 1, SA_EXTENDED_COPY_LID1])
                + bytes([RECEIVE_COPY_RESULTS, len(RcrAction), *sorted(RcrAction)]))
    return b"".join((
        _tpc_descriptor(TpcDescriptor.SUPPORTED_COMMANDS, bytes([len(commands)]) + commands),
        _tpc_descriptor(TpcDescriptor.PARAMETER_DATA, struct.pack(
            ">4xHHII12x", limits.max_targets, limits.max_segments, limits.max_descriptor_list, 0)),
        _tpc_descriptor(TpcDescriptor.SUPPORTED_DESCRIPTORS,
                        bytes([len(IMPLEMENTED_DESCRIPTORS)]) + IMPLEMENTED_DESCRIPTORS),
        _tpc_descriptor(TpcDescriptor.SUPPORTED_CSCD_IDS, struct.pack(">H", 0)),
        # TOTAL and MAXIMUM IDENTIFIED CONCURRENT COPIES, MAXIMUM SEGMENT LENGTH,
        # DATA SEGMENT GRANULARITY (log2 bytes), INLINE DATA GRANULARITY
        _tpc_descriptor(TpcDescriptor.GENERAL_COPY_OPERATIONS, struct.pack(
            ">IIIBB18x", 1, 1, max_segment_length(block_size), block_size.bit_length() - 1, 0)),
    ))


@dataclass
class CopyStatus:
    """What COPY STATUS reports for a list id (SPC-4 §6.18.2)."""

    done: bool = False
    failed: bool = False
    segments: int = 0
    transferred: int = 0  # bytes

    def encode(self) -> bytes:
        status = 0x00 if not self.done else (0x02 if self.failed else 0x01)
        # TRANSFER COUNT UNITS 01h: kibibytes (a byte count would overflow 32 bits)
        body = struct.pack(">BHBI", status, self.segments, 0x01, min(self.transferred >> 10, 0xFFFFFFFF))
        return len(body).to_bytes(4, "big") + body


def copy_status_for(statuses: dict[int, CopyStatus], list_id: int) -> bytes:
    """COPY STATUS of ``list_id`` (§6.18.2); status of a finished copy is
    reported once and then dropped. An unknown list id is a bad CDB field."""
    status = statuses.get(list_id)
    if status is None:
        raise ScsiError(INVALID_FIELD_IN_CDB, field=2)
    if status.done:
        del statuses[list_id]
    return status.encode()


CHUNK = 1 << 20  # bytes held in memory per step of a copy


async def copy_segment(source: Backend, destination: Backend, src_offset: int, dst_offset: int, length: int,
                       status: CopyStatus) -> None:
    """Copy ``length`` bytes in chunks of at most :data:`CHUNK`. Within
    one disk, a destination above an overlapping source is copied from the
    end, so that no chunk reads what an earlier chunk of this copy wrote."""
    backwards = source is destination and src_offset < dst_offset < src_offset + length
    starts = range(0, length, CHUNK)
    for start in (reversed(starts) if backwards else starts):
        n = min(CHUNK, length - start)
        data = await source.read_bytes(src_offset + start, n)
        await destination.write(dst_offset + start, memoryview(data))
        status.transferred += n


def not_reachable() -> ScsiError:
    """A CSCD this copy manager cannot reach (another target's LU, no such LU)."""
    return ScsiError(COPY_TARGET_NOT_REACHABLE)


def segment_failed() -> ScsiError:
    """A segment that cannot be processed (an LBA beyond the copy target's
    end): COPY ABORTED (SPC-4 §5.17.4.3; the fixed-format sense carries no
    copy target sense data)."""
    return ScsiError(COPY_ABORTED)


__all__ = ["LIMITS", "CopyLimits", "CopyList", "CopyStatus", "CopyTarget", "RcrAction", "Segment", "check_cdb",
           "copy_segment", "copy_status_for", "operating_parameters", "parse_copy_list",
           "third_party_copy_descriptors"]
