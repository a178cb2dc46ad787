#!/usr/bin/env python3
"""DNS forwarding: bootsvc against dnsmasq as forwarders, in one run.

Both forward to the same upstream (a dnsmasq answering every name under
example.test) on loopback; the reference forwarder runs without a cache
(``--cache-size=0``), as bootsvc has none, and every query asks a name not
asked before. Clients are many machines: each worker has a loopback source
address of its own (127.0.0.10, .11, ...; bootsvc bounds the rate per
source) and asks its queries one after another over UDP. Rounds rotate
the order (A B, B A, ...); the figures are medians over rounds of the
queries answered a second and the median and 95th percentile latency; the
ratio is bootsvc/dnsmasq in queries a second (a Python forwarder with a
socket per query against a C one; a boot network asks a few names a boot).

    python3 bench/dns_forward.py [--rounds 4] [--workers 32] [--queries 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dnslib import DNSRecord  # noqa: E402

from tests.e2e.peers import LOOPBACK, bootsvc_serve, dnsmasq_dns, free_port, stop  # noqa: E402

TIMEOUT = 2.0  # seconds a query may take before it counts as lost
serial = itertools.count()


@contextlib.contextmanager
def dnsmasq_forwarder(work: Path, upstream: int) -> Iterator[int]:
    port = free_port()
    log = work / "dnsmasq-forwarder.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=",
                                 "--user=root", "--no-resolv", "--no-hosts", "--bind-interfaces",
                                 f"--listen-address={LOOPBACK}", f"--port={port}", "--cache-size=0",
                                 f"--server={LOOPBACK}#{upstream}", "--log-facility=-"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while "started, version" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log.read_text(errors="replace"))
            time.sleep(0.05)
        yield port
    finally:
        stop(proc)


@contextlib.contextmanager
def bootsvc_forwarder(work: Path, upstream: int) -> Iterator[int]:
    port = free_port()
    cfg = work / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {work / 'state'}\nlisten:\n  dns: {LOOPBACK}:{port}\n"
                   f"dns:\n  forward: [{LOOPBACK}:{upstream}]\n  allow: [127.0.0.0/8]\n"
                   "recorder: {enabled: false}\n")
    proc = bootsvc_serve(cfg, work / "serve.log", "dns serving")
    try:
        yield port
    finally:
        stop(proc)


async def worker(port: int, source: str, count: int, latencies: list[float]) -> int:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.setblocking(False)
        s.connect((LOOPBACK, port))
        answered = 0
        for _ in range(count):
            query = DNSRecord.question(f"q{next(serial)}.example.test").pack()
            started = time.perf_counter()
            await loop.sock_sendall(s, query)
            try:
                while True:
                    reply = await asyncio.wait_for(loop.sock_recv(s, 4096), TIMEOUT)
                    if reply[:2] == query[:2]:
                        break
            except asyncio.TimeoutError:
                continue
            latencies.append(time.perf_counter() - started)
            answered += 1
        return answered


async def load(port: int, workers: int, queries: int) -> tuple[float, float, float, int]:
    latencies: list[float] = []
    started = time.perf_counter()
    answered = await asyncio.gather(*(worker(port, f"127.0.0.{10 + i}", queries, latencies)
                                      for i in range(workers)))
    wall = time.perf_counter() - started
    latencies.sort()
    p95 = latencies[int(len(latencies) * 0.95)] if latencies else float("nan")
    return sum(answered) / wall, statistics.median(latencies) * 1e3, p95 * 1e3, workers * queries - sum(answered)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--queries", type=int, default=100, help="per worker")
    args = ap.parse_args()
    results: dict[str, list[tuple[float, float, float, int]]] = {"dnsmasq": [], "bootsvc": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with dnsmasq_dns(work) as upstream:
            for r in range(args.rounds):
                order = ["dnsmasq", "bootsvc"] if r % 2 == 0 else ["bootsvc", "dnsmasq"]
                for name in order:
                    starter = dnsmasq_forwarder if name == "dnsmasq" else bootsvc_forwarder
                    with starter(work, upstream) as port:
                        results[name].append(asyncio.run(load(port, args.workers, args.queries)))
    print(f"{args.workers} sources x {args.queries} queries, {args.rounds} rounds (medians)")
    print(f"{'forwarder':10} {'queries/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'lost':>6}")
    med = {}
    for name, rows in results.items():
        med[name] = [statistics.median(col) for col in zip(*rows)]
        qps, p50, p95, lost = med[name]
        print(f"{name:10} {qps:10.0f} {p50:8.2f} {p95:8.2f} {lost:6.0f}")
    print(f"ratio bootsvc/dnsmasq queries/s: {med['bootsvc'][0] / med['dnsmasq'][0]:.2f}")


if __name__ == "__main__":
    main()
