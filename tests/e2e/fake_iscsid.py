"""A stand-in for iscsid's management IPC: just enough for open-iscsi's
``iscsiadm -m discovery -t isns`` on a machine where iscsid cannot run (its
kernel has no NETLINK_ISCSI, so ``iscsid -f`` exits at once).

For iSNS discovery iscsiadm needs nothing from iscsid but the initiator's
name and alias: it connects to the abstract unix socket
``"\\0ISCSIADM_ABSTRACT_NAMESPACE"`` and writes a fixed-size
``iscsiadm_req_t`` (int command, int payload_len, union), then reads a
fixed-size ``iscsiadm_rsp_t`` (int command, int err, union { char
var[VALUE_MAXLEN]; ... }) with MSG_WAITALL (open-iscsi usr/mgmt_ipc.h,
usr/iscsid_req.c). We answer

    MGMT_IPC_CONFIG_INAME  (8) -> err 0, the initiator name
    MGMT_IPC_CONFIG_IALIAS (9) -> err 0, the alias
    anything else              -> err ISCSI_ERR_INVAL (7)

(iscsiadm also asks MGMT_IPC_CONFIG_FILE (10) before printing what it found;
the error only costs a debug message, "Could not get config file for sync
config".)

each as ``struct.pack("=ii", command, err)`` + the NUL-terminated string,
zero-padded to 64 KiB: more than ``sizeof(iscsiadm_rsp_t)`` (its getstats
member dominates), so iscsiadm's MSG_WAITALL read is always satisfied
without this file hard-coding the struct's size.

Abstract unix sockets belong to a network namespace: run this and iscsiadm
in the same one, a private one, so neither a real iscsid nor another test
is ever reached or disturbed.

usage: python3 fake_iscsid.py INITIATOR_NAME [--alias ALIAS] [--seconds S]

It prints ``fake iscsid listening`` once bound, then one line per request
(``request command=N bytes=B -> err=E value=V``), and exits after S seconds
(default 60) or at SIGTERM.
"""

from __future__ import annotations

import argparse
import socket
import struct
import time

ADDRESS = "\0ISCSIADM_ABSTRACT_NAMESPACE"
CONFIG_INAME, CONFIG_IALIAS = 8, 9  # enum iscsiadm_cmd
ERR_INVAL = 7  # ISCSI_ERR_INVAL
RSP_BYTES = 1 << 16  # >= sizeof(iscsiadm_rsp_t)
IO_TIMEOUT = 5.0  # seconds one exchange may take; iscsiadm is local and quick


def answer(command: int, name: str, alias: str) -> tuple[int, str]:
    if command == CONFIG_INAME:
        return 0, name
    if command == CONFIG_IALIAS:
        return 0, alias
    return ERR_INVAL, ""


def response(command: int, err: int, value: str) -> bytes:
    head = struct.pack("=ii", command, err) + value.encode() + b"\0"
    return head + bytes(RSP_BYTES - len(head))


def read_command(conn: socket.socket) -> tuple[int | None, int]:
    """The request's command, and how many bytes were read to learn it."""
    got = b""
    while len(got) < 4:
        chunk = conn.recv(65536)
        if not chunk:
            return None, len(got)
        got += chunk
    return struct.unpack_from("=i", got)[0], len(got)


def drain(conn: socket.socket) -> int:
    """Read the rest of the request until iscsiadm closes: closing a unix
    socket with unread data would reset it under iscsiadm's feet."""
    total = 0
    try:
        while chunk := conn.recv(65536):
            total += len(chunk)
    except OSError:  # iscsiadm closed first, or took too long: either way it is done
        pass
    return total


def serve_one(conn: socket.socket, name: str, alias: str) -> str:
    conn.settimeout(IO_TIMEOUT)
    command, nbytes = read_command(conn)
    if command is None:
        return f"request truncated after {nbytes} bytes"
    err, value = answer(command, name, alias)
    # iscsiadm writes its whole request before reading: answering after the
    # first 4 bytes is safe, and we need not know sizeof(iscsiadm_req_t)
    reply = response(command, err, value)
    meaningful = len(reply.rstrip(b"\0")) + 1  # the head and the string with its NUL
    sent = 0
    try:
        while sent < len(reply):
            sent += conn.send(reply[sent:])
    except (BrokenPipeError, ConnectionResetError):
        # iscsiadm reads exactly sizeof(iscsiadm_rsp_t), less than our
        # padding, then closes: when the socket buffer cannot hold all 64 KiB
        # the rest of the padding meets a closed socket. The answer is out.
        if sent < meaningful:
            raise
        return f"request command={command} bytes={nbytes} -> err={err} value={value!r}"
    nbytes += drain(conn)
    return f"request command={command} bytes={nbytes} -> err={err} value={value!r}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name")
    ap.add_argument("--alias", default="")
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(ADDRESS)
    srv.listen(8)
    print("fake iscsid listening", flush=True)
    deadline = time.monotonic() + args.seconds
    while (left := deadline - time.monotonic()) > 0:  # bounded: a test's stand-in never outlives it long
        srv.settimeout(left)
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            break
        with conn:
            try:
                print(serve_one(conn, args.name, args.alias), flush=True)
            except OSError as e:
                print(f"request failed: {e}", flush=True)


if __name__ == "__main__":
    main()
