"""What the sans-I/O session asks its transport to do.

:meth:`target.session.Session.receive` and its other entry points return a
list of these; the I/O layer (:mod:`target.connection`) carries them out in
order. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from .backend import Segment
from .pdu import Pdu

if TYPE_CHECKING:
    from .scsi import Lun
    from .session import DropReason, Task


@dataclass(slots=True)
class Send:
    """Send ``pdu``. Its data segment is ``segments`` (``length`` bytes when
    the sender knows, else the segments are counted), or ``pdu.data`` when
    there are no segments. File extents go out zero-copy. ``cid`` names
    the connection of the session it leaves on (§5.1 allegiance; None: the
    one the session's input came on)."""

    pdu: Pdu
    segments: Sequence[Segment] | None = None
    length: int | None = None
    cid: int | None = None


@dataclass(slots=True)
class Execute:
    """Run ``task``'s CDB on ``lun`` with the Data-Out ``data_out``, then hand
    the result back with :meth:`~target.session.Session.command_done` (or
    :meth:`~target.session.Session.command_failed`)."""

    task: Task
    lun: Lun
    data_out: memoryview | None


@dataclass(slots=True)
class Close:
    """End the connection: at once, or once everything queued is sent.
    ``reason`` says why, when the session is lost with it. ``cid`` names
    the one connection to end (MC/S); None ends every connection of the
    session (a Logout that closes the session, a target cold reset)."""

    reason: DropReason | None = None
    after_send: bool = True
    cid: int | None = None


Action: TypeAlias = Send | Execute | Close
