"""Debian from an RBD clone (issue 22): the Debian base of `bootsvc image
build-debian` (tests/e2e/debian_build.py) imported into the pool with
`bootsvc image import` under ``storage: {backend: ceph}``, and one diskless
QEMU VM booting it through `bootsvc serve` from its own clone: iPXE
sanboot → SYSLINUX → Debian's kernel → initramfs-tools + open-iscsi log in
from the iBFT, with CHAP → systemd to multi-user.target, until the machine
prints BOOTSVC-DEBIAN-OK with its own hostname and initiator name.

Then, read through QEMU's rbd driver, e2fsck and debugfs (not bootsvc's
code): the clone holds the machine's own identity (machine ID, SSH host
key, initiator name) and its boot's line. (That the base's snapshot stays
untouched under a clone's writes is test_ceph_demo_boot's check.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bootsvc import config
from bootsvc.debian import DEBIAN_BASE
from bootsvc.debian.tree import BOOT_LOG
from bootsvc.vm.run import boot_address
from tests.ceph_cluster import Cluster
from tests.e2e.ceph import POOL, need_ceph
from tests.e2e.debian import IDENTITY, marker, need_debian_base, root_files
from tests.e2e.debian_build import STATE, TEST_TIMEOUT
from tests.e2e.netns import ip, namespaces
from tests.e2e.peers import bootsvc_serve, stop

# the Debian tests run last (the base's build overlaps the rest of the session)
pytestmark = [pytest.mark.e2e, pytest.mark.debian, pytest.mark.timeout(TEST_TIMEOUT)]
HOST, MAC = "cdeb01", "52:54:00:79:01:21"


def _config(work: Path, conf: Path) -> config.Config:
    path = work / "bootsvc.yaml"
    path.write_text(f"""
state_dir: {work / 'state'}
iqn_prefix: iqn.2026-12.test.cephdebian
storage: {{backend: ceph, pool: {POOL}, conf: {conf}}}
listen:
  dhcp: {{interface: bsv-cdeb0, address: 10.218.0.1}}
  iscsi: [10.218.0.1:3260]
  tftp: 10.218.0.1:69
  http: 10.218.0.1:80
dhcp:
  subnet: 10.218.0.0/24
machines:
  {MAC}: {{hostname: {HOST}, ip: 10.218.0.11, profile: debian12}}
""")
    return config.load(path)


def _rbd(image: str, conf: Path) -> str:
    """QEMU's options for an RBD image of the pool."""
    return f"file.driver=rbd,file.pool={POOL},file.image={image},file.conf={conf}"


def test_debian_boots_with_its_root_on_an_rbd_clone(tmp_path: Path) -> None:
    need_debian_base("iscsistart")
    need_ceph()
    with namespaces("cdeb") as (ns,), Cluster(netns=ns) as cluster:
        cluster.create_pool(POOL)
        cfg = _config(tmp_path, cluster.conf)
        in_ns = ("ip", "netns", "exec", ns)
        imported = subprocess.run([*in_ns, sys.executable, "-m", "bootsvc", "image", "-c", str(cfg.path), "import",
                                   str(STATE / "images" / DEBIAN_BASE), DEBIAN_BASE],
                                  capture_output=True, text=True, timeout=600)
        assert imported.returncode == 0, imported.stdout + imported.stderr
        bridge, address = boot_address(cfg)
        ip("-n", ns, "link", "add", bridge, "type", "bridge")
        ip("-n", ns, "addr", "add", str(address), "dev", bridge)
        ip("-n", ns, "link", "set", bridge, "up")
        server = bootsvc_serve(cfg.path, tmp_path / "serve.log", "ready:", netns=ns)
        try:
            r = subprocess.run([*in_ns, sys.executable, "-m", "bootsvc", "vm", "-c", str(cfg.path), "--attach",
                                "--mac", MAC, "--timeout", "900"], capture_output=True, text=True, timeout=1000)
        finally:
            stop(server)
        assert r.returncode == 0 and f"{HOST}: booted" in r.stdout, r.stdout + r.stderr
        served = (tmp_path / "serve.log").read_text()
        assert f"event=image.overlay_created mac={MAC} hostname={HOST} base=rbd:{POOL}/" in served, served[-3000:]
        assert not (cfg.overlays_dir / f"{HOST}.qcow2").exists()  # no local overlay was made
        said = marker(cfg, HOST)
        clone = root_files(_rbd(HOST, cluster.conf), tmp_path, *IDENTITY, BOOT_LOG, prefix=cluster.prefix)
    assert f"host={HOST} initiator={cfg.iqn_prefix}:{HOST}" in said, said
    assert all(clone[f] for f in IDENTITY), clone
    assert f"{cfg.iqn_prefix}:{HOST}" in clone["/etc/iscsi/initiatorname.iscsi"], clone
    assert HOST in clone[BOOT_LOG], clone
