"""DHCP in a process of its own (``dhcp.process: worker``, the default on
a machine with more than one core; docs/dhcp-scaling.md).

``bootsvc serve`` starts ``python -m bootsvc.dhcp.worker`` with a pipe on
each of its standard streams (bootsvc/dhcp/supervisor.py). The worker runs
the code DHCP runs on serve's loop with ``dhcp.process: inline``: the same
sockets, responder, boot planner, lease store and group commit, with an
interpreter lock of its own, so answering DHCP does not wait for iSCSI,
TFTP or the events' subscribers, nor they for it. It owns the lease files.

What it is given, on standard input (bootsvc/dhcp/pipe.py):

- the fleet as DHCP asks it (bootsvc/fleet_copy.py), first and whenever
  it changes (a reload, a machine adopted or let go), replacing the
  one it had at once; and the addresses logged in to their disks;
- the lease writes serve's fleet decides (an unknown machine recorded),
  written with its own next group;
- the answer to each adoption it asked for.

What it sends, on standard output, once per loop iteration: the events of
that iteration as plain tuples and the lease writes it took (serve
publishes the events on its bus and keeps a copy of the leases for TFTP,
HTTP, DNS and the web views); and the adoptions it asks for. Its standard
error is serve's.

It ends when its standard input ends or on SIGTERM: the ACKs of leases
being written still leave, and the last events are sent. Serve dying,
even by SIGKILL, ends it too (PR_SET_PDEATHSIG): it would hold port 67.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import ipaddress
import sqlite3
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable

from ..boot import BootPlanner
from ..events import ERRORS, Kind
from ..fleet_copy import FleetCopy
from ..service import SWITCH_INTERVAL  # as serve's: the group commit's thread and the loop
from ..tftp.files import FileSource
from .leases import LeaseStore, Writes
from .pipe import (Frames, Named, PipeError, Tag, Wire, field, frame, plain, text, texts, unpickled,
                   writes)
from .responder import Responder
from .service import dhcp_services

IN, OUT = 0, 1  # the pipes from and to serve
PR_SET_PDEATHSIG = 1
ADOPT_TIMEOUT = 120.0  # seconds serve may take to make an adopted machine's disk (a Ceph clone, a copy)


class Outbox:
    """What goes to serve: the events of a loop iteration and the lease
    writes taken in it, in one frame (one write, one wake-up of serve,
    however many); an adoption asked for, at once. Written blocking: serve
    reads its end on every loop iteration, and a worker that got ahead of
    it waits rather than keeping an unbounded backlog."""

    def __init__(self, fd: int, clock: Callable[[], float] = time.time) -> None:
        self.fd = fd
        self.clock = clock
        self.events: list[Wire] = []
        self.writes: Named = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.broken = asyncio.Event()

    def emit(self, kind: Kind, *, mac: str | None = None, ip: object = None, hostname: str | None = None,
             initiator: str | None = None, target: str | None = None, peer: str | None = None,
             **fields: object) -> None:
        if kind.value in _TRACED and sys.exc_info()[0] is not None:
            fields["traceback"] = traceback.format_exc()  # serve logs it, as its own log writer would
        self._soon()
        self.events.append((kind.value, self.clock(), mac, None if ip is None else str(ip), hostname, initiator,
                            target, peer, {k: field(v) for k, v in fields.items() if v is not None}))

    def took(self, writes: Writes) -> None:
        if writes:
            self._soon()
            self.writes.extend((statement.name, row) for statement, row in writes)

    def _soon(self) -> None:
        if not self.events and not self.writes and self.loop is not None:
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        if not self.events and not self.writes:
            return
        batch = (self.events, self.writes)
        self.events, self.writes = [], []
        self.send(plain(Tag.BATCH, batch))

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError:  # serve is gone: nobody to answer for
            self.broken.set()


# the kinds logged at ERROR, with the traceback of the failure they report
_TRACED = frozenset(k.value for k in ERRORS)


class Leases(LeaseStore):
    """The lease store, telling serve of every write it hands to a group."""

    def __init__(self, path: os.PathLike[str], out: Outbox) -> None:
        super().__init__(path)  # type: ignore[arg-type]
        self.out = out

    def take(self) -> Writes:
        writes = super().take()
        self.out.took(writes)
        return writes


class Worker:
    """The worker's state: its services and the fleet copy they ask."""

    def __init__(self, copy: FleetCopy, out: Outbox) -> None:
        cfg = copy.cfg
        d = cfg.dhcp
        assert d is not None
        self.out = out
        self.copy = copy
        self.leases = Leases(cfg.state_dir / "leases.db", out)
        self.files = FileSource(list(cfg.tftp.roots) if cfg.tftp else [])
        self.planner = BootPlanner(copy, out.emit, cfg.iscsi.portals[0].port if cfg.iscsi.portals else 3260,  # type: ignore[arg-type]
                                   cfg.http.port if cfg.http else None, has_file=self.files.has)
        self.responder = Responder(list(d.subnets), copy, self.leases, self.planner, d.mode, d.unknown, out.emit)
        self.services = [service for _, service in dhcp_services(d, self.responder, self.adopt)]
        # this loop does nothing but DHCP: a lone batch is made durable here, with no thread hop
        self.services[0].commits.inline_when_idle = True
        self._asked: dict[str, asyncio.Future[None]] = {}  # MACs whose adoption serve was asked for

    # -- from serve ------------------------------------------------------------------

    def received(self, tag: Tag, payload: bytes) -> None:
        """One frame from serve; PipeError if it is not one serve sends."""
        if tag is Tag.TABLE:
            self.table(_table(payload))
        elif tag is Tag.SESSIONS:
            try:
                self.copy.logged_in(frozenset(ipaddress.IPv4Address(a) for a in texts(payload)))
            except ValueError as e:
                raise PipeError(str(e)) from None
        elif tag is Tag.WRITES:
            try:
                self.leases.apply(writes(payload))
            except (ValueError, TypeError) as e:  # a row of the wrong shape
                raise PipeError(f"a lease write that is not one: {e}") from None
            self.services[0].commits.flush()  # with the next group, or WRITE_LATER on
        elif tag is Tag.ADOPTED:
            asked = self._asked.pop(text(payload), None)
            if asked is not None and not asked.done():
                asked.set_result(None)
        else:
            raise PipeError(f"a {tag.name} frame, which only the worker sends")

    def table(self, copy: FleetCopy) -> None:
        """A new copy of the fleet, in place at once (its sessions kept: they come apart)."""
        copy.logged_in(self.copy.sessions)
        old, new = self.copy.cfg, copy.cfg
        self.copy = self.planner.fleet = self.responder.machines = copy  # type: ignore[assignment]
        if new.dhcp is not None and old.dhcp is not None and \
                (new.dhcp.subnets, new.dhcp.unknown) != (old.dhcp.subnets, old.dhcp.unknown):
            self.responder.retune(list(new.dhcp.subnets), new.dhcp.unknown)
        roots = list(new.tftp.roots) if new.tftp else []
        if roots != (list(old.tftp.roots) if old.tftp else []):
            self.files.set_roots(roots)

    async def adopt(self, mac: str) -> None:
        """unknown_machines: default: serve's fleet makes the machine (and
        sends the table with it) before its answer; the caller then answers
        the client from the table it has."""
        asked = self._asked.get(mac)
        if asked is None:
            asked = self._asked[mac] = asyncio.get_running_loop().create_future()
            self.out.send(plain(Tag.ADOPT, mac))
        try:
            await asyncio.wait_for(asyncio.shield(asked), ADOPT_TIMEOUT)
        except asyncio.TimeoutError:
            self._asked.pop(mac, None)


def _table(payload: bytes) -> FleetCopy:
    copy = unpickled(payload)
    if not isinstance(copy, FleetCopy):
        raise PipeError("a table that is not the fleet's")
    return copy


def _first_table(frames: Frames) -> FleetCopy:
    """The table serve sends first (blocking: nothing to do without it)."""
    while True:
        try:
            got = frames.read(IN)
        except EOFError:
            raise PipeError("serve closed the pipe before sending the fleet") from None
        for tag, payload in got:
            if tag is not Tag.TABLE:
                raise PipeError(f"serve sent {tag.name} before the fleet")
            return _table(payload)


async def serve(worker: Worker, frames: Frames) -> int:
    loop = asyncio.get_running_loop()
    out = worker.out
    out.loop = loop
    for service in worker.services:
        try:
            await service.start()
        except OSError as e:
            out.send(plain(Tag.FAILED, f"port {service.port}: {e.strerror or e}"))
            return 1
    gc.collect()
    gc.freeze()  # as serve does (bootsvc/server.py): what start-up made is never collected again
    sys.setswitchinterval(SWITCH_INTERVAL)
    # SIGTERM only: a Ctrl-C at serve's terminal reaches the worker too, and is serve's to act on (main)
    loop.add_signal_handler(signal.SIGTERM, out.broken.set)
    os.set_blocking(IN, False)

    def readable() -> None:
        try:
            got = frames.read(IN)
        except BlockingIOError:
            return
        except EOFError:
            out.broken.set()  # serve is stopping (or gone)
            return
        try:
            for tag, payload in got:
                worker.received(tag, payload)
        except PipeError as e:
            print(f"bootsvc dhcp worker: {e}", file=sys.stderr)
            out.broken.set()

    loop.add_reader(IN, readable)
    out.send(frame(Tag.READY))
    await out.broken.wait()
    loop.remove_reader(IN)
    for service in worker.services:
        await service.stop()  # the ACKs of leases being written still leave
    out.flush()
    return 0


def main() -> int:
    # serve ending, even by SIGKILL, ends the worker: it would hold port 67
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C at serve's terminal is serve's to handle
    # the pipe to serve gets a descriptor of its own, and standard output
    # becomes standard error: a stray print cannot corrupt the frames
    out = Outbox(os.dup(OUT))
    os.dup2(2, OUT)
    frames = Frames()
    try:
        copy = _first_table(frames)
    except (PipeError, OSError) as e:
        out.send(plain(Tag.FAILED, str(e)))
        return 2
    try:
        worker = Worker(copy, out)
    except (OSError, sqlite3.Error) as e:
        out.send(plain(Tag.FAILED, f"the lease store: {e}"))
        return 1
    try:
        if worker.leases.reader:
            out.send(plain(Tag.FAILED, f"{copy.cfg.state_dir / 'leases.db'} is another bootsvc serve's "
                                       "(its lock is held)"))
            return 1
        return asyncio.run(serve(worker, frames))
    finally:
        out.loop = None  # (closed) the last writes go here
        worker.leases.close()
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
