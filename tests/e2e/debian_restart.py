"""Restarting bootsvc under running Debian machines (issue 20), for
tests/e2e/test_debian_boot.py: the machines boot from their iSCSI overlays
and write (the image's test-only tick unit, kernel command line
``bootsvc.tick``: append a number to a file, fsync it, then print
``BOOTSVC-TICK n`` on the console, every second). restart_twice() stops
`bootsvc serve` with SIGTERM and starts it again, then kills it with
SIGKILL and starts it again, and checks: every machine carries on writing
on its own after each restart, with no tick skipped, and logs in again; the
root session waits REPLACEMENT_TIMEOUT seconds (read from sysfs in the
guest); no I/O error in their kernel logs. It says how long each machine's
I/O paused across each restart. What the overlays hold afterwards (every
tick printed) the test reads with tests/e2e/debian.py's root_files()."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bootsvc import config
from bootsvc.debian.tree import REPLACEMENT_TIMEOUT, TICK_MARKER
from bootsvc.vm import network, qemu
from bootsvc.vm.run import FollowFile, boot_address, end_process, start_serve

BOOT_TIMEOUT = 600.0  # Debian boots at once under TCG on a busy machine
RESUME_TIMEOUT = 240.0  # from the restart until each machine's next tick
# seconds bootsvc stays stopped: a quick upgrade, and a slower one (the
# initiator retries its login every few seconds, without back-off:
# docs/benchmarks.md)
DOWN = {signal.SIGTERM: 5.0, signal.SIGKILL: 10.0}
GUEST_ERRORS = ("I/O error", "EXT4-fs error", "Remounting filesystem read-only", "recovery_tmo=120")


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

    def end_vms(self) -> None:
        for p in self.vms:
            end_process(p, grace=2.0)


@contextlib.contextmanager
def running(cfg: config.Config, hosts: dict[str, str]) -> Iterator[tuple[Lab, list[Guest]]]:
    """bootsvc serve and a BIOS VM for each of ``hosts`` (MAC -> hostname),
    all ended on exit."""
    bridge, address = boot_address(cfg)
    rundir = cfg.state_dir / "vm"
    rundir.mkdir(parents=True, exist_ok=True)
    net = network.private(bridge, address)
    rig = Lab(cfg, net)
    try:
        rig.start()
        accel = qemu.pick_accel("auto")
        guests = []
        for mac, host in hosts.items():
            vm = qemu.Machine(host, mac, net.add_tap(), rundir / f"{host}.console", qemu.Firmware.BIOS, accel)
            rig.vms.append(vm.start(net.prefix))
            guests.append(Guest(host, FollowFile(vm.console)))
        yield rig, guests
    finally:
        rig.end_vms()
        if rig.serve is not None:
            end_process(rig.serve)
        net.close()


def check_sessions(guests: list[Guest]) -> None:
    """The sessions the initramfs made wait as long as iscsid's own would."""
    for g in guests:
        sessions = [line for line in g.text if "BOOTSVC-ISCSI" in line]
        assert sessions and all(f"recovery_tmo={REPLACEMENT_TIMEOUT}" in s for s in sessions), (g.host, sessions)


def restart_twice(rig: Lab, guests: list[Guest]) -> list[str]:
    """SIGTERM and restart, then SIGKILL and restart, under the running
    guests; each goes on writing on its own. How long each paused, one
    line per machine and restart."""
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
        for g in guests:  # each machine logged in again on its own
            assert f"initiator={rig.cfg.iqn_prefix}:{g.host}" in served, served[-3000:]
    wait_for(guests, {g.host: g.last + 2 for g in guests}, 60)  # and goes on writing
    for g in guests:
        assert not g.errors(), (g.host, g.errors())
    return report
