"""iPXE in QEMU sanboots a disk from the target: the boot sector reads a
payload from the end of the disk over iSCSI and prints it on the console.
Run against tgt too, so a failure can be told apart from a QEMU problem."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e import qemu
from tests.e2e.bootdisk import build
from tests.e2e.conftest import need
from tests.e2e.peers import bootsvc_export, tgt_export

pytestmark = pytest.mark.e2e
BOOT_TIMEOUT = 150.0


@pytest.mark.parametrize("target", ["bootsvc", "tgt"])
def test_ipxe_sanboots_from_target(target: str, tmp_path: Path) -> None:
    reason = qemu.available()
    if reason:
        pytest.skip(reason)
    need("nasm")
    if target == "tgt":
        need("tgtd", "tgtadm")
    disk = tmp_path / "boot.img"
    text = build(disk)
    export = bootsvc_export if target == "bootsvc" else tgt_export
    start = time.monotonic()
    with export(disk) as portal, qemu.sanboot_vm(tmp_path, portal.port, portal.iqn, portal.lun) as log:
        seen = qemu.wait_for(log, ("BOOTSVC-SANBOOT-OK", "BOOTSVC-SANBOOT-FAIL"), BOOT_TIMEOUT)
        console = log.read_text(errors="replace") if log.exists() else ""
    elapsed = time.monotonic() - start
    print(f"\n{target}: sanboot marker after {elapsed:.1f} s")
    assert seen == "BOOTSVC-SANBOOT-OK", f"console after {elapsed:.0f} s:\n{console[-2000:]}"
    assert f"BOOTSVC-SANBOOT-OK {text}" in console
