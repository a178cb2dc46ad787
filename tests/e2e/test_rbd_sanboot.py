"""iPXE in QEMU sanboots from an RBD clone served by bootsvc: the test boot
sector (tests/e2e/bootdisk.py) is imported as a base with a protected
snapshot, a machine's clone of it is exported, and the VM must print the
payload it reads over iSCSI from the clone."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.ceph_cluster import Cluster
from tests.e2e import qemu
from tests.e2e.bootdisk import build
from tests.e2e.ceph import POOL
from tests.e2e.conftest import need
from tests.e2e.peers import bootsvc_export

pytestmark = pytest.mark.e2e
BOOT_TIMEOUT = 150.0


def test_ipxe_sanboots_from_an_rbd_clone(ceph_cluster: Cluster, tmp_path: Path) -> None:
    reason = qemu.available()
    if reason:
        pytest.skip(reason)
    need("nasm")
    disk = tmp_path / "boot.img"
    text = build(disk)
    ceph_cluster.rbd("import", str(disk), f"{POOL}/sanboot-base", timeout=120)
    ceph_cluster.rbd("snap", "create", f"{POOL}/sanboot-base@base")
    ceph_cluster.rbd("snap", "protect", f"{POOL}/sanboot-base@base")
    ceph_cluster.rbd("clone", f"{POOL}/sanboot-base@base", f"{POOL}/sanboot-node")
    start = time.monotonic()
    lun = f"rbd:{POOL}/sanboot-node:conf={ceph_cluster.conf}"
    with bootsvc_export(lun, log=tmp_path / "bootsvc.log") as portal, \
            qemu.sanboot_vm(tmp_path, portal.port, portal.iqn, portal.lun) as log:
        seen = qemu.wait_for(log, ("BOOTSVC-SANBOOT-OK", "BOOTSVC-SANBOOT-FAIL"), BOOT_TIMEOUT)
        console = log.read_text(errors="replace") if log.exists() else ""
    elapsed = time.monotonic() - start
    print(f"\nrbd clone: sanboot marker after {elapsed:.1f} s")
    assert seen == "BOOTSVC-SANBOOT-OK", f"console after {elapsed:.0f} s:\n{console[-2000:]}"
    assert f"BOOTSVC-SANBOOT-OK {text}" in console
