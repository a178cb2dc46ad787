"""Builds the sanboot test disk: a boot sector (bootdisk.asm, assembled by
nasm) and a payload at the far end of the disk whose text the boot sector
prints, so the marker on the console proves real reads through iSCSI."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

ASM = Path(__file__).with_name("bootdisk.asm")
SECTOR = 512
PAYLOAD_SECTORS = 16


def build(path: Path, size: int = 64 << 20) -> str:
    """Write the disk image to ``path``; return the text the boot prints."""
    lba = size // SECTOR - PAYLOAD_SECTORS
    mbr = path.with_suffix(".mbr")
    subprocess.run(["nasm", "-f", "bin", f"-DPAYLOAD_LBA={lba}", f"-DPAYLOAD_SECTORS={PAYLOAD_SECTORS}",
                    "-o", str(mbr), str(ASM)], check=True, capture_output=True)
    boot = mbr.read_bytes()
    assert len(boot) == SECTOR and boot[-2:] == b"\x55\xaa"
    text = "payload-" + hashlib.sha256(path.name.encode()).hexdigest()[:16]
    payload = (b"BOOTSVC!" + text.encode() + b"\0").ljust(PAYLOAD_SECTORS * SECTOR, b"\xee")
    with open(path, "wb") as f:
        f.write(boot)
        f.truncate(size)
        f.seek(lba * SECTOR)
        f.write(payload)
    return text
