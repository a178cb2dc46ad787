#!/usr/bin/env python3
"""Copy-on-write overlays against raw files and against tgt, in one run.

1. Overlay creation: bootsvc's ``create_image`` and ``qemu-img create``
   (median of 20, milliseconds).
2. Over iSCSI, on the same page-cached base image: tgt serving the raw file,
   bootsvc serving the raw file, bootsvc serving a fresh qcow2 overlay on it.
   - reads with libiscsi's iscsi-perf (sequential 1 MiB at QD16, random
     4 KiB at QD32, as bench/iscsi_perf.py): through a fresh overlay every
     read goes to unallocated clusters and on to the base;
   - writes with QEMU's iSCSI driver (``qemu-io -t writeback``, many
     ``aio_write`` in flight, then ``aio_flush``): 256 MiB sequential in
     1 MiB writes, and 5000 random 4 KiB writes (fixed seed, same offsets
     for everyone). Overlay writes allocate clusters, so every round gets a
     fresh overlay.
   Rounds interleave (A B C, C B A, ...) because this machine is noisy; the
   medians and the ratios are printed.

    python3 bench/overlay.py [--rounds 3] [--seconds 6] [--size BYTES] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.iscsi_perf import WORKLOADS, iscsi_perf, make_image, warm  # noqa: E402
from target.qcow2_create import create_image  # noqa: E402
from tests.e2e.peers import Portal, bootsvc_export, tgt_export  # noqa: E402

SERVERS = ("tgt-raw", "bootsvc-raw", "bootsvc-overlay")
SEQ_WRITES = 256  # x 1 MiB
RAND_WRITES = 5000  # x 4 KiB


def creation_ms(workdir: Path, base: Path) -> dict[str, float]:
    def timed(make: Callable[[Path], object]) -> float:
        times = []
        for i in range(20):
            path = workdir / f"c{i}.qcow2"
            t = time.perf_counter()
            make(path)
            times.append((time.perf_counter() - t) * 1000)
            path.unlink()
        return statistics.median(times)

    return {
        "bootsvc": timed(lambda p: create_image(p, backing=base.name, backing_format="raw")),
        "qemu-img": timed(lambda p: subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base.name,
                                                    "-F", "raw", str(p)], check=True, timeout=60)),
    }


def write_commands(kind: str, size: int) -> list[str]:
    if kind == "seq-write-1MiB":
        cmds = [f"aio_write -q -P 0x5a {i << 20} 1M" for i in range(min(SEQ_WRITES, size >> 20))]
    else:
        rnd = random.Random(2026)
        cmds = [f"aio_write -q -P 0x5a {rnd.randrange(size >> 12) << 12} 4k" for _ in range(RAND_WRITES)]
    return [*cmds, "aio_flush"]


def qemu_io_rate(url: str, cmds: list[str], kind: str) -> float:
    """MB/s for the sequential workload, IOPS for the random one."""
    args = [a for c in cmds for a in ("-c", c)]
    t = time.perf_counter()
    r = subprocess.run(["timeout", "-s", "KILL", "300", "qemu-io", "-t", "writeback", "-f", "raw", *args, url],
                       capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if r.returncode != 0 or "error" in (r.stdout + r.stderr).lower():
        raise RuntimeError(f"qemu-io against {url} failed: {(r.stdout + r.stderr)[-300:]}")
    writes = len(cmds) - 1
    return writes / elapsed if kind.startswith("rand") else writes / elapsed * (1 << 20) / 1e6


@contextlib.contextmanager
def serve(who: str, base: Path, workdir: Path, round_no: int) -> Iterator[Portal]:
    if who == "tgt-raw":
        with tgt_export(base) as portal:
            yield portal
    elif who == "bootsvc-raw":
        with bootsvc_export(base) as portal:
            yield portal
    else:
        overlay = workdir / f"overlay-{round_no}.qcow2"
        create_image(overlay, backing=base.name, backing_format="raw")
        try:
            with bootsvc_export(overlay, "iqn.2026-11.test.bootsvc:overlay") as portal:
                yield portal
        finally:
            overlay.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per workload (order alternates)")
    ap.add_argument("--seconds", type=int, default=6, help="length of each iscsi-perf run")
    ap.add_argument("--size", type=int, default=1 << 30, help="base image size in bytes")
    ap.add_argument("--json", type=Path, help="write the raw figures here")
    args = ap.parse_args()
    workloads = [*WORKLOADS, "seq-write-1MiB", "rand-write-4KiB"]
    results: dict[str, dict[str, list[float]]] = {w: {s: [] for s in SERVERS} for w in workloads}
    with tempfile.TemporaryDirectory() as d:
        workdir = Path(d)
        base = workdir / "base.raw"
        make_image(base, args.size)
        creation = creation_ms(workdir, base)
        print(f"overlay creation: bootsvc {creation['bootsvc']:.2f} ms, qemu-img create {creation['qemu-img']:.2f} ms "
              f"(median of 20, {args.size >> 20} MiB raw base)", flush=True)
        for r in range(args.rounds):
            order = SERVERS if r % 2 == 0 else tuple(reversed(SERVERS))
            for who in order:
                warm(base)
                with serve(who, base, workdir, r) as portal:
                    for w in WORKLOADS:
                        iops, mbs = iscsi_perf(portal.url(), WORKLOADS[w], args.seconds)
                        results[w][who].append(mbs if w.startswith("seq") else iops)
                for w in ("seq-write-1MiB", "rand-write-4KiB"):
                    with serve(who, base, workdir, r) as portal:  # a fresh overlay per write workload
                        results[w][who].append(qemu_io_rate(portal.url(), write_commands(w, args.size), w))
                print(f"round {r + 1}: {who} " + ", ".join(f"{w} {results[w][who][-1]:.0f}" for w in workloads),
                      flush=True)
    print(f"\n{'workload':18} {'tgt raw':>10} {'bootsvc raw':>12} {'overlay':>10} {'ov/raw':>7} {'ov/tgt':>7}")
    for w in workloads:
        med = {s: statistics.median(results[w][s]) for s in SERVERS}
        unit = "MB/s" if w.startswith("seq") else "IOPS"
        print(f"{w:18} {med['tgt-raw']:>10.0f} {med['bootsvc-raw']:>12.0f} {med['bootsvc-overlay']:>10.0f} "
              f"{med['bootsvc-overlay'] / med['bootsvc-raw']:>7.2f} {med['bootsvc-overlay'] / med['tgt-raw']:>7.2f}"
              f"  {unit}")
    if args.json:
        args.json.write_text(json.dumps({"creation_ms": creation, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
