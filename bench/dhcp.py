#!/usr/bin/env python3
"""DHCP: the highest DORA rate with under 1 % lost, dnsmasq and Kea
against bootsvc, in one run on the same network, and each server's
exchange latency at half bootsvc's best rate.

Two network namespaces joined by a veth pair: the server's (10.215.0.1)
and perfdhcp's (10.215.0.2). perfdhcp (kea) acts as a relay agent (its
packets carry giaddr 10.215.0.2), so it can play tens of thousands of
clients from one address; every server hands out
10.215.1.0-10.215.200.255 from a /16 without pinging first (dnsmasq
--no-ping, see ENVIRONMENT.md) and keeps its leases on disk:

- dnsmasq: its lease file (rewritten on every change);
- Kea (kea-dhcp4 2.2): the memfile backend with ``persist: true`` (a CSV
  it appends each lease to);
- bootsvc: its SQLite lease store (every lease fsynced before its ACK
  leaves, in group commits).

Each step starts the server afresh with empty lease storage. For each
server the rate climbs until more than 1 % of exchanges are lost; every
step lasts ``--seconds``. With ``--rounds`` > 1 the servers take turns in
alternating order (A B C, C B A, ...) and the median best rate counts.
Then each server runs once at half bootsvc's best rate and perfdhcp's
delays (min/avg/max per exchange, DISCOVER-OFFER and REQUEST-ACK) are
printed. Server CPU is from /proc (user + system of the server process).

    python3 bench/dhcp.py [--seconds 5] [--rounds 1] [--servers dnsmasq,kea,bootsvc]
                          [--rates 250,500,...] [--log info|warn] [--baseline TREE] [--json out.json]
                          [--latency-rate N] [--latency-rounds N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procstat import children, cpu_seconds  # noqa: E402
from tests.e2e.netns import ip, namespaces  # noqa: E402
from bootsvc.vm.run import start_serve  # noqa: E402
from tests.e2e.peers import bootsvc_serve, dnsmasq_dhcp, perfdhcp, stop  # noqa: E402

RATES = (500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 5000, 6000, 7000, 8000, 10000, 12000)
SERVER, CLIENT = "10.215.0.1", "10.215.0.2"
FIRST, LAST = "10.215.1.0", "10.215.200.255"
CLIENTS = 40000  # distinct MACs perfdhcp cycles through (fewer than the 51200 addresses)
MAX_LOST = 0.01
SERVERS = ("dnsmasq", "kea", "bootsvc")
_DELAY = re.compile(r"(min|avg|max) delay: ([\d.]+) ms")


@dataclass(frozen=True)
class Step:
    server: str
    rate: int  # offered DORA/s
    started: int
    done: int
    seconds: float
    cpu: float  # server CPU seconds during the step
    delays: dict[str, tuple[float, float, float]]  # exchange -> (min, avg, max) ms

    @property
    def lost(self) -> float:
        return 1 - self.done / self.started if self.started else 1.0

    def line(self) -> str:
        lat = "  ".join(f"{ex} {mn:.2f}/{avg:.2f}/{mx:.1f} ms" for ex, (mn, avg, mx) in self.delays.items())
        return (f"  {self.server:8} offered {self.rate:5}/s: {self.done:6} of {self.started:6} DORA done "
                f"({self.lost:6.2%} lost), {self.done / self.seconds:7.0f}/s, "
                f"CPU {self.cpu / self.seconds:4.0%} ({self.cpu / max(self.done, 1) * 1e6:4.0f} us/DORA)  "
                f"min/avg/max {lat}")


def dora(server: str, pid: int, ns: str, rate: int, seconds: float) -> Step:
    """One perfdhcp run at ``rate`` DORA/s for ``seconds``."""
    pids = [pid, *children(pid)]  # a server of more than one process: all of them
    cpu = cpu_seconds(*pids)
    run = perfdhcp(ns, CLIENT, SERVER, "-r", str(rate), "-R", str(CLIENTS), "-p", str(int(seconds)),
                   "-W", "1000000", timeout=seconds + 60)
    cpu = cpu_seconds(*pids) - cpu
    if len(run.sent) < 2 or len(run.received) < 2:
        raise RuntimeError(f"perfdhcp output not understood:\n{run.output}")
    # perfdhcp prints, per exchange (DISCOVER-OFFER, then REQUEST-ACK), min, avg and max delay
    found = [float(v) for _, v in _DELAY.findall(run.output)]
    delays = {name: (found[3 * i], found[3 * i + 1], found[3 * i + 2])
              for i, name in enumerate(("DO", "RA")) if len(found) >= 3 * i + 3}
    # an exchange completes when its ACK arrives
    return Step(server, rate, run.sent[0], run.received[1], seconds, cpu, delays)


@contextlib.contextmanager
def dnsmasq(ns: str, work: Path, log: str) -> Iterator[int]:
    with dnsmasq_dhcp(ns, "bsv-s0", f"{FIRST},{LAST},255.255.0.0,1h", work, "--dhcp-lease-max=100000"):
        yield pid_with(f"--dhcp-leasefile={work / 'dnsmasq.leases'}")


def pid_with(arg: str) -> int:
    """The process with ``arg`` on its command line (dnsmasq started by
    tests/e2e/peers.py, which yields no PID; the path is this run's own); 0
    if none."""
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and arg.encode() in (proc / "cmdline").read_bytes().split(b"\0"):
                return int(proc.name)
    return 0


LOG = {"info": "INFO", "warn": "WARN"}  # --log: Kea's severity; bootsvc's default, or -q


def kea_config(work: Path, log: str) -> dict[str, object]:
    """kea-dhcp4's configuration: the same subnet and pool, memfile leases
    persisted to a fresh CSV, its log at ``log`` (at INFO it logs a line
    per lease offered and per lease allocated, as bootsvc logs its
    dhcp.offer and dhcp.ack events)."""
    return {"Dhcp4": {
        "interfaces-config": {"interfaces": ["bsv-s0"], "dhcp-socket-type": "udp"},
        "lease-database": {"type": "memfile", "persist": True, "name": str(work / "kea-leases4.csv"),
                           "lfc-interval": 0},
        "valid-lifetime": 3600,
        "subnet4": [{"id": 1, "subnet": "10.215.0.0/16", "pools": [{"pool": f"{FIRST} - {LAST}"}]}],
        "loggers": [{"name": "kea-dhcp4", "severity": LOG[log],
                     "output_options": [{"output": str(work / "kea.log")}]}],
    }}


def listening(ns: str, port: int) -> bool:
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hlun", f"sport = :{port}"],
                         capture_output=True, text=True, timeout=10).stdout
    return bool(out.strip())


@contextlib.contextmanager
def kea(ns: str, work: Path, log: str) -> Iterator[int]:
    for name in ("kea-leases4.csv", "kea-leases4.csv2", "kea.log"):
        (work / name).unlink(missing_ok=True)
    cfg = work / "kea-dhcp4.json"
    cfg.write_text(json.dumps(kea_config(work, log), indent=1))
    # its pid and lock files in the work directory, not /run/kea
    env = {**os.environ, "KEA_PIDFILE_DIR": str(work), "KEA_LOCKFILE_DIR": str(work)}
    with open(work / "kea.out", "wb") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "kea-dhcp4", "-c", str(cfg)], env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not listening(ns, 67):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kea-dhcp4 did not start:\n{(work / 'kea.out').read_text(errors='replace')}")
            time.sleep(0.1)
        yield proc.pid
    finally:
        stop(proc)


BASELINE: list[Path] = []  # --baseline: another checkout, run as the server "before"


@contextlib.contextmanager
def before(ns: str, work: Path, log: str) -> Iterator[int]:
    """bootsvc from the --baseline checkout (``python -m bootsvc`` in its
    directory imports that tree's bootsvc), same config."""
    with bootsvc(ns, work, log, BASELINE[0]) as pid:
        yield pid


def write_bootsvc_config(work: Path, process: str = "") -> Path:
    """bootsvc's config for every step, its state emptied; ``process``:
    dhcp.process (default: serve's own, a worker process with two cores or more)."""
    state = work / "state"
    subprocess.run(["rm", "-rf", str(state)], check=True)
    cfg = work / "bootsvc.yaml"
    cfg.write_text(f"""
state_dir: {state}
listen:
  dhcp: {{interface: bsv-s0, address: {SERVER}}}
dhcp:
  subnet: 10.215.0.0/16
  range: [{FIRST}, {LAST}]
  unknown_machines: discover
""" + (f"  process: {process}\n" if process else ""))
    return cfg


@contextlib.contextmanager
def bootsvc(ns: str, work: Path, log: str, tree: Path | None = None, process: str = "") -> Iterator[int]:
    cfg = write_bootsvc_config(work, process)
    quiet = ("-q",) if log == "warn" else ()
    argv = ("serve", "-c", str(cfg), *quiet)
    if tree is None:
        proc = bootsvc_serve(cfg, work / "serve.log", "ready:", netns=ns, argv=argv)
    else:
        proc = start_serve(cfg, work / "serve.log", ("ip", "netns", "exec", ns, "env", "-C", str(tree)), "ready:",
                           30.0, argv)
    try:
        yield proc.pid
    finally:
        stop(proc)


@contextlib.contextmanager
def inline(ns: str, work: Path, log: str) -> Iterator[int]:
    """bootsvc with DHCP on serve's own loop (dhcp.process: inline)."""
    with bootsvc(ns, work, log, process="inline") as pid:
        yield pid


STARTERS: dict[str, Callable[[str, Path, str], contextlib.AbstractContextManager[int]]] = {
    "dnsmasq": dnsmasq, "kea": kea, "bootsvc": bootsvc, "bootsvc-inline": inline, "before": before}


def step(name: str, ns_server: str, ns_client: str, work: Path, rate: int, seconds: float, log: str) -> Step:
    with STARTERS[name](ns_server, work, log) as pid:  # fresh leases for every step
        result = dora(name, pid, ns_client, rate, seconds)
    print(result.line(), flush=True)
    return result


def climb(name: str, ns_server: str, ns_client: str, work: Path, rates: list[int], seconds: float,
          log: str) -> Step | None:
    """The step at the highest rate before the first one over MAX_LOST."""
    best = None
    for rate in rates:
        result = step(name, ns_server, ns_client, work, rate, seconds, log)
        if result.lost > MAX_LOST:
            break
        best = result
    return best


@contextlib.contextmanager
def network() -> Iterator[tuple[str, str]]:
    """The server's and perfdhcp's namespaces, joined by a veth pair; deleted after."""
    with namespaces("dsrv", "dcli") as (srv, cli):
        ip("link", "add", "bsv-s0", "netns", srv, "type", "veth", "peer", "name", "bsv-c0", "netns", cli)
        ip("-n", srv, "addr", "add", f"{SERVER}/16", "dev", "bsv-s0")
        ip("-n", cli, "addr", "add", f"{CLIENT}/16", "dev", "bsv-c0")
        ip("-n", srv, "link", "set", "bsv-s0", "up")
        ip("-n", cli, "link", "set", "bsv-c0", "up")
        yield srv, cli


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A work directory for the servers' configs, leases and logs."""
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--rates", default=",".join(map(str, RATES)))
    ap.add_argument("--latency-rate", type=int, help="the rate for the latency runs (default: half bootsvc's best)")
    ap.add_argument("--latency-rounds", type=int, default=1,
                    help="latency runs per server, in alternating order (the spread on a shared machine)")
    ap.add_argument("--log", choices=sorted(LOG), default="info",
                    help="info: Kea and bootsvc log a line per lease (both servers' default); warn: neither does "
                         "(Kea at WARN, bootsvc -q); dnsmasq runs the same either way")
    ap.add_argument("--baseline", type=Path,
                    help="another checkout of bootsvc, run as a fourth server named \"before\" (A/B in one run)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.baseline:
        BASELINE.append(args.baseline.resolve())
    if os.geteuid() != 0:
        print("bench/dhcp.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    servers = args.servers.split(",") + (["before"] if args.baseline else [])
    unknown = [s for s in servers if s not in STARTERS]
    if unknown:
        print(f"bench/dhcp.py: unknown server {unknown[0]} (known: {', '.join(SERVERS)})", file=sys.stderr)
        return 2
    rates = [int(r) for r in args.rates.split(",")]
    best: dict[str, list[int]] = {s: [] for s in servers}
    steps: list[Step] = []
    with scratch() as work, network() as (srv, cli):
        for r in range(args.rounds):
            print(f"round {r + 1}, load {os.getloadavg()[0]:.2f}", flush=True)
            for name in servers if r % 2 == 0 else servers[::-1]:
                top = climb(name, srv, cli, work, rates, args.seconds, args.log)
                best[name].append(top.rate if top else 0)
        medians = {s: statistics.median(v) for s, v in best.items()}
        half = args.latency_rate or int(medians.get("bootsvc", max(medians.values())) // 2)
        print(f"latency at {half}/s, load {os.getloadavg()[0]:.2f}", flush=True)
        steps = [step(name, srv, cli, work, half, args.seconds, args.log)
                 for r in range(args.latency_rounds) for name in (servers if r % 2 == 0 else servers[::-1])] \
            if half else []
    print("highest DORA/s with <1 % lost (median of rounds; each round): "
          + ", ".join(f"{s} {medians[s]:.0f} {best[s]}" for s in servers))
    if "bootsvc" in medians:
        print(", ".join(f"bootsvc/{s} {ratio(medians['bootsvc'], medians[s]):.2f}" for s in servers if s != "bootsvc"))
    for s in steps:
        ra = s.delays.get("RA", (0.0, 0.0, 0.0))
        print(f"latency at {s.rate}/s: {s.server:8} REQUEST-ACK min {ra[0]:.2f} avg {ra[1]:.2f} max {ra[2]:.1f} ms, "
              f"{s.lost:.2%} lost, CPU {s.cpu / s.seconds:.0%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"best": best, "median": medians,
                                               "latency": [{**asdict(s), "lost": s.lost} for s in steps]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
