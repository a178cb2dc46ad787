"""A real operating system, diskless: `bootsvc image build-debian` builds
a Debian 12 base with debootstrap, `bootsvc vm` boots a QEMU VM from its
own overlay (iPXE sanboot → SYSLINUX or systemd-boot → Debian's kernel →
initramfs-tools + open-iscsi log in from the iBFT, with CHAP → systemd to
multi-user.target) until it prints BOOTSVC-DEBIAN-OK with its own
hostname and initiator name, on BIOS and on UEFI.

The build downloads about 150 MB and takes minutes, so it is kept in
STATE (downloads, the debootstrapped tree, the base) between runs, and the
test runs only when that build exists or BOOTSVC_DEBIAN_E2E=1 asks for
it."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from bootsvc import config
from bootsvc.debian import DEBIAN_BASE, MARKER_OK, build_debian
from bootsvc.vm import qemu
from bootsvc.vm.run import Options, run
from tests.e2e.conftest import need, need_vm_lab

pytestmark = pytest.mark.e2e
STATE = Path(os.environ.get("BOOTSVC_DEBIAN_STATE", "/var/tmp/bootsvc-e2e-debian"))
HOSTS = {"52:54:00:79:00:11": "deb01", "52:54:00:79:00:12": "deb02"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> config.Config:
    if not (STATE / "images" / DEBIAN_BASE).exists() and os.environ.get("BOOTSVC_DEBIAN_E2E") != "1":
        pytest.skip(f"the Debian base is not built in {STATE}: BOOTSVC_DEBIAN_E2E=1 builds it "
                    "(downloads about 150 MB, takes minutes; kept for later runs)")
    need("debootstrap", "qemu-img", "syslinux", "mcopy", "mkfs.vfat", "mke2fs")
    need_vm_lab(qemu.Firmware.BIOS)
    machines = "\n".join(f"  {mac}: {{hostname: {h}, ip: 10.216.0.{10 + i}}}" for i, (mac, h) in
                         enumerate(HOSTS.items(), 1))
    path = tmp_path_factory.mktemp("debian") / "bootsvc.yaml"
    path.write_text(f"""
state_dir: {STATE}
iqn_prefix: iqn.2026-11.test.debian
default_profile: debian12
listen:
  dhcp: {{interface: bsv-deb0, address: 10.216.0.1}}
  iscsi: [10.216.0.1:3260]
  tftp: 10.216.0.1:69
  http: 10.216.0.1:80
dhcp:
  subnet: 10.216.0.0/24
machines:
{machines}
""")
    cfg = config.load(path)
    build_debian(cfg, say=print)
    shutil.rmtree(cfg.overlays_dir, ignore_errors=True)  # every run boots fresh machines
    return cfg


def marker(cfg: config.Config, host: str) -> str:
    text = (cfg.state_dir / "vm" / f"{host}.console").read_text(errors="replace")
    found = re.findall(rf"{MARKER_OK} host=\S+ initiator=\S+", text)
    assert found, text[-3000:]
    return found[-1]


@pytest.mark.parametrize("firmware", [qemu.Firmware.BIOS, qemu.Firmware.UEFI], ids=["bios", "uefi"])
def test_debian_boots_to_multi_user(lab: config.Config, firmware: qemu.Firmware) -> None:
    need_vm_lab(firmware)
    mac = list(HOSTS)[firmware is qemu.Firmware.UEFI]
    (t,) = run(lab, Options(macs=(mac,), firmware=firmware, accel="auto", timeout=400, memory_mib=512))
    assert t.booted, f"{HOSTS[mac]}: {t.failure}"
    assert marker(lab, HOSTS[mac]) == f"{MARKER_OK} host={HOSTS[mac]} initiator={lab.iqn_prefix}:{HOSTS[mac]}"
    served = (lab.state_dir / "vm" / "serve.log").read_text()
    assert f"initiator={lab.iqn_prefix}:{HOSTS[mac]}" in served and "auth=chap" in served
