#!/usr/bin/env python3
"""CPU to receive large Data-Out PDUs (the target's side of a long write):
a thread sends ``--count`` Data-Out PDUs of ``--size`` bytes over a Unix
socket pair, the main thread takes them apart as target/connection.py does
(``recv`` into the stream buffer, or ``recv_into`` a large segment's own
buffer, target/framing.py). Printed: the receiving thread's CPU per PDU
and its reads per PDU.

    python3 bench/pdu_receive.py [--size 262144] [--count 2000]
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from target.framing import PduReader  # noqa: E402
from target.pdu import DataOut, encode  # noqa: E402

RECV_SIZE = 1 << 18  # as target/connection.py


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=262144, help="data segment bytes")
    ap.add_argument("--count", type=int, default=2000)
    args = ap.parse_args()
    raw = encode(DataOut(final=True, itt=1, ttt=1, data=bytes(args.size)))
    ours, theirs = socket.socketpair()

    def send() -> None:
        for _ in range(args.count):
            theirs.sendall(raw)
        theirs.close()

    sender = threading.Thread(target=send)
    sender.start()
    reader = PduReader(max_data=args.size)
    received = reads = 0
    start = time.thread_time()
    while True:
        into = reader.receive_buffer()
        if into is None:
            data = ours.recv(reader.read_size(RECV_SIZE))
            n = len(data)
            if n:
                reader.feed(data)
        else:
            n = ours.recv_into(into)
            if n:
                reader.received(n)
        if not n:
            break
        reads += 1
        received += sum(len(p.data) for p in reader.pdus())
    spent = time.thread_time() - start
    sender.join()
    ours.close()
    assert received == args.count * args.size
    print(f"Data-Out of {args.size} bytes: {spent / args.count * 1e6:.1f} us of receiving CPU per PDU, "
          f"{reads / args.count:.1f} reads per PDU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
