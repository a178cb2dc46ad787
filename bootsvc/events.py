"""Typed events and the one in-process bus (DESIGN.md "The machine fleet
and events").

Every service says what happened as one :class:`Event`: when, which kind
(its service is the part before the dot), the identities it knows (MAC,
IP, host name, initiator, target, source address) and free fields. The
:class:`Bus` hands each event to its subscribers: the log (one logfmt line
per event, :func:`logfmt`), the JSON-lines event file that ``bootsvc vm``
follows (:class:`EventFile`), and the fleet itself (an ephemeral disk is
renewed on the event of a boot ROM's offer). Nothing parses log text.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple, Protocol

import orjson

from .log_handler import say

log = logging.getLogger("bootsvc.events")


class Kind(str, Enum):
    """What happened. The value is the name in logs and the event file."""

    # DHCP (bootsvc/dhcp)
    DHCP_OFFER = "dhcp.offer"
    DHCP_ACK = "dhcp.ack"
    DHCP_NAK = "dhcp.nak"
    DHCP_RELEASE = "dhcp.release"
    DHCP_DECLINE = "dhcp.decline"
    DHCP_DISCOVERED = "dhcp.discovered"  # unknown_machines: discover saw a new MAC
    DHCP_ADOPTED = "dhcp.adopted"  # unknown_machines: default made it a machine
    DHCP_DROPPED = "dhcp.dropped"  # a request that gets no answer, and why (the client's doing: DEBUG)
    DHCP_UNANSWERED = "dhcp.unanswered"  # no answer because of the config (unknown MAC, fixed IP elsewhere)
    DHCP_MALFORMED = "dhcp.malformed"
    DHCP_ERROR = "dhcp.error"
    DHCP_ACK_WITHHELD = "dhcp.ack_withheld"  # an ACK decided but not sent: its lease could not be written
    RA_SENT = "ra.sent"
    RA_FAILED = "ra.failed"
    # what a machine is told to boot (bootsvc/boot.py)
    BOOT_REFUSED = "boot.refused"
    BOOT_SCRIPT_REFUSED = "boot.script_refused"  # a machine's script asked for from another address
    BOOT_BOOTED = "boot.booted"  # the flight recorder saw the OS read its root (with the boot's duration)
    BOOT_FAILED = "boot.failed"  # a boot stalled: the recorder's diagnosis
    # TFTP and HTTP (bootsvc/tftp, bootsvc/http)
    TFTP_SENT = "tftp.sent"
    TFTP_FAILED = "tftp.failed"
    TFTP_NOT_FOUND = "tftp.not_found"
    TFTP_REFUSED = "tftp.refused"
    TFTP_MALFORMED = "tftp.malformed"
    HTTP_REQUEST = "http.request"
    HTTP_BAD_REQUEST = "http.bad_request"
    # DNS (bootsvc/dns): each at most once a second
    DNS_REFUSED = "dns.refused"  # a name outside the domain asked from outside the allowed networks
    DNS_LIMITED = "dns.limited"  # a client over its query rate (dropped) or too many forwards waiting
    DNS_UPSTREAM_FAILED = "dns.upstream_failed"  # no upstream resolver answered: SERVFAIL
    # disks (bootsvc/fleet.py, bootsvc/images.py)
    DISK_RENEWED = "disk.renewed"
    DISK_KEPT = "disk.kept"
    DISK_FAILED = "disk.failed"  # a machine's disk could not be made or opened: it will not boot
    DISK_CLAIMED = "disk.claimed"  # shared storage: this server took the disk's lock (it serves it alone)
    DISK_ELSEWHERE = "disk.elsewhere"  # shared storage: another server holds the disk: not served here
    DISK_RELEASED = "disk.released"  # shared storage: the machine stopped using it: another server may take it
    DISK_STALLED = "disk.stalled"  # a request to the disk has waited storage.stall_after seconds (the storage is not answering)
    DISK_UNSTALLED = "disk.unstalled"  # that request is done: the storage answers again
    IMAGE_OVERLAY_CREATED = "image.overlay_created"
    IMAGE_UNREADABLE = "image.unreadable"
    IMAGE_COMMITTED = "image.committed"
    IMAGE_BASE_ADDED = "image.base_added"
    IMAGE_REBASED = "image.rebased"
    IMAGE_DEMO_BUILT = "image.demo_built"
    # the fleet (bootsvc/fleet.py)
    FLEET_RELOADED = "fleet.reloaded"
    FLEET_ADOPTION_CAPPED = "fleet.adoption_capped"  # dhcp.max_adopted machines made: no more
    FLEET_ADOPTION_EXPIRED = "fleet.adoption_expired"  # an adopted machine never booted: forgotten, disk deleted
    # iSCSI (target/, through its event callback)
    ISCSI_LISTENING = "iscsi.listening"
    ISCSI_LOGIN = "iscsi.login"
    ISCSI_LOGIN_FAILED = "iscsi.login_failed"
    ISCSI_LOGOUT = "iscsi.logout"
    ISCSI_FIRST_READ = "iscsi.first_read"
    ISCSI_SESSION_REINSTATED = "iscsi.session_reinstated"
    ISCSI_SESSION_REPLACED = "iscsi.session_replaced"  # one writer per disk: the same initiator again
    ISCSI_SESSION_DROPPED = "iscsi.session_dropped"
    ISCSI_CONNECTION_LOST = "iscsi.connection_lost"
    ISCSI_STREAM_ERROR = "iscsi.stream_error"
    ISCSI_HEADER_DIGEST_ERROR = "iscsi.header_digest_error"
    ISCSI_NOP_TIMEOUT = "iscsi.nop_timeout"
    ISCSI_REJECT = "iscsi.reject"
    ISCSI_CMDSN_DROPPED = "iscsi.cmdsn_dropped"
    ISCSI_COMMAND_FAILED = "iscsi.command_failed"
    ISCSI_IO_ERROR = "iscsi.io_error"  # a command failed on the medium (the first of a session)
    ISCSI_ACCEPT_FAILED = "iscsi.accept_failed"
    ISCSI_TASK_MANAGEMENT = "iscsi.task_management"
    ISCSI_CONNECTIONS_REFUSED = "iscsi.connections_refused"  # over the cap of connections waiting to log in
    ISCSI_PDU_TIMEOUT = "iscsi.pdu_timeout"  # a PDU began and did not end in time
    ISCSI_IDLE_TIMEOUT = "iscsi.idle_timeout"  # a Discovery session that asked nothing for too long
    ISCSI_TEXT_TOO_LONG = "iscsi.text_too_long"  # a Text Request continued past 64 KiB
    # MC/S and ERL 2 (target/allegiance.py, docs/iscsi-recovery.md)
    ISCSI_CONNECTION_ADDED = "iscsi.connection_added"  # a login joined a session with a new CID
    ISCSI_CONNECTION_LOGOUT = "iscsi.connection_logout"  # one connection logged out, the session goes on
    ISCSI_CONNECTION_FAILED = "iscsi.connection_failed"  # ERL 2: its tasks wait for TASK REASSIGN
    ISCSI_TASK_REASSIGNED = "iscsi.task_reassigned"
    ISCSI_TASKS_EXPIRED = "iscsi.tasks_expired"  # ERL 2: not reassigned within Time2Wait + Time2Retain
    ISCSI_CMDSN_SKIPPED = "iscsi.cmdsn_skipped"  # a command waiting for its CmdSN lost its connection
    ISCSI_RECOVERY_R2T = "iscsi.recovery_r2t"  # ERL >= 1: Data-Out lost, asked again (target/recovery.py)
    QCOW2_REPAIRED = "qcow2.repaired"
    QCOW2_SPACE_LOW = "qcow2.space_low"
    QCOW2_SPACE_EXHAUSTED = "qcow2.space_exhausted"
    # iSNS (isns/, through its event callbacks; bootsvc/isns_registration.py)
    ISNS_REGISTERED = "isns.registered"
    ISNS_QUERIED = "isns.queried"  # a node asked what it may see (DevAttrQry): its discovery
    ISNS_DEREGISTERED = "isns.deregistered"
    ISNS_REFUSED = "isns.refused"
    ISNS_ENTITY_REMOVED = "isns.entity_removed"
    ISNS_DD_REGISTERED = "isns.dd_registered"
    ISNS_DD_REMOVED = "isns.dd_removed"
    ISNS_DD_MEMBERS_REMOVED = "isns.dd_members_removed"
    ISNS_DDS_REGISTERED = "isns.dds_registered"
    ISNS_DDS_REMOVED = "isns.dds_removed"
    ISNS_DDS_MEMBERS_REMOVED = "isns.dds_members_removed"
    ISNS_SCN_REGISTERED = "isns.scn_registered"
    ISNS_ESI_LOST = "isns.esi_lost"
    ISNS_SYNCED = "isns.synced"
    ISNS_EXPIRED = "isns.expired"
    ISNS_MALFORMED = "isns.malformed"
    ISNS_LIMITED = "isns.limited"  # a client hit a bound (isns/limits.py); at most one per reason a second
    ISNS_ERROR = "isns.error"
    ISNS_STORE_FAILED = "isns.store_failed"
    ISNS_NOTICE_REFUSED = "isns.notice_refused"
    ISNS_SCN_FAILED = "isns.scn_failed"
    ISNS_SCN_UNDELIVERABLE = "isns.scn_undeliverable"
    ISNS_ESI_FAILED = "isns.esi_failed"
    ISNS_ESI_UNDELIVERABLE = "isns.esi_undeliverable"
    # the event file itself (EventFile): events dropped while its writes were stuck
    EVENTS_DROPPED = "events.dropped"

    @property
    def service(self) -> str:
        return self.value.split(".", 1)[0]


_NAMES: dict[Kind | str, str] = {k: k.value for k in Kind}  # faster than .value on every event's path

# Kinds that say something went wrong for a machine or a client: logged as
# warnings, so the default log level shows them. Routine ones are INFO.
WARNINGS = frozenset({Kind.FLEET_ADOPTION_CAPPED, Kind.DHCP_ACK_WITHHELD, Kind.BOOT_REFUSED, Kind.BOOT_FAILED, Kind.BOOT_SCRIPT_REFUSED, Kind.DISK_FAILED,
                      Kind.DISK_ELSEWHERE, Kind.DISK_STALLED,
                      Kind.DISK_KEPT, Kind.TFTP_FAILED, Kind.ISCSI_STREAM_ERROR, Kind.ISCSI_HEADER_DIGEST_ERROR,
                      Kind.ISCSI_ACCEPT_FAILED, Kind.QCOW2_REPAIRED, Kind.QCOW2_SPACE_LOW,
                      Kind.QCOW2_SPACE_EXHAUSTED, Kind.IMAGE_UNREADABLE, Kind.ISNS_ESI_LOST,
                      Kind.ISNS_LIMITED, Kind.ISCSI_CONNECTIONS_REFUSED, Kind.ISCSI_IO_ERROR,
                      Kind.DNS_LIMITED, Kind.DNS_UPSTREAM_FAILED})
# Kinds that mean a bug or a broken store: ERROR, with the traceback of the
# exception being handled when the event is emitted.
ERRORS = frozenset({Kind.DHCP_ERROR, Kind.ISNS_ERROR, Kind.ISNS_STORE_FAILED, Kind.ISCSI_COMMAND_FAILED})
# Kinds a client can cause at will (garbage on a port): DEBUG, so they cannot flood the log.
NOISE = frozenset({Kind.DHCP_MALFORMED, Kind.TFTP_MALFORMED, Kind.HTTP_BAD_REQUEST, Kind.RA_SENT,
                   Kind.RA_FAILED, Kind.DHCP_DROPPED, Kind.ISNS_MALFORMED, Kind.ISCSI_PDU_TIMEOUT,
                   Kind.ISCSI_TEXT_TOO_LONG, Kind.ISNS_QUERIED})

IDENTITIES = ("mac", "ip", "hostname", "initiator", "target", "peer")


class Event(NamedTuple):
    """One thing that happened, with the identities it knows.

    ``kind`` is a :class:`Kind` for every event bootsvc itself emits; an
    event from an embedded package (target/, isns/) whose name bootsvc does
    not know yet keeps its name as a plain string instead of being lost.
    A named tuple, not a frozen dataclass: as immutable, and made in a
    third of the time on every event's path.
    """

    kind: Kind | str
    time: float
    mac: str | None = None
    ip: str | None = None
    hostname: str | None = None
    initiator: str | None = None
    target: str | None = None
    peer: str | None = None  # the client's source address ("host" or "host:port")
    fields: Mapping[str, object] = MappingProxyType({})

    @property
    def name(self) -> str:
        return _NAMES.get(self.kind) or str(self.kind)

    @property
    def service(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def level(self) -> int:
        if self.kind in ERRORS:
            return logging.ERROR
        if self.kind in WARNINGS:
            return logging.WARNING
        if self.kind in NOISE:
            return logging.DEBUG
        return logging.INFO

    def identities(self) -> dict[str, str]:
        """The identities it knows, in IDENTITIES' order (the tuple's fields 2 to 7)."""
        return {k: v for k, v in zip(IDENTITIES, self[2:8]) if v is not None}

    def items(self) -> Iterator[tuple[str, object]]:
        """Identities first, then the fields, as a log line shows them."""
        yield from self.identities().items()
        yield from self.fields.items()

    def record(self) -> dict[str, object]:
        """The event as one flat mapping, as the event file holds it (built
        in place: on every event's path)."""
        out: dict[str, object] = {"time": round(self.time, 6), "kind": self.name}
        for key, value in zip(IDENTITIES, self[2:8]):
            if value is not None:
                out[key] = value
        out.update(self.fields)
        return out

    def json_line(self) -> bytes:
        # orjson: on every event's path it is ten times faster than json
        # (docs/benchmarks.md, events); other objects (addresses) as text
        record = self.record()
        try:
            return orjson.dumps(record, default=str, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:  # what orjson will not take (an int beyond 64 bits): the slow way
            return (json.dumps(record, default=str, separators=(",", ":")) + "\n").encode()

    def to_json(self) -> str:
        return self.json_line().decode().rstrip("\n")

    @classmethod
    def from_json(cls, line: str | bytes) -> Event:
        """An event read back from the event file; ValueError if the line is not one."""
        raw = orjson.loads(line)
        if not isinstance(raw, dict) or not isinstance(raw.get("kind"), str) \
                or not isinstance(raw.get("time"), (int, float)):
            raise ValueError(f"not an event: {line[:80]!r}")
        return make(raw.pop("kind"), float(raw.pop("time")), raw)


def kind_of(name: str) -> Kind | str:
    try:
        return Kind(name)
    except ValueError:
        return name


def make(name: Kind | str, when: float, values: Mapping[str, object]) -> Event:
    """An event from a flat mapping (an embedded package's callback, a JSON
    line): the identity keys become identities, the rest stay fields."""
    ids = {k: str(values[k]) for k in IDENTITIES if values.get(k) is not None}
    rest = {k: v for k, v in values.items() if k not in IDENTITIES}
    return Event(kind_of(name) if isinstance(name, str) else name, when, fields=rest, **ids)


def _plain(value: object) -> object:
    """What JSON can carry: enums by value, other objects as text."""
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# -- logfmt ----------------------------------------------------------------------------

_BARE = re.compile(r'[^\s"=\\]+')


def quote(value: object) -> str:
    """A logfmt value: bare when it can be, else double-quoted with ``"``
    and ``\\`` escaped, so values with spaces survive a round trip."""
    if value is True or value is False:
        return "True" if value else "False"  # the flags most events carry: no conversion, no match
    text = str(_plain(value)) if not isinstance(value, str) else value
    if _BARE.fullmatch(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def logfmt(event: Event) -> str:
    parts = [f"event={event.name}"]
    for key, value in zip(IDENTITIES, event[2:8]):  # the identities, as Event.items() gives them
        if value is not None:
            parts.append(f"{key}={quote(value)}")
    parts.extend(f"{k}={quote(v)}" for k, v in event.fields.items())
    return " ".join(parts)


_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"]*)')


def parse_logfmt(line: str) -> dict[str, str]:
    """The key/value pairs of a logfmt line (the inverse of :func:`logfmt`)."""
    out = {}
    for key, value in _PAIR.findall(line):
        if value.startswith('"'):
            value = re.sub(r'\\(.)', lambda m: "\n" if m.group(1) == "n" else m.group(1), value[1:-1])
        out[key] = value
    return out


# -- the bus ---------------------------------------------------------------------------

Subscriber = Callable[[Event], None]


class Emit(Protocol):
    """What a service is given to say what happened (``Bus.emit``)."""

    def __call__(self, kind: Kind, *, mac: str | None = ..., ip: object = ..., hostname: str | None = ...,
                 initiator: str | None = ..., target: str | None = ..., peer: str | None = ...,
                 **fields: object) -> None: ...


def no_events(kind: Kind, **fields: object) -> None:
    """An Emit for a service run on its own (tests, tools): events go nowhere."""


class Bus:
    """One in-process event bus. ``emit`` may be called from any thread
    (the TFTP sender, disk work off the loop); subscribers run in the
    caller's thread, one after another, and must be quick. A subscriber
    that raises is reported and the others still get the event."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._subscribers: tuple[Subscriber, ...] = ()
        self.failures: dict[Subscriber, int] = {}  # how often each subscriber raised

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers = (*self._subscribers, subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers = tuple(s for s in self._subscribers if s is not subscriber)

    def publish(self, event: Event) -> None:
        for s in self._subscribers:
            try:
                s(event)
            except Exception:  # one broken subscriber must not silence the others or the service
                failed = self.failures[s] = self.failures.get(s, 0) + 1
                if failed == 1:  # its first failure with the traceback; not one per event after
                    log.exception("event subscriber %r failed on %s (further failures are only counted)", s,
                                  event.name)

    def emit(self, kind: Kind, *, mac: str | None = None, ip: object = None, hostname: str | None = None,
             initiator: str | None = None, target: str | None = None, peer: str | None = None,
             **fields: object) -> None:
        if None in fields.values():
            fields = {k: v for k, v in fields.items() if v is not None}
        self.publish(Event(kind, self.clock(), mac, None if ip is None else str(ip), hostname, initiator, target,
                           peer, fields))

    def sink(self, service: str) -> Callable[[str, dict[str, object]], None]:
        """A callback for an embedded package (target/, isns/) that reports
        events as ``(name, fields)``: each becomes an event on this bus."""
        def on_event(name: str, fields: dict[str, object]) -> None:
            if "." not in name:
                name = f"{service}.{name}"
            self.publish(make(name, self.clock(), fields))
        return on_event


class LogWriter:
    """The log subscriber: one logfmt line per event, on the logger
    ``bootsvc.<service>`` at the event's level."""

    def __init__(self) -> None:
        # by kind, its logger and level: one lookup on every event's path
        self._by_kind: dict[Kind | str, tuple[logging.Logger, int]] = {}

    def __call__(self, event: Event) -> None:
        found = self._by_kind.get(event.kind)
        if found is None:
            found = self._by_kind[event.kind] = (logging.getLogger(f"bootsvc.{event.service}"), event.level)
        logger, level = found
        if logger.isEnabledFor(level):
            text = logfmt(event)
            traceback = level >= logging.ERROR and sys.exc_info()[0] is not None
            # serve's own handler alone: the line without a LogRecord (bootsvc/log_handler.py)
            if traceback or not say(logger, level, text):
                logger.log(level, "%s", text, exc_info=traceback)


EVENT_FILE = "events.jsonl"
EVENT_FILE_LIMIT = 16 << 20  # bytes before the file is rotated to events.jsonl.1


class EventFile:
    """The JSON-lines subscriber: state_dir/events.jsonl, one event a line,
    rotated once at ``limit`` bytes (one older file is kept). Programs
    follow it (``bootsvc vm``). Events are gathered and written as lines
    with one O_APPEND write at most ``FLUSH_INTERVAL`` later, or as soon as
    ``FLUSH_EVENTS`` are waiting, by a small thread: an encode and a write
    per event cost a DHCP exchange 10 % more CPU (docs/benchmarks.md,
    events).

    The publisher (the event loop) only appends to a list under a lock no
    one holds across I/O: a write that blocks on a busy disk holds up the
    writer thread, never the loop (it stalled DHCP for 100 ms and more,
    docs/benchmarks.md). While the writer is stuck, at most
    ``MAX_PENDING`` events wait; more are dropped and counted in
    ``dropped`` (a line says how many, once the writer moves again)."""

    FLUSH_INTERVAL = 0.1  # seconds an event may wait
    FLUSH_EVENTS = 512
    MAX_PENDING = 200_000  # events held while a write is stuck (~100 MB at most)

    def __init__(self, path: Path, limit: int = EVENT_FILE_LIMIT) -> None:
        self.path = path
        self.limit = limit
        self._lock = threading.Lock()  # the pending list only: never held across I/O
        self._io = threading.Lock()  # the file: writes, rotation, close
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size
        self._pending: list[Event] = []
        self.dropped = 0
        self._said_dropped = 0
        self._closed = threading.Event()
        self._due = threading.Event()  # FLUSH_EVENTS are waiting: write now
        self._flusher = threading.Thread(target=self._flush_often, name="event-file", daemon=True)
        self._flusher.start()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def __call__(self, event: Event) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            if len(self._pending) >= self.MAX_PENDING:
                self.dropped += 1
                return
            self._pending.append(event)
            if len(self._pending) == self.FLUSH_EVENTS:
                self._due.set()

    def _flush_often(self) -> None:
        while not self._closed.is_set():
            self._due.wait(self.FLUSH_INTERVAL)
            self._due.clear()
            self.flush()

    def flush(self) -> None:
        """Write what is waiting (in the caller's thread)."""
        with self._io:
            with self._lock:
                events, self._pending = self._pending, []
                dropped = self.dropped - self._said_dropped
                self._said_dropped = self.dropped
            if self._fd >= 0 and (events or dropped):
                self._write(b"".join(e.json_line() for e in events) + self._drop_line(dropped))

    def _drop_line(self, dropped: int) -> bytes:
        if not dropped:
            return b""
        return Event(Kind.EVENTS_DROPPED, time.time(),
                     fields={"count": dropped, "why": "the event file could not be written fast enough"}).json_line()

    def _write(self, data: bytes) -> None:
        """Under the I/O lock: ``data``, rotating first if it would take the
        file past its limit."""
        if self._size and self._size + len(data) > self.limit:
            os.close(self._fd)
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._fd = self._open()
            self._size = 0
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self._size += len(data)

    def close(self) -> None:
        self._closed.set()
        self._due.set()
        self.flush()
        with self._io:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def read_events(lines: list[str]) -> list[Event]:
    """Events from lines of an event file; lines that are not events
    (a line cut short by a crash) are skipped."""
    out = []
    for line in lines:
        try:
            out.append(Event.from_json(line))
        except ValueError:
            continue
    return out


def logging_bus() -> Bus:
    """A bus whose only subscriber is the log: for commands that run
    without ``bootsvc serve`` (``bootsvc image``)."""
    bus = Bus()
    bus.subscribe(LogWriter())
    return bus
