"""Decoding the CDB fields the block commands share (SBC-3 §5)."""

from __future__ import annotations

import struct
from typing import NamedTuple

from .sense import INVALID_FIELD_IN_CDB, ScsiError

# opcodes (SPC-4 / SBC-3)
TEST_UNIT_READY = 0x00
REQUEST_SENSE = 0x03
READ_6 = 0x08
WRITE_6 = 0x0A
INQUIRY = 0x12
MODE_SELECT_6 = 0x15
RESERVE_6 = 0x16
RELEASE_6 = 0x17
MODE_SENSE_6 = 0x1A
START_STOP_UNIT = 0x1B
PREVENT_ALLOW = 0x1E
READ_CAPACITY_10 = 0x25
READ_10 = 0x28
WRITE_10 = 0x2A
WRITE_VERIFY_10 = 0x2E
VERIFY_10 = 0x2F
PREFETCH_10 = 0x34
READ_DEFECT_DATA_10 = 0x37
SYNCHRONIZE_CACHE_10 = 0x35
WRITE_SAME_10 = 0x41
UNMAP = 0x42
MODE_SELECT_10 = 0x55
PERSISTENT_RESERVE_IN = 0x5E
PERSISTENT_RESERVE_OUT = 0x5F
MODE_SENSE_10 = 0x5A
READ_16 = 0x88
COMPARE_AND_WRITE = 0x89
WRITE_16 = 0x8A
ORWRITE_16 = 0x8B
WRITE_VERIFY_16 = 0x8E
VERIFY_16 = 0x8F
PREFETCH_16 = 0x90
SYNCHRONIZE_CACHE_16 = 0x91
WRITE_SAME_16 = 0x93
WRITE_ATOMIC_16 = 0x9C
SERVICE_ACTION_IN_16 = 0x9E
REPORT_LUNS = 0xA0
MAINTENANCE_IN = 0xA3
READ_12 = 0xA8
READ_DEFECT_DATA_12 = 0xB7
WRITE_12 = 0xAA
WRITE_VERIFY_12 = 0xAE
VERIFY_12 = 0xAF

SA_READ_CAPACITY_16 = 0x10
SA_GET_LBA_STATUS = 0x12
SA_REPORT_SUPPORTED_OPCODES = 0x0C


class BlockRange(NamedTuple):
    """LBA and block count of a READ/WRITE/VERIFY-like CDB, with its flags
    byte. A NamedTuple: made for every READ, and far cheaper to build than
    a frozen dataclass."""

    lba: int
    blocks: int
    flags: int  # byte 1 (RDPROTECT/WRPROTECT, DPO, FUA, BYTCHK ...)

    @property
    def fua(self) -> bool:
        return bool(self.flags & 0x08)


_LBA_LEN = {  # group code -> (struct for LBA and length, offset)  (SBC-3 §5)
    1: (struct.Struct(">IxH"), 2),
    2: (struct.Struct(">IxH"), 2),
    5: (struct.Struct(">II"), 2),
    4: (struct.Struct(">QI"), 2),
}


def block_range(cdb: bytes) -> BlockRange:
    """LBA/length from the 6, 10, 12 or 16-byte form (SBC-3 §5.8, §5.11, ...)."""
    group = cdb[0] >> 5
    layout = _LBA_LEN.get(group)
    if layout is not None:
        st, off = layout
        if len(cdb) < off + st.size:
            raise ScsiError(INVALID_FIELD_IN_CDB, field=0)
        lba, blocks = st.unpack_from(cdb, off)
        return BlockRange(lba, blocks, cdb[1])
    if group == 0 and len(cdb) >= 6:  # 6-byte: 21-bit LBA, length 0 means 256 (SBC-3 §5.8)
        lba = int.from_bytes(cdb[1:4], "big") & 0x1FFFFF
        return BlockRange(lba, cdb[4] or 256, 0)
    raise ScsiError(INVALID_FIELD_IN_CDB, field=0)


def cdb_length(opcode: int) -> int:
    """SPC-4 §4.2.5.1: the CDB length follows from the group code."""
    return {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}.get(opcode >> 5, 16)


# the READs: the boot's hot path, and what a disk that stalls keeps waiting
READS = frozenset((READ_6, READ_10, READ_12, READ_16))

# what a command asks of the disk, in words (an operator reading that a
# disk stalled wants "read", not an opcode)
_OPERATIONS = {
    **dict.fromkeys((READ_6, READ_10, READ_12, READ_16, VERIFY_10, VERIFY_12, VERIFY_16, PREFETCH_10,
                     PREFETCH_16), "read"),
    **dict.fromkeys((WRITE_6, WRITE_10, WRITE_12, WRITE_16, WRITE_VERIFY_10, WRITE_VERIFY_12, WRITE_VERIFY_16,
                     WRITE_ATOMIC_16, COMPARE_AND_WRITE, ORWRITE_16), "write"),
    **dict.fromkeys((WRITE_SAME_10, WRITE_SAME_16, UNMAP), "zeroing"),
    **dict.fromkeys((SYNCHRONIZE_CACHE_10, SYNCHRONIZE_CACHE_16), "flush"),
}


# commands whose work is one transfer at most (MAXIMUM TRANSFER LENGTH) or
# one flush: one that takes long is waiting for its disk. Not the zeroing,
# EXTENDED COPY or SANITIZE of a range as large as the disk, which may take
# long doing their work
BOUNDED = frozenset(op for op, what in _OPERATIONS.items() if what in ("write", "flush")) | READS


def operation(opcode: int) -> str:
    """What the command with ``opcode`` does to the disk: read, write,
    zeroing, flush, else ``command 0xNN``."""
    return _OPERATIONS.get(opcode) or f"command 0x{opcode:02x}"
