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
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def exchanges(n: int) -> None:
    """In the tree on sys.path: n DORA exchanges through the DHCP service."""
    from scapy.layers.dhcp import BOOTP, DHCP

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
    for i in range(n):
        chaddr = bytes.fromhex(f"5254{i:08x}") + bytes(10)
        service.datagram_received(bytes(BOOTP(op=1, xid=i, giaddr=relay[0], chaddr=chaddr) /
                                        DHCP(options=[("message-type", "discover"), "end"])), relay)
        mac = ":".join(f"{b:02x}" for b in chaddr[:6])
        offered = str(leases.for_mac(mac).ip)  # type: ignore[union-attr]
        service.datagram_received(bytes(BOOTP(op=1, xid=i, giaddr=relay[0], chaddr=chaddr) /
                                        DHCP(options=[("message-type", "request"), ("requested_addr", offered),
                                                      ("server_id", "10.215.0.1"), "end"])), relay)


def instructions(tree: Path, n: int) -> int:
    out = tempfile.mktemp(prefix="callgrind.")
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); sys.path.insert(1, {str(HERE / 'bench')!r}); " \
           f"import dhcp_cost; dhcp_cost.exchanges({n})"
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
    args = ap.parse_args()
    trees = {"this": HERE, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    cost = {}
    for name, tree in trees.items():
        n = args.exchanges
        cost[name] = (instructions(tree, 3 * n) - instructions(tree, n)) / (2 * n)
        print(f"{name:9} {tree}: {cost[name] / 1e6:.3f} M instructions per DORA", flush=True)
    if "baseline" in cost:
        print(f"this/baseline: {cost['this'] / cost['baseline']:.3f}")


if __name__ == "__main__":
    main()
