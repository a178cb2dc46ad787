"""A logical unit: SCSI block commands (SBC-3) and the SPC-4 commands a
disk needs, executed against a :class:`~target.backend.Backend`.

Sans-I/O apart from awaiting the backend (no event loop of its own: the one
lock it needs, for COMPARE AND WRITE, is the backend's): :meth:`Lun.execute`
takes a CDB and the Data-Out buffer and returns a :class:`ScsiResult`. READ
data is the backend's segments, untouched, so the iSCSI layer can send it
zero-copy.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import sanitizer
from ..backend import Backend, BackendError, MediumError, Segment, SpaceExhausted
from . import cdb as op
from . import sanitize as wipe
from .cdb import READS, BlockRange, block_range, cdb_length
from .inquiry import DEFAULT_PRODUCT, DEFAULT_VENDOR, Identity, Limits, naa_id, standard, vpd
from .mode import PC_SAVED, block_descriptor, pages, selected_swp
from .ports import MAINTENANCE_IN, SA_REPORT_TARGET_PORT_GROUPS, port_designators, report_target_port_groups
from .reservations import Access, PrIn, PrOut, ReservationConflict, Reservations, parse_prout
from .sense import (
    INVALID_FIELD_IN_CDB,
    INVALID_FIELD_IN_PARAMETER_LIST,
    INVALID_OPCODE,
    LBA_OUT_OF_RANGE,
    LUN_NOT_SUPPORTED,
    LUN_RESET_OCCURRED,
    MISCOMPARE_DURING_VERIFY,
    NO_SENSE,
    OPERATION_IN_PROGRESS,
    PARAMETER_LIST_LENGTH_ERROR,
    SANITIZE_FAILED,
    SANITIZE_IN_PROGRESS,
    SAVING_PARAMETERS_NOT_SUPPORTED,
    SPACE_ALLOCATION_FAILED,
    UNRECOVERED_READ_ERROR,
    WRITE_ERROR,
    WRITE_PROTECTED,
    Asc,
    ScsiError,
    ScsiStatus,
    fixed_sense,
)
from .xcopy import (
    EXTENDED_COPY,
    LIMITS as COPY_LIMITS,
    RECEIVE_COPY_RESULTS,
    SA_EXTENDED_COPY_LID1,
    CopyList,
    CopyStatus,
    ListIdUsage,
    RcrAction,
    check_cdb as check_copy_cdb,
    copy_segment,
    copy_status_for,
    not_reachable,
    operating_parameters,
    parse_copy_list,
    segment_failed,
    third_party_copy_descriptors,
)


@dataclass(slots=True)
class ScsiResult:
    status: ScsiStatus
    data: Sequence[Segment] = ()
    sense: bytes = b""
    data_out_length: int | None = None  # bytes the CDB wanted from the initiator


GOOD = ScsiResult(ScsiStatus.GOOD)
CONFLICT = ScsiResult(ScsiStatus.RESERVATION_CONFLICT)

# the last argument is the transfer length, or the I_T nexus for a command
# that needs it (Command.with_nexus)
Handler = Callable[["Lun", bytes, "memoryview | None", Any], Awaitable[ScsiResult]]


@dataclass(frozen=True)
class Command:
    """One supported opcode (or opcode + service action): its handler and
    CDB usage bitmap for REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35)."""

    handler: Handler
    usage: bytes
    writes: bool = False  # refused on a read-only LUN
    service_action: int | None = None
    access: Access = Access.READ  # how it meets a reservation
    with_nexus: bool = False


def _check(result: ScsiError) -> ScsiResult:
    return ScsiResult(ScsiStatus.CHECK_CONDITION, sense=result.sense())


def _alloc(data: bytes, length: int) -> ScsiResult:
    return ScsiResult(ScsiStatus.GOOD, (data[:length],) if length and data else ())


class Lun:
    def __init__(self, backend: Backend, lun_id: int = 0, block_size: int = 512, serial: str = "0",
                 device_id: bytes = b"", vendor: str = DEFAULT_VENDOR, product: str = DEFAULT_PRODUCT,
                 revision: str = "0001", read_only: bool = False, reservations: Path | None = None) -> None:
        self.backend = backend
        self.lun_id = lun_id
        self.block_size = block_size
        self.shift = block_size.bit_length() - 1
        self.blocks = backend.size // block_size
        self.read_only = read_only or backend.read_only
        self.software_write_protect = False  # SWP of the control mode page (SPC-4 §7.5.8)
        self.identity = Identity(vendor, product, revision, serial, device_id or bytes(16))
        max_xfer = (32 << 20) // block_size
        # libiscsi's BlockLimits test holds MAXIMUM UNMAP LBA COUNT to 1M blocks
        self.limits = Limits(max_transfer=max_xfer, max_unmap_lbas=min((1 << 30) // block_size, 1 << 20),
                             max_unmap_descriptors=256, max_write_same=max(1, self.blocks),
                             max_compare_and_write=255, optimal_granularity=max(1, 4096 // block_size),
                             max_atomic=min(backend.atomic_unit // block_size, max_xfer),
                             atomic_alignment=backend.atomic_unit // block_size)
        self.inquiry_data = standard(self.identity)
        # Unit attentions: every reset bumps the epoch; a nexus that has not
        # seen the current epoch gets one UNIT ATTENTION (SAM-5 §5.14).
        self.epoch = 0
        self.seen: dict[Hashable, int] = {}
        self.reset_attention = LUN_RESET_OCCURRED  # the ASC of the last reset
        # ``reservations``: where APTPL state is kept (the owner's choice)
        self.pr = Reservations(reservations)
        # EXTENDED COPY: the LUN a CSCD's NAA designator names, among those
        # the issuing I_T nexus may reach (the owner sets it: its target's
        # LUNs); on its own a LUN reaches only itself
        self.copy_targets: Callable[[bytes], Lun | None] = self._only_self
        self.copies: dict[Hashable, dict[int, CopyStatus]] = {}  # per nexus, by list id
        self.sanitize: wipe.SanitizeState | None = None  # running or failed (SBC-3 §4.11)
        # the commands running now, oldest first: serial -> opcode. No clock
        # here (sans-I/O): whoever watches for a stalled disk (bootsvc's
        # disk watch) times how long the same command stays the oldest
        self.running: dict[int, int] = {}
        self._serials = itertools.count(1)
        self.sanitize_rate = wipe.RATE

    # -- the entry point --------------------------------------------------------

    def read_now(self, cdb: bytes, nexus: Hashable) -> ScsiResult | None:
        """A plain READ answered without waiting for anything (the backend
        knows its extents, e.g. a raw image), or None: then :meth:`execute`.
        The boot's hot path without a coroutine per command."""
        if not self._plain_read(cdb[0], nexus):
            return None
        try:
            _, offset, length = self._transfer(cdb)
        except ScsiError as e:
            return _check(e)
        if not length:
            return GOOD
        segments = self.backend.read_now(offset, length)
        return None if segments is None else ScsiResult(ScsiStatus.GOOD, segments)

    def _plain_read(self, opcode: int, nexus: Hashable) -> bool:
        """A READ with no unit attention to report and no reservation to check."""
        return (opcode in READS and self.seen.get(nexus) == self.epoch and not self.pr.engaged
                and self.sanitize is None)

    async def execute(self, cdb: bytes, data_out: memoryview | None, nexus: Hashable,
                      transfer_length: int) -> ScsiResult:
        """Run one command; while it runs it is in :attr:`running`."""
        opcode = cdb[0]
        serial = next(self._serials)
        self.running[serial] = opcode
        try:
            # READ is the boot's hot path: dispatch it before anything else
            if self._plain_read(opcode, nexus):
                try:
                    return await self._read(cdb, data_out, transfer_length)
                except ScsiError as e:
                    return _check(e)
                except BackendError:  # the medium or the image cannot be read (a corrupt cluster): MEDIUM ERROR
                    return _check(ScsiError(UNRECOVERED_READ_ERROR))
            try:
                if len(cdb) < cdb_length(opcode) and opcode >> 5 != 3:
                    raise ScsiError(INVALID_FIELD_IN_CDB, field=0)
                attention = self._attention(opcode, nexus)
                if attention is not None:
                    return _check(ScsiError(attention))
                if self.sanitize is not None and opcode not in _DURING_SANITIZE:
                    self._sanitize_gate(opcode)
                command = self._admit(cdb, nexus)
                if opcode == op.REQUEST_SENSE:
                    self.seen[nexus] = self.epoch
                return await command.handler(self, cdb, data_out, nexus if command.with_nexus else transfer_length)
            except ScsiError as e:
                return _check(e)
            except ReservationConflict:
                return CONFLICT
            except MediumError:
                return _check(ScsiError(WRITE_ERROR if opcode not in READS else UNRECOVERED_READ_ERROR))
            except SpaceExhausted:
                return _check(ScsiError(SPACE_ALLOCATION_FAILED))
            except BackendError:
                if opcode in READS:  # as on the hot path: an unreadable image is an unrecovered read error
                    return _check(ScsiError(UNRECOVERED_READ_ERROR))
                raise
        finally:
            del self.running[serial]

    def _attention(self, opcode: int, nexus: Hashable) -> Asc | None:
        """The unit attention this command reports instead of running
        (SAM-5 §5.14): a reset's first, then a reservation change's."""
        seen = self.seen.setdefault(nexus, self.epoch)
        if opcode in _NO_ATTENTION:
            return None
        if seen != self.epoch:
            self.seen[nexus] = self.epoch
            return self.reset_attention
        return self.pr.attention(nexus) if self.pr.attentions else None

    def _sanitize_gate(self, opcode: int) -> None:
        """SBC-3 §4.11: while a sanitize runs, NOT READY; after one failed,
        MEDIUM ERROR until a sanitize succeeds or EXIT FAILURE MODE."""
        assert self.sanitize is not None
        if self.sanitize.running:
            raise ScsiError(SANITIZE_IN_PROGRESS)
        if opcode != wipe.SANITIZE:
            raise ScsiError(SANITIZE_FAILED)

    def _admit(self, cdb: bytes, nexus: Hashable) -> Command:
        """The command a CDB names, if this LUN may run it now for
        ``nexus``: a known one, no reservation conflict, not a write to a
        read-only LUN."""
        command = _lookup(cdb)
        if command is None:
            raise ScsiError(INVALID_OPCODE, field=0)
        self.pr.check(nexus, command.access)
        if command.writes and self.write_protected:
            raise ScsiError(WRITE_PROTECTED)
        return command

    @property
    def write_protected(self) -> bool:
        return self.read_only or self.software_write_protect

    def data_out_length(self, cdb: bytes) -> int:
        """Bytes of Data-Out ``cdb`` asks for (SBC-3 §5, SPC-4 §6.11): what
        the transport gathers, whatever length the initiator announced. 0
        for a CDB that fails before it reads data (unknown opcode, a
        transfer over MAXIMUM TRANSFER LENGTH, a malformed CDB)."""
        rule = _DATA_OUT.get(cdb[0])
        if rule is None:
            return 0
        try:
            return rule(self, cdb)
        except (ScsiError, IndexError):
            return 0

    def _blocks_out(self, cdb: bytes) -> int:
        blocks = block_range(cdb).blocks
        return 0 if blocks > self.limits.max_transfer else blocks << self.shift

    def _verify_out(self, cdb: bytes) -> int:
        bytchk = (cdb[1] >> 1) & 0x03
        return {1: self._blocks_out(cdb), 3: self.block_size}.get(bytchk, 0)

    def _compare_and_write_out(self, cdb: bytes) -> int:
        blocks = cdb[13]
        return 0 if blocks > self.limits.max_compare_and_write else 2 * blocks << self.shift

    def _write_same_out(self, cdb: bytes) -> int:
        ndob = cdb[0] == op.WRITE_SAME_16 and bool(cdb[1] & 0x01)
        return 0 if ndob else self.block_size

    def reset(self, attention: Asc = LUN_RESET_OCCURRED) -> None:
        """LOGICAL UNIT RESET / target reset: every nexus gets a UNIT
        ATTENTION, and a RESERVE(6) ends. ``attention`` is its additional
        sense code: BUS DEVICE RESET FUNCTION OCCURRED for a LOGICAL UNIT
        RESET (SAM-5, logical unit reset); a target reset is a hard reset
        (RFC 7143 §11.5.1 equates TARGET WARM RESET with SAM-2's TARGET
        RESET), which reports POWER ON, RESET, OR BUS DEVICE RESET OCCURRED,
        as tgt does for every reset (SAM-5, hard reset)."""
        self.epoch += 1
        self.reset_attention = attention
        self.pr.reset()

    def nexus_lost(self, nexus: Hashable) -> None:
        self.seen.pop(nexus, None)
        self.copies.pop(nexus, None)
        self.pr.nexus_lost(nexus)

    # -- helpers ------------------------------------------------------------------

    def _range(self, r: BlockRange) -> tuple[int, int]:
        """Byte offset and length of a block range, checked against the medium
        (SBC-3 §4.5: LBA OUT OF RANGE) and the transfer limit."""
        if r.lba + r.blocks > self.blocks:
            raise ScsiError(LBA_OUT_OF_RANGE)
        return r.lba << self.shift, r.blocks << self.shift

    def _no_protection(self, r: BlockRange) -> None:
        if r.flags & 0xE0:  # RDPROTECT/WRPROTECT/VRPROTECT: no protection information here
            raise ScsiError(INVALID_FIELD_IN_CDB, field=1, bit=5)

    # -- reads and writes -------------------------------------------------------

    def _transfer(self, cdb: bytes) -> tuple[BlockRange, int, int]:
        """The checked range of a READ or WRITE: no protection information,
        within MAXIMUM TRANSFER LENGTH (VPD B0h) and the medium."""
        r = block_range(cdb)
        self._no_protection(r)
        if r.blocks > self.limits.max_transfer:
            raise ScsiError(INVALID_FIELD_IN_CDB, field=7)
        offset, length = self._range(r)
        return r, offset, length

    async def _read(self, cdb: bytes, data_out: memoryview | None, transfer_length: int) -> ScsiResult:
        _, offset, length = self._transfer(cdb)
        if not length:
            return GOOD
        return ScsiResult(ScsiStatus.GOOD, await self.backend.read(offset, length))

    async def _write(self, cdb: bytes, data_out: memoryview | None, transfer_length: int) -> ScsiResult:
        r, offset, length = self._transfer(cdb)
        data = data_out if data_out is not None else memoryview(b"")
        # With less data than the CDB asks for (the iSCSI layer reports the
        # overflow), write the whole blocks that did arrive.
        usable = min(length, len(data)) >> self.shift << self.shift
        if usable:
            await self.backend.write(offset, data[:usable], fua=r.fua)
        return ScsiResult(ScsiStatus.GOOD, data_out_length=length)

    async def _write_atomic(self, cdb: bytes, data_out: memoryview | None, transfer_length: int) -> ScsiResult:
        """WRITE ATOMIC(16) (SBC-4 §5.48, §4.29): all of it or none, even
        across a crash, which the backend promises for writes inside one
        aligned unit (VPD B0h: the maximum and the alignment). Not
        supported on a LUN whose backend cannot promise it."""
        if not self.limits.max_atomic:
            raise ScsiError(INVALID_OPCODE, field=0)
        r = BlockRange(int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[12:14], "big"), cdb[1])
        self._no_protection(r)
        if cdb[10] or cdb[11]:  # ATOMIC BOUNDARY: only in WRITE ATOMIC(32)
            raise ScsiError(INVALID_FIELD_IN_CDB, field=10)
        offset, length = self._range(r)
        if r.blocks > self.limits.max_atomic:
            raise ScsiError(INVALID_FIELD_IN_CDB, field=12)
        if r.lba % self.limits.atomic_alignment:
            raise ScsiError(INVALID_FIELD_IN_CDB, field=2)
        if not length:
            return GOOD
        data = data_out if data_out is not None else memoryview(b"")
        if len(data) < length:  # all or nothing: a part of the data is not written
            raise ScsiError(INVALID_FIELD_IN_CDB, field=12)
        await self.backend.write_atomic(offset, data[:length], fua=r.fua)
        return ScsiResult(ScsiStatus.GOOD, data_out_length=length)

    def _write_atomic_out(self, cdb: bytes) -> int:
        blocks = int.from_bytes(cdb[12:14], "big")
        return 0 if blocks > self.limits.max_atomic else blocks << self.shift

    async def _verify(self, cdb: bytes, data_out: memoryview | None, transfer_length: int) -> ScsiResult:
        """VERIFY (SBC-3 §5.26): BYTCHK 0 checks nothing we could fail,
        01b compares with the Data-Out, 11b compares every block with one."""
        r = block_range(cdb)
        self._no_protection(r)
        bytchk = (r.flags >> 1) & 0x03
        if bytchk == 2:
            raise ScsiError(INVALID_FIELD_IN_CDB, field=1, bit=1)
        offset, length = self._range(r)
        if bytchk == 0 or not length:
            return ScsiResult(ScsiStatus.GOOD, data_out_length=0 if bytchk == 0 else length)
        if bytchk == 1 and r.blocks > self.limits.max_transfer:
            raise ScsiError(INVALID_FIELD_IN_CDB, field=7)
        wanted = length if bytchk == 1 else self.block_size
        data = bytes(data_out or b"")[:wanted]
        if len(data) < wanted:
            return ScsiResult(ScsiStatus.GOOD, data_out_length=wanted)
        if bytchk == 3:
            data = data * r.blocks
        await self._compare(offset, data)
        return ScsiResult(ScsiStatus.GOOD, data_out_length=wanted)

    async def _compare(self, offset: int, expected: bytes) -> None:
        medium = await self.backend.read_bytes(offset, len(expected))
        if medium != expected:
            first = next(i for i, (a, b) in enumerate(zip(medium, expected)) if a != b)
            raise ScsiError(MISCOMPARE_DURING_VERIFY, information=first)

    async def _compare_and_write(self, cdb: bytes, data_out: memoryview | None,
                                 transfer_length: int) -> ScsiResult:
        """SBC-3 §5.2: compare then write, atomically with respect to other
        COMPARE AND WRITEs on this LUN."""
        lba = int.from_bytes(cdb[2:10], "big")
        blocks = cdb[13]
        if cdb[1] & 0xE0:
            raise ScsiError(INVALID_FIELD_IN_CDB, field=1, bit=5)
        if blocks > self.limits.max_compare_and_write:
            raise ScsiError(INVALID_FIELD_IN_CDB, field=13)
        offset, length = self._range(BlockRange(lba, blocks, cdb[1]))
        if not blocks:
            if transfer_length:  # e.g. 256 blocks wrapped to 0 in the one-byte field
                raise ScsiError(INVALID_FIELD_IN_CDB, field=13)
            return GOOD
        data = bytes(data_out or b"")
        if len(data) != 2 * length:
            raise ScsiError(INVALID_FIELD_IN_CDB, field=13)
        async with self.backend.exclusive:
            await self._compare(offset, data[:length])
            await self.backend.write(offset, data[length:], fua=bool(cdb[1] & 0x08))
        return ScsiResult(ScsiStatus.GOOD, data_out_length=2 * length)

    async def _orwrite(self, cdb: bytes, data_out: memoryview | None, transfer_length: int) -> ScsiResult:
        """ORWRITE(16) (SBC-3 §5.9): every bit set in the Data-Out is set on
        the medium, atomically with respect to COMPARE AND WRITE and other
        ORWRITEs on this LUN."""
        r, offset, length = self._transfer(cdb)
        data = bytes(data_out or b"")[:length]
        if not length or len(data) < length:
            return ScsiResult(ScsiStatus.GOOD, data_out_length=length)
        async with self.backend.exclusive:
            medium = await self.backend.read_bytes(offset, length)
            merged = (int.from_bytes(medium, "big") | int.from_bytes(data, "big")).to_bytes(length, "big")
            await self.backend.write(offset, memoryview(merged), fua=r.fua)
        return ScsiResult(ScsiStatus.GOOD, data_out_length=length)

    async def _write_same(self, cdb: bytes, data_out: memoryview | None, transfer_length: int) -> ScsiResult:
        """WRITE SAME (SBC-3 §5.42/43): UNMAP with zeros deallocates, zeros
        make a hole, anything else is written block by block."""
        r = block_range(cdb)
        self._no_protection(r)
        flags = cdb[1]
        ndob = cdb[0] == op.WRITE_SAME_16 and bool(flags & 0x01)
        if flags & 0x10:  # ANCHOR: no anchored state here
            raise ScsiError(INVALID_FIELD_IN_CDB, field=1, bit=4)
        if r.blocks == 0:  # WSNZ=0: zero blocks means up to the end of the medium (SBC-3 §5.42)
            if r.lba > self.blocks:
                raise ScsiError(LBA_OUT_OF_RANGE)
            r = BlockRange(r.lba, self.blocks - r.lba, r.flags)
        if r.blocks > self.limits.max_write_same:
            raise ScsiError(INVALID_FIELD_IN_CDB, field=7 if cdb[0] == op.WRITE_SAME_10 else 10)
        offset, length = self._range(r)
        wanted = 0 if ndob else self.block_size
        if transfer_length != wanted:  # SBC-3 §5.42: exactly one block of Data-Out
            raise ScsiError(INVALID_FIELD_IN_CDB, field=7 if cdb[0] == op.WRITE_SAME_10 else 10)
        block = bytes(self.block_size) if ndob else bytes(data_out or b"")[:self.block_size]
        if len(block) < self.block_size:
            return ScsiResult(ScsiStatus.GOOD, data_out_length=wanted)
        if flags & 0x08:  # UNMAP: deallocate; with LBPRZ the blocks then read as zeros
            await self.backend.discard(offset, length)
        elif not any(block):
            await self.backend.write_zeroes(offset, length)
        else:
            chunk = block * max(1, (1 << 20) // self.block_size)
            pos, end = offset, offset + length
            while pos < end:
                n = min(len(chunk), end - pos)
                await self.backend.write(pos, memoryview(chunk)[:n])
                pos += n
        return ScsiResult(ScsiStatus.GOOD, data_out_length=wanted)

    async def _unmap(self, cdb: bytes, data_out: memoryview | None, transfer_length: int) -> ScsiResult:
        """UNMAP (SBC-3 §5.28) with its parameter list (§5.28.2)."""
        if cdb[1] & 0x01:  # ANCHOR
            raise ScsiError(INVALID_FIELD_IN_CDB, field=1, bit=0)
        plen = int.from_bytes(cdb[7:9], "big")
        if plen == 0:
            return ScsiResult(ScsiStatus.GOOD, data_out_length=0)
        data = bytes(data_out or b"")[:plen]
        if plen < 8 or len(data) < 8:
            raise ScsiError(PARAMETER_LIST_LENGTH_ERROR)
        desc_len = int.from_bytes(data[2:4], "big")
        if desc_len % 16 or 8 + desc_len > len(data):
            raise ScsiError(PARAMETER_LIST_LENGTH_ERROR)
        count = desc_len // 16
        if count > self.limits.max_unmap_descriptors:
            raise ScsiError(INVALID_FIELD_IN_PARAMETER_LIST, field=2, in_cdb=False)
        ranges = []
        for i in range(count):
            lba, blocks = struct.unpack_from(">QI", data, 8 + 16 * i)
            if blocks > self.limits.max_unmap_lbas:
                raise ScsiError(INVALID_FIELD_IN_PARAMETER_LIST, field=16 + 16 * i, in_cdb=False)
            ranges.append(self._range(BlockRange(lba, blocks, 0)))
        for offset, length in ranges:
            if length:
                await self.backend.discard(offset, length)
        return ScsiResult(ScsiStatus.GOOD, data_out_length=plen)

    async def _sync_cache(self, cdb: bytes, data_out: memoryview | None, transfer_length: int) -> ScsiResult:
        r = block_range(cdb)
        self._range(r)
        await self.backend.flush()
        return GOOD

    async def _prefetch(self, cdb: bytes, data_out: memoryview | None, transfer_length: int) -> ScsiResult:
        self._range(block_range(cdb))
        return GOOD

    # -- information ------------------------------------------------------------

    async def _inquiry(self, cdb: bytes, data_out: memoryview | None, nexus: Hashable) -> ScsiResult:
        evpd = cdb[1] & 0x01
        page = cdb[2]
        alloc = int.from_bytes(cdb[3:5], "big")
        if cdb[1] & 0xFE:
            raise ScsiError(INVALID_FIELD_IN_CDB, field=1)
        if not evpd:
            if page:
                raise ScsiError(INVALID_FIELD_IN_CDB, field=2)
            return _alloc(self.inquiry_data, alloc)
        copy = third_party_copy_descriptors(COPY_LIMITS, self.block_size) if page == 0x8F else b""
        data = vpd(page, self.identity, self.limits, lbprz=True, port=port_designators(nexus), third_party_copy=copy)
        if data is None:
            raise ScsiError(INVALID_FIELD_IN_CDB, field=2)
        return _alloc(data, alloc)

    async def _read_capacity_10(self, cdb: bytes, data_out: memoryview | None,
                                transfer_length: int) -> ScsiResult:
        if not cdb[8] & 0x01 and int.from_bytes(cdb[2:6], "big"):  # LBA without PMI (SBC-3 §5.15)
            raise ScsiError(INVALID_FIELD_IN_CDB, field=2)
        last = min(self.blocks - 1, 0xFFFFFFFF)
        return ScsiResult(ScsiStatus.GOOD, (struct.pack(">II", last, self.block_size),))

    async def _read_capacity_16(self, cdb: bytes, data_out: memoryview | None,
                                transfer_length: int) -> ScsiResult:
        alloc = int.from_bytes(cdb[10:14], "big")
        data = bytearray(32)
        struct.pack_into(">QI", data, 0, self.blocks - 1, self.block_size)
        # LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT stays 0: GET LBA STATUS
        # then answers per logical block, which libiscsi's tests expect
        data[14] = 0x80 | 0x40  # LBPME (thin provisioned), LBPRZ (unmapped reads zeros)
        return _alloc(bytes(data), alloc)

    async def _get_lba_status(self, cdb: bytes, data_out: memoryview | None, transfer_length: int) -> ScsiResult:
        """GET LBA STATUS (SBC-3 §5.6): mapped or deallocated, from the
        backend, neighbouring extents of one status in one descriptor (a
        qcow2 image answers per cluster; an erased disk is one extent). At
        most :data:`_STATUS_STEPS` backend answers per command: the last
        descriptor then ends early, which the initiator continues from."""
        lba = int.from_bytes(cdb[2:10], "big")
        alloc = int.from_bytes(cdb[10:14], "big")
        if lba >= self.blocks:
            raise ScsiError(LBA_OUT_OF_RANGE)
        room = min(64, -(-(max(alloc, 24) - 8) // 16))  # descriptors that (start to) fit
        extents: list[list[int]] = []  # [lba, blocks, deallocated]
        pos = lba
        for _ in range(_STATUS_STEPS):
            if pos >= self.blocks:
                break
            mapped, nbytes = await self.backend.block_status(pos << self.shift)
            nblocks = max(1, min(nbytes >> self.shift, self.blocks - pos))
            last = extents[-1] if extents else None
            if last is not None and last[2] == (not mapped) and last[1] + nblocks <= 0xFFFFFFFF:
                last[1] += nblocks
            elif len(extents) < room:
                extents.append([pos, min(nblocks, 0xFFFFFFFF), int(not mapped)])
                nblocks = extents[-1][1]
            else:
                break
            pos += nblocks
        descriptors = b"".join(struct.pack(">QIB3x", *e) for e in extents)
        data = struct.pack(">I4x", len(descriptors) + 4) + descriptors
        return _alloc(data, alloc)

    async def _read_defect_data(self, cdb: bytes, data_out: memoryview | None,
                                transfer_length: int) -> ScsiResult:
        """READ DEFECT DATA (10)/(12) (SBC-3 §5.19, §5.20): an image has no
        defects, so every list asked for is valid and empty, in the format
        asked for."""
        if cdb[0] == op.READ_DEFECT_DATA_10:
            return _alloc(bytes([0, cdb[2] & 0x1F, 0, 0]), int.from_bytes(cdb[7:9], "big"))
        return _alloc(bytes([0, cdb[1] & 0x1F]) + bytes(6), int.from_bytes(cdb[6:10], "big"))

    async def _mode_sense(self, cdb: bytes, data_out: memoryview | None, transfer_length: int) -> ScsiResult:
        """MODE SENSE (6)/(10) (SPC-4 §6.11, §6.12)."""
        ten = cdb[0] == op.MODE_SENSE_10
        dbd = bool(cdb[1] & 0x08)
        pc = cdb[2] >> 6
        code = cdb[2] & 0x3F
        subpage = cdb[3]
        alloc = int.from_bytes(cdb[7:9], "big") if ten else cdb[4]
        if pc == PC_SAVED:
            raise ScsiError(SAVING_PARAMETERS_NOT_SUPPORTED)
        if subpage not in (0x00, 0xFF) or (subpage == 0xFF and code != 0x3F):
            raise ScsiError(INVALID_FIELD_IN_CDB, field=3)
        body = pages(code, pc, self.software_write_protect)
        if body is None:
            raise ScsiError(INVALID_FIELD_IN_CDB, field=2)
        blockdesc = b"" if dbd else block_descriptor(self.blocks, self.block_size)
        device_specific = (0x80 if self.write_protected else 0) | 0x10  # WP, DPOFUA
        if ten:
            header = struct.pack(">HBBBBH", 6 + len(blockdesc) + len(body), 0, device_specific, 0, 0,
                                 len(blockdesc))
        else:
            header = bytes([3 + len(blockdesc) + len(body), 0, device_specific, len(blockdesc)])
        return _alloc(header + blockdesc + body, alloc)

    async def _mode_select(self, cdb: bytes, data_out: memoryview | None, transfer_length: int) -> ScsiResult:
        """MODE SELECT (SPC-4 §6.9, §6.10): the control page's SWP is the one
        changeable field; anything else in the list restates the current
        values and is accepted as such."""
        ten = cdb[0] == op.MODE_SELECT_10
        plen = int.from_bytes(cdb[7:9], "big") if ten else cdb[4]
        if cdb[1] & 0x01:  # SP: saving is not supported
            raise ScsiError(INVALID_FIELD_IN_CDB, field=1, bit=0)
        data = bytes(data_out or b"")[:plen]
        if len(data) < plen:
            raise ScsiError(PARAMETER_LIST_LENGTH_ERROR)
        swp = selected_swp(data, ten)
        if swp is not None:
            self.software_write_protect = swp
        return ScsiResult(ScsiStatus.GOOD, data_out_length=plen)

    async def _request_sense(self, cdb: bytes, data_out: memoryview | None, nexus: Hashable) -> ScsiResult:
        """REQUEST SENSE (SPC-4 §6.39): a pending reservation unit
        attention is reported here, and so cleared."""
        if cdb[1] & 0x01:  # DESC: we only speak fixed format
            raise ScsiError(INVALID_FIELD_IN_CDB, field=1, bit=0)
        attention = self.pr.attention(nexus) if self.pr.attentions else None
        return _alloc(fixed_sense(attention or NO_SENSE), cdb[4])

    async def _good(self, cdb: bytes, data_out: memoryview | None, transfer_length: int) -> ScsiResult:
        return GOOD

    async def _start_stop(self, cdb: bytes, data_out: memoryview | None, transfer_length: int) -> ScsiResult:
        if cdb[4] & 0x02 and cdb[4] & 0x01 == 0:  # LOEJ without START: a fixed disk does not eject
            raise ScsiError(INVALID_FIELD_IN_CDB, field=4, bit=1)
        return GOOD

    # -- reservations (SPC-4 §5.12, annex B) -------------------------------------

    async def _pr_in(self, cdb: bytes, data_out: memoryview | None, transfer_length: int) -> ScsiResult:
        """PERSISTENT RESERVE IN (SPC-4 §6.15)."""
        return _alloc(self.pr.read(cdb[1] & 0x1F), int.from_bytes(cdb[7:9], "big"))

    async def _pr_out(self, cdb: bytes, data_out: memoryview | None, nexus: Hashable) -> ScsiResult:
        """PERSISTENT RESERVE OUT (SPC-4 §6.16)."""
        plen = int.from_bytes(cdb[5:9], "big")
        data = bytes(data_out or b"")[:plen]
        if len(data) < plen:
            raise ScsiError(PARAMETER_LIST_LENGTH_ERROR)
        params = parse_prout(cdb[1] & 0x1F, data)
        self.pr.out(nexus, cdb[1] & 0x1F, cdb[2], params, known=frozenset(self.seen))
        return ScsiResult(ScsiStatus.GOOD, data_out_length=plen)

    async def _reserve6(self, cdb: bytes, data_out: memoryview | None, nexus: Hashable) -> ScsiResult:
        """RESERVE(6) (SPC-2 §7.21): the whole LUN, no third-party or extents."""
        if cdb[1] & 0x01:  # obsolete extent reservations
            raise ScsiError(INVALID_FIELD_IN_CDB, field=1, bit=0)
        self.pr.reserve6(nexus)
        return GOOD

    async def _release6(self, cdb: bytes, data_out: memoryview | None, nexus: Hashable) -> ScsiResult:
        """RELEASE(6) (SPC-2 §7.17)."""
        self.pr.release6(nexus)
        return GOOD

    async def _report_opcodes(self, cdb: bytes, data_out: memoryview | None, transfer_length: int) -> ScsiResult:
        absent = frozenset() if self.limits.max_atomic else _ATOMIC_WRITES
        return report_supported_opcodes(cdb, absent)

    # -- SANITIZE (SBC-3 §5.30) -----------------------------------------------------

    async def _sanitize(self, cdb: bytes, data_out: memoryview | None, transfer_length: int) -> ScsiResult:
        """SANITIZE (SBC-3 §5.30, :mod:`target.scsi.sanitize`): the
        operation runs as a task of its own; without IMMED the command ends
        with it."""
        request = wipe.parse_cdb(cdb, self.block_size)
        plen = request.parameter_length
        if request.action is wipe.SanitizeAction.EXIT_FAILURE_MODE:
            self.sanitize = None  # (none runs: the gate lets SANITIZE through only after a failure)
            return GOOD
        size = self.blocks << self.shift
        if request.action is wipe.SanitizeAction.OVERWRITE:
            data = bytes(data_out or b"")[:plen]
            if len(data) < plen:
                raise ScsiError(PARAMETER_LIST_LENGTH_ERROR)
            job = wipe.parse_overwrite(data, self.block_size)
            work = sanitizer.overwrite(self.backend, size, job, self.block_size, self.sanitize_rate)
        else:
            work = sanitizer.erase(self.backend, size)
        state = wipe.SanitizeState()
        self.sanitize = state
        task = sanitizer.start(self._sanitizing(state, work))
        state.task = task
        if not request.immediate:
            await sanitizer.wait(task)
            if state.failed:
                raise ScsiError(SANITIZE_FAILED)
        return ScsiResult(ScsiStatus.GOOD, data_out_length=plen)

    async def _sanitizing(self, state: wipe.SanitizeState, work: Awaitable[None]) -> None:
        try:
            await work
        except BackendError:
            state.failed = True  # failure mode: self.sanitize stays
            return
        if self.sanitize is state:
            self.sanitize = None

    # -- third-party copy (SPC-4 §5.17) -------------------------------------------

    def _only_self(self, designator: bytes) -> Lun | None:
        return self if designator == naa_id(self.identity.device_id) else None

    async def _extended_copy(self, cdb: bytes, data_out: memoryview | None, nexus: Hashable) -> ScsiResult:
        """EXTENDED COPY (LID1) (SPC-4 §6.3): every segment is checked
        (copy targets reachable, ranges within them, reservations, write
        protection) before any block moves; then the segments are copied
        in order through the backends."""
        plen = check_copy_cdb(cdb)
        if not plen:  # §6.3.1: not an error, nothing to copy
            return GOOD
        data = bytes(data_out or b"")[:plen]
        if len(data) < plen:
            raise ScsiError(PARAMETER_LIST_LENGTH_ERROR)
        copy = parse_copy_list(data)
        statuses = self.copies.setdefault(nexus, {})
        running = statuses.get(copy.list_id)
        if copy.usage is not ListIdUsage.NONE and running is not None and not running.done:
            raise ScsiError(OPERATION_IN_PROGRESS)
        plan = self._copy_plan(copy, nexus)
        status = CopyStatus()
        if copy.usage is not ListIdUsage.NONE:
            statuses[copy.list_id] = status
        try:
            for source, destination, src_offset, dst_offset, length in plan:
                await copy_segment(source.backend, destination.backend, src_offset, dst_offset, length, status)
                status.segments += 1
        except BaseException:
            status.failed = True
            raise
        finally:
            status.done = True
            if copy.usage is ListIdUsage.NO_HOLD and statuses.get(copy.list_id) is status:
                del statuses[copy.list_id]
        return ScsiResult(ScsiStatus.GOOD, data_out_length=plen)

    def _copy_plan(self, copy: CopyList, nexus: Hashable) -> list[tuple[Lun, Lun, int, int, int]]:
        """(source, destination, source offset, destination offset, bytes)
        per segment, or the error that aborts the copy (SPC-4 §5.17.4)."""
        luns = []
        for target in copy.targets:
            lun = self.copy_targets(target.designator) if target.designator else None
            if lun is None:
                raise not_reachable()
            if target.block_size != lun.block_size:
                raise segment_failed()
            luns.append(lun)
        plan = []
        for seg in copy.segments:
            if max(seg.source, seg.destination) >= len(luns):
                raise not_reachable()
            source, destination = luns[seg.source], luns[seg.destination]
            if (seg.source_lba + seg.blocks > source.blocks
                    or seg.destination_lba + seg.blocks > destination.blocks):
                raise segment_failed()
            source.pr.check(nexus, Access.READ)
            destination.pr.check(nexus, Access.WRITE)
            if destination.write_protected:
                raise ScsiError(WRITE_PROTECTED)
            plan.append((source, destination, seg.source_lba << source.shift,
                         seg.destination_lba << destination.shift, seg.blocks << source.shift))
        return plan

    async def _receive_copy_results(self, cdb: bytes, data_out: memoryview | None,
                                    nexus: Hashable) -> ScsiResult:
        """RECEIVE COPY RESULTS (SPC-4 §6.18): OPERATING PARAMETERS, or
        the COPY STATUS of this I_T nexus's list id."""
        alloc = int.from_bytes(cdb[10:14], "big")
        if cdb[1] & 0x1F == RcrAction.OPERATING_PARAMETERS:
            return _alloc(operating_parameters(COPY_LIMITS, self.block_size), alloc)
        return _alloc(copy_status_for(self.copies.get(nexus, {}), cdb[2]), alloc)


# -- the command table ------------------------------------------------------------


def _usage(opcode: int, *masks: int) -> bytes:
    """CDB usage bitmap: the opcode, then one mask per remaining CDB byte
    (SPC-4 §6.35.3) — a set bit is a bit the command looks at."""
    return bytes([opcode, *masks])


_RW10 = (0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x07)
_RW12 = (0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0x07)
_RW16 = (0xFA,) + (0xFF,) * 12 + (0x1F, 0x07)

COMMANDS: dict[tuple[int, int | None], Command] = {}


def _add(opcode: int, handler: Handler, usage: tuple[int, ...], writes: bool = False,
         sa: int | None = None, access: Access | None = None, with_nexus: bool = False) -> None:
    if access is None:
        access = Access.WRITE if writes else Access.READ
    COMMANDS[(opcode, sa)] = Command(handler, _usage(opcode, *usage), writes, sa, access, with_nexus)


_add(op.TEST_UNIT_READY, Lun._good, (0, 0, 0, 0, 0x07), access=Access.INFO)
_add(op.REQUEST_SENSE, Lun._request_sense, (0x01, 0, 0, 0xFF, 0x07), access=Access.ANY, with_nexus=True)
_add(op.READ_6, Lun._read, (0x1F, 0xFF, 0xFF, 0xFF, 0x07))
_add(op.WRITE_6, Lun._write, (0x1F, 0xFF, 0xFF, 0xFF, 0x07), writes=True)
_add(op.INQUIRY, Lun._inquiry, (0x01, 0xFF, 0xFF, 0xFF, 0x07), access=Access.ANY, with_nexus=True)
_add(op.MODE_SELECT_6, Lun._mode_select, (0x11, 0, 0, 0xFF, 0x07), access=Access.WRITE)
_add(op.RESERVE_6, Lun._reserve6, (0x01, 0, 0, 0, 0x07), access=Access.PR, with_nexus=True)
_add(op.RELEASE_6, Lun._release6, (0, 0, 0, 0, 0x07), access=Access.RELEASE6, with_nexus=True)
_add(op.MODE_SENSE_6, Lun._mode_sense, (0x08, 0xFF, 0xFF, 0xFF, 0x07))
_add(op.START_STOP_UNIT, Lun._start_stop, (0x01, 0, 0x0F, 0xF7, 0x07), access=Access.WRITE)
_add(op.PREVENT_ALLOW, Lun._good, (0, 0, 0, 0x03, 0x07), access=Access.WRITE)
_add(op.READ_CAPACITY_10, Lun._read_capacity_10, (0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, 0x07),
     access=Access.INFO)
_add(op.READ_10, Lun._read, _RW10)
_add(op.WRITE_10, Lun._write, _RW10, writes=True)
_add(op.WRITE_VERIFY_10, Lun._write, (0xF2,) + _RW10[1:], writes=True)
_add(op.VERIFY_10, Lun._verify, (0xF6,) + _RW10[1:])
_add(op.PREFETCH_10, Lun._prefetch, (0x02,) + _RW10[1:])
_add(op.SYNCHRONIZE_CACHE_10, Lun._sync_cache, (0x02,) + _RW10[1:], access=Access.WRITE)
_add(op.WRITE_SAME_10, Lun._write_same, (0xF8,) + _RW10[1:], writes=True)
_add(op.UNMAP, Lun._unmap, (0x01, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, 0x07), writes=True)
_add(op.MODE_SELECT_10, Lun._mode_select, (0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07), access=Access.WRITE)
_add(op.MODE_SENSE_10, Lun._mode_sense, (0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0x07))
_add(op.READ_16, Lun._read, _RW16)
_add(op.COMPARE_AND_WRITE, Lun._compare_and_write, _RW16[:9] + (0, 0, 0, 0xFF, 0x1F, 0x07), writes=True)
_add(op.WRITE_16, Lun._write, _RW16, writes=True)
_add(op.ORWRITE_16, Lun._orwrite, _RW16, writes=True)
_add(op.WRITE_VERIFY_16, Lun._write, (0xF2,) + _RW16[1:], writes=True)
_add(op.WRITE_ATOMIC_16, Lun._write_atomic, (0xF8,) + (0xFF,) * 8 + (0, 0, 0xFF, 0xFF, 0x1F, 0x07), writes=True)
_add(op.VERIFY_16, Lun._verify, (0xF6,) + _RW16[1:])
_add(op.PREFETCH_16, Lun._prefetch, (0x02,) + _RW16[1:])
_add(op.SYNCHRONIZE_CACHE_16, Lun._sync_cache, (0x02,) + _RW16[1:], access=Access.WRITE)
_add(op.WRITE_SAME_16, Lun._write_same, (0xF9,) + _RW16[1:], writes=True)
_add(op.READ_12, Lun._read, _RW12)
_add(op.READ_DEFECT_DATA_10, Lun._read_defect_data, (0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0x07))
_add(op.READ_DEFECT_DATA_12, Lun._read_defect_data, (0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07))
_add(op.WRITE_12, Lun._write, _RW12, writes=True)
_add(op.WRITE_VERIFY_12, Lun._write, (0xF2,) + _RW12[1:], writes=True)
_add(op.VERIFY_12, Lun._verify, (0xF6,) + _RW12[1:])
_add(op.SERVICE_ACTION_IN_16, Lun._read_capacity_16, (0x1F,) + (0,) * 8 + (0xFF,) * 4 + (0, 0x07),
     sa=op.SA_READ_CAPACITY_16, access=Access.INFO)
_add(op.SERVICE_ACTION_IN_16, Lun._get_lba_status, (0x1F,) + (0xFF,) * 12 + (0, 0x07),
     sa=op.SA_GET_LBA_STATUS)
_add(op.MAINTENANCE_IN, Lun._report_opcodes, (0x1F, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07),
     sa=op.SA_REPORT_SUPPORTED_OPCODES, access=Access.ANY)
for _sa in wipe.SanitizeAction:
    _add(wipe.SANITIZE, Lun._sanitize, (0xBF, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07), writes=True, sa=_sa)
_add(EXTENDED_COPY, Lun._extended_copy, (0x1F,) + (0,) * 8 + (0xFF,) * 4 + (0, 0x07), sa=SA_EXTENDED_COPY_LID1,
     with_nexus=True)
for _sa in RcrAction:
    _add(RECEIVE_COPY_RESULTS, Lun._receive_copy_results, (0x1F, 0xFF) + (0,) * 7 + (0xFF,) * 4 + (0, 0x07),
         sa=_sa, access=Access.ANY, with_nexus=True)
for _sa in PrIn:
    _add(op.PERSISTENT_RESERVE_IN, Lun._pr_in, (0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07), sa=_sa, access=Access.PR)
for _sa in PrOut:
    _add(op.PERSISTENT_RESERVE_OUT, Lun._pr_out, (0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x07), sa=_sa,
         access=Access.PR, with_nexus=True)


def _parameter_list(offset: int, size: int) -> Callable[[Lun, bytes], int]:
    """The Data-Out length of a command that carries a parameter list."""
    return lambda lun, cdb: int.from_bytes(cdb[offset:offset + size], "big")


# Data-Out each command asks for (Lun.data_out_length); commands not here take none
_DATA_OUT: dict[int, Callable[[Lun, bytes], int]] = {
    **dict.fromkeys((op.WRITE_6, op.WRITE_10, op.WRITE_12, op.WRITE_16, op.WRITE_VERIFY_10, op.WRITE_VERIFY_12,
                     op.WRITE_VERIFY_16, op.ORWRITE_16), Lun._blocks_out),
    **dict.fromkeys((op.VERIFY_10, op.VERIFY_12, op.VERIFY_16), Lun._verify_out),
    **dict.fromkeys((op.WRITE_SAME_10, op.WRITE_SAME_16), Lun._write_same_out),
    op.COMPARE_AND_WRITE: Lun._compare_and_write_out,
    op.WRITE_ATOMIC_16: Lun._write_atomic_out,
    op.UNMAP: _parameter_list(7, 2),
    op.MODE_SELECT_6: _parameter_list(4, 1),
    op.MODE_SELECT_10: _parameter_list(7, 2),
    op.PERSISTENT_RESERVE_OUT: _parameter_list(5, 4),
    EXTENDED_COPY: lambda lun, cdb: check_copy_cdb(cdb),
    wipe.SANITIZE: _parameter_list(7, 2),
}
_SERVICE_ACTION_OPCODES = {opc for (opc, sa) in COMMANDS if sa is not None}
_STATUS_STEPS = 1 << 16  # backend answers one GET LBA STATUS may ask for
_ATOMIC_WRITES: frozenset[tuple[int, int | None]] = frozenset({(op.WRITE_ATOMIC_16, None)})
# commands that do not report a pending unit attention (SAM-5 §5.14)
_NO_ATTENTION = frozenset((op.INQUIRY, op.REPORT_LUNS, op.REQUEST_SENSE))
# unknown service actions of these are a bad field, not an unknown command (SPC-4 §6.15.1, §6.16.1)
_FIELD_SA_OPCODES = frozenset((op.PERSISTENT_RESERVE_IN, op.PERSISTENT_RESERVE_OUT, EXTENDED_COPY,
                               RECEIVE_COPY_RESULTS, wipe.SANITIZE))
# what a logical unit answers while a sanitize runs (SBC-3 §4.11.1)
_DURING_SANITIZE = frozenset((op.INQUIRY, op.REPORT_LUNS, op.REQUEST_SENSE))
# REPORT LUNS and REPORT TARGET PORT GROUPS are answered by the target, not
# a LUN (they list the target's LUNs and ports); listed for REPORT SUPPORTED OPCODES
_TARGET_COMMANDS = {
    (op.REPORT_LUNS, None): _usage(op.REPORT_LUNS, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07),
    (MAINTENANCE_IN, SA_REPORT_TARGET_PORT_GROUPS): _usage(
        MAINTENANCE_IN, 0xFF, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07),
}


def _lookup(cdb: bytes) -> Command | None:
    opcode = cdb[0]
    if opcode in _SERVICE_ACTION_OPCODES:
        command = COMMANDS.get((opcode, cdb[1] & 0x1F))
        if command is None and opcode in _FIELD_SA_OPCODES:
            raise ScsiError(INVALID_FIELD_IN_CDB, field=1, bit=4)
        return command
    return COMMANDS.get((opcode, None))


_TIMEOUTS = bytes([0, 10, 0, 0]) + (0).to_bytes(4, "big") + (30).to_bytes(4, "big")


def report_supported_opcodes(cdb: bytes, absent: frozenset[tuple[int, int | None]] = frozenset()) -> ScsiResult:
    """REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35); ``absent``: commands
    of the table this LUN does not support (its backend cannot)."""
    options = cdb[2] & 0x07
    rctd = bool(cdb[2] & 0x80)
    alloc = int.from_bytes(cdb[6:10], "big")
    usages = {k: c.usage for k, c in COMMANDS.items() if k not in absent} | _TARGET_COMMANDS
    if options == 0:
        out = bytearray()
        for (opcode, sa), usage in sorted(usages.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
            flags = (0x01 if sa is not None else 0) | (0x02 if rctd else 0)
            out += struct.pack(">BxHxBH", opcode, sa or 0, flags, len(usage))
            if rctd:
                out += _TIMEOUTS
        return _alloc(len(out).to_bytes(4, "big") + bytes(out), alloc)
    opcode = cdb[3]
    sa = int.from_bytes(cdb[4:6], "big")
    if options == 1:
        if opcode in _SERVICE_ACTION_OPCODES:
            raise ScsiError(INVALID_FIELD_IN_CDB, field=2)
        usage = usages.get((opcode, None))
    elif options == 2:
        if opcode not in _SERVICE_ACTION_OPCODES:
            raise ScsiError(INVALID_FIELD_IN_CDB, field=2)
        usage = usages.get((opcode, sa))
    else:
        raise ScsiError(INVALID_FIELD_IN_CDB, field=2)
    if usage is None:
        data = bytes([0, 0x01, 0, 0])  # SUPPORT 001b: not supported
    else:
        data = bytes([0, (0x80 if rctd else 0) | 0x03]) + len(usage).to_bytes(2, "big") + usage
        if rctd:
            data += _TIMEOUTS
    return _alloc(data, alloc)


def report_luns(lun_ids: Sequence[int], cdb: bytes) -> ScsiResult:
    """REPORT LUNS (SPC-4 §6.33), single-level peripheral/flat addressing."""
    select = cdb[2]
    alloc = int.from_bytes(cdb[6:10], "big")
    if select not in (0x00, 0x01, 0x02, 0x10, 0x11, 0x12):
        return _check(ScsiError(INVALID_FIELD_IN_CDB, field=2))
    if alloc < 16:
        return _check(ScsiError(INVALID_FIELD_IN_CDB, field=6))
    ids = [] if select == 0x01 else list(lun_ids)
    entries = b"".join((((i | 0x4000) if i > 255 else i) << 48).to_bytes(8, "big") for i in ids)
    return _alloc(len(entries).to_bytes(4, "big") + bytes(4) + entries, alloc)


def target_port_groups(groups: Sequence[int], cdb: bytes) -> ScsiResult:
    """REPORT TARGET PORT GROUPS (SPC-4 §6.36) of a target reached through
    the portal groups ``groups`` (:mod:`target.scsi.ports`)."""
    try:
        data = report_target_port_groups(groups, cdb)
    except ScsiError as e:
        return _check(e)
    return _alloc(data, int.from_bytes(cdb[6:10], "big"))


def no_such_lun(cdb: bytes) -> ScsiResult:
    """A command to a LUN that does not exist (SPC-4 §4.6.4): INQUIRY says
    "no device here", REQUEST SENSE reports it, the rest fail."""
    if cdb[0] == op.INQUIRY and not cdb[1] & 0x01:
        data = bytearray(36)
        data[0] = 0x7F  # peripheral qualifier 011b, device type 1Fh
        data[2], data[3], data[4] = 0x06, 0x12, 31
        return _alloc(bytes(data), int.from_bytes(cdb[3:5], "big"))
    if cdb[0] == op.REQUEST_SENSE:
        return _alloc(fixed_sense(LUN_NOT_SUPPORTED), cdb[4] if len(cdb) > 4 else 18)
    return _check(ScsiError(LUN_NOT_SUPPORTED))


__all__ = ["Lun", "ScsiResult", "no_such_lun", "report_luns", "report_supported_opcodes", "target_port_groups"]
