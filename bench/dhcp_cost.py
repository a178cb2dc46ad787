#!/usr/bin/env python3
"""DHCP: the instructions one DORA exchange costs inside bootsvc, counted
by valgrind's callgrind, for this checkout and another one (--baseline).

Instruction counts do not swing with the load of a shared machine the way
times do (ENVIRONMENT.md: ±40 %), so a change on the DHCP path can be
judged to the percent. Each tree runs DhcpService.datagram_received for N
and 3N relayed DISCOVER+REQUEST pairs of new MACs (policy discover, events
to the log and the event file as ``bootsvc serve`` wires them); the
difference over 2N is the cost of one exchange, start-up cancelled out.

    python3 bench/dhcp_cost.py [--baseline TREE] [--exchanges 500]
    python3 bench/dhcp_cost.py --serve --batch 16 [--baseline TREE]

``--serve``: the DHCP service as ``bootsvc serve`` builds it (bootsvc.server:
the bus with the log at INFO to a file, the event file, the fleet, the
flight recorder, the metrics), in a running event loop, fed ``--batch``
DISCOVERs then their REQUESTs per loop iteration, as the socket delivers
them under load; the group commit writes each batch in place.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the tree measured is put on sys.path first (instructions_of): imported there
    from bootsvc.dhcp.service import DhcpService

HERE = Path(__file__).resolve().parent.parent


def exchanges(n: int) -> None:
    """In the tree on sys.path: n DORA exchanges through the DHCP service."""
    from bootsvc.dhcp import responder as r
    from bootsvc.dhcp.leases import LeaseStore
    from bootsvc.dhcp.message import IPv4
    from bootsvc.dhcp.service import DhcpService

    logging.basicConfig(level=logging.WARNING)
    subnet = r.Subnet(ipaddress.IPv4Network("10.215.0.0/16"), IPv4("10.215.0.1"), IPv4("10.215.1.0"),
                      IPv4("10.215.200.255"))
    work = Path(tempfile.mkdtemp())
    leases = LeaseStore(work / "leases.db")
    if hasattr(r, "Machines"):  # the fleet and event bus (this checkout)
        from bootsvc.events import Bus, EventFile, LogWriter
        bus = Bus()
        bus.subscribe(LogWriter())
        bus.subscribe(EventFile(work / "events.jsonl"))
        responder = r.Responder([subnet], r.Machines({}), leases, lambda *a: None, unknown=r.UnknownPolicy.DISCOVER,
                                emit=bus.emit)
    else:  # before the fleet: events were log lines from serve.py
        from bootsvc.serve import _log_event  # type: ignore[import-not-found]
        responder = r.Responder([subnet], {}, leases, lambda *a: None, unknown=r.UnknownPolicy.DISCOVER,
                                on_event=_log_event("bootsvc.dhcp"))

    class Transport:
        def sendto(self, data: bytes, addr: object) -> None:
            pass

    service = DhcpService(responder, IPv4("10.215.0.1"))
    service.transport = Transport()  # type: ignore[assignment]
    relay = ("10.215.0.2", 67)
    # the requests packed with struct: scapy building them here cost more
    # instructions than the server spent answering them (2.5 M of 3.5 M)
    for i in range(n):
        service.datagram_received(request(i, 1), relay)
        offered = leases.for_mac(mac(i))
        service.datagram_received(request(i, 3, offered.ip.packed), relay)  # type: ignore[union-attr]


def mac(i: int) -> str:
    """The MAC request(i, ...) carries: 52:54 and ``i`` in four bytes."""
    return "52:54:" + ":".join(f"{b:02x}" for b in i.to_bytes(4, "big"))


def request(i: int, msg: int, ip: bytes = b"") -> bytes:
    """A relayed DISCOVER (1) or REQUEST (3, with ``ip`` and the server id) from MAC 52:54:<i>."""
    import struct
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 1, i, 0, 0, bytes(4), bytes(4), bytes(4),
                         bytes([10, 215, 0, 2]), struct.pack("!HI", 0x5254, i), b"", b"")
    options = bytes([53, 1, msg]) + (bytes([50, 4]) + ip + bytes([54, 4, 10, 215, 0, 1]) if ip else b"")
    return header + b"\x63\x82\x53\x63" + options + b"\xff"


def serve_config(work: Path) -> Path:
    """``--serve``'s config: bench/dhcp.py's
    network, policy discover, the state under ``work``."""
    cfg = work / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {work / 'state'}\nlisten:\n  dhcp: {{address: 10.215.0.1}}\n"
                   "dhcp:\n  subnet: 10.215.0.0/16\n  range: [10.215.1.0, 10.215.200.255]\n"
                   "  unknown_machines: discover\n")
    return cfg


def served(n: int, batch: int) -> None:
    """In the tree on sys.path: n DORA exchanges through the DHCP service
    of a ``bootsvc serve`` wiring, ``batch`` clients per loop iteration."""
    from bootsvc import cli
    from bootsvc import config as config_mod
    from bootsvc.dhcp.service import DhcpService
    from bootsvc.server import Server

    work = Path(tempfile.mkdtemp())
    cfg = serve_config(work)
    sys.stderr = open(work / "serve.log", "w")  # the log at INFO, as serve writes it
    cli.setup_logging()
    loaded = config_mod.load(cfg)
    if hasattr(loaded.dhcp, "process"):  # the service on serve's own loop (a tree with the worker process)
        from dataclasses import replace

        from bootsvc.dhcp.settings import Process  # type: ignore[attr-defined]
        loaded = replace(loaded, dhcp=replace(loaded.dhcp, process=Process.INLINE))  # type: ignore[type-var]
    server = Server(loaded, lambda *a, **k: None)
    service = next(s.start.__self__ for s in server.services.items  # type: ignore[attr-defined]
                   if isinstance(getattr(s.start, "__self__", None), DhcpService))

    class Transport:
        def sendto(self, data: bytes, addr: object) -> None:
            pass

    service.transport = Transport()  # type: ignore[assignment]
    server.bus.subscribe(server.recorder.on_event)  # the flight recorder follows every boot, as in serve
    asyncio.run(feed(service, n, batch))
    server.close()


async def feed(service: DhcpService, n: int, batch: int) -> None:
    """n relayed DISCOVER+REQUEST pairs of new MACs to ``service``, ``batch``
    clients per loop iteration (as the socket delivers them under load)."""
    relay = ("10.215.0.2", 67)
    for first in range(0, n, batch):
        ids = range(first, min(first + batch, n))
        service.received([(request(i, 1), relay) for i in ids])
        await asyncio.sleep(0)  # the loop turns: what it runs once per iteration runs
        leases = service.responder.leases
        service.received([(request(i, 3, leases.for_mac(mac(i)).ip.packed), relay)  # type: ignore[union-attr]
                          for i in ids])
        await asyncio.sleep(0)


def instructions(tree: Path, n: int, serve: bool = False, batch: int = 1) -> int:
    call = f"served({n}, {batch})" if serve else f"exchanges({n})"
    return instructions_of(tree, f"import dhcp_cost; dhcp_cost.{call}")


def instructions_of(tree: Path, call: str) -> int:
    """The instructions a new interpreter runs for ``call`` (Python, with
    bootsvc from ``tree`` and bench/ importable)."""
    out = tempfile.mktemp(prefix="callgrind.")
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); sys.path.insert(1, {str(HERE / 'bench')!r}); {call}"
    r = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=3600)
    Path(out).unlink(missing_ok=True)
    m = re.search(r"Collected : (\d+)", r.stderr)
    if r.returncode != 0 or m is None:
        raise SystemExit(f"callgrind failed for {tree}:\n{r.stderr[-2000:]}")
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, help="another checkout to compare with")
    ap.add_argument("--exchanges", type=int, default=500)
    ap.add_argument("--serve", action="store_true", help="the service as bootsvc serve wires it, in a loop")
    ap.add_argument("--batch", type=int, default=1, help="with --serve: clients per loop iteration")
    args = ap.parse_args()
    trees = {"this": HERE, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    cost = {}
    for name, tree in trees.items():
        n = args.exchanges
        cost[name] = (instructions(tree, 3 * n, args.serve, args.batch)
                      - instructions(tree, n, args.serve, args.batch)) / (2 * n)
        print(f"{name:9} {tree}: {cost[name] / 1e6:.3f} M instructions per DORA", flush=True)
    if "baseline" in cost:
        print(f"this/baseline: {cost['this'] / cost['baseline']:.3f}")


if __name__ == "__main__":
    main()
