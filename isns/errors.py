"""The one way the registry refuses a request (RFC 4171 §6.4 status codes)."""

from __future__ import annotations

from .protocol import Status


class IsnsError(Exception):
    """A request refused with ``status``; the message says why."""

    def __init__(self, status: Status, why: str) -> None:
        super().__init__(why)
        self.status = status
