#!/usr/bin/env python3
"""TFTP: tftpd-hpa against bootsvc, in one run, on the same files.

1. Boot storm: 50 busybox clients start at once, each fetching the same
   1 MiB file (the size of an iPXE binary plus a script, rounded up).
2. One 30 MiB file (a kernel and initrd) at blksize 1468.
Both servers listen on loopback and serve one directory from the page
cache; every round starts each server afresh (so bootsvc's first fetch
of the big file is not in its cache) and rounds rotate the order (A B,
B A, ...); wall times are medians and the ratio is bootsvc/tftpd-hpa
(goal <= 1.0). Every transfer is checked byte for byte. The 1-minute load
average is printed before and after the run: on a shared 2-core machine
it decides more than the code. Each server also runs in a cgroup of its
own (cgroup v2, or v1's cpuacct; as root), which gives the CPU time it
used per workload, tftpd-hpa's forked children included: a figure less
at the mercy of the machine's other load than wall time.

--baseline TREE adds a third server in every round: bootsvc from another
checkout (e.g. `git archive HEAD~1 | tar -x -C /tmp/base`), for an A/B of two
versions under the same noise.

    python3 bench/tftp.py [--rounds 5] [--clients 50] [--baseline TREE] [--only storm|big] [--busy-poll-us N] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.peers import LOOPBACK, bootsvc_serve, free_port, stop  # noqa: E402

BLKSIZE = "1468"
TIMEOUT = 120  # seconds any one measurement may take


class CpuMeter:
    """CPU seconds used by one process and everything it forks, from a
    cgroup made for it: cgroup v2's cpu.stat, or v1's cpuacct. ``used()``
    is None where neither can be had (not root, no cgroup file system)."""

    V2, V1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/cpuacct")

    def __init__(self, pid: int) -> None:
        self.group: Path | None = None
        parent = self.V2 if (self.V2 / "cgroup.controllers").exists() else self.V1
        group = parent / f"bench-tftp-{os.getpid()}-{pid}"
        try:
            group.mkdir()
        except OSError:
            return
        try:
            (group / "cgroup.procs").write_text(str(pid))  # all its threads; children follow
            self.group = group
        except OSError:
            group.rmdir()

    def used(self) -> float | None:
        if self.group is None:
            return None
        if (self.group / "cpu.stat").exists():  # v2: "usage_usec N"
            stat = dict(line.split() for line in (self.group / "cpu.stat").read_text().splitlines())
            return int(stat["usage_usec"]) / 1e6
        return int((self.group / "cpuacct.usage").read_text()) / 1e9

    def close(self) -> None:
        """Remove the cgroup once its processes have ended (the server is stopped)."""
        if self.group is not None:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    self.group.rmdir()
                    return
                except OSError:  # busy: a process still exiting
                    time.sleep(0.05)


@contextlib.contextmanager
def metered(proc: subprocess.Popen[bytes], port: int) -> Iterator[tuple[int, CpuMeter]]:
    """Yield (port, meter) for a started server; stop it and drop its cgroup after."""
    meter = CpuMeter(proc.pid)
    try:
        yield port, meter
    finally:
        stop(proc)
        meter.close()


@contextlib.contextmanager
def tftpd_hpa(root: Path, work: Path) -> Iterator[tuple[int, CpuMeter]]:
    port = free_port()
    proc = subprocess.Popen(["in.tftpd", "--foreground", "--listen", "--address", f"{LOOPBACK}:{port}",
                             "--user", "root", "--secure", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    with metered(proc, port) as served:
        yield served


@contextlib.contextmanager
def bootsvc(root: Path, work: Path, tree: Path | None = None,
            busy_poll_us: int | None = None) -> Iterator[tuple[int, CpuMeter]]:
    port = free_port()
    cfg = work / "bootsvc.yaml"
    busy_poll = "" if busy_poll_us is None else f", busy_poll_us: {busy_poll_us}"
    cfg.write_text(f"state_dir: {work / 'state'}\nlisten:\n  tftp: {LOOPBACK}:{port}\n"
                   f"tftp: {{roots: [{root}]{busy_poll}}}\n")
    # bootsvc_serve runs `bootsvc serve`: one event line per transfer (event=tftp.sent),
    # nothing per block. `python -m bootsvc` imports the package from its working
    # directory first: that is how --baseline runs another checkout.
    here = os.getcwd()
    if tree is not None:
        os.chdir(tree)
    try:
        proc = bootsvc_serve(cfg, work / "serve.log", "ready:")
    finally:
        os.chdir(here)
    with metered(proc, port) as served:
        yield served


def fetch_all(port: int, name: str, count: int, out: Path, expect: bytes) -> float:
    """Wall time for ``count`` clients started together to fetch ``name``."""
    start = time.perf_counter()
    procs = [subprocess.Popen(["busybox", "tftp", "-b", BLKSIZE, "-g", "-r", name, "-l", str(out / f"{i}"),
                               LOOPBACK, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(count)]
    errors = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        if p.returncode:
            errors.append(err.decode(errors="replace").strip())
    elapsed = time.perf_counter() - start
    bad = [i for i in range(count) if (out / f"{i}").read_bytes() != expect] if not errors else []
    if errors or bad:
        raise RuntimeError(f"{len(errors)} client(s) failed ({errors[:1]}), {len(bad)} wrong file(s)")
    for i in range(count):
        (out / f"{i}").unlink()
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--baseline", type=Path, help="another checkout's bootsvc as a third server")
    ap.add_argument("--only", choices=("storm", "big"), help="measure one workload")
    ap.add_argument("--busy-poll-us", type=int, help="bootsvc's tftp.busy_poll_us (default: its own default)")
    ap.add_argument("--json")
    args = ap.parse_args()
    servers = {"tftpd-hpa": tftpd_hpa, "bootsvc": functools.partial(bootsvc, busy_poll_us=args.busy_poll_us)}
    if args.baseline:
        servers["baseline"] = functools.partial(bootsvc, tree=args.baseline.resolve(), busy_poll_us=args.busy_poll_us)
    times: dict[str, dict[str, list[float]]] = {s: {"storm": [], "big": []} for s in servers}
    cpu: dict[str, dict[str, list[float]]] = {s: {"storm": [], "big": []} for s in servers}
    load = [os.getloadavg()[0]]
    print(f"load average (1 min) before: {load[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root, out = work / "root", work / "out"
        root.mkdir()
        out.mkdir()
        small, big = os.urandom(1 << 20), os.urandom(30 << 20)
        (root / "boot.bin").write_bytes(small)
        (root / "big.bin").write_bytes(big)
        workloads = [w for w in (("storm", "boot.bin", args.clients, small), ("big", "big.bin", 1, big))
                     if args.only in (None, w[0])]
        for r in range(args.rounds):
            names = list(servers)
            order = names[r % len(names):] + names[:r % len(names)]  # each server first in turn
            for name in order:
                with servers[name](root, work) as (port, meter):
                    for kind, file, clients, data in workloads:
                        if kind == "storm":
                            fetch_all(port, file, 1, out, data)  # warm: page cache, bootsvc's file cache
                        before = meter.used()
                        times[name][kind].append(fetch_all(port, file, clients, out, data))
                        after = meter.used()
                        if before is not None and after is not None:
                            cpu[name][kind].append(after - before)
            print(f"round {r + 1}: " + ", ".join(
                f"{n} " + " ".join(f"{k} {v[-1]:.2f} s" for k, v in times[n].items() if v) for n in servers),
                flush=True)
    load.append(os.getloadavg()[0])
    print(f"load average (1 min) after: {load[1]:.2f}")
    med = {n: {k: statistics.median(v) for k, v in t.items() if v} for n, t in times.items()}
    cpu_med = {n: {k: statistics.median(v) for k, v in t.items() if v} for n, t in cpu.items()}
    for kind, what in (("storm", f"{args.clients} clients x 1 MiB"), ("big", "1 x 30 MiB, blksize 1468")):
        if args.only not in (None, kind):
            continue
        for name in [n for n in servers if n != "tftpd-hpa"]:
            ratio = med[name][kind] / med["tftpd-hpa"][kind]
            print(f"{what}: tftpd-hpa {med['tftpd-hpa'][kind]:.3f} s, {name} {med[name][kind]:.3f} s "
                  f"-> {name}/tftpd-hpa {ratio:.2f} (goal <= 1.0)")
            if kind in cpu_med["tftpd-hpa"] and kind in cpu_med[name]:
                ref, own = cpu_med["tftpd-hpa"][kind], cpu_med[name][kind]
                print(f"{what}: server CPU tftpd-hpa {ref:.3f} s, {name} {own:.3f} s -> {own / ref:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"median_s": med, "all_s": times, "server_cpu_s": cpu,
                                               "load_1min": load}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
