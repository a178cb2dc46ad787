"""The pipe between serve and its DHCP worker (bootsvc/dhcp/pipe.py), the
fleet's copy the worker is sent (bootsvc/fleet_copy.py), serve's copy of
the worker's leases (bootsvc/dhcp/supervisor.py's LeaseMirror) and the
worker's handling of what serve sends (bootsvc/dhcp/worker.py). The
worker with real clients: tests/e2e/test_dhcp_worker.py."""

from __future__ import annotations

import asyncio
import marshal
import os
from pathlib import Path

import pytest

from bootsvc.config import load
from bootsvc.dhcp import pipe
from bootsvc.dhcp.leases import Lease, LeaseState, LeaseStore
from bootsvc.dhcp.message import IPv4
from bootsvc.dhcp.pipe import Frames, PipeError, Tag, Writer
from bootsvc.dhcp.supervisor import LeaseMirror
from bootsvc.events import Bus
from bootsvc.fleet import Fleet
from bootsvc.fleet_copy import CHAP_ASKED, FleetCopy
from tests.test_fleet import A, B, lab

EVENT = ("dhcp.ack", 1.5, A, "10.9.0.5", "a", None, None, None, {"xid": 7, "ipxe": True})
PUT = ("put", ("10.9.0.5", A, "bound", 2e9, "a"))


def test_frames_arrive_whole_however_the_bytes_are_cut() -> None:
    data = pipe.plain(Tag.BATCH, ([EVENT], [PUT])) + pipe.plain(Tag.ADOPT, B) + pipe.frame(Tag.READY)
    for cut in (1, 2, 5, 7, len(data)):
        frames, got = Frames(), []
        for at in range(0, len(data), cut):
            got.extend(frames.feed(data[at:at + cut]))
        assert [t for t, _ in got] == [Tag.BATCH, Tag.ADOPT, Tag.READY]
        assert pipe.batch(got[0][1]) == ([EVENT], [PUT]) and pipe.text(got[1][1]) == B
        assert not frames.buffer


def test_frames_are_read_from_a_pipe_into_one_reused_buffer() -> None:
    """Frames.read: what the pipe holds, whole frames out, the rest kept
    for the next read; nothing yet is BlockingIOError, the end EOFError."""
    data = pipe.plain(Tag.BATCH, ([EVENT], [PUT])) + pipe.plain(Tag.ADOPT, B)
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        frames = Frames()
        with pytest.raises(BlockingIOError):
            frames.read(r)
        os.write(w, data[:9])
        assert list(frames.read(r)) == []  # a frame's first bytes: kept
        os.write(w, data[9:])
        got = list(frames.read(r))
        assert [t for t, _ in got] == [Tag.BATCH, Tag.ADOPT] and pipe.batch(got[0][1]) == ([EVENT], [PUT])
        os.write(w, pipe.frame(Tag.READY))
        assert [t for t, _ in frames.read(r)] == [Tag.READY]
        assert not frames.buffer
        os.close(w)
        w = -1
        with pytest.raises(EOFError):
            frames.read(r)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


@pytest.mark.parametrize("data, why", [
    (pipe.HEADER.pack(b"?", 0), "tagged"),
    (pipe.HEADER.pack(b"B", pipe.MAX_FRAME + 1), "at most"),
])
def test_a_frame_that_is_not_one_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(PipeError, match=why):
        list(Frames().feed(data))


@pytest.mark.parametrize("value", [
    None, (), ([],), ([("k",)], []), ([EVENT[:8] + ("not fields",)], []), ([EVENT], [("put",)]),
    ([EVENT], [("put", (object.__name__, [1]))]), ([(1, *EVENT[1:])], []),
])
def test_a_batch_of_the_wrong_shape_is_refused(value: object) -> None:
    with pytest.raises(PipeError):
        pipe.batch(marshal.dumps(value))
    with pytest.raises(PipeError):
        pipe.batch(b"\xffnot marshal")


def test_an_events_fields_cross_the_pipe_as_what_the_log_shows() -> None:
    """Outbox.emit: enums by their value (a ``str`` or ``int`` enum too,
    which marshal would refuse as it is), other objects as text."""
    from bootsvc.dhcp.message import MessageType
    from bootsvc.dhcp.responder import Mode
    from bootsvc.dhcp.worker import Outbox
    from bootsvc.events import Kind

    r, w = os.pipe()
    try:
        out = Outbox(w, clock=lambda: 1.5)
        out.emit(Kind.DHCP_ACK, mac=A, ip=IPv4("10.9.0.5"), mode=Mode.PROXY, message=MessageType.ACK,
                 subnet=IPv4("10.9.0.0"), xid=7, ipxe=True, none=None)
        out.flush()
        frames = list(Frames().read(r))
    finally:
        os.close(r)
        os.close(w)
    assert [t for t, _ in frames] == [Tag.BATCH]
    events, _ = pipe.batch(frames[0][1])
    assert events == [("dhcp.ack", 1.5, A, "10.9.0.5", None, None, None, None,
                       {"mode": "proxy", "message": 5, "subnet": "10.9.0.0", "xid": 7, "ipxe": True})]


def test_writer_keeps_what_a_full_pipe_does_not_take() -> None:
    async def main() -> bytes:
        read, write = os.pipe()
        try:
            writer = Writer(write, asyncio.get_running_loop())
            big = os.urandom(1 << 20)  # more than a pipe holds
            writer.send(big)
            writer.send(b"end")
            assert writer.pending  # the rest waits; the loop was not blocked
            got = bytearray()
            os.set_blocking(read, False)
            for _ in range(2000):  # bounded: 1 MiB through a 64 KiB pipe
                try:
                    got += os.read(read, 1 << 16)
                except BlockingIOError:
                    await asyncio.sleep(0.001)
                if len(got) == len(big) + 3:
                    break
            writer.close()
            assert bytes(got[:len(big)]) == big
            return bytes(got[len(big):])
        finally:
            os.close(read)
            os.close(write)

    assert asyncio.run(main()) == b"end"


def test_the_fleets_copy_answers_as_the_fleet_and_holds_no_secret(tmp_path: Path) -> None:
    extra = "listen: {dhcp: {address: 10.9.0.1}, http: 10.9.0.1:8080}\ndhcp: {subnet: 10.9.0.0/24}\n"
    machines = (f"  {A}: {{hostname: a, ip: 10.9.0.11, chap: {{user: a, secret: secret-of-a-12345}}}}\n"
                f"  {B}: {{hostname: b}}\n")
    cfg = load(lab(tmp_path, machines, extra=extra))
    fleet = Fleet(cfg, Bus())
    fleet.open()
    try:
        copy = fleet.copy()
        data = pipe.pickled(Tag.TABLE, copy)
        assert b"secret-of-a" not in data
        table = pipe.unpickled(data[pipe.HEADER.size:])
        assert isinstance(table, FleetCopy)
        for mac in (A, B):
            m, mine = fleet.machine(mac), table.machine(mac)
            assert m is not None and mine is not None
            assert (mine.hostname, mine.ip, mine.initiator_iqn, mine.target_iqn) == (
                m.hostname, m.ip, m.initiator_iqn, m.target_iqn)
            assert table.servable(mine) == fleet.servable(m) and table.profile(mine).name == fleet.profile(m).name
            assert (table.auth(mine) is CHAP_ASKED) == (fleet.auth(m) is not None)
        assert IPv4("10.9.0.11") in table.reserved_ips() and IPv4("10.9.0.12") not in table.reserved_ips()
        table.logged_in(frozenset({IPv4("10.9.0.12")}))  # a session from there: not given to another client
        assert IPv4("10.9.0.12") in table.reserved_ips()
    finally:
        fleet.close()


def test_serves_copy_of_the_leases_follows_the_worker_and_forwards_its_own(tmp_path: Path) -> None:
    path = tmp_path / "leases.db"
    owner = LeaseStore(path)  # the worker's
    owner.put(Lease(IPv4("10.9.0.5"), A, LeaseState.BOUND, 2e9, "a"))
    owner.commit()
    mirror = LeaseMirror(path)  # serve's: reads what is there, takes no lock
    try:
        assert not owner.reader and mirror.reader and mirror.for_mac(A) is not None
        mirror.replay([("put", ("10.9.0.6", B, "bound", 2e9, "b")), ("drop", ("10.9.0.5",))])
        assert mirror.holder(IPv4("10.9.0.6"), 0).mac == B and mirror.for_mac(A) is None  # type: ignore[union-attr]
        mirror.saw_unknown("52:54:00:00:00:09", "discover", 5.0, "0")  # before the worker started: held
        sent: list[list[tuple[str, tuple[object, ...]]]] = []
        mirror.forward = sent.append
        mirror.forget_unknown("52:54:00:00:00:08")
        assert [w[0][0] for w in (mirror.held, *sent)] == ["seen", "forget"]
        owner.apply(mirror.held + sent[0])  # the worker writes them with its next group
        owner.commit()
        reader = LeaseStore(path, reader=True)
        assert [u[0] for u in reader.unknown_machines()] == ["52:54:00:00:00:09"]
        reader.close()
        owner.apply([("nonsense", ())])  # a statement the store does not know is left out, as in its journal
        assert not owner.unwritten
    finally:
        mirror.close()
        owner.close()
