"""What the target reports to its embedder: every event through one path,
with the same field names (peer, initiator, target, reason/why), and the
target table kept by reference."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from target import LunSpec, Target, TargetServer, TargetSpec
from target.events import Events, logfmt, logfmt_value
from target.pdu import NopIn, NopOut, ScsiResponse
from tests.iscsi_client import INITIATOR, read10, write10
from tests.test_target_wire import IQN, Running, image, logged_in, read_all  # noqa: F401 (image: a fixture)

Event = tuple[str, dict[str, object]]


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()

    def __call__(self, what: str, fields: dict[str, object]) -> None:
        with self.lock:
            self.events.append((what, fields))

    def wait_for(self, what: str, timeout: float = 5.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for name, fields in self.events:
                    if name == what:
                        return fields
            time.sleep(0.02)
        raise AssertionError(f"no {what} in {[e[0] for e in self.events]}")

    def names(self) -> list[str]:
        with self.lock:
            return [e[0] for e in self.events]


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def srv(image: Path, rec: Recorder) -> Iterator[Running]:
    r = Running(image, on_event=rec)
    yield r
    r.stop()


def test_logfmt_quotes_what_needs_it() -> None:
    assert logfmt_value("plain") == "plain"
    assert logfmt_value("") == '""'
    assert logfmt_value('say "hi"') == r'"say \"hi\""'
    assert logfmt_value("a\\b c") == r'"a\\b c"'
    assert logfmt_value("two\nlines") == r'"two\nlines"'
    assert logfmt("iscsi.login", {"peer": "127.0.0.1:5", "why": "x y"}) == 'event=iscsi.login peer=127.0.0.1:5 why="x y"'


def test_without_a_sink_events_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    events = Events(None, logging.getLogger("target.iscsi"))
    with caplog.at_level(logging.INFO, logger="target.iscsi"):
        events.emit("iscsi.login", peer="127.0.0.1:1", initiator="iqn.x")
    assert caplog.records[0].name == "target.iscsi"
    assert caplog.records[0].getMessage() == "event=iscsi.login peer=127.0.0.1:1 initiator=iqn.x"


def test_with_a_sink_nothing_is_logged(srv: Running, rec: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="target"):
        c = logged_in(srv)
        c.logout()
        c.recv()
        rec.wait_for("iscsi.logout")
    assert not [r for r in caplog.records if r.name.startswith("target")]


def test_login_and_logout_carry_the_identities(srv: Running, rec: Recorder) -> None:
    c = logged_in(srv)
    login = rec.wait_for("iscsi.login")
    host, port = c.sock.getsockname()[:2]
    assert login["peer"] == f"{host}:{port}"
    assert login["initiator"] == INITIATOR and login["target"] == IQN
    c.logout()
    c.recv()
    assert rec.wait_for("iscsi.logout")["peer"] == f"{host}:{port}"
    c.close()
    time.sleep(0.2)
    assert "iscsi.session_dropped" not in rec.names()  # a Logout is not a drop


def test_hangup_drops_the_session(srv: Running, rec: Recorder) -> None:
    c = logged_in(srv)
    c.close()
    dropped = rec.wait_for("iscsi.session_dropped")
    assert dropped["reason"] == "connection_lost"
    assert dropped["initiator"] == INITIATOR and dropped["target"] == IQN and dropped["peer"]


def test_reinstatement_drops_the_old_session(srv: Running, rec: Recorder) -> None:
    a = logged_in(srv)
    b = logged_in(srv)  # same ISID: replaces a
    assert rec.wait_for("iscsi.session_dropped")["reason"] == "reinstated"
    a.close()
    b.close()


def test_server_stop_drops_sessions(image: Path, rec: Recorder) -> None:
    r = Running(image, on_event=rec)
    c = logged_in(r)
    r.stop()
    assert rec.wait_for("iscsi.session_dropped")["reason"] == "server_stop"
    c.close()


def test_nop_timeout_drops_the_session(image: Path, rec: Recorder) -> None:
    r = Running(image, on_event=rec, nop_interval=0.2, nop_timeout=0.3)
    try:
        c = logged_in(r)
        assert isinstance(c.recv(timeout=5), NopIn)  # and never answered
        dropped = rec.wait_for("iscsi.session_dropped")
        assert dropped["reason"] == "nop_timeout"
        assert rec.wait_for("iscsi.nop_timeout")["peer"] == dropped["peer"]
        c.close()
    finally:
        r.stop()


def test_failed_login_names_initiator_and_target(srv: Running, rec: Recorder) -> None:
    c = srv.client()
    r = c.login("iqn.2026-11.test:nobody")
    assert r.status_class == 2
    failed = rec.wait_for("iscsi.login_failed")
    assert failed["initiator"] == INITIATOR and failed["target"] == "iqn.2026-11.test:nobody"
    assert failed["status"] == "NOT_FOUND" and failed["why"] and failed["peer"]
    c.close()


def test_reject_names_the_session(srv: Running, rec: Recorder) -> None:
    c = logged_in(srv)
    c.send(NopOut(itt=5, ttt=0x1234, cmdsn=c.cmdsn, immediate=True, data=b"x" * (1 << 20)))
    reject = rec.wait_for("iscsi.reject")
    assert reject["initiator"] == INITIATOR and reject["target"] == IQN and reject["reason"]
    c.close()


def test_the_target_table_is_the_embedders(image: Path, tmp_path: Path) -> None:
    table: dict[str, Target] = {}
    server = TargetServer(table, [])
    assert server.targets is table
    second = tmp_path / "second.img"
    second.write_bytes(bytes(1 << 20))
    table["iqn.2026-11.test:late"] = Target.open(TargetSpec("iqn.2026-11.test:late", (LunSpec(str(second)),)))
    assert "iqn.2026-11.test:late" in server.targets
    table["iqn.2026-11.test:late"].close()


def test_a_login_that_never_finishes_times_out(image: Path, rec: Recorder) -> None:
    r = Running(image, on_event=rec, login_timeout=0.3)
    try:
        c = r.client()
        assert c.recv(timeout=5) is None  # closed without a word
        failed = rec.wait_for("iscsi.login_failed")
        assert "Full Feature Phase" in str(failed["why"]) and failed["peer"]
        c.close()
    finally:
        r.stop()


def test_logout_says_what_the_session_moved(srv: Running, rec: Recorder) -> None:
    """A boot's bytes read and written reach the recorder through the
    session's logout (or drop) event."""
    c = logged_in(srv, MaxRecvDataSegmentLength="8192")
    read_all(c, c.command(read10(0, 8), read=4096))  # one Data-In: the hot path
    read_all(c, c.command(read10(0, 256), read=128 << 10))  # split into many
    itt = c.command(write10(8, 2), write=b"\x5a" * 1024, immediate_len=1024)
    assert isinstance(c.recv(), ScsiResponse) and itt
    c.logout()
    c.recv()
    logout = rec.wait_for("iscsi.logout")
    assert (logout["read_bytes"], logout["written_bytes"], logout["io_errors"]) == (4096 + (128 << 10), 1024, 0)
