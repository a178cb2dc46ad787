#!/usr/bin/env python3
"""Diskless boot: bootsvc against dnsmasq + tgt, in one run, same image.

Each boot-run makes a private network namespace (bootsvc.vm.network: a
bridge holding the server's address, one tap per VM), starts one server
stack in it, starts 1 or N diskless QEMU VMs (bootsvc.vm.qemu: virtio NIC
with its iPXE ROM, BIOS) at once and follows them until each printed the
demo's success marker or failed. The stacks:

- bootsvc: ``bootsvc serve`` (DHCP + iSCSI on a qcow2 overlay of the
  demo base per machine), started exactly as ``bootsvc vm`` starts it.
- reference: dnsmasq (DHCP only) giving iPXE the same options bootsvc
  gives it (fixed IP, hostname, root-path of the machine's own target,
  initiator name 203, 175.176 no-pxedhcp, vendor class PXEClient) and tgtd
  with one target per machine, LUN 1, ACL = the machine's initiator name,
  each on a raw copy of the demo base (tgt cannot read qcow2). The copies
  are made once, before anything is timed.

Both answer iPXE's IPv6 router solicitations (bootsvc by default; dnsmasq
with --enable-ra, ra-only, router lifetime 0) unless --no-ra, in which
case neither does and iPXE waits ~16 s for IPv6 on both.

Measured per VM, in seconds from the moment QEMU is started, the same way
for both stacks:

- dhcp-ack: the server's first DHCPACK to the VM's MAC,
- first-read: the VM's first SCSI READ command PDU (READ 6/10/12/16) to
  port 3260 (iPXE reading the boot sector),
- booted: the demo's success marker on the serial console.

The first two come from a packet capture on the bridge (an AF_PACKET
socket with a BPF filter, kernel timestamps), the third from polling
each console file every 50 ms. bootsvc's own events (dhcp.ack,
iscsi.first_read) are read as a cross-check of the capture, not scored.
Per boot-run also the CPU time (user + system, /proc/PID/stat) the
stack's processes used from the first VM's start to the last one's end.

Boot-runs alternate A B B A (bootsvc, reference, reference, bootsvc, ...)
for each VM count; the table gives medians and bootsvc/reference per
metric (lower is better, goal <= 1.0).

Per bootsvc boot also the bytes its iSCSI sessions read (the read_bytes
of bootsvc's iscsi.logout / iscsi.session_dropped events; tgt has no such
counter).

``--base IMAGE`` boots that base instead of the demo, e.g. the Debian 12
base of ``bootsvc image build-debian`` (its marker counts as booted; it
needs ``--timeout`` of several minutes for 4 VMs under TCG).

    .venv/bin/python bench/boot.py [--rounds 2] [--vms 1,4] [--no-ra] [--base IMAGE] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ipaddress
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bootsvc import config  # noqa: E402
from bootsvc.demo import build_demo  # noqa: E402
from bootsvc.events import EVENT_FILE, Kind, read_events  # noqa: E402
from bootsvc.inventory import Machine  # noqa: E402
from bootsvc.vm import network, qemu, run  # noqa: E402
from bootsvc.vm.timeline import Recorder, Step, Timeline  # noqa: E402
from bench import procstat, reference  # noqa: E402

SUBNET = ipaddress.IPv4Network("10.217.0.0/24")
SERVER = ipaddress.IPv4Interface("10.217.0.1/24")
BRIDGE = "bsv-bb0"
IPV6_PREFIX = "fd17:b007::"  # only for dnsmasq's RA, which needs a prefix on the bridge
MAX_VMS = 8
ISCSI_PORT = 3260
POLL = 0.05  # seconds between looks at the consoles
STACKS = ("bootsvc", "reference")
METRICS = ("dhcp-ack", "first-read", "booted")
READ_OPCODES = {0x08, 0x28, 0xA8, 0x88}  # READ(6), READ(10), READ(12), READ(16)


# -- the lab: config, image, raw copies --------------------------------------------


@dataclass(frozen=True)
class Lab:
    """What every boot-run of both stacks shares."""

    cfg: config.Config
    work: Path
    raws: dict[str, Path]  # MAC -> raw copy of the base, for tgt
    accel: str
    ra: bool  # both stacks answer router solicitations


def write_config(work: Path, vms: int, ra: bool, base: Path | None = None) -> Path:
    """bootsvc's config: DHCP and iSCSI only (what dnsmasq + tgt do too)."""
    machines = "\n".join(f"  52:54:00:78:01:{i:02x}: {{hostname: node{i:02}, ip: {SUBNET[10 + i]}, "
                         f"profile: bench}}" for i in range(1, vms + 1))
    # no CHAP, like the reference stack (with CHAP iPXE would need a script over TFTP or HTTP)
    (work / "profiles").mkdir(exist_ok=True)
    (work / "profiles" / "bench.yaml").write_text(f"base: {base or 'demo-linux.qcow2'}\nauth: none\n")
    path = work / "bootsvc.yaml"
    path.write_text(f"""state_dir: {work / 'state'}
profiles_dir: {work / 'profiles'}
iqn_prefix: iqn.2026-11.bench.boot
listen:
  dhcp: {{interface: {BRIDGE}, address: {SERVER.ip}}}
  iscsi: [{SERVER.ip}:{ISCSI_PORT}]
dhcp:
  subnet: {SUBNET}
  ipv6_ra: {str(ra).lower()}
machines:
{machines}
""")
    return path


def make_lab(work: Path, vms: int, accel: str, ra: bool, base: Path | None = None) -> Lab:
    """``base``: boot this image (absolute path), else build the demo."""
    cfg = config.load(write_config(work, vms, ra, base))
    if base is None:
        base = build_demo(cfg, say=lambda line: print(f"  {line}", flush=True))
    raws = {}
    for m in machines(cfg, vms):
        # outside the timed part: tgt needs a raw file, a copy per machine
        raw = work / "raw" / f"{m.hostname}.raw"
        raw.parent.mkdir(exist_ok=True)
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(base), str(raw)], check=True, timeout=300)
        raws[m.mac] = raw
    return Lab(cfg, work, raws, accel, ra)


def machines(cfg: config.Config, count: int) -> list[Machine]:
    return sorted(cfg.machines.values(), key=lambda m: m.hostname)[:count]


# -- the two stacks -------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    """A running server stack: its processes, and bootsvc's events of this run if it is bootsvc."""

    pids: tuple[int, ...]
    events: run.FollowFile | None = None

    def cpu_seconds(self) -> float:
        """User + system CPU time its processes (all their threads) used so far."""
        return procstat.cpu_seconds(*self.pids)


@contextlib.contextmanager
def bootsvc_stack(lab: Lab, net: network.BootNetwork, rundir: Path) -> Iterator[Stack]:
    """``bootsvc serve`` in the namespace, as ``bootsvc vm`` runs it
    (``ip netns exec`` execs it: the PID is bootsvc's)."""
    events = run.FollowFile(lab.cfg.state_dir / EVENT_FILE, from_end=True)
    proc = run.start_serve(lab.cfg.path, rundir / "serve.log", net.prefix)
    try:
        yield Stack((proc.pid,), events)
    finally:
        run.end_process(proc)


def ref_machines(lab: Lab) -> list[reference.RefMachine]:
    return [reference.RefMachine(m.mac, str(m.ip), m.hostname, m.target_iqn, m.initiator_iqn, lab.raws[m.mac])
            for m in lab.cfg.machines.values()]


@contextlib.contextmanager
def dnsmasq(lab: Lab, net: network.BootNetwork, rundir: Path) -> Iterator[int]:
    args = reference.dnsmasq_args(BRIDGE, str(SERVER.ip), SUBNET, lab.cfg.domain, ref_machines(lab), rundir)
    if lab.ra:
        # an RA with no M/O flags ends iPXE's IPv6 wait, as bootsvc's does;
        # router lifetime 0 like bootsvc's (not a default router)
        network.ip("-n", net.ns or "", "addr", "add", f"{IPV6_PREFIX}1/64", "dev", BRIDGE, "nodad")
        args += ["--enable-ra", f"--dhcp-range={IPV6_PREFIX},ra-only,64", f"--ra-param={BRIDGE},0,0"]
    with reference.dnsmasq(net.prefix, args, rundir) as pid:
        yield pid


def tgtd(lab: Lab, net: network.BootNetwork, rundir: Path) -> contextlib.AbstractContextManager[int]:
    return reference.tgtd(net.prefix, f"{SERVER.ip}:{ISCSI_PORT}", ref_machines(lab), rundir)


@contextlib.contextmanager
def reference_stack(lab: Lab, net: network.BootNetwork, rundir: Path) -> Iterator[Stack]:
    with dnsmasq(lab, net, rundir) as dhcp, tgtd(lab, net, rundir) as iscsi:
        yield Stack((dhcp, iscsi))


STACK_START = {"bootsvc": bootsvc_stack, "reference": reference_stack}


# -- packet capture on the bridge ----------------------------------------------------------


def _bpf(program: list[tuple[int, str | int, str | int, int, str]]) -> bytes:
    """Classic BPF from (code, jt, jf, k, label) rows; jumps name labels."""
    at = {row[4]: i for i, row in enumerate(program) if row[4]}
    out = b""
    for i, (code, jt, jf, k, _) in enumerate(program):
        jumps = [at[t] - i - 1 if isinstance(t, str) else t for t in (jt, jf)]
        out += struct.pack("HBBI", code, *jumps, k)
    return out


# Server's DHCP replies (UDP from port 67) and TCP segments with data to
# port 3260 (so not the many pure ACKs of the read data): the capture
# stays small on a 2-core machine that runs the VMs.
FILTER = _bpf([
    (0x28, 0, 0, 12, ""),              # ldh [12]            ethertype
    (0x15, 0, "drop", 0x0800, ""),     # jeq IPv4
    (0x28, 0, 0, 20, ""),              # ldh [20]            flags + fragment offset
    (0x45, "drop", 0, 0x1FFF, ""),     # jset fragment: drop
    (0x30, 0, 0, 23, ""),              # ldb [23]            protocol
    (0x15, 0, "tcp", 17, ""),          # jeq UDP
    (0xB1, 0, 0, 14, ""),              # ldxb 4*([14]&0xf)   IP header length
    (0x48, 0, 0, 14, ""),              # ldh [x+14]          UDP source port
    (0x15, "keep", "drop", 67, ""),
    (0x15, 0, "drop", 6, "tcp"),       # jeq TCP
    (0xB1, 0, 0, 14, ""),
    (0x48, 0, 0, 16, ""),              # ldh [x+16]          TCP destination port
    (0x15, 0, "drop", ISCSI_PORT, ""),
    (0x28, 0, 0, 16, ""),              # ldh [16]            IP total length
    (0x1C, 0, 0, 0, ""),               # sub x
    (0x02, 0, 0, 0, ""),               # st M[0]             IP payload length
    (0x50, 0, 0, 26, ""),              # ldb [x+26]          TCP data offset
    (0x54, 0, 0, 0xF0, ""),            # and #0xf0
    (0x74, 0, 0, 2, ""),               # rsh #2              TCP header length
    (0x07, 0, 0, 0, ""),               # tax
    (0x60, 0, 0, 0, ""),               # ld M[0]
    (0x1C, 0, 0, 0, ""),               # sub x               TCP payload length
    (0x25, "keep", "drop", 0, ""),     # jgt #0
    (0x06, 0, 0, 0xFFFF, "keep"),
    (0x06, 0, 0, 0, "drop"),
])
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_namespace(ns: str) -> Iterator[None]:
    """This thread inside network namespace ``ns`` (sockets made there stay there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")
    finally:
        os.close(there)
        os.close(home)


class Capture:
    """Frames on the bridge matching FILTER, with the kernel's timestamps."""

    def __init__(self, ns: str, interface: str) -> None:
        with in_namespace(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
            prog = ctypes.create_string_buffer(FILTER)
            fprog = struct.pack("HL", len(FILTER) // 8, ctypes.addressof(prog))
            self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            self.sock.bind((interface, 0))
        self.sock.settimeout(0.2)
        self.frames: list[tuple[float, bytes]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stopping.is_set():
            try:
                data, anc, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(16))
            except TimeoutError:
                continue
            except OSError:
                return
            stamp = time.time()
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", value[:16])
                    stamp = sec + nsec / 1e9
            self.frames.append((stamp, data))

    def stop(self) -> list[tuple[float, bytes]]:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()
        return self.frames


def _ipv4(frame: bytes) -> tuple[str, int, bytes] | None:
    """(source address, protocol, IP payload) of an Ethernet IPv4 frame."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    total = int.from_bytes(frame[16:18], "big")
    return socket.inet_ntoa(frame[26:30]), frame[23], frame[14 + ihl:14 + total]


def dhcp_acks(frames: list[tuple[float, bytes]]) -> dict[str, float]:
    """The time of the first DHCPACK to each client MAC."""
    acks: dict[str, float] = {}
    for stamp, frame in frames:
        ip = _ipv4(frame)
        if ip is None or ip[1] != 17:
            continue
        bootp = ip[2][8:]
        if len(bootp) < 240 or bootp[0] != 2 or bootp[236:240] != b"\x63\x82\x53\x63":
            continue
        pos, kind = 240, None
        while pos + 1 < len(bootp) and bootp[pos] != 255:
            if bootp[pos] == 0:
                pos += 1
                continue
            if bootp[pos] == 53:
                kind = bootp[pos + 2]
            pos += 2 + bootp[pos + 1]
        if kind == 5:
            acks.setdefault(bootp[28:34].hex(":"), stamp)
    return acks


@dataclass
class _Stream:
    """One TCP connection's bytes to the target, cut into iSCSI PDUs."""

    next_seq: int
    buf: bytearray = field(default_factory=bytearray)
    skip: int = 0  # bytes of AHS and data segment still to pass
    pending: dict[int, tuple[float, bytes]] = field(default_factory=dict)  # out-of-order segments
    pdus: list[tuple[float, bytes]] = field(default_factory=list)  # (time, BHS)

    def segment(self, stamp: float, seq: int, data: bytes) -> None:
        self.pending[seq] = (stamp, data)
        while True:
            ready = [s for s in self.pending if (s - self.next_seq) % 2**32 < 2**31]  # at or before next
            if not ready:
                return
            s = ready[0]
            stamp, data = self.pending.pop(s)
            data = data[(self.next_seq - s) % 2**32:]  # a retransmission overlaps what we have
            if data:
                self.next_seq = (self.next_seq + len(data)) % 2**32
                self._bytes(stamp, data)

    def _bytes(self, stamp: float, data: bytes) -> None:
        # no header or data digests: neither iPXE nor iscsistart asks for them
        self.buf += data
        while True:
            if self.skip:
                n = min(self.skip, len(self.buf))
                del self.buf[:n]
                self.skip -= n
                if self.skip:
                    return
            if len(self.buf) < 48:
                return
            bhs = bytes(self.buf[:48])
            del self.buf[:48]
            self.skip = bhs[4] * 4 + (int.from_bytes(bhs[5:8], "big") + 3) // 4 * 4
            self.pdus.append((stamp, bhs))


def first_reads(frames: list[tuple[float, bytes]]) -> dict[str, float]:
    """The time of each client address's first SCSI READ command PDU."""
    streams: dict[tuple[str, int], _Stream] = {}
    for stamp, frame in frames:
        ip = _ipv4(frame)
        if ip is None or ip[1] != 6:
            continue
        tcp = ip[2]
        sport, seq, doff = int.from_bytes(tcp[0:2], "big"), int.from_bytes(tcp[4:8], "big"), (tcp[12] >> 4) * 4
        key = (ip[0], sport)
        if key not in streams:  # its first data: the initiator speaks first (Login Request)
            streams[key] = _Stream(seq)
        streams[key].segment(stamp, seq, tcp[doff:])
    reads: dict[str, float] = {}
    for (addr, _), stream in streams.items():
        if not stream.pdus or stream.pdus[0][1][0] & 0x3F != 0x03:
            continue  # not a stream we saw from its Login Request: no honest PDU boundaries
        for stamp, bhs in stream.pdus:
            if bhs[0] & 0x3F == 0x01 and bhs[32] in READ_OPCODES:
                reads[addr] = min(stamp, reads.get(addr, stamp))
                break
    return reads


# -- one boot-run -----------------------------------------------------------------------


@dataclass
class Boot:
    """One VM's boot: seconds from QEMU's start (None: not reached)."""

    host: str
    dhcp_ack: float | None
    first_read: float | None
    booted: float | None
    failure: str | None
    log_ack: float | None = None  # bootsvc's own log, a cross-check of the capture
    log_read: float | None = None
    read_mib: float | None = None  # what its iSCSI sessions read (bootsvc's events)

    def metric(self, name: str) -> float | None:
        return {"dhcp-ack": self.dhcp_ack, "first-read": self.first_read, "booted": self.booted}[name]


@dataclass
class Run:
    """One boot-run: a stack booting ``vms`` VMs at once."""

    stack: str
    vms: int
    rnd: int
    server_cpu: float  # CPU seconds the stack's processes used from the first VM's start to the last one's end
    boots: list[Boot]


def follow_consoles(timelines: list[Timeline], vms: list[qemu.Machine], procs: list[subprocess.Popen[bytes]],
                    timeout: float) -> None:
    """Until every VM printed its marker, failed or exited, or ``timeout``:
    each console line is stamped when read (every POLL seconds)."""
    consoles = [run.FollowFile(vm.console) for vm in vms]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.time()
        for t, console, proc in zip(timelines, consoles, procs):
            for line in console.lines():
                Recorder.console_line(t, line, now)
            if proc.poll() is not None and not t.ended:
                t.ended = True
                for line in console.lines():
                    Recorder.console_line(t, line, now)
                if not t.booted and t.failure is None:
                    t.failure = f"QEMU exited (status {proc.returncode}) before the success marker"
        if all(t.done for t in timelines):
            return
        time.sleep(POLL)
    for t in timelines:
        if not t.done:
            t.failure = f"no success marker within {timeout:.0f} s"


def boot_run(lab: Lab, stack: str, count: int, rnd: int, rundir: Path, timeout: float) -> Run:
    """Start ``stack`` in a fresh namespace, boot ``count`` VMs at once,
    and measure each. Everything started here is ended here."""
    rundir.mkdir(parents=True)
    ms = machines(lab.cfg, count)
    procs: list[subprocess.Popen[bytes]] = []
    timelines: list[Timeline] = []
    frames: list[tuple[float, bytes]] = []
    events: run.FollowFile | None = None
    net = network.private(BRIDGE, SERVER)
    try:
        capture = Capture(net.ns or "", BRIDGE)
        try:
            with STACK_START[stack](lab, net, rundir) as server:
                events = server.events
                vms = [qemu.Machine(m.hostname, m.mac, net.add_tap(), rundir / f"{m.hostname}.console",
                                    accel=lab.accel) for m in ms]
                cpu = server.cpu_seconds()  # its start-up is not part of the boot
                for vm, m in zip(vms, ms):
                    timelines.append(Timeline(m, time.time()))
                    procs.append(vm.start(net.prefix))
                follow_consoles(timelines, vms, procs, timeout)
                cpu = server.cpu_seconds() - cpu
                for p in procs:
                    run.end_process(p, grace=2.0)
        finally:
            frames = capture.stop()
    finally:
        for p in procs:
            run.end_process(p, grace=2.0)
        net.close()
    read: dict[str, int] = {}
    if events is not None:
        recorder = Recorder(timelines)
        for e in read_events(events.lines()):
            recorder.event(e)
            moved = e.fields.get("read_bytes")
            if e.kind in (Kind.ISCSI_LOGOUT, Kind.ISCSI_SESSION_DROPPED) and e.initiator and isinstance(moved, int):
                read[e.initiator] = read.get(e.initiator, 0) + moved
    acks, reads = dhcp_acks(frames), first_reads(frames)

    def since(t: Timeline, when: float | None) -> float | None:
        return None if when is None else when - t.started

    return Run(stack, count, rnd, cpu, [
        Boot(t.machine.hostname, since(t, acks.get(t.machine.mac)), since(t, reads.get(str(t.machine.ip))),
             t.at.get(Step.BOOTED), None if t.booted else t.failure, t.at.get(Step.DHCP_ACK),
             t.at.get(Step.FIRST_READ), read[t.machine.initiator_iqn] / 2**20 if t.machine.initiator_iqn in read
             else None) for t in timelines])


def describe(r: Run) -> str:
    def s(v: float | None) -> str:
        return f"{v:5.1f}" if v is not None else "    -"
    parts = []
    for b in r.boots:
        check = f" (log {s(b.log_ack).strip()}/{s(b.log_read).strip()}, read {s(b.read_mib).strip()} MiB)" \
            if r.stack == "bootsvc" else ""
        fail = f" FAILED: {b.failure}" if b.failure else ""
        parts.append(f"{b.host} ack {s(b.dhcp_ack)} read {s(b.first_read)} booted {s(b.booted)}{check}{fail}")
    return f"server CPU {r.server_cpu:5.2f} s; " + "; ".join(parts)


# -- rounds, medians, table ----------------------------------------------------------------

Row = tuple[int, str, float | None, float | None]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _slowest(r: Run, metric: str) -> float | None:
    """The run's last VM to reach ``metric``; None if one never did."""
    values = [b.metric(metric) for b in r.boots]
    return None if None in values else max(v for v in values if v is not None)


def rows(runs: list[Run], counts: list[int]) -> list[Row]:
    """(VMs, metric, bootsvc median, reference median). For N > 1 VMs also
    the slowest VM of each run (the end of the storm), median over runs;
    and per run the CPU time the server stack used."""
    out: list[Row] = []

    def add(n: int, label: str, values: dict[str, list[float]]) -> None:
        out.append((n, label, _median(values["bootsvc"]), _median(values["reference"])))

    for n in counts:
        mine = [r for r in runs if r.vms == n]
        for metric in METRICS:
            add(n, metric if n == 1 else f"{metric} (each VM)",
                {s: [v for r in mine if r.stack == s for b in r.boots if (v := b.metric(metric)) is not None]
                 for s in STACKS})
        if n > 1:
            for metric in METRICS:
                add(n, f"{metric} (last VM)",
                    {s: [v for r in mine if r.stack == s and (v := _slowest(r, metric)) is not None] for s in STACKS})
        add(n, "server CPU seconds", {s: [r.server_cpu for r in mine if r.stack == s] for s in STACKS})
    return out


def print_table(table: list[Row]) -> None:
    print(f"\n{'VMs':>3}  {'metric':24} {'bootsvc':>9} {'dnsmasq+tgt':>12} {'ratio':>6}")
    for n, metric, a, b in table:
        ratio = f"{a / b:6.2f}" if a is not None and b else "     -"
        cell = [f"{v:8.2f}s" if v is not None else f"{'-':>9}" for v in (a, b)]
        print(f"{n:>3}  {metric:24} {cell[0]:>9} {cell[1]:>12} {ratio}")
    print("seconds from QEMU start (server CPU: per boot-run), medians; ratio = bootsvc / dnsmasq+tgt "
          "(lower is better, goal <= 1.0)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="boot-runs per stack and VM count (order A B B A ...)")
    ap.add_argument("--vms", default="1,4", help="VM counts, each booted at once (default 1,4)")
    ap.add_argument("--no-ra", action="store_true", help="neither stack answers IPv6 router solicitations")
    ap.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    ap.add_argument("--timeout", type=float, default=400, help="seconds one boot-run may take")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (consoles, logs)")
    ap.add_argument("--base", type=Path, help="boot this base image (e.g. the Debian base) instead of the demo")
    ap.add_argument("--json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/boot.py: needs root (network namespaces, tap devices)", file=sys.stderr)
        return 2
    if args.base is not None and not args.base.is_file():
        print(f"bench/boot.py: --base {args.base} is not a file", file=sys.stderr)
        return 2
    counts = [int(c) for c in args.vms.split(",")]
    if max(counts) > MAX_VMS:
        print(f"bench/boot.py: at most {MAX_VMS} VMs", file=sys.stderr)
        return 2
    qemu.check(qemu.Firmware.BIOS)
    accel = qemu.pick_accel(args.accel)
    # Ctrl-C must clean up even when started from a shell that ignores SIGINT
    signal.signal(signal.SIGINT, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="bench-boot-"))
    runs: list[Run] = []
    try:
        with run.sigterm_as_interrupt():
            image = args.base or "the demo image"
            print(f"work directory {work}; {image} and {max(counts)} raw copies", flush=True)
            lab = make_lab(work, max(counts), accel, not args.no_ra, args.base and args.base.resolve())
            print(f"{accel}, IPv6 RA from both stacks: {lab.ra}", flush=True)
            for n in counts:
                for r in range(args.rounds):
                    for stack in STACKS if r % 2 == 0 else tuple(reversed(STACKS)):
                        result = boot_run(lab, stack, n, r, work / "runs" / f"{n}vm-{r}-{stack}", args.timeout)
                        runs.append(result)
                        print(f"{n} VM(s) round {r + 1} {stack:9}: {describe(result)}", flush=True)
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False, timeout=120)
    table = rows(runs, counts)
    print_table(table)
    for n in counts:
        mib = [b.read_mib for r in runs if r.vms == n and r.stack == "bootsvc" for b in r.boots
               if b.read_mib is not None and not b.failure]
        if mib:
            print(f"{n} VM(s): bootsvc's iSCSI sessions read {statistics.median(mib):.1f} MiB per boot (median)")
    failed = [(r, b) for r in runs for b in r.boots if b.failure]
    if failed:
        print(f"{len(failed)} of {sum(len(r.boots) for r in runs)} boots failed (left out of the medians): "
              + "; ".join(f"{r.stack} {b.host}: {b.failure}" for r, b in failed))
    if args.json:
        Path(args.json).write_text(json.dumps({"ra": not args.no_ra, "accel": accel, "runs": [
            asdict(r) for r in runs],
            "medians": [dict(zip(("vms", "metric", "bootsvc", "reference"), r)) for r in table]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
