#!/usr/bin/env python3
"""bootsvc on an RBD clone against tgt's rbd backing store (tgt-rbd) on the
same clone, in one run, plus the time to make a clone per machine.

Starts its own one-node Ceph cluster (tests/ceph_cluster.py), writes a base
image full of data, protects its snapshot and clones it; then libiscsi's
iscsi-perf runs bench/iscsi_perf.py's workloads against ``bootsvc export
rbd:...`` and ``tgtd --bstype rbd`` in interleaved rounds (A B B A: the
machine is noisy) and prints medians and ratios with their spread (each
side's lowest and highest round, the ratio of each round's pair), the
load average at the start and the end, and the CPU per I/O of the server
and of the Ceph daemons (from /proc: it moves much less than the rates on a busy
machine). Needs what scripts/install-deps.sh installs (ceph, tgt-rbd,
libiscsi-bin).

    python3 bench/rbd_perf.py [--rounds 2] [--seconds 6] [--clones 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.iscsi_perf import WORKLOADS, _load, _spread, _summarize, cpu_seconds, iscsi_perf  # noqa: E402
from tests.ceph_cluster import Cluster  # noqa: E402
from tests.e2e.peers import Portal, bootsvc_export, tgt_export  # noqa: E402

POOL = "bench"


def clone_storm(cluster: Cluster, count: int) -> float:
    """Seconds to make ``count`` clones of the base's snapshot (a disk per machine)."""
    import rados
    import rbd

    with rados.Rados(conffile=str(cluster.conf)) as r, r.open_ioctx(POOL) as ioctx:
        began = time.monotonic()
        for i in range(count):
            rbd.RBD().clone(ioctx, "base", "gold", ioctx, f"machine-{i:04d}")
        return time.monotonic() - began


def _measure(cluster: Cluster, portal: Portal, wargs: list[str], seconds: int) -> tuple[int, int, float, float]:
    """One iscsi-perf run: IOPS, MB/s, and the CPU per I/O (µs) of the
    server's process and of the cluster's daemons meanwhile."""
    server, daemons = cpu_seconds(portal.pid), sum(cpu_seconds(p) for p in cluster.pids)
    iops, mbs = iscsi_perf(portal.url(), wargs, seconds)
    ios = max(1, iops * seconds)
    return (iops, mbs, round(1e6 * (cpu_seconds(portal.pid) - server) / ios, 1),
            round(1e6 * (sum(cpu_seconds(p) for p in cluster.pids) - daemons) / ios, 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="A B B A pairs per workload")
    ap.add_argument("--seconds", type=int, default=6, help="length of each iscsi-perf run")
    ap.add_argument("--size", default="1G", help="base image size (rbd create --size)")
    ap.add_argument("--clones", type=int, default=500, help="clones made for the per-machine figure")
    ap.add_argument("--json", type=Path, help="write the raw figures here")
    args = ap.parse_args()
    load_start = _load()
    # per round: IOPS, MB/s, CPU per I/O (µs) of the server and of the Ceph daemons
    results: dict[str, dict[str, list[tuple[int, int, float, float]]]] = {
        w: {"tgt": [], "bootsvc": []} for w in WORKLOADS}
    with Cluster() as cluster:
        cluster.create_pool(POOL)
        cluster.rbd("create", "--size", args.size, f"{POOL}/base")
        cluster.rbd("bench", "--io-type", "write", "--io-size", "4M", "--io-total", args.size,
                    "--io-pattern", "seq", f"{POOL}/base", timeout=600)
        cluster.rbd("snap", "create", f"{POOL}/base@gold")
        cluster.rbd("snap", "protect", f"{POOL}/base@gold")
        cluster.rbd("clone", f"{POOL}/base@gold", f"{POOL}/disk")
        exports = {
            "bootsvc": lambda: bootsvc_export(f"rbd:{POOL}/disk:conf={cluster.conf}"),
            "tgt": lambda: tgt_export(f"{POOL}/disk", backing=("--bstype", "rbd", "--bsopts",
                                                                f"conf={cluster.conf}")),
        }
        for r in range(args.rounds):
            for who in ("tgt", "bootsvc") if r % 2 == 0 else ("bootsvc", "tgt"):
                with exports[who]() as portal:
                    for name, wargs in WORKLOADS.items():
                        results[name][who].append(_measure(cluster, portal, wargs, args.seconds))
                        print(f"{name} round {r} {who}: {results[name][who][-1]}", file=sys.stderr)
        storm = clone_storm(cluster, args.clones) if args.clones else 0.0
    print(f"load average {load_start} at the start, {_load()} at the end")
    print(f"{'workload':16} {'tgt bs_rbd median (min-max)':>28} {'bootsvc median (min-max)':>28} {'ratio':>6} "
          f"{'pair ratios':>12} {'CPU us/IO tgt':>14} {'bootsvc':>8} {'Ceph us/IO tgt':>15} {'bootsvc':>8}")
    summary: dict[str, object] = {}
    for name, by in results.items():
        row = summary[name] = _summarize(name, by)
        osd = {who: statistics.median(v[3] for v in vals) for who, vals in by.items()}
        row["ceph_cpu_per_io"] = osd
        print(f"{name:16} {_spread(row['tgt'], row['unit']):>28} {_spread(row['bootsvc'], row['unit']):>28} "
              f"{row['ratio']:6.2f} {min(row['pair_ratios']):5.2f}-{max(row['pair_ratios']):<6.2f}"
              f"{row['tgt']['cpu_per_io']:>14.1f} {row['bootsvc']['cpu_per_io']:>8.1f}"
              f"{osd['tgt']:>15.1f} {osd['bootsvc']:>8.1f}")
    if args.clones:
        summary["clones"] = {"count": args.clones, "seconds": storm}
        print(f"{args.clones} clones in {storm:.1f} s ({storm / args.clones * 1000:.1f} ms each)")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
