"""``bootsvc vm -c CONFIG``: boot machines of the inventory as diskless
QEMU VMs through bootsvc and report how each boot went.

Unless ``--attach``, the boot network is a private network namespace with
the bridge that ``listen.dhcp`` names, holding its address, and ``bootsvc
serve`` runs inside it; nothing is reachable from it but bootsvc. Run
files (serial consoles, the serve log) go to state_dir/vm/. Every process
and device made here is removed on exit, on Ctrl-C and on SIGTERM."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..config import Config
from ..events import EVENT_FILE, read_events
from ..images import ImageStore
from ..inventory import Machine, normalize_mac
from ..recorder import BootStore
from ..recorder.diagnosis import FAILURE_RULES
from . import network, qemu
from .timeline import ORDER, Recorder, Step, Timeline, diagnose


class VmError(Exception):
    """The VMs cannot be started; the message says why."""


@dataclass(frozen=True)
class Options:
    count: int = 1
    macs: tuple[str, ...] = ()
    firmware: qemu.Firmware = qemu.Firmware.BIOS
    accel: str = "auto"
    timeout: float = 300.0
    attach: bool = False
    memory_mib: int = 256
    # False: the UEFI machines' own PXE loads iPXE over TFTP (BIOS machines
    # keep the NIC's ROM: SeaBIOS has no PXE client of its own)
    nic_rom: bool = True
    # these machines boot on UEFI whatever ``firmware`` says, so one run
    # boots BIOS and UEFI machines at once (they are booted as if in ``macs``)
    uefi_macs: tuple[str, ...] = ()
    # the flight recorder's diagnosis rules that end a machine's boot (timeline.Recorder)
    end_on: frozenset[str] = frozenset()

    def firmware_of(self, mac: str) -> qemu.Firmware:
        uefi = {normalize_mac(m) for m in self.uefi_macs}
        return qemu.Firmware.UEFI if mac in uefi else self.firmware

    def nic_rom_of(self, mac: str) -> bool:
        """Whether the machine's NIC has iPXE's ROM: always on BIOS."""
        return self.nic_rom or self.firmware_of(mac) is qemu.Firmware.BIOS

    def firmwares(self) -> set[qemu.Firmware]:
        return {self.firmware} | ({qemu.Firmware.UEFI} if self.uefi_macs else set())


def pick_machines(cfg: Config, opts: Options) -> list[Machine]:
    """The machines named by MAC, else the first ``count`` by hostname."""
    if opts.macs or opts.uefi_macs:
        out = []
        for text in dict.fromkeys((*opts.macs, *opts.uefi_macs)):
            try:
                mac = normalize_mac(text)
            except ValueError as e:
                raise VmError(str(e)) from None
            if mac not in cfg.machines:
                raise VmError(f"{mac} is not in the inventory of {cfg.path}")
            out.append(cfg.machines[mac])
        return out
    machines = sorted(cfg.machines.values(), key=lambda m: m.hostname)
    if len(machines) < opts.count:
        raise VmError(f"--count {opts.count} but {cfg.path} has {len(machines)} machine(s)")
    return machines[:opts.count]


def boot_address(cfg: Config) -> tuple[str, ipaddress.IPv4Interface]:
    """The bridge and the address on it that bootsvc's DHCP serves."""
    if cfg.dhcp is None or not cfg.dhcp.listeners or not cfg.dhcp.listeners[0].interface:
        raise VmError(f"{cfg.path} has no listen.dhcp with an interface: the VMs' boot network is that bridge")
    listener = cfg.dhcp.listeners[0]
    for subnet in cfg.dhcp.subnets:
        if listener.address in subnet.network:
            return listener.interface or "", ipaddress.IPv4Interface(f"{listener.address}/{subnet.network.prefixlen}")
    raise VmError(f"listen.dhcp address {listener.address} is in none of dhcp's subnets")


def check_images(cfg: Config, machines: list[Machine]) -> None:
    store = ImageStore(cfg)
    for m in machines:
        base = store.base_path(cfg.profiles[m.profile].base)
        if not base.is_file():
            raise VmError(f"{m.hostname}'s profile {m.profile} boots {base}, which does not exist: build it "
                          f"with `bootsvc image -c {cfg.path} build-demo`")


class FollowFile:
    """New complete lines of a growing file; ``from_end``: only lines
    written after now. A file that shrank (rotated) is read from its start."""

    def __init__(self, path: Path, from_end: bool = False) -> None:
        self.path = path
        self.pos = path.stat().st_size if from_end and path.exists() else 0
        self.partial = b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_size < self.pos:
                    self.pos, self.partial = 0, b""
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        *complete, self.partial = (self.partial + data).split(b"\n")
        return [c.decode(errors="replace").rstrip("\r") for c in complete]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM cleans up like Ctrl-C."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def end_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds: ours, by PID."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def start_serve(config: Path, log: Path, prefix: tuple[str, ...] = (), ready: str = "ready:",
                timeout: float = 60.0, argv: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """``bootsvc serve -c CONFIG`` (inside a namespace: ``prefix``; other
    arguments to bootsvc: ``argv``), its log in ``log``, once ``ready``
    shows there. The caller ends it."""
    with open(log, "wb") as err:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([*prefix, sys.executable, "-m", "bootsvc", *(argv or ("serve", "-c", str(config)))],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + timeout
    while ready not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            end_process(proc)
            raise VmError(f"bootsvc serve did not say {ready!r}; its log ({log}):\n"
                          f"{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    return proc


def _isns_view(cfg: Config, net: network.BootNetwork, timelines: list[Timeline]) -> None:
    """What iSNS holds for each machine: its DD's members and whether its
    target is registered (asked from inside the boot network)."""
    def ask(*what: str) -> list[dict[str, object]]:
        r = subprocess.run([*net.prefix, sys.executable, "-m", "bootsvc", "isns", "-c", str(cfg.path), *what,
                            "--json"], capture_output=True, text=True, timeout=30)
        return json.loads(r.stdout) if r.returncode == 0 else []
    dds = {str(d.get("DD_SYMBOLIC_NAME")): d for d in ask("dd", "list")}
    nodes = {str(n.get("ISCSI_NAME")) for n in ask("list", "nodes")}
    for t in timelines:
        dd = dds.get(f"boot-{t.machine.hostname}")
        members = dd.get("DD_MEMBER_ISCSI_NAME", []) if dd else None
        t.isns_dd = tuple(members) if isinstance(members, list) else None
        t.isns_target = t.machine.target_iqn in nodes


def print_table(timelines: list[Timeline], out: TextIO) -> None:
    width = max(len(t.machine.hostname) for t in timelines)
    print(f"{'machine':{width}}  " + "  ".join(f"{s.value:>10}" for s in ORDER), file=out)
    for t in timelines:
        cells = [f"{t.at[s]:9.1f}s" if s in t.at else f"{'-':>10}" for s in ORDER]
        print(f"{t.machine.hostname:{width}}  " + "  ".join(cells), file=out)
    for t in timelines:
        print(f"{t.machine.hostname}: {diagnose(t)}", file=out)
        if t.isns_dd is not None:
            state = "registered" if t.isns_target else "NOT registered"
            print(f"  iSNS: DD boot-{t.machine.hostname} = {', '.join(t.isns_dd)}; target {state}", file=out)


def print_recorded(cfg: Config, timelines: list[Timeline], out: TextIO) -> None:
    """What the flight recorder of the serve that booted them kept (the
    server's side: DHCP, fetches, logins, reads), one line per machine;
    ``bootsvc timeline HOST`` shows it in full."""
    if not cfg.recorder_db.exists():
        return
    store = BootStore(cfg.recorder_db)
    try:
        for t in timelines:
            boots = store.boots(t.machine.mac, 1)
            if not boots or boots[0].updated < t.started:
                print(f"{t.machine.hostname} (flight recorder): nothing recorded for this run", file=out)
                continue
            s = boots[0].timeline(time.time(), cfg.recorder.stall)
            took = f" in {s['duration']:.1f} s" if s["duration"] is not None else ""
            steps = " ".join(f"{x['step']} {x['at']:.1f}" for x in s["steps"][:16])
            print(f"{t.machine.hostname} (flight recorder): {s['diagnosis']}{took}; {steps}", file=out)
    finally:
        store.close()


def run(cfg: Config, opts: Options, out: TextIO = sys.stdout) -> list[Timeline]:
    """Boot the machines and follow them until each has booted or failed,
    or ``opts.timeout`` seconds pass. Returns their timelines."""
    machines = pick_machines(cfg, opts)
    if not opts.nic_rom and qemu.Firmware.UEFI not in opts.firmwares():
        raise VmError("--firmware-pxe needs --uefi or --uefi-mac: SeaBIOS has no PXE client of its own, only the "
                      "NIC's ROM")
    unknown = sorted(opts.end_on - FAILURE_RULES)
    if unknown:
        raise VmError(f"--end-on {', '.join(unknown)}: no such diagnosis; the flight recorder's are "
                      f"{', '.join(sorted(FAILURE_RULES))}")
    bridge, address = boot_address(cfg)
    check_images(cfg, machines)
    for firmware in opts.firmwares():
        qemu.check(firmware)
    accel = qemu.pick_accel(opts.accel)
    rundir = cfg.state_dir / "vm"
    rundir.mkdir(parents=True, exist_ok=True)
    serve_log = rundir / "serve.log"
    events = FollowFile(cfg.state_dir / EVENT_FILE, from_end=True)  # this run's events, from any bootsvc
    procs: list[subprocess.Popen[bytes]] = []
    server: subprocess.Popen[bytes] | None = None
    timelines: list[Timeline] = []
    net = network.attached(bridge) if opts.attach else network.private(bridge, address)
    try:
        with sigterm_as_interrupt():
            if not opts.attach:
                print(f"boot network: namespace {net.ns}, bridge {bridge} {address}; bootsvc serve log {serve_log}",
                      file=out)
                server = start_serve(cfg.path, serve_log, net.prefix)
            vms = [qemu.Machine(m.hostname, m.mac, net.add_tap(), rundir / f"{m.hostname}.console",
                                opts.firmware_of(m.mac), accel, opts.memory_mib, opts.nic_rom_of(m.mac))
                   for m in machines]
            for vm, m in zip(vms, machines):
                timelines.append(Timeline(m, time.time()))
                procs.append(vm.start(net.prefix))
            firmware = ", ".join(sorted({vm.firmware.value for vm in vms}))
            print(f"started {len(vms)} VM(s) ({firmware}, {accel}); consoles in {rundir}", file=out)
            _follow(Recorder(timelines, opts.end_on), procs, events, vms, opts.timeout, out, server)
            if cfg.isns.target is not None:
                _isns_view(cfg, net, timelines)
    finally:
        for p in procs:
            end_process(p, grace=2.0)
        if server is not None:
            end_process(server)
        net.close()
        if timelines:
            print_table(timelines, out)
            print_recorded(cfg, timelines, out)
    return timelines


def _follow(recorder: Recorder, procs: list[subprocess.Popen[bytes]], events: FollowFile,
            vms: list[qemu.Machine], timeout: float, out: TextIO,
            server: subprocess.Popen[bytes] | None = None) -> None:
    """Until every machine booted or failed, ``timeout`` passed, or the
    ``server`` this run started exited: no boot goes on without it."""
    timelines = recorder.timelines
    consoles = [FollowFile(vm.console) for vm in vms]
    deadline = time.monotonic() + timeout

    def said(t: Timeline, step: Step) -> None:
        print(f"{t.machine.hostname}: {step.value} after {t.at[step]:.1f} s", file=out, flush=True)

    while time.monotonic() < deadline:
        now = time.time()
        for e in read_events(events.lines()):
            hit = recorder.event(e)
            if hit:
                said(*hit)
        for t, console, proc in zip(timelines, consoles, procs):
            for line in console.lines():
                step = recorder.console_line(t, line, now)
                if step:
                    said(t, step)
            _check_vm(recorder, t, console, proc, now)
        if all(t.done for t in timelines):
            return
        if server is not None and server.poll() is not None:
            for t in timelines:
                if not t.done:
                    t.failure = f"bootsvc serve exited (status {server.returncode})"
            return
        time.sleep(0.2)
    for t in timelines:
        if not t.done:
            t.failure = f"no success marker within {timeout:.0f} s"


def _check_vm(recorder: Recorder, t: Timeline, console: FollowFile, proc: subprocess.Popen[bytes],
              now: float) -> None:
    """A VM that exited before its marker failed; one that said it booted
    but did not power off is ended."""
    if proc.poll() is not None and not t.ended:
        t.ended = True
        for line in console.lines():  # what it printed last
            recorder.console_line(t, line, now)
        if not t.booted and t.failure is None:
            t.failure = f"QEMU exited (status {proc.returncode}) before the success marker"
    if t.booted and proc.poll() is None and t.at[Step.BOOTED] + 30 < now - t.started:
        proc.kill()
