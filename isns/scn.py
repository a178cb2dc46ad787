"""State Change Notifications (RFC 4171 §5.6.5.8) and the other messages
the server sends on its own, built without sockets.

A registry change queues events per recipient while one request is handled;
:meth:`ScnBatch.flush` turns each recipient's events into one SCN message:
the destination's iSCSI name and a timestamp, then per event the SCN bitmap,
the changed node's name and, for management SCNs, the DD that caused it.
Like open-isns, SCN and ESI messages carry no source and no delimiter.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from .codec import Attr, Message, Port
from .protocol import Function, Tag

Address = tuple[ipaddress.IPv6Address, Port]


@dataclass(frozen=True)
class Notice:
    """A message for one entity: sent to each of ``targets`` (its SCN or
    ESI ports), else over a connection the entity holds open to us."""

    entity: str
    message: Message
    targets: tuple[Address, ...] = ()
    portal: Address | None = None  # ESI: the portal the probe is about


@dataclass
class ScnBatch:
    """Events waiting to be sent, by recipient node name."""

    _events: dict[str, list[Attr]] = field(default_factory=dict)
    _xids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, recipient: str, bits: int, changed: str, dd: int | None = None) -> None:
        events = self._events.setdefault(recipient, [])
        events += [Attr(Tag.ISCSI_SCN_BITMAP, bits), Attr(Tag.ISCSI_NAME, changed)]
        if dd is not None:
            events.append(Attr(Tag.DD_ID, dd))

    def xid(self) -> int:
        return next(self._xids) & 0xFFFF

    def flush(self, now: float) -> Iterator[tuple[str, Message]]:
        """(recipient, SCN message) for each recipient with events."""
        events, self._events = self._events, {}
        for recipient, attrs in events.items():
            yield recipient, Message(Function.SCN, self.xid(),
                                     (Attr(Tag.ISCSI_NAME, recipient), Attr(Tag.TIMESTAMP, int(now)), *attrs))
