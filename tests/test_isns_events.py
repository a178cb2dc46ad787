"""The iSNS server's events: to ``on_event`` when the host gives one (and
then not logged), else one logfmt line each (isns/events.py)."""

from __future__ import annotations

import logging
import socket
import sys

import pytest

from isns.codec import Attr, Message, encode_message, request
from isns.events import logfmt, peer_text
from isns.limits import DIRECT, Origin
from isns.protocol import HEADER_SIZE, Function, Status, Tag
from isns.registry import Registry
from isns.server import IsnsServer
from tests.e2e.peers import LOOPBACK, free_port
from tests.loop_thread import serving

INIT = "iqn.2026-11.test:node01"


def test_logfmt_quotes_what_would_split_a_value() -> None:
    assert logfmt("isns.x", {"entity": "e1", "n": 3}) == "event=isns.x entity=e1 n=3"
    assert logfmt("isns.x", {"why": "no port"}) == 'event=isns.x why="no port"'
    assert logfmt("isns.x", {"why": 'a=b "c" \\d'}) == r'event=isns.x why="a=b \"c\" \\d"'
    assert logfmt("isns.x", {"why": "", "alias": "two\nlines"}) == r'event=isns.x why="" alias="two\nlines"'
    assert logfmt("isns.x", {}) == "event=isns.x"


def test_peer_text() -> None:
    assert peer_text(("127.0.0.1", 3205)) == "127.0.0.1:3205"
    assert peer_text(("::1", 3205, 0, 0)) == "::1:3205"
    assert peer_text(None) == "None"


def _malformed_datagram(srv: IsnsServer) -> None:
    """A request whose attribute runs past the PDU, answered with a format error."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(5)
        (pdu,) = encode_message(request(Function.DEV_ATTR_QRY, 7, Attr(Tag.ISCSI_NAME, INIT)))
        u.sendto(pdu[:HEADER_SIZE] + b"\x00\x00\x00\x20\x00\x00\x01\x00", (LOOPBACK, srv.port))
        data = u.recv(65536)
        assert int.from_bytes(data[HEADER_SIZE:HEADER_SIZE + 4], "big") == Status.MESSAGE_FORMAT_ERROR


def test_events_go_to_on_event_and_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    events: list[tuple[str, dict[str, object], bool]] = []
    srv = IsnsServer(Registry(), LOOPBACK, free_port(),
                     on_event=lambda what, fields: events.append((what, fields, sys.exc_info()[0] is not None)))
    with caplog.at_level(logging.DEBUG, logger="isns"), serving(srv.start, srv.stop):
        _malformed_datagram(srv)
    ((what, fields, in_except),) = events
    assert what == "isns.malformed" and str(fields["peer"]).startswith("127.0.0.1:") and fields["why"]
    assert in_except  # told while the exception is handled
    assert not [r for r in caplog.records if r.name.startswith("isns")]


def test_events_are_logged_in_logfmt_without_on_event(caplog: pytest.LogCaptureFixture) -> None:
    srv = IsnsServer(Registry(), LOOPBACK, free_port())
    with caplog.at_level(logging.INFO, logger="isns"), serving(srv.start, srv.stop):
        _malformed_datagram(srv)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "isns.server"]
    assert line.startswith("event=isns.malformed peer=127.0.0.1:") and ' why="' in line


def test_a_failing_registry_and_store_are_events(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Registry):
        def handle(self, msg: Message, now: float, origin: Origin = DIRECT) -> Message | None:
            raise RuntimeError("a bug")

    class FullDisk:
        def save(self, registry: Registry) -> int:
            raise OSError("disk full")

    srv = IsnsServer(Broken(), LOOPBACK, 0, store=FullDisk())  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="isns"):
        reply = srv.answer(request(Function.DEV_ATTR_QRY, 1, Attr(Tag.ISCSI_NAME, INIT)), ("10.0.0.1", 40000))
    assert reply is not None and reply.status == Status.INTERNAL_ERROR
    error, store = [r for r in caplog.records if r.name == "isns.server"]
    assert error.levelno == logging.ERROR and error.exc_info is not None
    assert error.getMessage() == 'event=isns.error peer=10.0.0.1:40000 function=DEV_ATTR_QRY why="RuntimeError: a bug"'
    assert store.getMessage() == 'event=isns.store_failed why="OSError: disk full"' and store.exc_info is not None
    told: list[str] = []
    srv.on_event = lambda what, fields: told.append(what)
    srv.answer(request(Function.DEV_ATTR_QRY, 2, Attr(Tag.ISCSI_NAME, INIT)), ("10.0.0.1", 40000))
    assert told == ["isns.error", "isns.store_failed"]
