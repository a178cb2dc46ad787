"""What the Debian e2e tests share: the Debian base, built in STATE in the
background while the rest of the session runs (tests/e2e/debian_build.py),
and reading a machine's boot from its console and its overlay."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from bootsvc import config
from bootsvc.debian import MARKER_OK
from bootsvc.debian.build import BOOT_SIZE
from bootsvc.demo.disk import Layout
from bootsvc.vm import qemu
from tests.e2e import debian_build
from tests.e2e.conftest import need, need_vm_lab
from tests.e2e.debian_build import STATE

IDENTITY = ("/etc/machine-id", "/etc/ssh/ssh_host_ed25519_key.pub", "/etc/iscsi/initiatorname.iscsi")


def need_debian_base(*commands: str) -> None:
    """Skip (with the reason) when BOOTSVC_DEBIAN_E2E=0 or a command (these
    and the build's) is missing; else wait for the base's build."""
    if not debian_build.ENABLED:
        pytest.skip("BOOTSVC_DEBIAN_E2E=0 turns the Debian tests off")
    need(*debian_build.COMMANDS, "debugfs", "e2fsck", *commands)
    need_vm_lab(qemu.Firmware.BIOS)
    debian_build.wait()


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


def fresh_overlays(cfg: config.Config) -> None:
    """No overlay in STATE: each test run boots fresh machines."""
    shutil.rmtree(cfg.overlays_dir, ignore_errors=True)


def marker(cfg: config.Config, host: str) -> str:
    """The last BOOTSVC-DEBIAN-OK line of ``host``'s console."""
    text = (cfg.state_dir / "vm" / f"{host}.console").read_text(errors="replace")
    found = re.findall(rf"{MARKER_OK} host=\S+ initiator=\S+", text)
    assert found, text[-3000:]
    return found[-1]


def wait_marker(cfg: config.Config, host: str, timeout: float = 60.0) -> str:
    """marker(), once ``host``'s console has one (a running machine)."""
    deadline = time.monotonic() + timeout
    while MARKER_OK not in (cfg.state_dir / "vm" / f"{host}.console").read_text(errors="replace"):
        if time.monotonic() > deadline:
            break  # marker() says what the console holds
        time.sleep(0.5)
    return marker(cfg, host)


def root_files(image: Path | str, work: Path, *paths: str, prefix: Sequence[str] = ()) -> dict[str, str]:
    """Files of ``image``'s root file system ('' when absent) as a machine
    would find them at its next mount: e2fsck replays the ext4 journal
    first (an fsync'd write may sit only in the journal when a machine
    stops). Read with qemu-img (the root partition alone), e2fsck and
    debugfs: tools that are not bootsvc's. ``image``: a qcow2 file, or
    QEMU's options for another driver's disk (``file.driver=rbd,...``,
    with ``prefix`` running qemu-img where the cluster is reachable)."""
    opts = f"file.driver=qcow2,file.file.filename={image}" if isinstance(image, Path) else image
    root = work / f"{image.stem if isinstance(image, Path) else 'disk'}.root"
    start = Layout(boot_size=BOOT_SIZE).root.start
    subprocess.run([*prefix, "qemu-img", "convert", "-O", "raw", "--image-opts", f"driver=raw,offset={start},{opts}",
                    str(root)], check=True, timeout=300)
    out = {}
    try:
        fsck = subprocess.run(["e2fsck", "-fy", str(root)], capture_output=True, text=True, timeout=300)
        assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr  # 1: the journal replayed
        for path in paths:
            r = subprocess.run(["debugfs", "-R", f"cat {path}", str(root)], capture_output=True, text=True,
                               timeout=60)
            out[path] = "" if "not found" in r.stderr else r.stdout
    finally:
        root.unlink(missing_ok=True)
    return out


def check_overlay(image: Path) -> None:
    """``qemu-img check`` finds ``image`` clean."""
    r = subprocess.run(["qemu-img", "check", str(image)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "No errors" in r.stdout, r.stdout + r.stderr
