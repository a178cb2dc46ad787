"""A whole OS booted from an RBD clone: `bootsvc image build-demo` with
``storage: {backend: ceph}`` builds the demo Linux and publishes it to the
pool as a base with a protected snapshot; `bootsvc serve` gives the machine
its own clone of it; a diskless QEMU VM goes DHCP → iPXE sanboot of the
clone → SYSLINUX → Linux → iBFT login (iscsistart) → root on the clone → a
file written → success marker.

Checked afterwards with QEMU's rbd driver (qemu-img) and debugfs: the
machine's record is in its clone and not in the base.

The cluster runs inside the boot network's namespace, since its daemons
bind to 127.0.0.1 and bootsvc serve runs there; the VM joins that
namespace's bridge with ``bootsvc vm --attach``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bootsvc import config
from bootsvc.vm import qemu
from bootsvc.vm.run import boot_address
from tests.ceph_cluster import Cluster
from tests.e2e.ceph import POOL, need_ceph
from tests.e2e.conftest import need, need_vm_lab
from tests.e2e.demo_checks import record, recorded
from tests.e2e.netns import ip, namespaces
from tests.e2e.peers import bootsvc_serve, stop

pytestmark = pytest.mark.e2e
HOST, MAC = "cnode01", "52:54:00:78:01:01"


def _config(work: Path, conf: Path) -> config.Config:
    (work / "profiles").mkdir()
    path = work / "bootsvc.yaml"
    path.write_text(f"""
state_dir: {work / 'state'}
profiles_dir: {work / 'profiles'}
iqn_prefix: iqn.2026-12.test.cephdemo
storage: {{backend: ceph, pool: {POOL}, conf: {conf}}}
listen:
  dhcp: {{interface: bsv-cdemo0, address: 10.217.0.1}}
  iscsi: [10.217.0.1:3260]
  tftp: 10.217.0.1:69
  http: 10.217.0.1:80
  isns: 127.0.0.1:3205
dhcp:
  subnet: 10.217.0.0/24
recorder: {{stall: 20}}
machines:
  {MAC}: {{hostname: {HOST}, ip: 10.217.0.11, profile: demo-linux}}
""")
    return config.load(path)


def test_demo_linux_boots_with_its_root_on_an_rbd_clone(tmp_path: Path) -> None:
    need("qemu-img", "debugfs", "iscsistart", "syslinux", "mcopy", "mkfs.vfat", "mke2fs")
    need_vm_lab(qemu.Firmware.BIOS)
    need_ceph()
    with namespaces("cdemo") as (ns,), Cluster(netns=ns) as cluster:
        cluster.create_pool(POOL)
        cfg = _config(tmp_path, cluster.conf)
        in_ns = ("ip", "netns", "exec", ns)
        built = subprocess.run([*in_ns, sys.executable, "-m", "bootsvc", "image", "-c", str(cfg.path), "build-demo"],
                               capture_output=True, text=True, timeout=600)
        assert built.returncode == 0, built.stdout + built.stderr
        assert f"is base rbd:{POOL}/demo-linux@base" in built.stdout, built.stdout
        bridge, address = boot_address(cfg)
        ip("-n", ns, "link", "add", bridge, "type", "bridge")
        ip("-n", ns, "addr", "add", str(address), "dev", bridge)
        ip("-n", ns, "link", "set", bridge, "up")
        server = bootsvc_serve(cfg.path, tmp_path / "serve.log", "ready:", netns=ns)
        try:
            r = subprocess.run([*in_ns, sys.executable, "-m", "bootsvc", "vm", "-c", str(cfg.path), "--attach",
                                "--mac", MAC, "--timeout", "240"], capture_output=True, text=True, timeout=300)
        finally:
            stop(server)
        assert r.returncode == 0 and f"{HOST}: booted" in r.stdout, r.stdout + r.stderr
        served = (tmp_path / "serve.log").read_text()
        made = f"event=image.overlay_created mac={MAC} hostname={HOST} base=rbd:{POOL}/demo-linux@base"
        assert made in served, served[-3000:]
        lines = record(f"rbd:{POOL}/{HOST}:conf={cluster.conf}", tmp_path, cluster.prefix).splitlines()
        base = record(f"rbd:{POOL}/demo-linux@base:conf={cluster.conf}", tmp_path, cluster.prefix)
        (boot,) = recorded(cfg, HOST)  # while the config's ceph.conf is there
    assert lines and all(f"initiator={cfg.iqn_prefix}:{HOST} " in line for line in lines), lines
    assert base == ""  # the clone took the write; the base's snapshot is untouched
    assert not (cfg.overlays_dir / f"{HOST}.qcow2").exists()  # no local overlay was made
    steps = [s["step"] for s in boot["steps"]]
    assert boot["state"] == "booted", boot
    assert steps.index("login") < steps.index("os-login") < steps.index("os-read"), steps
