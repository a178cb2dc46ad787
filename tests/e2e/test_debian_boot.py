"""A real operating system, diskless: `bootsvc image build-debian` builds
a Debian 12 base with debootstrap, `bootsvc vm` boots a QEMU VM from its
own overlay (iPXE sanboot → SYSLINUX or systemd-boot → Debian's kernel →
initramfs-tools + open-iscsi log in from the iBFT, with CHAP → systemd to
multi-user.target) until it prints BOOTSVC-DEBIAN-OK with its own
hostname and initiator name, on BIOS and on UEFI; each machine's overlay
then holds its own machine ID, SSH host key and initiator name, the base
none, and a reboot keeps them (read with qemu-img and debugfs).

The build downloads about 150 MB and takes minutes, so it is kept in
STATE (downloads, the debootstrapped tree, the base) between runs, and the
test runs only when that build exists or BOOTSVC_DEBIAN_E2E=1 asks for
it."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bootsvc import config, debian
from bootsvc.debian import DEBIAN_BASE, MARKER_OK, build_debian
from bootsvc.debian.build import BOOT_SIZE
from bootsvc.demo.disk import Layout
from bootsvc.vm import qemu
from bootsvc.vm.run import Options, run
from bootsvc.vm.timeline import ORDER, Step
from tests.e2e.conftest import need, need_vm_lab

pytestmark = pytest.mark.e2e
STATE = Path(os.environ.get("BOOTSVC_DEBIAN_STATE", "/var/tmp/bootsvc-e2e-debian"))
HOSTS = {"52:54:00:79:00:11": "deb01", "52:54:00:79:00:12": "deb02"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> config.Config:
    if not (STATE / "images" / DEBIAN_BASE).exists() and os.environ.get("BOOTSVC_DEBIAN_E2E") != "1":
        pytest.skip(f"the Debian base is not built in {STATE}: BOOTSVC_DEBIAN_E2E=1 builds it "
                    "(downloads about 150 MB, takes minutes; kept for later runs)")
    need("debootstrap", "qemu-img", "debugfs", "syslinux", "mcopy", "mkfs.vfat", "mke2fs")
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
    shutil.rmtree(cfg.overlays_dir, ignore_errors=True)  # every run boots fresh machines
    # the base is made again (from the cached tree, under a minute) when
    # the builder's code changed since it was built
    stamp = STATE / "cache" / "debian" / "e2e-recipe"
    recipe = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(Path(debian.__file__).parent.glob("*.py"))))
    fresh = stamp.is_file() and stamp.read_text() == recipe.hexdigest()
    build_debian(cfg, force=not fresh, say=print)
    stamp.write_text(recipe.hexdigest())
    return cfg


def marker(cfg: config.Config, host: str) -> str:
    text = (cfg.state_dir / "vm" / f"{host}.console").read_text(errors="replace")
    found = re.findall(rf"{MARKER_OK} host=\S+ initiator=\S+", text)
    assert found, text[-3000:]
    return found[-1]


def root_files(image: Path, work: Path, *paths: str) -> dict[str, str]:
    """Files of ``image``'s root partition ('' when absent), read with
    qemu-img and debugfs: tools that are not bootsvc's."""
    raw = work / f"{image.stem}.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True, timeout=300)
    root = f"{raw}?offset={Layout(boot_size=BOOT_SIZE).root.start}"
    out = {}
    try:
        for path in paths:
            r = subprocess.run(["debugfs", "-R", f"cat {path}", root], capture_output=True, text=True, timeout=60)
            out[path] = "" if "not found" in r.stderr else r.stdout
    finally:
        raw.unlink()
    return out


IDENTITY = ("/etc/machine-id", "/etc/ssh/ssh_host_ed25519_key.pub", "/etc/iscsi/initiatorname.iscsi")
identities: dict[str, dict[str, str]] = {}  # host -> its identity files after its first boot


def boot(cfg: config.Config, mac: str, firmware: qemu.Firmware, work: Path) -> dict[str, str]:
    """Boot the machine to the marker; its identity files as its overlay has them."""
    host = HOSTS[mac]
    (t,) = run(cfg, Options(macs=(mac,), firmware=firmware, accel="auto", timeout=400))
    assert t.booted, f"{host}: {t.failure}"
    # every step, in order from the kernel on (the last DHCP ACK is the
    # initramfs's own DHCP, after iPXE's login)
    assert set(t.at) == set(ORDER), f"{host}: {t.at}"
    assert t.at[Step.KERNEL] < t.at[Step.OS_LOGIN] < t.at[Step.ROOT] < t.at[Step.BOOTED], f"{host}: {t.at}"
    assert marker(cfg, host) == f"{MARKER_OK} host={host} initiator={cfg.iqn_prefix}:{host}"
    served = (cfg.state_dir / "vm" / "serve.log").read_text()
    assert f"initiator={cfg.iqn_prefix}:{host}" in served and "auth=chap" in served
    check = subprocess.run(["qemu-img", "check", str(cfg.overlays_dir / f"{host}.qcow2")], capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0 and "No errors" in check.stdout, check.stdout + check.stderr
    return root_files(cfg.overlays_dir / f"{host}.qcow2", work, *IDENTITY)


@pytest.mark.parametrize("firmware", [qemu.Firmware.BIOS, qemu.Firmware.UEFI], ids=["bios", "uefi"])
def test_debian_boots_to_multi_user(lab: config.Config, firmware: qemu.Firmware, tmp_path: Path) -> None:
    """... with its own machine ID, SSH host key and initiator name, made
    on its first boot (the base has none of them)."""
    need_vm_lab(firmware)
    mac = list(HOSTS)[firmware is qemu.Firmware.UEFI]
    host = HOSTS[mac]
    ident = boot(lab, mac, firmware, tmp_path)
    assert re.fullmatch(r"[0-9a-f]{32}\n", ident["/etc/machine-id"]), ident
    assert ident["/etc/ssh/ssh_host_ed25519_key.pub"].strip().endswith(f"root@{host}"), ident
    assert ident["/etc/iscsi/initiatorname.iscsi"] == f"InitiatorName={lab.iqn_prefix}:{host}\n"
    for other in identities.values():
        assert all(ident[f] != other[f] for f in IDENTITY)
    identities[host] = ident


def test_base_carries_no_identity(lab: config.Config, tmp_path: Path) -> None:
    base = root_files(lab.images_dir / DEBIAN_BASE, tmp_path, *IDENTITY)
    assert base == {"/etc/machine-id": "", "/etc/ssh/ssh_host_ed25519_key.pub": "",
                    "/etc/iscsi/initiatorname.iscsi": "GenerateName=yes\n"}


def test_a_reboot_keeps_the_identity(lab: config.Config, tmp_path: Path) -> None:
    mac = list(HOSTS)[0]
    if HOSTS[mac] not in identities:
        pytest.skip("its first boot failed")
    assert boot(lab, mac, qemu.Firmware.BIOS, tmp_path) == identities[HOSTS[mac]]
