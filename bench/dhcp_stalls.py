#!/usr/bin/env python3
"""Where ``bootsvc serve``'s event loop stalls under a DHCP storm: one
perfdhcp run (bench/dhcp.py's network and config) with the stall probe
(bench/stall_probe.py) in the server, then the stalls summed up: how many
iterations took over 20 ms, the longest, and the sites the loop's thread
was sampled at (every 5 ms of a stall), with the other threads' places.

    python3 bench/dhcp_stalls.py [--rate 1500] [--seconds 10] [--top 12] [--log info|warn] [--baseline TREE]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench import dhcp  # noqa: E402
from tests.e2e.netns import ip, namespaces  # noqa: E402


def summary(lines: list[str], top: int) -> str:
    samples = [json.loads(line) for line in lines if line.strip()]
    stalls: dict[float, float] = {}
    for s in samples:
        stalls[s["stall"]] = max(stalls.get(s["stall"], 0.0), s["ms"])
    sites = collections.Counter(" < ".join(s["main"][:3]) for s in samples)
    others = collections.Counter(f"{name}: {' < '.join(st[:2])}" for s in samples
                                 for name, st in s["others"].items() if st and "wait" not in st[0]
                                 and "select" not in st[0] and "_worker" not in st[0])
    ms = sorted(stalls.values())
    states = collections.Counter(s.get("state", "?") for s in samples)
    by_stall: dict[float, list[dict]] = collections.defaultdict(list)
    for s in samples:
        by_stall[s["stall"]].append(s)
    # within each stall, between its first and last sample: the loop thread's
    # time on a CPU and waiting for one (runqueue: the machine's load, not bootsvc)
    span = sum(g[-1]["ms"] - g[0]["ms"] for g in by_stall.values())
    ran = sum(g[-1]["run_ns"] - g[0]["run_ns"] for g in by_stall.values()) / 1e6
    queued = sum(g[-1]["wait_ns"] - g[0]["wait_ns"] for g in by_stall.values()) / 1e6
    tick = 1000 / os.sysconf("SC_CLK_TCK")  # ms
    user = sum(g[-1].get("utime", 0) - g[0].get("utime", 0) for g in by_stall.values()) * tick
    system = sum(g[-1].get("stime", 0) - g[0].get("stime", 0) for g in by_stall.values()) * tick
    out = [f"stalls over 20 ms: {len(ms)}, longest {ms[-1] if ms else 0:.0f} ms, "
           f"samples {len(samples)} (x5 ms)",
           f"loop thread state in samples: {dict(states)}; within stalls ({span:.0f} ms sampled): "
           f"on a CPU {ran:.0f} ms, waiting for a CPU {queued:.0f} ms, asleep (GIL/lock/I/O) "
           f"{span - ran - queued:.0f} ms; user {user:.0f} ms, kernel {system:.0f} ms (clock ticks)",
           "loop thread at:"] + [f"  {n:5}  {site}" for site, n in sites.most_common(top)]
    out += ["other threads busy (not waiting) during samples:"] + [f"  {n:5}  {o}" for o, n in others.most_common(top)]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=1500)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--log", choices=("info", "warn"), default="info")
    ap.add_argument("--keep", help="copy the raw samples (JSON lines) here")
    ap.add_argument("--baseline", type=Path, help="run this checkout of bootsvc instead (A/B)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, namespaces("ssrv", "scli") as (srv, cli):
        work = Path(tmp)
        probe = work / "stalls.jsonl"
        os.environ["BOOTSVC_STALL_PROBE"] = str(probe)
        os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE / "stall_site"), os.environ.get("PYTHONPATH", "")])
        ip("link", "add", "bsv-s0", "netns", srv, "type", "veth", "peer", "name", "bsv-c0", "netns", cli)
        ip("-n", srv, "addr", "add", f"{dhcp.SERVER}/16", "dev", "bsv-s0")
        ip("-n", cli, "addr", "add", f"{dhcp.CLIENT}/16", "dev", "bsv-c0")
        ip("-n", srv, "link", "set", "bsv-s0", "up")
        ip("-n", cli, "link", "set", "bsv-c0", "up")
        print(f"load {os.getloadavg()[0]:.2f}", flush=True)
        with dhcp.bootsvc(srv, work, args.log, args.baseline) as pid:
            probe.write_text("")  # start-up stalls (config, SQLite) do not count
            step = dhcp.dora("bootsvc", pid, cli, args.rate, args.seconds)
            lines = probe.read_text().splitlines()
        print(step.line())
        print(f"load {os.getloadavg()[0]:.2f}")
        print(summary(lines, args.top))
        if args.keep:
            Path(args.keep).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
