"""SANITIZE (SBC-3 r36 §5.30, §4.11): the CDB and OVERWRITE parameter
list decoded without I/O, and the state of a logical unit's sanitize
operation, which runs as a task of its own (:mod:`target.sanitizer`): an
ABORT TASK, a reset or a dropped connection does not stop it (SBC-3
§4.11.1), and until it ends every
command but INQUIRY, REPORT LUNS and REQUEST SENSE gets NOT READY,
SANITIZE IN PROGRESS.

What each service action does to a backend (a raw file, a machine's qcow2
overlay, an RBD image; a qcow2 base image is never written, an overlay's
writes stay in the overlay):

- OVERWRITE writes the pattern over every block, ``count`` passes
  (inverted every other pass with INVERT), each block really written (not
  a hole, even for a zero pattern), synced at the end.
- BLOCK ERASE and CRYPTOGRAPHIC ERASE deallocate the whole medium, as
  UNMAP does: afterwards it reads as zeros (LBPRZ) and GET LBA STATUS
  reports it deallocated. There is no encryption key to change, so a
  cryptographic erase is the same erase.

An overwrite writes at most :data:`RATE` bytes a second: the disk it
wipes shares its storage with the other machines' disks, whose boots must
not stall behind it. The operation itself runs on the I/O side
(:mod:`target.sanitizer`); this module stays free of the event loop.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from .sense import INVALID_FIELD_IN_CDB, INVALID_FIELD_IN_PARAMETER_LIST, ScsiError

SANITIZE = 0x48
RATE = 128 << 20  # bytes per second an overwrite may write
CHUNK = 1 << 20  # bytes written per step of an overwrite


class SanitizeAction(enum.IntEnum):
    """SERVICE ACTION of SANITIZE (SBC-3 §5.30.1, table 67)."""

    OVERWRITE = 0x01
    BLOCK_ERASE = 0x02
    CRYPTOGRAPHIC_ERASE = 0x03
    EXIT_FAILURE_MODE = 0x1F


@dataclass(frozen=True)
class Overwrite:
    """The OVERWRITE parameter list (SBC-3 §5.30.2.2)."""

    pattern: bytes
    invert: bool
    passes: int


@dataclass(frozen=True)
class SanitizeRequest:
    action: SanitizeAction
    immediate: bool
    parameter_length: int


def parse_cdb(cdb: bytes, block_size: int) -> SanitizeRequest:
    """The SANITIZE CDB (SBC-3 §5.30.1): reserved bits and bytes zero, a
    known service action, a parameter list only for OVERWRITE, and there
    between 5 bytes and one block's pattern plus its 4-byte header."""
    if cdb[1] & 0x40:
        raise ScsiError(INVALID_FIELD_IN_CDB, field=1, bit=6)
    for i in range(2, 7):
        if cdb[i]:
            raise ScsiError(INVALID_FIELD_IN_CDB, field=i)
    try:
        action = SanitizeAction(cdb[1] & 0x1F)
    except ValueError:
        raise ScsiError(INVALID_FIELD_IN_CDB, field=1, bit=4) from None
    length = int.from_bytes(cdb[7:9], "big")
    if action is SanitizeAction.OVERWRITE:
        if not 4 < length <= block_size + 4:
            raise ScsiError(INVALID_FIELD_IN_CDB, field=7)
    elif length:
        raise ScsiError(INVALID_FIELD_IN_CDB, field=7)
    return SanitizeRequest(action, bool(cdb[1] & 0x80), length)


def parse_overwrite(data: bytes, block_size: int) -> Overwrite:
    """SBC-3 §5.30.2.2: INVERT, TEST 00b, OVERWRITE COUNT 1-31, and an
    INITIALIZATION PATTERN of 1 to ``block_size`` bytes that fills the rest
    of the list."""
    if data[0] & 0x60:  # TEST: vendor-specific test modes, none here
        raise ScsiError(INVALID_FIELD_IN_PARAMETER_LIST, field=0, bit=5, in_cdb=False)
    passes = data[0] & 0x1F
    if not passes:
        raise ScsiError(INVALID_FIELD_IN_PARAMETER_LIST, field=0, bit=4, in_cdb=False)
    length = int.from_bytes(data[2:4], "big")
    if not 0 < length <= block_size or 4 + length != len(data):
        raise ScsiError(INVALID_FIELD_IN_PARAMETER_LIST, field=2, in_cdb=False)
    return Overwrite(bytes(data[4:]), bool(data[0] & 0x80), passes)


def pattern_block(pattern: bytes, block_size: int, inverted: bool = False) -> bytes:
    """One block of ``pattern`` repeated (SBC-3: a pattern shorter than the
    block is repeated to fill it), bit-inverted if asked."""
    block = (pattern * (block_size // len(pattern) + 1))[:block_size]
    return bytes(b ^ 0xFF for b in block) if inverted else block


class Job(Protocol):
    """The running operation (an asyncio task, on the I/O side)."""

    def done(self) -> bool: ...


@dataclass
class SanitizeState:
    """A sanitize operation of a logical unit: running, or failed (then the
    unit stays in failure mode until a sanitize succeeds or EXIT FAILURE
    MODE, SBC-3 §4.11.2)."""

    task: Job | None = None
    failed: bool = False

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()


__all__ = ["CHUNK", "RATE", "SANITIZE", "Job", "Overwrite", "SanitizeAction", "SanitizeRequest", "SanitizeState",
           "parse_cdb", "parse_overwrite", "pattern_block"]
