"""iPXE in QEMU sanboots a disk from the target: the boot sector reads a
payload from the end of the disk over iSCSI and prints it on the console.
Run against tgt too, so a failure can be told apart from a QEMU problem,
and from a bootsvc-made qcow2 overlay on the disk, which QEMU must also
boot directly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from target.qcow2_create import create_image
from tests.e2e import qemu
from tests.e2e.bootdisk import build
from tests.e2e.conftest import need
from tests.e2e.peers import bootsvc_export, tgt_export

pytestmark = pytest.mark.e2e
BOOT_TIMEOUT = 150.0


def _needs_qemu() -> None:
    reason = qemu.available()
    if reason:
        pytest.skip(reason)
    need("nasm")


@pytest.mark.parametrize("target", ["bootsvc", "bootsvc-overlay", "tgt"])
def test_ipxe_sanboots_from_target(target: str, tmp_path: Path) -> None:
    _needs_qemu()
    if target == "tgt":
        need("tgtd", "tgtadm")
    disk = tmp_path / "boot.img"
    text = build(disk)
    if target == "bootsvc-overlay":
        disk = tmp_path / "overlay.qcow2"
        create_image(disk, backing="boot.img", backing_format="raw")
    export = tgt_export if target == "tgt" else bootsvc_export
    start = time.monotonic()
    with export(disk) as portal, qemu.sanboot_vm(tmp_path, portal.port, portal.iqn, portal.lun) as log:
        seen = qemu.wait_for(log, ("BOOTSVC-SANBOOT-OK", "BOOTSVC-SANBOOT-FAIL"), BOOT_TIMEOUT)
        console = log.read_text(errors="replace") if log.exists() else ""
    elapsed = time.monotonic() - start
    print(f"\n{target}: sanboot marker after {elapsed:.1f} s")
    assert seen == "BOOTSVC-SANBOOT-OK", f"console after {elapsed:.0f} s:\n{console[-2000:]}"
    assert f"BOOTSVC-SANBOOT-OK {text}" in console


def test_qemu_boots_a_bootsvc_overlay_directly(tmp_path: Path) -> None:
    _needs_qemu()
    text = build(tmp_path / "boot.img")
    overlay = tmp_path / "overlay.qcow2"
    create_image(overlay, backing="boot.img", backing_format="raw", cluster_size=4096)
    with qemu.disk_vm(tmp_path, overlay) as log:
        seen = qemu.wait_for(log, ("BOOTSVC-SANBOOT-OK", "BOOTSVC-SANBOOT-FAIL"), BOOT_TIMEOUT)
        console = log.read_text(errors="replace") if log.exists() else ""
    assert seen == "BOOTSVC-SANBOOT-OK" and text in console, console[-2000:]
