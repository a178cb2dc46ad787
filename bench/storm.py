#!/usr/bin/env python3
"""Boot storm: N simulated diskless machines booting at once, bootsvc
against dnsmasq + tgt, in one run on the same data.

Two network namespaces joined by a veth pair: the servers' (10.216.0.1/16)
and the machines' (each machine's fixed address 10.216.1.x/32 on its
side, plus one relay address per client worker). Each machine, as
bench/storm_client.py says: DHCP as iPXE, login to the target of its
root-path with its initiator name, READ CAPACITY, then ``--mib`` MiB of
READ(10) of 127 blocks at queue depth 1 (iPXE's INT 13h), logout. All N
start together; every wait is bounded.

The stacks, each holding all N machines by MAC with a fixed address:

- bootsvc: ``bootsvc serve`` (DHCP + iSCSI), each machine on its own
  qcow2 overlay of one qcow2 base, ``auth: none`` (as the reference).
- reference: dnsmasq (a dhcp-host, root-path and initiator name per
  machine: bench/reference.py) and tgtd with a target per machine, LUN 1,
  ACL its initiator name. tgt has no copy-on-write, so every target reads
  the one raw copy of the base: both stacks read the same bytes through
  the same page cache.
- with ``--storage ceph`` (bench/storm_rbd.py), every machine's disk is an
  RBD clone of one protected base snapshot in a one-node cluster started
  in the servers' namespace: ``bootsvc-rbd`` (bootsvc serve with storage
  ceph) and ``tgt-rbd`` (dnsmasq + tgtd's rbd backing store, a target per
  clone), raced against ``bootsvc`` on local qcow2 overlays. The cluster
  daemons' CPU is printed apart (ceph cpu/machine).

The base: ``--mib`` MiB of random data (seeded, so no zero-cluster
shortcut) at the start of a 64 MiB disk. Each stack starts fresh for each
round (new leases, new overlays), outside the timed part; rounds alternate
A B B A. Printed per stack and N: machines booted, median and slowest
time from the start to the last read, DHCP and login medians, aggregate
MiB/s (all bytes over the time from the first start to the last read) and
the server's CPU seconds (user + system of its processes, all threads)
per machine; then bootsvc/reference for each (goal: all boot, throughput
>= 1.0, CPU per machine <= 1.0).

    python3 bench/storm.py [--machines 100,500] [--rounds 2] [--mib 20] [--workers 2] [--stacks bootsvc,reference]
                           [--storage ceph] [--json out.json]

bootsvc runs as ``python -m bootsvc`` from the current directory: run the
benchmark from another checkout's directory to measure that checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import reference, storm_rbd  # noqa: E402
from bench.procstat import cpu_seconds  # noqa: E402
from tests.ceph_cluster import Cluster  # noqa: E402
from tests.e2e.netns import ip, namespaces  # noqa: E402
from tests.e2e.peers import bootsvc_serve, stop  # noqa: E402

SUBNET = ipaddress.IPv4Network("10.216.0.0/16")
SERVER = "10.216.0.1"
FIRST_RELAY = 2  # 10.216.0.2, .3, ...: one relay address per worker
FIRST_MACHINE = 256 + 1  # 10.216.1.1, ...
SERVER_IF, CLIENT_IF = "bsv-ss0", "bsv-sc0"
DISK_MIB = 64
IQN = "iqn.2026-12.bench.storm"
STACKS = ("bootsvc", "reference", *storm_rbd.STACKS)
DEFAULT_STACKS = {"file": "bootsvc,reference", "ceph": "bootsvc,bootsvc-rbd,tgt-rbd"}
# (stack, what it is measured against): the ratios printed when both ran
PAIRS = (("bootsvc", "reference"), ("bootsvc-rbd", "bootsvc"), ("bootsvc-rbd", "tgt-rbd"))
CLIENT = Path(__file__).resolve().parent / "storm_client.py"


@dataclass(frozen=True)
class Machine:
    mac: str
    ip: str
    hostname: str


def machines(n: int) -> list[Machine]:
    return [Machine(f"52:54:01:{i >> 16 & 0xFF:02x}:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}",
                    str(SUBNET[FIRST_MACHINE + i]), f"m{i:04}") for i in range(n)]


def make_base(work: Path, mib: int) -> tuple[Path, Path]:
    """(raw, qcow2) of the same disk: ``mib`` MiB of seeded random data."""
    raw, qcow2 = work / "base.raw", work / "base.qcow2"
    rng = random.Random(20261205)
    with open(raw, "wb") as f:
        for _ in range(mib):
            f.write(rng.randbytes(1 << 20))
        f.truncate(DISK_MIB << 20)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True, timeout=120)
    return raw, qcow2


# -- the two stacks ---------------------------------------------------------------------


@contextlib.contextmanager
def bootsvc_stack(ns: str, ms: list[Machine], base: Path, rundir: Path, storage: str = "") -> Iterator[tuple[int, ...]]:
    (rundir / "profiles").mkdir()
    (rundir / "profiles" / "storm.yaml").write_text(f"base: {base}\nauth: none\n")
    hosts = "\n".join(f"  {m.mac}: {{hostname: {m.hostname}, ip: {m.ip}, profile: storm}}" for m in ms)
    cfg = rundir / "bootsvc.yaml"
    cfg.write_text(f"""state_dir: {rundir / 'state'}
profiles_dir: {rundir / 'profiles'}
iqn_prefix: {IQN}
{storage}listen:
  dhcp: {{interface: {SERVER_IF}, address: {SERVER}}}
  iscsi: [{SERVER}:{reference.ISCSI_PORT}]
dhcp:
  subnet: {SUBNET}
  ipv6_ra: false
machines:
{hosts}
""")
    proc = bootsvc_serve(cfg, rundir / "serve.log", "ready:", netns=ns)
    try:
        yield (proc.pid,)
    finally:
        stop(proc)


@contextlib.contextmanager
def reference_stack(ns: str, ms: list[Machine], disks: list[Path | str], rundir: Path,
                    backing: tuple[str, ...] = ()) -> Iterator[tuple[int, ...]]:
    refs = [reference.RefMachine(m.mac, m.ip, m.hostname, f"{IQN}:{m.hostname}", f"{IQN}:{m.hostname}-init", disk)
            for m, disk in zip(ms, disks)]
    prefix = ("ip", "netns", "exec", ns)
    args = reference.dnsmasq_args(SERVER_IF, SERVER, SUBNET, "storm.test", refs, rundir)
    with reference.dnsmasq(prefix, args, rundir) as dhcp, \
            reference.tgtd(prefix, f"{SERVER}:{reference.ISCSI_PORT}", refs, rundir, backing) as iscsi:
        yield (dhcp, iscsi)


@contextlib.contextmanager
def start_stack(stack: str, ns: str, ms: list[Machine], images: tuple[Path, Path], rundir: Path,
                cluster: Cluster | None) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
    """``stack`` serving ``ms``: (its servers' PIDs, the storage daemons' PIDs).
    An RBD stack gets a pool of its own (named after its run directory)."""
    if stack == "bootsvc":
        with bootsvc_stack(ns, ms, images[1], rundir) as pids:
            yield pids, ()
    elif stack == "reference":
        with reference_stack(ns, ms, [images[0]] * len(ms), rundir) as pids:
            yield pids, ()
    else:
        assert cluster is not None
        clones = tuple(m.hostname for m in ms) if stack == "tgt-rbd" else ()  # bootsvc makes its own
        with storm_rbd.pool_with_base(cluster, rundir.name, images[0], clones) as pool:
            # the profile's base file is base.raw: bootsvc clones the pool's image "base"
            server = bootsvc_stack(ns, ms, images[0], rundir, storm_rbd.storage_yaml(cluster, pool)) \
                if stack == "bootsvc-rbd" else \
                reference_stack(ns, ms, [f"{pool}/{m.hostname}" for m in ms], rundir, storm_rbd.tgt_backing(cluster))
            with server as pids:
                yield pids, cluster.pids


# -- one storm -----------------------------------------------------------------------------


@dataclass
class Storm:
    stack: str
    n: int
    booted: int
    median: float
    slowest: float
    dhcp: float  # median seconds to the ACK
    login: float  # median seconds to Full Feature Phase
    mib_s: float
    cpu_per_machine: float
    errors: list[str]
    storage_cpu_per_machine: float = 0.0  # the Ceph daemons' (RBD stacks)


def storm(ns: str, stack: str, pids: tuple[int, ...], ms: list[Machine], workers: int, mib: int,
          deadline: float, storage_pids: tuple[int, ...] = ()) -> Storm:
    procs = []
    for w in range(workers):
        job = {"relay": str(SUBNET[FIRST_RELAY + w]), "server": SERVER, "mib": mib, "deadline": deadline,
               "macs": [m.mac for m in ms[w::workers]]}
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(CLIENT)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(json.dumps(job) + "\n")
        p.stdin.flush()
        procs.append(p)
    try:
        for p in procs:
            line = p.stdout.readline()  # type: ignore[union-attr]
            if line.strip() != "ready":
                raise RuntimeError(f"storm worker did not start: {line!r}")
        cpu0, storage0 = cpu_seconds(*pids), cpu_seconds(*storage_pids)
        for p in procs:
            p.stdin.write("go\n")  # type: ignore[union-attr]
            p.stdin.flush()  # type: ignore[union-attr]
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=deadline + 30)
            results += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        cpu, storage_cpu = cpu_seconds(*pids) - cpu0, cpu_seconds(*storage_pids) - storage0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    ok = [r for r in results if r["ok"]]
    first = min((r["start"] for r in results), default=0.0)
    last = max((r["start"] + r["done"] for r in ok), default=first)
    return Storm(stack, len(ms), len(ok), _median([r["done"] for r in ok]), max((r["done"] for r in ok), default=0.0),
                 _median([r["acked"] for r in ok]), _median([r["logged_in"] for r in ok]),
                 sum(r["bytes_read"] for r in ok) / (1 << 20) / (last - first) if last > first else 0.0,
                 cpu / len(ms), sorted({r["error"] for r in results if not r["ok"]})[:5], storage_cpu / len(ms))


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def one_round(ns_srv: str, ns_cli: str, stack: str, ms: list[Machine], images: tuple[Path, Path], work: Path,
              args: argparse.Namespace, cluster: Cluster | None = None) -> Storm:
    rundir = Path(tempfile.mkdtemp(prefix=f"{stack}-", dir=work))
    with start_stack(stack, ns_srv, ms, images, rundir, cluster) as (pids, storage_pids):
        result = storm(ns_cli, stack, pids, ms, args.workers, args.mib, args.deadline, storage_pids)
    subprocess.run(["rm", "-rf", str(rundir)], check=True)
    print(f"  {describe(result)}", flush=True)
    return result


def describe(s: Storm) -> str:
    line = (f"{s.stack:11} N={s.n:<4} booted {s.booted:4}/{s.n:<4} median {s.median:6.2f} s  slowest {s.slowest:6.2f} s"
            f"  dhcp {s.dhcp:5.2f} s  login {s.login:5.2f} s  {s.mib_s:7.0f} MiB/s  cpu/machine {s.cpu_per_machine * 1000:6.1f} ms")
    if s.storage_cpu_per_machine:
        line += f"  ceph cpu/machine {s.storage_cpu_per_machine * 1000:6.1f} ms"
    return line + (f"  errors: {s.errors}" if s.errors else "")


def summary(runs: list[Storm], sizes: list[int]) -> dict[str, dict[str, float]]:
    """Per N: each stack's medians over its rounds, and the ratios of PAIRS that ran."""
    table: dict[str, dict[str, float]] = {}
    keys = ("median", "slowest", "mib_s", "cpu_per_machine", "storage_cpu_per_machine")
    for n in sizes:
        med: dict[str, dict[str, float]] = {}
        for stack in dict.fromkeys(r.stack for r in runs if r.n == n):
            rs = [r for r in runs if r.stack == stack and r.n == n]
            med[stack] = {"booted": min(r.booted for r in rs),
                          **{k: _median([getattr(r, k) for r in rs]) for k in keys}}
        row = {f"{stack}_{k}": v for stack, m in med.items() for k, v in m.items()}
        for a, b in PAIRS:
            if a in med and b in med:
                row.update(_compare(n, a, med[a], b, med[b]))
        table[str(n)] = row
    return table


def _compare(n: int, a: str, x: dict[str, float], b: str, y: dict[str, float]) -> dict[str, float]:
    """Print stack ``a`` against ``b`` at N=n; the ratios a/b."""
    ratio = {k: (x[k] / y[k] if y[k] else float("inf")) for k in ("median", "slowest", "mib_s", "cpu_per_machine")}
    cpu = "cpu_per_machine"
    ceph = "".join(f" (+{m['storage_cpu_per_machine'] * 1000:.1f} ms Ceph for {who})"
                   for who, m in ((a, x), (b, y)) if m["storage_cpu_per_machine"])
    print(f"N={n} {a} vs {b}: booted {x['booted']:.0f}/{n} vs {y['booted']:.0f}/{n}; "
          f"MiB/s {x['mib_s']:.0f} vs {y['mib_s']:.0f} ({ratio['mib_s']:.2f}x); "
          f"CPU/machine {x[cpu] * 1000:.1f} vs {y[cpu] * 1000:.1f} ms ({ratio[cpu]:.2f}x){ceph}; "
          f"slowest {x['slowest']:.2f} vs {y['slowest']:.2f} s ({ratio['slowest']:.2f}x); "
          f"median {x['median']:.2f} vs {y['median']:.2f} s")
    return {f"{a}_vs_{b}_{k}": v for k, v in ratio.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machines", default="100,500", help="comma-separated N (at most 2000)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per stack and N, A B B A")
    ap.add_argument("--mib", type=int, default=20, help="MiB each machine reads (at most 48)")
    ap.add_argument("--workers", type=int, default=2, help="client processes")
    ap.add_argument("--deadline", type=float, default=300, help="seconds a storm may take")
    ap.add_argument("--storage", choices=sorted(DEFAULT_STACKS), default="file",
                    help="ceph: machines' disks as RBD clones too (default stacks " + DEFAULT_STACKS["ceph"] + ")")
    ap.add_argument("--stacks", help=f"which of {','.join(STACKS)} to run (default: those of --storage)")
    ap.add_argument("--json")
    args = ap.parse_args()
    chosen = (args.stacks or DEFAULT_STACKS[args.storage]).split(",")
    stacks = tuple(s for s in STACKS if s in chosen)
    if os.geteuid() != 0:
        print("bench/storm.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    sizes = [int(n) for n in args.machines.split(",")]
    if not all(1 <= n <= 2000 for n in sizes) or not 1 <= args.mib <= 48 or not 1 <= args.workers <= 16 \
            or not stacks:
        print(f"bench/storm.py: --machines 1-2000 each, --mib 1-48, --workers 1-16, --stacks {','.join(STACKS)}",
              file=sys.stderr)
        return 2
    runs: list[Storm] = []
    with tempfile.TemporaryDirectory() as tmp, namespaces("ssrv", "scli") as (srv, cli), \
            (Cluster(netns=srv) if set(stacks) & set(storm_rbd.STACKS) else contextlib.nullcontext()) as cluster:
        work = Path(tmp)
        images = make_base(work, args.mib)
        ip("link", "add", SERVER_IF, "netns", srv, "type", "veth", "peer", "name", CLIENT_IF, "netns", cli)
        ip("-n", srv, "addr", "add", f"{SERVER}/16", "dev", SERVER_IF)
        ip("-n", cli, "addr", "add", f"{SUBNET[FIRST_RELAY]}/16", "dev", CLIENT_IF)
        everyone = machines(max(sizes))
        extra = [f"addr add {SUBNET[FIRST_RELAY + w]}/32 dev {CLIENT_IF}" for w in range(1, args.workers)]
        batch = extra + [f"addr add {m.ip}/32 dev {CLIENT_IF}" for m in everyone]
        subprocess.run(["ip", "-n", cli, "-batch", "-"], input="\n".join(batch) + "\n", text=True, check=True)
        for ns, dev in ((srv, SERVER_IF), (cli, CLIENT_IF)):
            ip("-n", ns, "link", "set", dev, "up")
        for n in sizes:
            for rnd in range(args.rounds):
                for stack in (stacks if rnd % 2 == 0 else stacks[::-1]):
                    runs.append(one_round(srv, cli, stack, everyone[:n], images, work, args, cluster))
    table = summary(runs, sizes)
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": [r.__dict__ for r in runs], "summary": table}, indent=2))
    return 0 if all(r.booted == r.n for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
