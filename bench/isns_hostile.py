#!/usr/bin/env python3
"""iSNS under a hostile client: the server's RSS before and after
``--connections`` TCP connections each send PDUs flagged FIRST and never
LAST (RFC 4171 §5.4), a new transaction ID each, ``--pdus`` per connection
of ``--size`` bytes; then as many UDP senders do the same.

The server (isns.server.IsnsServer, no store) runs in a process of its own
on loopback; the attack comes from this one, from 127.0.0.1 and, as the
per-address connection cap would stop one host early, from
127.0.0.<2..> too (``--hosts``). Prints RSS (MiB) before, after the attack
while the connections are still open, the connections the server kept
open, and the bytes it holds half-joined.

    python3 bench/isns_hostile.py [--connections 200] [--pdus 200] [--size 60000] [--hosts 16] [--within]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from isns.codec import HEADER  # noqa: E402
from isns.protocol import VERSION, Flags, Function  # noqa: E402
from tests.e2e.peers import LOOPBACK, free_port, wait_for_port  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def serve(port: int, conn: object) -> None:
    import asyncio

    from isns.registry import Registry
    from isns.server import IsnsServer

    async def main() -> None:
        srv = IsnsServer(Registry(), LOOPBACK, port)
        await srv.start()
        while True:
            await asyncio.sleep(0.2)
            held = srv.held() if hasattr(srv, "held") else -1
            clients = len(srv._clients)
            with open(f"/tmp/isns_hostile.{port}", "w") as f:
                f.write(f"{held} {clients}\n")

    asyncio.run(main())


def first_only(xid: int, payload: bytes, seq: int = 0) -> bytes:
    flags = int(Flags.CLIENT | (Flags.FIRST_PDU if seq == 0 else 0))
    return HEADER.pack(VERSION, Function.DEV_ATTR_QRY, len(payload), flags, xid & 0xFFFF, seq) + payload


def attack_tcp(port: int, connections: int, pdus: int, size: int, hosts: int,
               within: bool = False) -> list[socket.socket]:
    payload = b"\0" * size
    socks = []
    for i in range(connections):
        try:
            s = socket.create_connection((LOOPBACK, port), 5, source_address=(f"127.0.0.{1 + i % hosts}", 0))
        except OSError:
            continue
        s.setblocking(False)
        socks.append(s)
    for n in range(pdus):
        for s in socks:
            try:
                # within: one message that grows (sequence IDs up), never a 5th message begun
                s.send(first_only(1, payload, n) if within else first_only(n + 1, payload))
            except (BlockingIOError, OSError):
                pass  # closed by the server, or its window full: either way it takes no more
    return socks


def attack_udp(port: int, senders: int, pdus: int, size: int) -> None:
    payload = b"\0" * min(size, 60000)
    for _ in range(senders):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            for xid in range(1, pdus + 1):
                u.sendto(first_only(xid, payload), (LOOPBACK, port))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--pdus", type=int, default=200)
    ap.add_argument("--size", type=int, default=60000)
    ap.add_argument("--hosts", type=int, default=16)
    ap.add_argument("--settle", type=float, default=4.0, help="seconds to wait after the attack")
    ap.add_argument("--within", action="store_true",
                    help="each connection grows one message (PDUs of one transaction ID, sequence IDs up)")
    args = ap.parse_args()
    port = free_port()
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=serve, args=(port, None), daemon=True)
    proc.start()
    try:
        wait_for_port(port)
        time.sleep(0.5)
        before = rss_mib(proc.pid)
        t0 = time.monotonic()
        socks = attack_tcp(port, args.connections, args.pdus, args.size, args.hosts, args.within)
        attack_udp(port, 50, args.pdus // 4, args.size)
        sent = time.monotonic() - t0
        time.sleep(args.settle)
        after = rss_mib(proc.pid)
        held, clients = Path(f"/tmp/isns_hostile.{port}").read_text().split()
        how = "PDUs of one never-ended message" if args.within else "FIRST-not-LAST PDUs"
        print(f"attack: {args.connections} TCP connections x {args.pdus} {how} x {args.size} B "
              f"from {args.hosts} addresses, then 50 UDP senders x {args.pdus // 4}, sent in {sent:.1f} s")
        print(f"RSS before {before:.1f} MiB, after {after:.1f} MiB (+{after - before:.1f}); "
              f"connections open {clients}, bytes held half-joined {held}")
        for s in socks:
            s.close()
    finally:
        proc.terminate()
        proc.join(5)
        Path(f"/tmp/isns_hostile.{port}").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
