"""What the Debian e2e tests share: the Debian base, built (or reused) in
STATE, and reading a machine's boot from its console and its overlay.

The build downloads about 150 MB and takes minutes, so it is kept in STATE
(downloads, the debootstrapped tree, the base) between runs; the tests run
only when that build exists or BOOTSVC_DEBIAN_E2E=1 asks for it (CI
machines are fresh: they skip). The base is made again from the cached tree
(under a minute) when bootsvc/debian/*.py changed since it was built."""

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
from tests.e2e.conftest import need, need_vm_lab

STATE = Path(os.environ.get("BOOTSVC_DEBIAN_STATE", "/var/tmp/bootsvc-e2e-debian"))
IDENTITY = ("/etc/machine-id", "/etc/ssh/ssh_host_ed25519_key.pub", "/etc/iscsi/initiatorname.iscsi")


def need_debian_base(*commands: str) -> None:
    """Skip (with the reason) unless the base is built or may be built, or
    a command (these and the build's) is missing."""
    if not (STATE / "images" / DEBIAN_BASE).exists() and os.environ.get("BOOTSVC_DEBIAN_E2E") != "1":
        pytest.skip(f"the Debian base is not built in {STATE}: BOOTSVC_DEBIAN_E2E=1 builds it "
                    "(downloads about 150 MB, takes minutes; kept for later runs)")
    need("debootstrap", "qemu-img", "debugfs", "syslinux", "mcopy", "mkfs.vfat", "mke2fs", *commands)
    need_vm_lab(qemu.Firmware.BIOS)


def lab_config(path: Path, net: int, machines: dict[str, str], profiles: dict[str, str] | None = None,
               extra: str = "") -> config.Config:
    """A config in ``path`` booting ``machines`` (MAC -> hostname; profile
    debian12 unless ``profiles`` names another) on 10.<net>.0.0/24 from the
    base in STATE; ``extra``: more top-level YAML (profiles_dir, ...)."""
    profiles = profiles or {}
    lines = "\n".join(f"  {mac}: {{hostname: {h}, ip: 10.{net}.0.{10 + i}, "
                      f"profile: {profiles.get(mac, 'debian12')}}}" for i, (mac, h) in enumerate(machines.items(), 1))
    path.write_text(f"""
state_dir: {STATE}
iqn_prefix: iqn.2026-11.test.debian
default_profile: debian12
listen:
  dhcp: {{interface: bsv-deb0, address: 10.{net}.0.1}}
  iscsi: [10.{net}.0.1:3260]
  tftp: 10.{net}.0.1:69
  http: 10.{net}.0.1:80
dhcp:
  subnet: 10.{net}.0.0/24
{extra}
machines:
{lines}
""")
    return config.load(path)


def build_base(cfg: config.Config) -> None:
    """The base in STATE: reused while the builder's code is the one that
    built it, else made again from the cached tree. Every overlay in STATE
    goes first: each test run boots fresh machines, and a rebuild refuses a
    base that overlays still use."""
    shutil.rmtree(cfg.overlays_dir, ignore_errors=True)
    stamp = STATE / "cache" / "debian" / "e2e-recipe"
    recipe = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(Path(debian.__file__).parent.glob("*.py"))))
    fresh = stamp.is_file() and stamp.read_text() == recipe.hexdigest()
    build_debian(cfg, force=not fresh, say=print)
    stamp.write_text(recipe.hexdigest())


def marker(cfg: config.Config, host: str) -> str:
    """The last BOOTSVC-DEBIAN-OK line of ``host``'s console."""
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


def check_overlay(image: Path) -> None:
    """``qemu-img check`` finds ``image`` clean."""
    r = subprocess.run(["qemu-img", "check", str(image)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "No errors" in r.stdout, r.stdout + r.stderr
