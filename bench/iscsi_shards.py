#!/usr/bin/env python3
"""Prototype for docs/iscsi-scaling.md: do targets sharded over worker
processes use more cores than one event loop?

N targets on one page-cached image, N iscsi-perf runs at once (one per
target, random 4 KiB reads at queue depth 32 or sequential 1 MiB at 16),
served either by one process (one loop, every target) or by N worker
processes (one loop and one target each, as a shard would hold its
machines). Rounds alternate the two; aggregate IOPS or MB/s, their spread
and the load average are printed. Each worker listens on its own loopback
port here; the design routes logins from one portal instead.

    python3 bench/iscsi_shards.py [--targets 2] [--rounds 4] [--seconds 5] [--workload rand-4KiB-qd32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.iscsi_perf import WORKLOADS, make_image, warm  # noqa: E402
from target.server import Portal, TargetServer  # noqa: E402
from target.targets import LunSpec, Target, TargetSpec  # noqa: E402
from tests.e2e.peers import free_port, wait_for_port  # noqa: E402

IQN = "iqn.2026-12.bench.shard:t{}"
_AVG = "iops average "


def _serve(image: str, names: list[str], port: int) -> None:
    async def run() -> None:
        targets = [Target.open(TargetSpec(n, (LunSpec(image, read_only=True),))) for n in names]
        server = TargetServer(targets, [Portal("127.0.0.1", port)], nop_interval=0)
        await server.start()
        await asyncio.Event().wait()
    asyncio.run(run())


@contextlib.contextmanager
def serving(image: Path, n: int, sharded: bool) -> Iterator[list[str]]:
    """Start the server(s); yield one URL per target."""
    names = [IQN.format(i) for i in range(n)]
    groups = [[name] for name in names] if sharded else [names]
    ctx = multiprocessing.get_context("fork")
    procs, urls = [], []
    try:
        for group in groups:
            port = free_port()
            p = ctx.Process(target=_serve, args=(str(image), group, port), daemon=True)
            p.start()
            procs.append(p)
            wait_for_port(port)
            urls += [f"iscsi://127.0.0.1:{port}/{name}/0" for name in group]
        yield urls
    finally:
        for p in procs:
            p.terminate()
            p.join(10)


def run_all(urls: list[str], args: list[str], seconds: int) -> list[float]:
    """iscsi-perf on every URL at once; each one's (IOPS, MB/s)."""
    procs = [subprocess.Popen(["timeout", "-s", "KILL", str(seconds + 10), "iscsi-perf", *args, "-t", str(seconds),
                               url], stdout=subprocess.PIPE, text=True) for url in urls]
    out = []
    for p in procs:
        text = p.communicate()[0].replace("\r", "\n")
        line = [ln for ln in text.splitlines() if ln.startswith(_AVG)]
        if not line:
            raise RuntimeError(f"iscsi-perf printed no average: {text[-300:]!r}")
        iops, mbs = line[-1][len(_AVG):].split(" (")
        out.append((int(iops), int(mbs.split()[0])))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="rand-4KiB-qd32")
    args = ap.parse_args()
    key = 1 if args.workload.startswith("seq") else 0
    unit = "MB/s" if key else "IOPS"
    results: dict[str, list[int]] = {"one loop": [], "sharded": []}
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        img = Path(d) / "bench.img"
        make_image(img, 1 << 30)
        for r in range(args.rounds):
            for mode in (("one loop", "sharded") if r % 2 == 0 else ("sharded", "one loop")):
                warm(img)
                with serving(img, args.targets, mode == "sharded") as urls:
                    got = run_all(urls, WORKLOADS[args.workload], args.seconds)
                total = sum(g[key] for g in got)
                results[mode].append(total)
                print(f"round {r} {mode}: {total} {unit} ({', '.join(str(g[key]) for g in got)})", file=sys.stderr)
    print(f"{args.targets} targets, {args.workload}, load average {load_start:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")
    for mode, v in results.items():
        print(f"{mode:9} {statistics.median(v):8.0f} {unit} aggregate (rounds {min(v)}-{max(v)})")
    print(f"sharded / one loop: {statistics.median(results['sharded']) / statistics.median(results['one loop']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
