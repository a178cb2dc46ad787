#!/usr/bin/env python3
"""What one READ costs the target's event-loop thread, measured on that
thread's own CPU clock: a figure that other work on the machine moves far
less than throughput (bench/iscsi_perf.py swings ±50 % under load).

A real target connection (IscsiConnection, Session, LUN on a page-cached
raw image) over a real loopback TCP connection, without an event loop
running: batches of ``--depth`` READ(10) commands are fed to the connection
as its reader callback would, it answers them (preadv, sendmsg: the kernel's
share counts too), the responses are drained by this script on the other
end outside the measured time. For small reads (a batch's responses must
fit the socket buffer; large reads are bench/iscsi_perf.py's). Printed:
microseconds of loop-thread CPU per READ, lowest and median of ``--reps``
repetitions.

    python3 bench/iscsi_loop.py [--blocks 8] [--depth 32] [--batches 300] [--reps 7] [--overlay]

With ``--overlay`` the LUN is a fresh bootsvc qcow2 overlay on the raw
image (every read goes through an unallocated cluster to the base), as a
booting machine's disk is.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from target.connection import IscsiConnection  # noqa: E402
from target.keys import SessionParams  # noqa: E402
from target.pdu import ScsiCommand, encode  # noqa: E402
from target.qcow2_create import create_image  # noqa: E402
from target.server import Portal, TargetServer  # noqa: E402
from target.session import Link  # noqa: E402
from target.targets import LunSpec, Target, TargetSpec  # noqa: E402

IQN = "iqn.2026-12.bench.loop:disk"
INITIATOR = "iqn.2026-12.bench.loop:initiator"
IMAGE_SIZE = 256 << 20


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    for sock in (server, client):  # a whole batch of responses fits: nothing waits for the loop
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    server.setblocking(False)
    return server, client


def commands(rnd: random.Random, first: int, depth: int, blocks: int) -> bytes:
    last_lba = IMAGE_SIZE // 512 - blocks
    return b"".join(encode(ScsiCommand(
        final=True, read=True, itt=first + i, edtl=blocks * 512, cmdsn=first + i,
        cdb=struct.pack(">BBIBHB", 0x28, 0, rnd.randrange(0, last_lba) & ~7, 0, blocks, 0).ljust(16, b"\0")))
        for i in range(depth))


def drain(sock: socket.socket) -> None:
    while True:
        try:
            if not sock.recv(1 << 22, socket.MSG_DONTWAIT):
                return
        except BlockingIOError:
            return


async def measure(args: argparse.Namespace, image: Path) -> list[float]:
    target = Target.open(TargetSpec(IQN, (LunSpec(str(image), read_only=True),)))
    server = TargetServer([target], [Portal("127.0.0.1", 0)], nop_interval=0)
    ours, theirs = tcp_pair()
    conn = IscsiConnection(server, ours)
    params = SessionParams(initiator_name=INITIATOR, target_name=IQN, initiator_max_recv=262144)
    server.admit(conn, bytes.fromhex("400000000001"), 0, params)
    assert conn.session is not None
    conn.session.bind(Link(0, conn.peer, conn.local_address), 0, 0.0)
    conn.reader.max_data = params.target_max_recv
    rnd = random.Random(1)
    batches = [commands(rnd, i * args.depth, args.depth, args.blocks) for i in range(args.batches * args.reps)]
    per_read = []
    for rep in range(args.reps):
        spent = 0.0
        for raw in batches[rep * args.batches:(rep + 1) * args.batches]:
            start = time.thread_time()
            conn.reader.feed(raw)
            conn._process()
            spent += time.thread_time() - start
            if conn.sender.queue:
                raise SystemExit("a batch of responses did not fit the socket buffer: use smaller reads or depth")
            drain(theirs)
        per_read.append(spent / (args.batches * args.depth) * 1e6)
    conn.close()
    theirs.close()
    return per_read


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=8, help="512-byte blocks per READ")
    ap.add_argument("--depth", type=int, default=32, help="READs per batch of input")
    ap.add_argument("--batches", type=int, default=300, help="batches per repetition")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--overlay", action="store_true", help="serve a qcow2 overlay on the image")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        image = Path(d) / "bench.img"
        with open(image, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(IMAGE_SIZE >> 20):
                f.write(chunk)
        with open(image, "rb") as f:  # into the page cache
            while f.read(1 << 24):
                pass
        if args.overlay:
            create_image(Path(d) / "overlay.qcow2", backing=image.name, backing_format="raw")
            image = Path(d) / "overlay.qcow2"
        per_read = asyncio.run(measure(args, image))
    what = f"{'overlay ' if args.overlay else ''}READ of {args.blocks * 512} bytes, {args.depth} per batch"
    print(f"{what}: loop-thread CPU per READ "
          f"{min(per_read):.2f} us lowest, {statistics.median(per_read):.2f} us median "
          f"({' '.join(f'{x:.2f}' for x in per_read)}); load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
