#!/usr/bin/env python3
"""DHCP: the highest DORA rate with under 1 % drops, dnsmasq against
bootsvc, in one run on the same network.

Two network namespaces joined by a veth pair: the server's (10.215.0.1)
and perfdhcp's (10.215.0.2). perfdhcp (kea) acts as a relay agent (its
packets carry giaddr 10.215.0.2), so it can play tens of thousands of
clients from one address; both servers hand out 10.215.1.0-10.215.200.255
from a /16 without pinging first (dnsmasq --no-ping, see ENVIRONMENT.md).
Each server gets fresh lease storage. For each server the rate climbs
until more than 1 % of exchanges fail; every step is bounded by
``--seconds``. Prints each step, the best rate of each, and the ratio.

    python3 bench/dhcp.py [--seconds 5] [--rates 250,500,...] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.netns import ip, namespaces  # noqa: E402
from tests.e2e.peers import bootsvc_serve, dnsmasq_dhcp, perfdhcp, stop  # noqa: E402

RATES = (250, 300, 350, 400, 500, 600, 700, 800, 1000, 1200, 1400, 1700, 2000, 2500, 3000, 4000)
SERVER, CLIENT = "10.215.0.1", "10.215.0.2"
FIRST, LAST = "10.215.1.0", "10.215.200.255"
CLIENTS = 40000  # distinct MACs perfdhcp cycles through (fewer than the 51200 addresses)
MAX_DROP = 0.01


def dora(ns: str, rate: int, seconds: float) -> tuple[int, int]:
    """(DORA exchanges started, completed) at ``rate``/s for ``seconds``."""
    run = perfdhcp(ns, CLIENT, SERVER, "-r", str(rate), "-R", str(CLIENTS), "-p", str(int(seconds)),
                   "-W", "1000000", timeout=seconds + 60)
    if len(run.sent) < 2 or len(run.received) < 2:
        raise RuntimeError(f"perfdhcp output not understood:\n{run.output}")
    # DISCOVER/OFFER then REQUEST/ACK: an exchange completes when its ACK arrives
    return run.sent[0], run.received[1]


@contextlib.contextmanager
def dnsmasq(ns: str, work: Path) -> Iterator[None]:
    with dnsmasq_dhcp(ns, "bsv-s0", f"{FIRST},{LAST},255.255.0.0,1h", work, "--dhcp-lease-max=100000"):
        yield


@contextlib.contextmanager
def bootsvc(ns: str, work: Path) -> Iterator[None]:
    state = work / "state"
    subprocess.run(["rm", "-rf", str(state)], check=True)
    cfg = work / "bootsvc.yaml"
    cfg.write_text(f"""
state_dir: {state}
listen:
  dhcp: {{interface: bsv-s0, address: {SERVER}}}
dhcp:
  subnet: 10.215.0.0/16
  range: [{FIRST}, {LAST}]
  unknown_machines: discover
""")
    proc = bootsvc_serve(cfg, work / "serve.log", "ready:", netns=ns)
    try:
        yield
    finally:
        stop(proc)


def climb(name: str, ns_server: str, ns_client: str, work: Path, rates: list[int], seconds: float) -> int:
    server = dnsmasq if name == "dnsmasq" else bootsvc
    best = 0
    for rate in rates:
        with server(ns_server, work):  # fresh leases for every step
            started, done = dora(ns_client, rate, seconds)
        drops = 1 - done / started if started else 1
        achieved = done / seconds
        print(f"  {name:8} offered {rate:5}/s: {done:6} of {started:6} DORA done ({drops:6.2%} dropped), "
              f"{achieved:7.0f}/s", flush=True)
        if drops > MAX_DROP:
            break
        best = rate
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rates", default=",".join(map(str, RATES)))
    ap.add_argument("--json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/dhcp.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    rates = [int(r) for r in args.rates.split(",")]
    results: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp, namespaces("dsrv", "dcli") as (srv, cli):
        work = Path(tmp)
        ip("link", "add", "bsv-s0", "netns", srv, "type", "veth", "peer", "name", "bsv-c0", "netns", cli)
        ip("-n", srv, "addr", "add", f"{SERVER}/16", "dev", "bsv-s0")
        ip("-n", cli, "addr", "add", f"{CLIENT}/16", "dev", "bsv-c0")
        ip("-n", srv, "link", "set", "bsv-s0", "up")
        ip("-n", cli, "link", "set", "bsv-c0", "up")
        for name in ("dnsmasq", "bootsvc"):
            results[name] = climb(name, srv, cli, work, rates, args.seconds)
    ratio = results["bootsvc"] / results["dnsmasq"] if results["dnsmasq"] else float("inf")
    print(f"highest DORA/s with <1 % dropped: dnsmasq {results['dnsmasq']}, bootsvc {results['bootsvc']} "
          f"-> bootsvc/dnsmasq {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({**results, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
