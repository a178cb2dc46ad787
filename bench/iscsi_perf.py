#!/usr/bin/env python3
"""Read throughput of bootsvc's iSCSI target against tgt, in one run.

Both serve the same page-cached image; libiscsi's iscsi-perf runs sequential
1 MiB reads at queue depth 16 and random 4 KiB reads at queue depth 32
against each, in interleaved rounds (A B B A ...: the machine is noisy), and
the medians and ratios are printed with their spread: each side's lowest
and highest round, and the ratio of each round's pair (bootsvc / tgt run
back to back), lowest, median and highest. The load average is printed at
the start and the end, since other work on the machine moves the figures;
the server's CPU time per I/O (all its threads, from /proc) moves much
less and is printed too.
Every run is bounded in time.

    python3 bench/iscsi_perf.py [--rounds 6] [--seconds 6] [--json out.json]
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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.peers import bootsvc_export, tgt_export  # noqa: E402

WORKLOADS = {
    "seq-1MiB-qd16": ["-b", "2048", "-m", "16"],
    "rand-4KiB-qd32": ["-b", "8", "-m", "32", "-r"],
}
_AVG = re.compile(r"^iops average (\d+) \((\d+) MB/s\)", re.M)


def iscsi_perf(url: str, args: list[str], seconds: int) -> tuple[int, int]:
    """(IOPS, MB/s) averaged over the run, as iscsi-perf reports them."""
    # iscsi-perf ignores SIGTERM while it reconnects to a target that went away
    out = subprocess.run(["timeout", "-s", "KILL", str(seconds + 10), "iscsi-perf", *args, "-t", str(seconds), url],
                         capture_output=True, text=True).stdout.replace("\r", "\n")
    found = _AVG.findall(out)
    if not found:
        raise RuntimeError(f"iscsi-perf printed no average for {url}: {out[-300:]!r}")
    iops, mbs = found[-1]
    return int(iops), int(mbs)


def make_image(path: Path, size: int) -> None:
    chunk = bytes(range(256)) * 4096
    with open(path, "wb") as f:
        for _ in range(size // len(chunk)):
            f.write(chunk)


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process and its finished threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _summarize(name: str, by: dict[str, list[tuple[int, int, float]]]) -> dict[str, Any]:
    """Medians, each side's rounds and the ratio of each round's pair:
    MB/s for sequential, IOPS for random; the median CPU per I/O."""
    key = 1 if name.startswith("seq") else 0
    rounds = {who: [v[key] for v in vals] for who, vals in by.items()}
    med = {who: statistics.median(v) for who, v in rounds.items()}
    pairs = [b / t for t, b in zip(rounds["tgt"], rounds["bootsvc"]) if t]
    sides = {w: {"median": m, "rounds": rounds[w], "cpu_per_io": statistics.median(v[2] for v in by[w])}
             for w, m in med.items()}
    return {"unit": "MB/s" if key else "IOPS", **sides,
            "ratio": med["bootsvc"] / med["tgt"] if med["tgt"] else float("nan"), "pair_ratios": pairs}


def _spread(side: dict[str, Any], unit: str) -> str:
    rounds = side["rounds"]
    return f"{side['median']:.0f} ({min(rounds)}-{max(rounds)}) {unit}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6, help="A B B A pairs per workload")
    ap.add_argument("--seconds", type=int, default=6, help="length of each iscsi-perf run")
    ap.add_argument("--size", type=int, default=1 << 30, help="image size in bytes")
    ap.add_argument("--only", choices=sorted(WORKLOADS), help="run one workload")
    ap.add_argument("--json", type=Path, help="write the raw figures here")
    args = ap.parse_args()
    chosen = [args.only] if args.only else list(WORKLOADS)
    load_start = _load()
    print(f"load average {load_start} at the start", file=sys.stderr)
    results: dict[str, dict[str, list[tuple[int, int, float]]]] = {w: {"tgt": [], "bootsvc": []} for w in chosen}
    with tempfile.TemporaryDirectory() as d:
        img = Path(d) / "bench.img"
        make_image(img, args.size)
        with contextlib.ExitStack() as stack:
            portals = {"tgt": stack.enter_context(tgt_export(img)),
                       "bootsvc": stack.enter_context(bootsvc_export(img))}
            for name in chosen:
                wargs = WORKLOADS[name]
                for r in range(args.rounds):
                    order = ("tgt", "bootsvc") if r % 2 == 0 else ("bootsvc", "tgt")
                    for who in order:
                        warm(img)
                        before = cpu_seconds(portals[who].pid)
                        iops, mbs = iscsi_perf(portals[who].url(), wargs, args.seconds)
                        us_per_io = 1e6 * (cpu_seconds(portals[who].pid) - before) / max(1, iops * args.seconds)
                        results[name][who].append((iops, mbs, round(us_per_io, 1)))
                        print(f"{name} round {r} {who}: {iops} IOPS, {mbs} MB/s, {us_per_io:.1f} us CPU per I/O",
                              file=sys.stderr)
    load_end = _load()
    print(f"load average {load_start} at the start, {load_end} at the end")
    print(f"{'workload':16} {'tgt median (min-max)':>28} {'bootsvc median (min-max)':>28} {'ratio':>6} "
          f"{'pair ratios min-max':>20} {'CPU us/IO tgt':>14} {'bootsvc':>8}")
    summary = {name: _summarize(name, by) for name, by in results.items()}
    for name, row in summary.items():
        print(f"{name:16} {_spread(row['tgt'], row['unit']):>28} {_spread(row['bootsvc'], row['unit']):>28} "
              f"{row['ratio']:6.2f} {min(row['pair_ratios']):9.2f}-{max(row['pair_ratios']):<10.2f}"
              f"{row['tgt']['cpu_per_io']:>14.1f} {row['bootsvc']['cpu_per_io']:>8.1f}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": results, "load": [load_start, load_end]},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
