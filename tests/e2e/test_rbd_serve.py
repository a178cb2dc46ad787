"""`bootsvc serve` with an RBD LUN from the config (storage: backend ceph
giving the cluster): data written over iSCSI is what QEMU's own rbd driver
(qemu-block-extra) reads from the image."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ceph_cluster import Cluster
from tests.e2e.ceph import POOL
from tests.e2e.conftest import need
from tests.e2e.peers import LOOPBACK, free_port, stop, wait_for_port

pytestmark = pytest.mark.e2e


def test_serve_an_rbd_lun_and_compare_through_qemus_rbd_driver(ceph_cluster: Cluster, tmp_path: Path) -> None:
    need("qemu-img")
    ceph_cluster.rbd("create", "--size", "16M", f"{POOL}/serve-base")
    ceph_cluster.rbd("snap", "create", f"{POOL}/serve-base@gold")
    ceph_cluster.rbd("snap", "protect", f"{POOL}/serve-base@gold")
    ceph_cluster.rbd("clone", f"{POOL}/serve-base@gold", f"{POOL}/serve-node")
    source = tmp_path / "written.raw"
    source.write_bytes(os.urandom(3 << 20) + bytes(13 << 20))
    port = free_port()
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"""
state_dir: state
storage: {{backend: ceph, pool: {POOL}, conf: {ceph_cluster.conf}}}
listen:
  iscsi: [{LOOPBACK}:{port}]
targets:
  - iqn: iqn.2026-11.test:rbd
    luns: [rbd:{POOL}/serve-node]
    auth: none
""")
    check = subprocess.run([sys.executable, "-m", "bootsvc", "check", "-c", str(cfg)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([sys.executable, "-m", "bootsvc", "serve", "-c", str(cfg)], stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        url = f"iscsi://{LOOPBACK}:{port}/iqn.2026-11.test:rbd/0"
        subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(source), url], check=True,
                       capture_output=True, timeout=120)
    finally:
        stop(proc)
    rbd_url = f"rbd:{POOL}/serve-node:conf={ceph_cluster.conf}"
    compare = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(source), rbd_url],
                             capture_output=True, text=True, timeout=120)
    assert compare.returncode == 0, compare.stdout + compare.stderr
