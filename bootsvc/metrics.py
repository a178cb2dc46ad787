"""``/metrics``: Prometheus counters made from the event bus (DESIGN.md
"Events": metrics is one more subscriber; nothing parses log text).

What is counted: DHCP replies, TFTP transfers, HTTP requests by status,
iSCSI logins, the bytes each machine's sessions moved (when a session
ends, as the flight recorder counts them), stalled requests to each
machine's disk (``disk.stalled``), boot durations (``boot.booted``)
and failed boots by the diagnosis rule (``boot.failed``'s ``rule``); the
iSCSI sessions open now are asked of the target server when scraped.

Every label set is bounded: a host label is only ever a fleet machine's
name (anything else counts as ``_other``), a rule one of the recorder's
rules, a status one HTTP status. A flood of random MACs cannot grow the
registry. The registry is private (no global one), so two servers in one
process (tests) do not share counters. The text format is bootsvc's own
(bootsvc/prometheus.py: prometheus_client is Apache-2.0 only). The cost on the
event path is a dict lookup and an increment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .events import Event, Kind
from .prometheus import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from .recorder.diagnosis import FAILURE_RULES
from .recorder.recorder import Identities

# the classic text format generate_latest writes (what every Prometheus scrapes)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "_other"  # the host label of bytes moved by no fleet machine (no host name has an underscore)
BOOT_SECONDS = (5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)
_SESSION_ENDS = (Kind.ISCSI_LOGOUT, Kind.ISCSI_SESSION_DROPPED)


class Metrics:
    """The metrics subscriber: ``bus.subscribe(metrics)``; ``exposition()``
    is what ``GET /metrics`` answers."""

    def __init__(self, fleet: Identities, sessions: Callable[[], int] = lambda: 0) -> None:
        self.fleet = fleet
        self.registry = registry = CollectorRegistry()
        dhcp = Counter("bootsvc_dhcp_replies", "DHCP replies sent, by message type", ["type"], registry=registry)
        tftp = Counter("bootsvc_tftp_transfers", "TFTP read requests, by outcome", ["outcome"], registry=registry)
        logins = Counter("bootsvc_iscsi_logins", "iSCSI logins, by outcome", ["outcome"], registry=registry)
        self.http = Counter("bootsvc_http_requests", "HTTP requests answered, by status", ["status"],
                            registry=registry)
        self.read = Counter("bootsvc_iscsi_read_bytes", "Bytes read by each machine's ended iSCSI sessions",
                            ["host"], registry=registry)
        self.written = Counter("bootsvc_iscsi_written_bytes",
                               "Bytes written by each machine's ended iSCSI sessions", ["host"], registry=registry)
        self.boot_seconds = Histogram("bootsvc_boot_duration_seconds",
                                      "Seconds from a boot ROM's first DHCP offer to the OS reading its root",
                                      buckets=BOOT_SECONDS, registry=registry)
        self.failures = Counter("bootsvc_boot_failures", "Failed boots, by the diagnosis rule that explains them",
                                ["rule"], registry=registry)
        self.stalls = Counter("bootsvc_disk_stalls", "Requests to each machine's disk that waited over "
                              "storage.stall_after seconds (disk.stalled)", ["host"], registry=registry)
        active = Gauge("bootsvc_iscsi_sessions", "iSCSI sessions logged in now", registry=registry)
        active.set_function(lambda: float(sessions()))
        # kind -> the one counter child it increments: the event path's dict lookup
        self._simple: dict[Kind | str, Any] = {Kind.DHCP_OFFER: dhcp.labels("offer"), Kind.DHCP_ACK: dhcp.labels("ack"),
                        Kind.DHCP_NAK: dhcp.labels("nak"), Kind.TFTP_SENT: tftp.labels("sent"),
                        Kind.TFTP_FAILED: tftp.labels("failed"), Kind.TFTP_NOT_FOUND: tftp.labels("not_found"),
                        Kind.TFTP_REFUSED: tftp.labels("refused"), Kind.ISCSI_LOGIN: logins.labels("accepted"),
                        Kind.ISCSI_LOGIN_FAILED: logins.labels("refused")}
        self._special: dict[Kind | str, Callable[[Event], None]] = {
            Kind.HTTP_REQUEST: self._http, Kind.ISCSI_LOGOUT: self._session_end,
            Kind.ISCSI_SESSION_DROPPED: self._session_end, Kind.BOOT_BOOTED: self._booted,
            Kind.BOOT_FAILED: self._failed, Kind.DISK_STALLED: self._stalled}

    def __call__(self, event: Event) -> None:
        child = self._simple.get(event.kind)
        if child is not None:
            child.inc()
            return
        special = self._special.get(event.kind)
        if special is not None:
            special(event)

    def _http(self, event: Event) -> None:
        status = event.fields.get("status")
        if isinstance(status, int) and 100 <= status <= 599:
            self.http.labels(str(status)).inc()

    def _session_end(self, event: Event) -> None:
        host = self._host(event)
        self.read.labels(host).inc(_count(event.fields.get("read_bytes")))
        self.written.labels(host).inc(_count(event.fields.get("written_bytes")))

    def _stalled(self, event: Event) -> None:
        self.stalls.labels(self._host(event)).inc()

    def _host(self, event: Event) -> str:
        """The label of the machine an event is about: a fleet machine's
        name, never a name a client made up."""
        mac = self.fleet.mac_of(event)
        machine = self.fleet.machine(mac) if mac is not None else None
        return machine.hostname if machine is not None else OTHER

    def _booted(self, event: Event) -> None:
        seconds = event.fields.get("seconds")
        if isinstance(seconds, (int, float)) and seconds >= 0:
            self.boot_seconds.observe(seconds)

    def _failed(self, event: Event) -> None:
        rule = str(event.fields.get("rule", "stopped"))
        self.failures.labels(rule if rule in FAILURE_RULES else "stopped").inc()

    def exposition(self) -> tuple[bytes, str]:
        """The body and content type of ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE


def _count(value: object) -> int:
    return value if isinstance(value, int) and value > 0 else 0
