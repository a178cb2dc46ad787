"""What the target reports: one path for every event.

An event is a name (``iscsi.login``, ``qcow2.repaired``, ...) and fields.
An embedder passes ``on_event(what, fields)`` and gets every event there,
to log, record or count as it likes; the target then logs nothing itself.
Without a sink each event is one logfmt line (``event=iscsi.login
peer=10.0.0.5:40112 initiator=iqn...``) on the component's logger.

Field names are shared by all events: ``peer`` is the initiator's
"host:port", ``initiator`` and ``target`` are iSCSI names, ``why`` says in
words what went wrong and ``reason`` is a fixed keyword.

Events of the resource bounds (:mod:`target.limits`):
``iscsi.connections_refused`` (once a second at most: ``count`` refused,
from ``sources`` addresses, ``peer`` the one refused most),
``iscsi.pdu_timeout`` (a PDU began and did not end in time),
``iscsi.idle_timeout`` (a Discovery session that asked nothing for too
long) and ``iscsi.text_too_long`` (a Text Request continued past 64 KiB).
A host application with a closed set of event kinds must add these.

``iscsi.logout`` and ``iscsi.session_dropped`` carry what the session
moved: ``read_bytes``, ``written_bytes`` and ``io_errors`` (commands
answered MEDIUM or HARDWARE ERROR); the first such command of a session
is ``iscsi.io_error`` (``lun``, ``cdb`` its opcode, ``sense_key``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

EventSink = Callable[[str, dict[str, object]], None]

# characters that make a logfmt value need quotes
_SPECIAL = frozenset(' "\\=\n\r\t')


def logfmt_value(value: object) -> str:
    """``value`` as a logfmt value: bare when it can be, else double-quoted
    with ``"`` and ``\\`` backslash-escaped (and line breaks as ``\\n``, so an
    event stays one line)."""
    text = str(value)
    if text and not _SPECIAL.intersection(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def logfmt(what: str, fields: Mapping[str, object]) -> str:
    """One event as a logfmt line."""
    return " ".join([f"event={logfmt_value(what)}", *(f"{k}={logfmt_value(v)}" for k, v in fields.items())])


def peer_text(address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    """A socket address as the ``peer`` field: ``host:port``, ``[v6]:port``."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Events:
    """Hands each event to the embedder's sink or, without one, logs it."""

    def __init__(self, sink: EventSink | None, logger: logging.Logger) -> None:
        self.sink = sink
        self.logger = logger

    def emit(self, what: str, level: int = logging.INFO, /, **fields: object) -> None:
        """Report ``what``; ``level`` is the log level when it is logged here."""
        if self.sink is not None:
            self.sink(what, fields)
        elif self.logger.isEnabledFor(level):
            self.logger.log(level, "%s", logfmt(what, fields))
