"""The typed event bus: logfmt that survives a round trip, the JSON-lines
event file (rotation, lines cut short), subscribers that fail alone, and
events from embedded packages (target/, isns/) mapped to identities."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootsvc.events import Bus, Event, EventFile, Kind, LogWriter, logfmt, make, parse_logfmt, read_events

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,10}", fullmatch=True).filter(lambda k: k != "event"), text,
                       max_size=6))
def test_logfmt_values_survive_a_round_trip(fields: dict[str, str]) -> None:
    e = Event(Kind.BOOT_REFUSED, 0.0, fields=fields)
    back = parse_logfmt(logfmt(e))
    assert back.pop("event") == "boot.refused"
    assert back == fields


def test_logfmt_quotes_what_needs_it() -> None:
    e = Event(Kind.BOOT_REFUSED, 0.0, mac="52:54:00:00:00:01", hostname="node01",
              fields={"why": 'its disk is not "served"', "empty": "", "n": 3})
    assert logfmt(e) == ('event=boot.refused mac=52:54:00:00:00:01 hostname=node01 '
                         'why="its disk is not \\"served\\"" empty="" n=3')


@given(st.dictionaries(st.sampled_from(["mac", "ip", "initiator", "why", "bytes", "ok"]),
                       st.one_of(text, st.integers(-(1 << 63), (1 << 63) - 1), st.booleans(), st.floats(allow_nan=False, allow_infinity=False)), max_size=6),
       st.floats(min_value=0, max_value=4e9))
def test_json_lines_round_trip(values: dict[str, object], when: float) -> None:
    e = make(Kind.TFTP_SENT, round(when, 6), values)
    [back] = read_events([e.to_json()])
    assert back.kind is Kind.TFTP_SENT and back.time == pytest.approx(e.time)
    assert back.identities() == e.identities() and dict(back.fields) == dict(e.fields)


def test_a_failing_subscriber_does_not_silence_the_others(caplog: pytest.LogCaptureFixture) -> None:
    bus = Bus(clock=lambda: 5.0)
    got: list[Event] = []

    def broken(e: Event) -> None:
        raise RuntimeError("boom")

    bus.subscribe(broken)
    bus.subscribe(got.append)
    bus.emit(Kind.DHCP_ACK, mac="52:54:00:00:00:01", ip=None, bytes=None, arch=0)
    assert [(e.kind, e.time, e.ip, dict(e.fields)) for e in got] == [(Kind.DHCP_ACK, 5.0, None, {"arch": 0})]
    assert "boom" in caplog.text


def test_embedded_packages_events_get_identities() -> None:
    bus = Bus(clock=lambda: 1.0)
    got: list[Event] = []
    bus.subscribe(got.append)
    bus.sink("iscsi")("iscsi.login", {"initiator": "iqn.x:a", "target": "iqn.x:boot.a", "peer": "10.0.0.5:5000",
                                      "session_type": "Normal"})
    bus.sink("isns")("something_new", {"entity": "e"})  # a name bootsvc does not know yet is kept
    assert got[0].kind is Kind.ISCSI_LOGIN and got[0].initiator == "iqn.x:a" and got[0].peer == "10.0.0.5:5000"
    assert got[0].fields == {"session_type": "Normal"}
    assert got[1].kind == "isns.something_new" and got[1].service == "isns"


def test_log_levels_and_logger_names(caplog: pytest.LogCaptureFixture) -> None:
    bus = Bus()
    bus.subscribe(LogWriter())
    with caplog.at_level(logging.INFO):
        bus.emit(Kind.BOOT_REFUSED, mac="52:54:00:00:00:01", why="no disk")
        bus.emit(Kind.TFTP_MALFORMED, peer="10.0.0.1", why="junk")  # a client's garbage: DEBUG only
    assert [(r.name, r.levelno) for r in caplog.records] == [("bootsvc.boot", logging.WARNING)]


def test_event_file_lines_arrive_within_its_interval(tmp_path: Path) -> None:
    f = EventFile(tmp_path / "events.jsonl")
    bus = Bus(clock=lambda: 2.0)
    bus.subscribe(f)
    try:
        bus.emit(Kind.DHCP_ACK, mac="52:54:00:00:00:01")
        for _ in range(50):
            if (tmp_path / "events.jsonl").read_text():
                break
            time.sleep(0.02)
        [e] = read_events((tmp_path / "events.jsonl").read_text().splitlines())
        assert e.kind is Kind.DHCP_ACK
    finally:
        f.close()


def test_event_file_rotates_and_skips_cut_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    f = EventFile(path, limit=400)
    bus = Bus(clock=lambda: 2.0)
    bus.subscribe(f)
    for i in range(10):
        bus.emit(Kind.TFTP_SENT, peer="10.0.0.1", file=f"f{i}", bytes=i)
        f.flush()  # what its thread does every 0.1 s
    f.close()
    old, new = (tmp_path / "events.jsonl.1").read_text(), path.read_text()
    assert old and new and len(new) <= 400
    names = [e.fields["file"] for e in read_events((old + new).splitlines() + ['{"kind": "tftp.se'])]
    assert names[-1] == "f9" and len(names) <= 10


def test_every_event_name_the_packages_emit_is_a_kind() -> None:
    """target/ and isns/ name their events as strings (they do not import
    bootsvc): each of those names must be a Kind, so subscribers match
    typed values and nothing falls through as an unknown string."""
    import re

    root = Path(__file__).resolve().parent.parent
    names = set()
    for package in ("target", "isns", "bootsvc"):
        for source in (root / package).rglob("*.py"):
            found = re.findall(r"""(?:event|_event)\(\s*f?["']([a-z0-9_]+\.[a-z0-9_.{}]+)["']""",
                               source.read_text())
            # isns/server.py names SCN and ESI delivery events as isns.{what}_...
            names |= {n.replace("{what}", w) for n in found for w in ("scn", "esi")}
    for source in (root / "target").rglob("*.py"):  # target/ passes its names through Events.emit
        names |= set(re.findall(r"""["']((?:iscsi|qcow2)\.[a-z_]+)["']""", source.read_text()))
    assert names, "no event names found: the pattern is out of date"
    assert sorted(n for n in names if n not in {k.value for k in Kind}) == []


def test_identity_fields_are_in_the_order_record_reads_them() -> None:
    from bootsvc.events import IDENTITIES
    assert Event._fields[2:8] == IDENTITIES


def test_the_publisher_is_not_held_up_while_the_event_file_write_is_stuck(tmp_path: Path) -> None:
    """A write blocked on a busy disk holds up the writer thread only: the
    event loop publishing meanwhile returns at once (it used to wait for the
    writer's lock, a DHCP stall of 100 ms and more); events past
    MAX_PENDING are dropped and a line says how many."""
    import threading
    import time

    entered, release = threading.Event(), threading.Event()

    class Stuck(EventFile):
        def _write(self, data: bytes) -> None:
            entered.set()
            release.wait(10)
            super()._write(data)

    f = Stuck(tmp_path / "events.jsonl")
    f.MAX_PENDING = 50
    f(Event(Kind.DHCP_OFFER, 1.0, mac="52:54:00:00:00:01"))
    assert entered.wait(5), "the writer thread did not write"
    started = time.monotonic()
    for i in range(60):
        f(Event(Kind.DHCP_ACK, 2.0, mac=f"52:54:00:00:01:{i:02x}"))
    held = time.monotonic() - started
    release.set()
    f.close()
    assert held < 0.5, f"publishing waited {held:.2f} s for a stuck write"
    events = read_events((tmp_path / "events.jsonl").read_text().splitlines())
    assert [e.name for e in events].count("dhcp.ack") == 50
    dropped = [e for e in events if e.name == "events.dropped"]
    assert len(dropped) == 1 and dropped[0].fields["count"] == 10
