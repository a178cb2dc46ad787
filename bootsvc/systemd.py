"""Readiness and state reports to systemd (sd_notify(3)): a datagram to
$NOTIFY_SOCKET when run as a Type=notify unit, nothing otherwise."""

from __future__ import annotations

import os
import socket


def notify(*states: str) -> bool:
    """Send e.g. ``READY=1``, ``RELOADING=1``, ``STOPPING=1``, ``STATUS=...``;
    False when not under systemd (or the socket is gone)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":  # an abstract socket name
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(states).encode(), address)
    except OSError:
        return False
    return True
