"""/metrics from the event bus (bootsvc/metrics.py): each protocol's
requests, bytes per machine with a bounded host label, boot durations and
failures by rule, parsed back with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from bootsvc.events import Bus, Event, Kind
from bootsvc.inventory import Machine
from bootsvc.metrics import OTHER, Metrics

A = Machine(mac="52:54:00:00:00:0a", hostname="pc-a", profile="disk", initiator_iqn="iqn.2026-11.test:pc-a",
            target_iqn="iqn.2026-11.test:boot.pc-a")


class Fleet:
    def mac_of(self, event: Event) -> str | None:
        if event.mac is not None:
            return event.mac
        return A.mac if event.initiator == A.initiator_iqn else None

    def machine(self, mac: str) -> Machine | None:
        return A if mac == A.mac else None


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def test_counts_from_events() -> None:
    bus = Bus()
    metrics = Metrics(Fleet(), sessions=lambda: 3)
    bus.subscribe(metrics)
    bus.emit(Kind.DHCP_OFFER, mac=A.mac)
    bus.emit(Kind.DHCP_ACK, mac=A.mac)
    bus.emit(Kind.DHCP_ACK, mac=A.mac)
    bus.emit(Kind.TFTP_SENT, file="undionly.kpxe")
    bus.emit(Kind.TFTP_NOT_FOUND, file="nope")
    bus.emit(Kind.HTTP_REQUEST, path="/boot/x.ipxe", status=200)
    bus.emit(Kind.HTTP_REQUEST, path="/x", status=404)
    bus.emit(Kind.HTTP_REQUEST, path="/x", status="garbage")  # not a status: not a label
    bus.emit(Kind.ISCSI_LOGIN, initiator=A.initiator_iqn)
    bus.emit(Kind.ISCSI_LOGIN_FAILED, initiator="iqn.2026-11.evil:x")
    bus.emit(Kind.ISCSI_LOGOUT, initiator=A.initiator_iqn, read_bytes=4096, written_bytes=512)
    bus.emit(Kind.ISCSI_SESSION_DROPPED, initiator=A.initiator_iqn, read_bytes=1000, written_bytes=0)
    for i in range(50):  # made-up initiators and host names: all one label
        bus.emit(Kind.ISCSI_LOGOUT, initiator=f"iqn.2026-11.evil:{i}", hostname=f"evil{i}", read_bytes=1)
    bus.emit(Kind.BOOT_BOOTED, mac=A.mac, seconds=12.5)
    bus.emit(Kind.BOOT_BOOTED, mac=A.mac, seconds=200.0)
    bus.emit(Kind.BOOT_FAILED, mac=A.mac, rule="login_refused", diagnosis="iSCSI login refused by CHAP")
    bus.emit(Kind.BOOT_FAILED, mac=A.mac, rule="made up <script>", diagnosis="?")
    got = samples(metrics)
    assert got[("bootsvc_dhcp_replies_total", (("type", "offer"),))] == 1
    assert got[("bootsvc_dhcp_replies_total", (("type", "ack"),))] == 2
    assert got[("bootsvc_tftp_transfers_total", (("outcome", "sent"),))] == 1
    assert got[("bootsvc_tftp_transfers_total", (("outcome", "not_found"),))] == 1
    assert got[("bootsvc_http_requests_total", (("status", "200"),))] == 1
    assert got[("bootsvc_http_requests_total", (("status", "404"),))] == 1
    assert got[("bootsvc_iscsi_logins_total", (("outcome", "accepted"),))] == 1
    assert got[("bootsvc_iscsi_logins_total", (("outcome", "refused"),))] == 1
    assert got[("bootsvc_iscsi_sessions", ())] == 3
    assert got[("bootsvc_iscsi_read_bytes_total", (("host", "pc-a"),))] == 5096
    assert got[("bootsvc_iscsi_written_bytes_total", (("host", "pc-a"),))] == 512
    assert got[("bootsvc_iscsi_read_bytes_total", (("host", OTHER),))] == 50
    hosts = {dict(k[1]).get("host") for k in got if k[0] == "bootsvc_iscsi_read_bytes_total"}
    assert hosts == {"pc-a", OTHER}
    assert got[("bootsvc_boot_duration_seconds_count", ())] == 2
    assert got[("bootsvc_boot_duration_seconds_bucket", (("le", "15.0"),))] == 1
    assert got[("bootsvc_boot_duration_seconds_sum", ())] == 212.5
    assert got[("bootsvc_boot_failures_total", (("rule", "login_refused"),))] == 1
    assert got[("bootsvc_boot_failures_total", (("rule", "stopped"),))] == 1


def test_private_registries() -> None:
    one, two = Metrics(Fleet()), Metrics(Fleet())
    one(Event(Kind.DHCP_OFFER, 0.0))
    assert samples(one)[("bootsvc_dhcp_replies_total", (("type", "offer"),))] == 1
    assert samples(two)[("bootsvc_dhcp_replies_total", (("type", "offer"),))] == 0  # each type from the start
