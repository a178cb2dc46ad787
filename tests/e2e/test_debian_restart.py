"""Machines survive a restart of bootsvc (issue 20): two Debian machines
boot from their iSCSI overlays and write (the image's test-only tick unit,
kernel command line ``bootsvc.tick``: append a number to a file, fsync it,
then print ``BOOTSVC-TICK n`` on the console, every second). The test stops
`bootsvc serve` with SIGTERM and starts it again, then kills it with
SIGKILL and starts it again, and checks: both machines carry on writing on
their own after each restart, no I/O error in their kernel logs, the root
session waits REPLACEMENT_TIMEOUT seconds (read from sysfs in the guest),
the overlays pass ``qemu-img check``, and every tick a machine printed
(so had synced) is in its overlay (read with qemu-img and debugfs). It
prints how long each machine's I/O paused across each restart.

Boots the Debian base that tests/e2e/debian_build.py builds in the
background; BOOTSVC_DEBIAN_E2E=0 skips it."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bootsvc import config
from bootsvc.debian import DEBIAN_BASE
from bootsvc.debian.build import BOOT_SIZE
from bootsvc.debian.tree import KERNEL_ARGS, REPLACEMENT_TIMEOUT, TICK_FILE, TICK_MARKER
from bootsvc.demo.disk import Layout
from bootsvc.vm import network, qemu
from bootsvc.vm.run import FollowFile, boot_address, end_process, start_serve
from tests.e2e.debian import STATE, fresh_overlays, need_debian_base
from tests.e2e.debian_build import TEST_TIMEOUT

# the first test waits for what is left of the base's build
pytestmark = [pytest.mark.e2e, pytest.mark.debian, pytest.mark.timeout(TEST_TIMEOUT)]
HOSTS = {"52:54:00:79:00:21": "rst01", "52:54:00:79:00:22": "rst02"}
BOOT_TIMEOUT = 600.0  # two Debian boots at once under TCG on a busy machine
RESUME_TIMEOUT = 240.0  # from the restart until each machine's next tick
# seconds bootsvc stays stopped: a quick upgrade, and a slower one (does
# the initiator's retry slow down the longer the target is away?)
DOWN = {signal.SIGTERM: 5.0, signal.SIGKILL: 30.0}
GUEST_ERRORS = ("I/O error", "EXT4-fs error", "Remounting filesystem read-only", "recovery_tmo=120")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> config.Config:
    """The Debian base of tests/e2e/debian.py, booted the kernel way so
    the test can add ``bootsvc.tick`` to the command line."""
    need_debian_base("e2fsck")
    work = tmp_path_factory.mktemp("debian-restart")
    (work / "profiles").mkdir()
    (work / "profiles" / "debian12-tick.yaml").write_text(f"""\
base: {DEBIAN_BASE}
overlay: persistent
boot: kernel
kernel: debian12/vmlinuz
initrd: debian12/initrd.img
cmdline: {KERNEL_ARGS} bootsvc.tick
""")
    machines = "\n".join(f"  {mac}: {{hostname: {h}, ip: 10.217.0.{10 + i}}}" for i, (mac, h) in
                         enumerate(HOSTS.items(), 1))
    path = work / "bootsvc.yaml"
    path.write_text(f"""
state_dir: {STATE}
profiles_dir: {work / 'profiles'}
iqn_prefix: iqn.2026-11.test.restart
default_profile: debian12-tick
listen:
  dhcp: {{interface: bsv-rst0, address: 10.217.0.1}}
  iscsi: [10.217.0.1:3260]
  tftp: 10.217.0.1:69
  http: 10.217.0.1:80
dhcp:
  subnet: 10.217.0.0/24
machines:
{machines}
""")
    cfg = config.load(path)
    fresh_overlays(cfg)
    return cfg


@dataclass
class Guest:
    """One running machine: its console, the ticks it printed (number,
    when we saw it, monotonic) and the lines that show a failing disk."""

    host: str
    console: FollowFile
    ticks: list[tuple[int, float]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def poll(self) -> None:
        now = time.monotonic()
        for line in self.console.lines():
            self.text.append(line)
            m = re.search(rf"{TICK_MARKER} (\d+)", line)
            if m:
                self.ticks.append((int(m.group(1)), now))

    @property
    def last(self) -> int:
        return self.ticks[-1][0] if self.ticks else 0

    def errors(self) -> list[str]:
        return [line for line in self.text if any(e in line for e in GUEST_ERRORS)]


def wait_for(guests: list[Guest], after: dict[str, int], timeout: float) -> None:
    """Until every guest printed a tick above ``after[host]``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for g in guests:
            g.poll()
        if all(g.last > after.get(g.host, 0) for g in guests):
            return
        time.sleep(0.2)
    tails = "\n".join(f"--- {g.host} (last tick {g.last}):\n" + "\n".join(g.text[-25:]) for g in guests)
    raise AssertionError(f"no tick above {after} within {timeout:.0f} s\n{tails}")


def ticks_in_overlay(image: Path, work: Path) -> list[int]:
    """The numbers in TICK_FILE on ``image``'s root file system as the
    guest would find them at its next mount: e2fsck replays the ext4
    journal first (an fsync'd append may sit only in the journal when the
    machine stops). Read with qemu-img, e2fsck and debugfs, not bootsvc's code."""
    raw, root = work / f"{image.stem}.raw", work / f"{image.stem}.root"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True, timeout=300)
    try:
        start = Layout(boot_size=BOOT_SIZE).root.start
        subprocess.run(["dd", f"if={raw}", f"of={root}", "bs=1M", f"skip={start}", "iflag=skip_bytes", "conv=sparse",
                        "status=none"], check=True, timeout=300)
        fsck = subprocess.run(["e2fsck", "-fy", str(root)], capture_output=True, text=True, timeout=300)
        assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr  # 1: the journal replayed
        r = subprocess.run(["debugfs", "-R", f"cat {TICK_FILE}", str(root)], capture_output=True, text=True,
                           timeout=60)
    finally:
        raw.unlink(missing_ok=True)
        root.unlink(missing_ok=True)
    return [int(x) for x in r.stdout.split() if x.isdigit()]


@dataclass
class Lab:
    """bootsvc serve and the VMs in a private boot network; the test
    stops and starts serve while the VMs run."""

    cfg: config.Config
    net: network.BootNetwork
    serve: subprocess.Popen[bytes] | None = None
    starts: int = 0
    vms: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> float:
        """bootsvc serve again; how long until it was ready."""
        self.starts += 1
        t0 = time.monotonic()
        self.serve = start_serve(self.cfg.path, self.log(self.starts), self.net.prefix)
        return time.monotonic() - t0

    def log(self, n: int) -> Path:
        return self.cfg.state_dir / "vm" / f"restart-serve-{n}.log"

    def stop(self, sig: signal.Signals) -> None:
        assert self.serve is not None
        if sig is signal.SIGKILL:
            self.serve.kill()
        else:
            self.serve.send_signal(sig)
        try:
            self.serve.wait(30)
        except subprocess.TimeoutExpired:
            self.serve.kill()
            self.serve.wait(10)
            raise AssertionError(f"bootsvc serve did not end within 30 s of {sig.name}")
        self.serve = None


@pytest.fixture
def running(lab: config.Config) -> Iterator[tuple[Lab, list[Guest]]]:
    bridge, address = boot_address(lab)
    rundir = lab.state_dir / "vm"
    rundir.mkdir(parents=True, exist_ok=True)
    net = network.private(bridge, address)
    rig = Lab(lab, net)
    try:
        rig.start()
        accel = qemu.pick_accel("auto")
        guests = []
        for mac, host in HOSTS.items():
            vm = qemu.Machine(host, mac, net.add_tap(), rundir / f"{host}.console", qemu.Firmware.BIOS, accel)
            rig.vms.append(vm.start(net.prefix))
            guests.append(Guest(host, FollowFile(vm.console)))
        yield rig, guests
    finally:
        for p in rig.vms:
            end_process(p, grace=2.0)
        if rig.serve is not None:
            end_process(rig.serve)
        net.close()


def test_machines_survive_a_restart_of_bootsvc(running: tuple[Lab, list[Guest]], tmp_path: Path) -> None:
    rig, guests = running
    cfg = rig.cfg
    wait_for(guests, {g.host: 2 for g in guests}, BOOT_TIMEOUT)
    for g in guests:  # the session the initramfs made waits as long as iscsid's own would
        sessions = [line for line in g.text if "BOOTSVC-ISCSI" in line]
        assert sessions and all(f"recovery_tmo={REPLACEMENT_TIMEOUT}" in s for s in sessions), (g.host, sessions)
    report = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        time.sleep(3)  # a few more ticks with the server up
        for g in guests:
            g.poll()
        rig.stop(sig)
        stopped = time.monotonic()
        time.sleep(0.5)  # a tick synced just before the stop may still be on its way to the console
        for g in guests:
            g.poll()  # ticks printed up to the stop: synced while serve ran
        before = {g.host: g.ticks[-1] for g in guests}
        time.sleep(DOWN[sig])
        ready = rig.start()
        wait_for(guests, {h: n for h, (n, _) in before.items()}, RESUME_TIMEOUT)
        for g in guests:
            n, seen = before[g.host]
            after = next((m, t) for m, t in g.ticks if m > n)
            assert after[0] == n + 1, (g.host, before, after)  # the writer went on, nothing skipped
            report.append(f"{sig.name}: {g.host} tick {n} -> {after[0]}: I/O paused {after[1] - seen:.1f} s "
                          f"(serve down {DOWN[sig]:.0f} s + {ready:.1f} s to ready; machine back "
                          f"{after[1] - stopped - DOWN[sig] - ready:.1f} s after ready)")
        served = rig.log(rig.starts).read_text(errors="replace")
        for host in HOSTS.values():  # each machine logged in again on its own
            assert f"initiator={cfg.iqn_prefix}:{host}" in served, served[-3000:]
    wait_for(guests, {g.host: g.last + 2 for g in guests}, 60)  # and goes on writing
    print("\n".join(report))
    for g in guests:
        assert not g.errors(), (g.host, g.errors())
    rig.stop(signal.SIGTERM)  # flushes the overlays and clears their dirty bit
    for p in rig.vms:
        end_process(p, grace=2.0)
    for g in guests:
        g.poll()
        overlay = cfg.overlays_dir / f"{g.host}.qcow2"
        check = subprocess.run(["qemu-img", "check", str(overlay)], capture_output=True, text=True, timeout=120)
        assert check.returncode == 0 and "No errors" in check.stdout, check.stdout + check.stderr
        kept = ticks_in_overlay(overlay, tmp_path)
        # every tick printed was fsynced before it was printed: all are on the disk, in order
        assert kept[:g.last] == list(range(1, g.last + 1)), (g.host, g.last, kept[-5:])
