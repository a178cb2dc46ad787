"""Joins stdin/stdout to a TCP connection on loopback. QEMU's user network
runs it for each guest connection to a ``guestfwd=...-cmd:`` address, so a
guest with ``restrict=on`` reaches exactly one loopback service and nothing
else. Usage: stdio_proxy.py PORT (the host is always 127.0.0.1)."""

from __future__ import annotations

import os
import selectors
import socket
import sys


def main() -> int:
    port = int(sys.argv[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ)
    sel.register(sock, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj == 0:
                data = os.read(0, 1 << 16)
                if not data:
                    return 0
                sock.sendall(data)
            else:
                data = sock.recv(1 << 16)
                if not data:
                    return 0
                view = memoryview(data)
                while view:
                    view = view[os.write(1, view):]


if __name__ == "__main__":
    sys.exit(main())
