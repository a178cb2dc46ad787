#!/usr/bin/env python3
"""DHCP in its worker process: the instructions ``bootsvc serve`` spends per
DORA on what the worker sends it (reading each frame, checking its shape,
replaying the leases into its copy, publishing the events to the log, the
event file, the fleet, the flight recorder and the metrics), counted by
valgrind's callgrind, for this checkout and another one (--baseline).

The frames are made first, once, by this checkout's worker code run in
this process (DhcpService, Responder, the worker's Leases and Outbox)
answering relayed DISCOVER+REQUEST pairs of new MACs under policy
discover, ``--batch`` new clients per loop iteration (with the previous
batch's REQUESTs), as bench/dhcp.py's perfdhcp makes them at a few
thousand a second. Each tree then replays them into serve's own wiring
(bootsvc.server.Server with the log at INFO to a file, the recorder
subscribed) through ``DhcpWorker._received``, one frame per loop
iteration; the replay of all frames minus the replay of the first third
is the cost of the DORAs in between, start-up cancelled out.

    python3 bench/dhcp_serve_cost.py [--baseline TREE] [--exchanges 3000] [--batch 3]

bench/dhcp_cost.py counts the DHCP service's own side (``--serve``: with
DHCP on serve's loop). Times swing with the load of a shared machine;
instruction counts do not (ENVIRONMENT.md).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import sys
import tempfile
import time
from pathlib import Path

from dhcp_cost import HERE, instructions_of, mac, request, serve_config


def make_frames(path: Path, n: int, batch: int) -> None:
    """n exchanges through the worker's code, its frames to serve written to ``path``."""
    from bootsvc.dhcp import responder as r
    from bootsvc.dhcp.message import IPv4
    from bootsvc.dhcp.service import DhcpService
    from bootsvc.dhcp.worker import Leases, Outbox

    work = Path(tempfile.mkdtemp())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    out = Outbox(fd)
    leases = Leases(work / "leases.db", out)  # type: ignore[arg-type]
    subnet = r.Subnet(ipaddress.IPv4Network("10.215.0.0/16"), IPv4("10.215.0.1"), IPv4("10.215.1.0"),
                      IPv4("10.215.200.255"))
    responder = r.Responder([subnet], r.Machines({}), leases, lambda *a: None, unknown=r.UnknownPolicy.DISCOVER,
                            emit=out.emit)
    service = DhcpService(responder, IPv4("10.215.0.1"))

    class Transport:
        def sendto(self, data: bytes, addr: object) -> None:
            pass

    async def feed() -> None:
        out.loop = asyncio.get_running_loop()
        service.commits.start(out.loop)
        service.commits.inline_when_idle = True  # as the worker: a lone batch written in place
        service.transport = Transport()  # type: ignore[assignment]
        relay = ("10.215.0.2", 67)
        previous: list[int] = []
        for first in range(0, n + batch, batch):
            ids = list(range(first, min(first + batch, n)))
            asked = [(request(i, 3, leases.for_mac(mac(i)).ip.packed), relay) for i in previous]  # type: ignore[union-attr]
            service.received([(request(i, 1), relay) for i in ids] + asked)
            previous = ids
            await asyncio.sleep(0)  # the Outbox's frame of this iteration is written
        await service.stop()

    asyncio.run(feed())
    out.flush()
    leases.close()
    os.close(fd)


def frames_of(path: Path) -> list[tuple[object, bytes]]:
    from bootsvc.dhcp.pipe import Frames

    return list(Frames().feed(path.read_bytes()))


def acks_in(path: Path) -> list[int]:
    """dhcp.ack events in each frame."""
    from bootsvc.dhcp.pipe import batch

    return [sum(1 for e in batch(payload)[0] if e[0] == "dhcp.ack") for _, payload in frames_of(path)]


def replayed(path: str, count: int) -> Path:
    """In the tree on sys.path: the first ``count`` frames of ``path`` into
    serve's wiring, one per loop iteration, as serve reads them; its work
    directory (the config's state_dir is ``state`` there)."""
    from dataclasses import replace

    from bootsvc import cli
    from bootsvc import config as config_mod
    from bootsvc.dhcp.settings import Process
    from bootsvc.server import Server

    work = Path(tempfile.mkdtemp())
    sys.stderr = open(work / "serve.log", "w")  # the log at INFO, as serve writes it
    cli.setup_logging()
    loaded = config_mod.load(serve_config(work))
    loaded = replace(loaded, dhcp=replace(loaded.dhcp, process=Process.WORKER))  # type: ignore[type-var]
    server = Server(loaded, lambda *a, **k: None)
    worker = server.dhcp_worker
    assert worker is not None
    server.bus.subscribe(server.recorder.on_event)  # the flight recorder follows every boot, as in serve
    frames = frames_of(Path(path))[:count]

    async def feed() -> None:
        worker.loop = asyncio.get_running_loop()
        for tag, payload in frames:
            worker._received(tag, payload)  # type: ignore[arg-type]
            await asyncio.sleep(0)

    asyncio.run(feed())
    server.recorder.flush(time.time())  # the boots' rows, as the recorder writes them once a second
    server.close()
    return work


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, help="another checkout to compare with")
    ap.add_argument("--exchanges", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=3, help="new clients per loop iteration")
    args = ap.parse_args()
    trees = {"this": HERE, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "frames.bin"
        make_frames(path, args.exchanges, args.batch)
        acks = acks_in(path)
        first = len(acks) // 3
        dora = sum(acks[first:])
        print(f"{len(acks)} frames, {sum(acks)} DORA; counted: frames {first}-{len(acks)}, {dora} DORA", flush=True)
        cost = {}
        for name, tree in trees.items():
            call = "import dhcp_serve_cost as c; c.replayed({!r}, {})"
            cost[name] = (instructions_of(tree, call.format(str(path), len(acks)))
                          - instructions_of(tree, call.format(str(path), first))) / dora
            print(f"{name:9} {tree}: {cost[name] / 1e3:.1f} K instructions per DORA in serve", flush=True)
    if "baseline" in cost:
        print(f"this/baseline: {cost['this'] / cost['baseline']:.3f}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))  # this checkout's bootsvc, for the frames
    main()
