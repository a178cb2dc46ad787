"""A real operating system, diskless, several machines from one base, and
machines that survive a restart of bootsvc (issue 20). The Debian base of
`bootsvc image build-debian` (built in the background while the rest of
the session runs, tests/e2e/debian_build.py) boots in two rounds:

1. ONE `bootsvc vm` run boots three machines at once, deb01 on BIOS, deb02
   on UEFI, deb03 on BIOS with an ephemeral overlay (iPXE sanboot →
   SYSLINUX or systemd-boot → Debian's kernel → initramfs-tools +
   open-iscsi log in from the iBFT, with CHAP → systemd to
   multi-user.target), until each prints BOOTSVC-DEBIAN-OK with its own
   hostname and initiator name. Read from the overlays with qemu-img,
   e2fsck and debugfs (not bootsvc's code): each holds its own machine
   ID, SSH host key and initiator name, the base none; each machine's
   write (the marker unit's line in /var/lib/bootsvc/boots) is in its own
   overlay only.
2. deb01 and deb03 boot again, at once, the kernel way with ``bootsvc.tick``
   (tests/e2e/debian_restart.py: they write and sync every second), each
   to its marker; bootsvc is stopped with SIGTERM and started again, then
   killed with SIGKILL and started again, and both carry on writing on
   their own. Then: the overlays pass ``qemu-img check`` and hold every
   tick the machines printed; deb01's persistent overlay kept its first
   boot's line and identity, deb03's ephemeral overlay was made anew at
   the reboot (its first line and identity gone).

One round of reboots serves both the reboot and the restart: two VM boots
fewer than a round for each. BOOTSVC_DEBIAN_E2E=0 skips these tests."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from bootsvc import config
from bootsvc.debian import DEBIAN_BASE, MARKER_OK
from bootsvc.debian.tree import BOOT_LOG, KERNEL_ARGS, TICK_FILE
from bootsvc.vm import qemu
from bootsvc.vm.run import Options, run
from bootsvc.vm.timeline import ORDER, Step
from tests.e2e.conftest import need_vm_lab
from tests.e2e.debian import (IDENTITY, check_overlay, fresh_overlays, lab_config, marker, need_debian_base,
                              root_files, wait_marker)
from tests.e2e.debian_build import TEST_TIMEOUT
from tests.e2e.debian_restart import BOOT_TIMEOUT, check_sessions, restart_twice, running, wait_for

# the first test waits for what is left of the base's build
pytestmark = [pytest.mark.e2e, pytest.mark.debian, pytest.mark.timeout(TEST_TIMEOUT)]
BIOS, UEFI, EPHEMERAL = "52:54:00:79:00:11", "52:54:00:79:00:12", "52:54:00:79:00:13"
HOSTS = {BIOS: "deb01", UEFI: "deb02", EPHEMERAL: "deb03"}
FILES = (*IDENTITY, BOOT_LOG)
EPHEMERAL_PROFILE = f"base: {DEBIAN_BASE}\noverlay: ephemeral\nboot: sanboot\n"
# the reboots: the kernel way, so the command line can ask for the ticks
TICK_PROFILE = f"""\
base: {DEBIAN_BASE}
overlay: {{overlay}}
boot: kernel
kernel: debian12/vmlinuz
initrd: debian12/initrd.img
cmdline: {KERNEL_ARGS} bootsvc.tick
"""
REBOOT_PROFILES = {BIOS: "debian12-tick", EPHEMERAL: "debian12-tick-ephemeral"}
first: dict[str, dict[str, str]] = {}  # host -> its overlay's files after the first run


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> config.Config:
    need_debian_base()
    need_vm_lab(qemu.Firmware.UEFI)
    work = tmp_path_factory.mktemp("debian")
    profiles = work / "profiles"
    profiles.mkdir()
    (profiles / "debian12-ephemeral.yaml").write_text(EPHEMERAL_PROFILE)
    (profiles / "debian12-tick.yaml").write_text(TICK_PROFILE.format(overlay="persistent"))
    (profiles / "debian12-tick-ephemeral.yaml").write_text(TICK_PROFILE.format(overlay="ephemeral"))
    cfg = lab_config(work / "bootsvc.yaml", 216, HOSTS, {EPHEMERAL: "debian12-ephemeral"},
                     extra=f"profiles_dir: {profiles}")
    fresh_overlays(cfg)
    return cfg


def boot_at_once(cfg: config.Config, macs: tuple[str, ...], work: Path) -> dict[str, dict[str, str]]:
    """One `bootsvc vm` run of ``macs`` (UEFI for deb02), each to its own
    marker; each overlay's files afterwards, by hostname."""
    uefi = tuple(m for m in macs if m == UEFI)
    timelines = run(cfg, Options(macs=macs, uefi_macs=uefi, accel="auto", timeout=600))
    served = (cfg.state_dir / "vm" / "serve.log").read_text()
    files = {}
    for t in timelines:
        host = t.machine.hostname
        assert t.booted, f"{host}: {t.failure}"
        # every step, in order from the kernel on (the last DHCP ACK is the
        # initramfs's own DHCP, after iPXE's login)
        assert set(t.at) == set(ORDER), f"{host}: {t.at}"
        assert t.at[Step.KERNEL] < t.at[Step.OS_LOGIN] < t.at[Step.ROOT] < t.at[Step.BOOTED], f"{host}: {t.at}"
        assert marker(cfg, host) == f"{MARKER_OK} host={host} initiator={cfg.iqn_prefix}:{host}"
        assert f"initiator={cfg.iqn_prefix}:{host}" in served
        overlay = cfg.overlays_dir / f"{host}.qcow2"
        check_overlay(overlay)
        files[host] = root_files(overlay, work, *FILES)
    assert "auth=chap" in served
    return files


def boots(files: dict[str, str]) -> list[tuple[str, str]]:
    """The overlay's boot log: (boot id, hostname) per boot."""
    return [tuple(line.split()) for line in files[BOOT_LOG].splitlines()]  # type: ignore[misc]


def test_three_machines_boot_at_once_each_its_own(lab: config.Config, tmp_path: Path) -> None:
    """BIOS and UEFI in one run; each overlay holds its own identity (made
    on its first boot) and its own write, and no other machine's."""
    files = boot_at_once(lab, (BIOS, UEFI, EPHEMERAL), tmp_path)
    for host, f in files.items():
        assert re.fullmatch(r"[0-9a-f]{32}\n", f["/etc/machine-id"]), f
        assert f["/etc/ssh/ssh_host_ed25519_key.pub"].strip().endswith(f"root@{host}"), f
        assert f["/etc/iscsi/initiatorname.iscsi"] == f"InitiatorName={lab.iqn_prefix}:{host}\n"
        [(boot_id, logged)] = boots(f)
        assert logged == host and re.fullmatch(r"[0-9a-f-]{36}", boot_id), f
    for name in FILES:
        values = [f[name] for f in files.values()]
        assert len(set(values)) == len(values), f"{name} is shared: {values}"
    first.update(files)


def test_base_carries_no_identity_and_no_write(lab: config.Config, tmp_path: Path) -> None:
    base = root_files(lab.images_dir / DEBIAN_BASE, tmp_path, *FILES)
    assert base == {"/etc/machine-id": "", "/etc/ssh/ssh_host_ed25519_key.pub": "",
                    "/etc/iscsi/initiatorname.iscsi": "GenerateName=yes\n", BOOT_LOG: ""}


def test_rebooted_machines_keep_or_renew_their_overlay_and_survive_a_restart(lab: config.Config,
                                                                            tmp_path: Path) -> None:
    if set(first) != set(HOSTS.values()):
        pytest.skip("the first boots failed")
    rebooted = {mac: HOSTS[mac] for mac in REBOOT_PROFILES}
    cfg = lab_config(lab.path.with_name("reboot.yaml"), 216, HOSTS, REBOOT_PROFILES,
                     extra=f"profiles_dir: {lab.path.parent / 'profiles'}")
    with running(cfg, rebooted) as (rig, guests):
        wait_for(guests, {g.host: 2 for g in guests}, BOOT_TIMEOUT)
        for g in guests:
            assert wait_marker(cfg, g.host) == f"{MARKER_OK} host={g.host} initiator={cfg.iqn_prefix}:{g.host}"
        check_sessions(guests)
        print("\n".join(restart_twice(rig, guests)))
        rig.stop(signal.SIGTERM)  # flushes the overlays and clears their dirty bit
        rig.end_vms()
    files = {}
    for g in guests:
        g.poll()
        overlay = cfg.overlays_dir / f"{g.host}.qcow2"
        check_overlay(overlay)
        files[g.host] = root_files(overlay, tmp_path, *FILES, TICK_FILE)
        kept = [int(x) for x in files[g.host][TICK_FILE].split() if x.isdigit()]
        # every tick printed was fsynced before it was printed: all are on the disk, in order
        assert kept[:g.last] == list(range(1, g.last + 1)), (g.host, g.last, kept[-5:])
    kept, renewed = files["deb01"], files["deb03"]
    assert [f for f in IDENTITY if kept[f] != first["deb01"][f]] == []
    assert boots(kept)[0] == boots(first["deb01"])[0] and len(boots(kept)) == 2, kept[BOOT_LOG]
    assert boots(kept)[1][0] != boots(kept)[0][0]  # a new boot id: it did boot again
    # the ephemeral overlay was made anew at the reboot's firmware DHCP:
    # the first boot's write is gone, and so is its identity
    [(boot_id, host)] = boots(renewed)
    assert host == "deb03" and boot_id != boots(first["deb03"])[0][0], renewed[BOOT_LOG]
    assert renewed["/etc/machine-id"] != first["deb03"]["/etc/machine-id"]
    assert renewed["/etc/ssh/ssh_host_ed25519_key.pub"] != first["deb03"]["/etc/ssh/ssh_host_ed25519_key.pub"]
