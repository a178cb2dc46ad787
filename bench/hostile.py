#!/usr/bin/env python3
"""What hostile connections cost bootsvc's iSCSI target, and tgt, in one run.

Each server gets the same attack on loopback: ``--connections`` TCP
connections at once, a third of them half-open logins (connect, send
nothing), a third trickling a Login Request a byte per second, a third
announcing a 16 MiB data segment in a Login Request and sending 256 KiB of
it; the sources are spread over ``--sources`` loopback addresses. While the attack
holds, a good login from another address must still log in and read. The
RSS, peak RSS and open descriptors of the server are printed before, during
and after. Every phase is bounded in time.

    python3 bench/hostile.py [--connections 1000] [--sources 8] [--hold 5] [--no-tgt]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.iscsi_perf import make_image  # noqa: E402
from target.pdu import DataIn, LoginRequest, ScsiResponse, Stage  # noqa: E402
from target.text import encode_text  # noqa: E402
from tests.e2e.peers import LOOPBACK, Portal, bootsvc_export, tgt_export  # noqa: E402
from tests.iscsi_client import INITIATOR, Client, read10  # noqa: E402

GOOD_SOURCE = "127.0.0.2"
MiB = 1 << 20


def figures(pid: int) -> dict[str, int]:
    """RSS and peak RSS in KiB, and open descriptors, of process ``pid``."""
    out = {"fds": len(list(Path(f"/proc/{pid}/fd").iterdir()))}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def login_header(data_length: int) -> bytes:
    pdu = LoginRequest(immediate=True, transit=True, csg=Stage.SECURITY, nsg=Stage.OPERATIONAL,
                       isid=bytes.fromhex("400000000099"), itt=1,
                       data=encode_text([("InitiatorName", INITIATOR)]))
    return pdu.encode_bhs(data_length)


def open_connection(port: int, source: str) -> socket.socket | None:
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(2)
    try:
        s.connect((LOOPBACK, port))
    except OSError:  # refused or reset at once: the server's cap at work
        s.close()
        return None
    s.setblocking(False)
    return s


def send_some(s: socket.socket, data: bytes) -> bool:
    """Send what the socket takes now; False once the server closed it."""
    try:
        s.send(data)
    except BlockingIOError:
        pass
    except OSError:
        return False
    return True


def good_login(portal: Portal) -> str:
    """Log in from an address the attack does not use and read 4 KiB."""
    started = time.monotonic()
    try:
        c = Client(LOOPBACK, portal.port, source=GOOD_SOURCE)
        r = c.login(portal.iqn)
        if r.status_class:
            return f"login refused {r.status_class:#x}/{r.status_detail:#x}"
        c.command(read10(0, 8), read=4096, lun=portal.lun)
        for _ in range(100):
            got = c.recv(10)
            if got is None:
                return "closed during the read"
            if isinstance(got, (DataIn, ScsiResponse)) and (isinstance(got, ScsiResponse) or got.status_present):
                break
        c.close()
    except (OSError, AssertionError) as e:
        return f"failed: {e!r}"
    return f"ok in {time.monotonic() - started:.2f} s"


@contextlib.contextmanager
def attack(port: int, connections: int, sources: int) -> Iterator[list[socket.socket | None]]:
    """Open the hostile connections; yield them (None where refused at once)."""
    addresses = [f"127.0.{1 + i // 200}.{10 + i % 200}" for i in range(sources)]
    socks: list[socket.socket | None] = []
    big = login_header((1 << 24) - 1)
    for i in range(connections):
        s = open_connection(port, addresses[i % sources])
        if s is not None and i % 3 == 2:
            send_some(s, big + bytes(256 << 10))
        socks.append(s)
    try:
        yield socks
    finally:
        for s in socks:
            if s is not None:
                s.close()


def trickle(socks: list[socket.socket | None], seconds: float) -> int:
    """A byte per second on every third connection for ``seconds``; the
    number of hostile connections still open at the end."""
    header = login_header(256)
    deadline = time.monotonic() + seconds
    tick = 0
    while time.monotonic() < deadline:
        for i in range(1, len(socks), 3):
            s = socks[i]
            if s is not None and not send_some(s, header[tick % len(header):tick % len(header) + 1]):
                socks[i] = None
        tick += 1
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    alive = 0
    for i, s in enumerate(socks):
        if s is None:
            continue
        try:
            if s.recv(1 << 16) == b"":
                socks[i] = None
                continue
        except BlockingIOError:
            pass
        except OSError:
            socks[i] = None
            continue
        alive += 1
    return alive


def run(name: str, portal: Portal, connections: int, sources: int, hold: float) -> None:
    time.sleep(0.5)
    print(f"{name}: good login before the attack: {good_login(portal)}")
    before = figures(portal.pid)
    started = time.monotonic()
    with attack(portal.port, connections, sources) as socks:
        opened = sum(s is not None for s in socks)
        alive = trickle(socks, hold)
        during = figures(portal.pid)
        login = good_login(portal)
    time.sleep(1.0)
    after = figures(portal.pid)
    print(f"{name}: {connections} hostile connections from {sources} addresses ({opened} connected, "
          f"{alive} still open after {hold:g} s, {time.monotonic() - started:.1f} s in all); "
          f"good login during the attack: {login}")
    for label, f in (("before", before), ("during", during), ("after", after)):
        print(f"  {label:7} RSS {f['VmRSS'] / 1024:8.1f} MiB  peak {f['VmHWM'] / 1024:8.1f} MiB  fds {f['fds']:5}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--sources", type=int, default=8, help="loopback addresses the attack comes from")
    ap.add_argument("--hold", type=float, default=5.0, help="seconds the attack is held")
    ap.add_argument("--no-tgt", action="store_true", help="only bootsvc's target")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        image = Path(d) / "disk.img"
        make_image(image, 64 * MiB)
        with bootsvc_export(image) as portal:
            run("bootsvc", portal, args.connections, args.sources, args.hold)
        if not args.no_tgt:
            with tgt_export(image) as portal:
                run("tgt", portal, args.connections, args.sources, args.hold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
