"""INQUIRY data: the standard page and the VPD pages a disk reports
(SPC-4 §6.6, §7.8; SBC-3 §6.5)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

# SPC-4 §6.6.2 version descriptors: SAM-5, iSCSI, SPC-4, SBC-3
VERSION_DESCRIPTORS = (0x00A0, 0x0960, 0x0460, 0x04C0)
SUPPORTED_VPD = (0x00, 0x80, 0x83, 0x8F, 0xB0, 0xB1, 0xB2)
# What INQUIRY reports unless the embedder names its product (T10 VENDOR
# IDENTIFICATION is 8 ASCII characters, PRODUCT IDENTIFICATION 16).
DEFAULT_VENDOR = "PYISCSI"
DEFAULT_PRODUCT = "iSCSI disk"


@dataclass(frozen=True)
class Identity:
    vendor: str
    product: str
    revision: str
    serial: str
    device_id: bytes  # 16 bytes that make the NAA identifier


@dataclass(frozen=True)
class Limits:
    """What VPD page B0h promises (SBC-3 §6.5.3), in logical blocks."""

    max_transfer: int
    max_unmap_lbas: int
    max_unmap_descriptors: int
    max_write_same: int
    max_compare_and_write: int
    optimal_granularity: int
    # WRITE ATOMIC (SBC-4 §4.29): the longest atomic write, and the LBA
    # multiple it must start at (0: no atomic writes)
    max_atomic: int = 0
    atomic_alignment: int = 0


def standard(ident: Identity) -> bytes:
    """Standard INQUIRY data (SPC-4 §6.6.2): a direct-access block device,
    SPC-4, HiSup, response format 2, implicit ALUA (TPGS 01b: REPORT TARGET
    PORT GROUPS answers, every path active/optimized; see
    :mod:`target.scsi.ports`), a copy manager (3PC: EXTENDED COPY, see
    :mod:`target.scsi.xcopy`), command queuing."""
    body = bytearray(74)
    body[0] = 0x00
    body[2] = 0x06
    body[3] = 0x12  # HiSup | response data format 2
    body[4] = len(body) - 5
    body[5] = 0x10 | 0x08  # TPGS 01b, 3PC
    body[7] = 0x02  # CmdQue
    body[8:16] = ident.vendor.encode()[:8].ljust(8)
    body[16:32] = ident.product.encode()[:16].ljust(16)
    body[32:36] = ident.revision.encode()[:4].ljust(4)
    for i, d in enumerate(VERSION_DESCRIPTORS):
        body[58 + 2 * i:60 + 2 * i] = d.to_bytes(2, "big")
    return bytes(body)


def _page(code: int, body: bytes) -> bytes:
    return bytes([0, code]) + len(body).to_bytes(2, "big") + body


def naa_id(device_id: bytes) -> bytes:
    """A 16-byte NAA IEEE Registered Extended identifier (NAA 6, SPC-4
    §7.8.6.6.4) with a locally administered company id, stable per LUN."""
    b = bytearray(device_id[:16].ljust(16, b"\0"))
    b[0] = 0x60 | (b[0] & 0x0F)
    return bytes(b)


def vpd(code: int, ident: Identity, limits: Limits, lbprz: bool, port: bytes = b"",
        third_party_copy: bytes = b"") -> bytes | None:
    """The VPD page ``code``, or None when it is not supported. ``port``:
    the designators of the path asking (:func:`target.scsi.ports.port_designators`),
    after the logical unit's own, which are the same on every path.
    ``third_party_copy``: the descriptors of page 8Fh (SPC-4 §7.8.17), what
    the copy manager (:func:`target.scsi.xcopy.third_party_copy_descriptors`)
    supports."""
    if code == 0x00:
        return _page(0x00, bytes(SUPPORTED_VPD))
    if code == 0x80:
        return _page(0x80, ident.serial.encode())
    if code == 0x83:
        naa = naa_id(ident.device_id)
        t10 = ident.vendor.encode()[:8].ljust(8) + ident.serial.encode()
        designators = (
            bytes([0x01, 0x03, 0x00, len(naa)]) + naa  # binary, LU, NAA
            + bytes([0x02, 0x01, 0x00, len(t10)]) + t10  # ASCII, LU, T10 vendor id
            + port
        )
        return _page(0x83, designators)
    if code == 0x8F:
        return _page(0x8F, third_party_copy)
    if code == 0xB0:
        body = bytearray(0x3C)
        body[1] = min(limits.max_compare_and_write, 255)
        struct.pack_into(">HIIIIIII", body, 2, limits.optimal_granularity, limits.max_transfer,
                         limits.max_transfer, limits.max_transfer, limits.max_unmap_lbas,
                         limits.max_unmap_descriptors, 1, 0)
        struct.pack_into(">Q", body, 32, limits.max_write_same)
        # MAXIMUM ATOMIC TRANSFER LENGTH, ATOMIC ALIGNMENT, ATOMIC TRANSFER
        # LENGTH GRANULARITY 0: any length up to the maximum (SBC-4 §6.6.4)
        struct.pack_into(">III", body, 40, limits.max_atomic, limits.atomic_alignment, 0)
        return _page(0xB0, bytes(body))
    if code == 0xB1:
        body = bytearray(0x3C)
        body[1] = 0x01  # medium rotation rate 1: non-rotating
        # WABEREQ, WACEREQ 01b: reads after a BLOCK / CRYPTOGRAPHIC ERASE
        # SANITIZE succeed (they return zeros; SBC-4 §6.6.2)
        body[3] = 0x40 | 0x10
        return _page(0xB1, bytes(body))
    if code == 0xB2:
        # LBPU, LBPWS, LBPWS10 (+LBPRZ); provisioning type 2: thin (SBC-3 §6.5.4)
        return _page(0xB2, bytes([0x00, 0xE0 | (0x04 if lbprz else 0), 0x02, 0x00]))
    return None
