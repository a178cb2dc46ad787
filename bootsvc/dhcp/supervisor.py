"""Serve's end of its DHCP worker process (``dhcp.process: worker``;
bootsvc/dhcp/worker.py, docs/dhcp-scaling.md): starts it, keeps its copy
of the fleet current, publishes its events on the bus, keeps serve's copy
of its leases, makes the machines it asks to adopt, restarts it if it
dies, and stops it.

The worker decides; everything that owns state stays here: the fleet, the
bus and its subscribers (the log, the event file, the flight recorder, the
metrics), so they see a worker's DHCP exactly as they see it inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from types import MappingProxyType

from ..events import Bus, Event, Kind
from ..fleet import Fleet
from .leases import LeaseStore, Named, Writes
from .pipe import Frames, PipeError, Tag, Wire, Writer, batch, pickled, plain, text

log = logging.getLogger("bootsvc.dhcp")

READY_TIMEOUT = 30.0  # seconds the worker may take to open the leases and bind its ports
STOP_TIMEOUT = 10.0  # seconds it may take to write its last leases and send its last events
PIPE_SIZE = 1 << 20  # bytes its events' pipe holds (F_SETPIPE_SZ): a burst does not make it wait for serve
RESTART_AFTER = (1.0, 2.0, 5.0, 10.0, 30.0)  # seconds before each restart of a worker that died, then the last
STEADY = 60.0  # seconds a worker must have served for its next death to start the back-off again
# the fleet changed: the worker's copy is sent again
TABLE_KINDS = frozenset({Kind.FLEET_RELOADED, Kind.DHCP_ADOPTED, Kind.FLEET_ADOPTION_EXPIRED, Kind.DISK_FAILED,
                         Kind.DISK_CLAIMED, Kind.DISK_RENEWED})
# a session began or ended: the addresses no new client may have (Fleet.reserved_ips)
SESSION_KINDS = frozenset({Kind.ISCSI_LOGIN, Kind.ISCSI_LOGOUT, Kind.ISCSI_SESSION_DROPPED})


class LeaseMirror(LeaseStore):
    """Serve's copy of the leases its DHCP worker owns: read from the files
    at start, then kept in step with the writes the worker sends. What
    serve's fleet writes (an unknown machine seen, adopted, let go) goes to
    the worker, which makes it durable with its next group."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, reader=True)
        self.forward: Callable[[Named], None] | None = None
        self.held: Named = []  # written before the worker started: sent once it has

    def write(self, writes: Writes) -> None:
        named = [(statement.name, row) for statement, row in writes]
        if not named:
            return
        if self.forward is None:
            self.held.extend(named)
        else:
            self.forward(named)

    def saw_unknown(self, mac: str, policy: str, now: float, arch: str = "") -> None:
        super().saw_unknown(mac, policy, now, arch)
        self.commit()

    def forget_unknown(self, mac: str) -> None:
        super().forget_unknown(mac)
        self.commit()


class DhcpWorker:
    """The service "dhcp … in a worker process"."""

    def __init__(self, fleet: Fleet, bus: Bus, leases: LeaseMirror,
                 command: tuple[str, ...] = (sys.executable, "-m", "bootsvc.dhcp.worker")) -> None:
        self.fleet = fleet
        self.bus = bus
        self.leases = leases
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._out: Writer | None = None
        self._in = -1
        self._frames = Frames()
        self._ready: asyncio.Future[None] | None = None
        self._ended: asyncio.Future[None] | None = None
        self._stopping = False
        self._table_due = self._sessions_due = False
        self._sessions: frozenset[IPv4Address] = frozenset()
        self._tasks: set[asyncio.Task[None]] = set()
        self._kinds: dict[str, Kind | str] = {k.value: k for k in Kind}
        self._deaths = 0
        self._started = 0.0

    # -- start and stop --------------------------------------------------------------

    async def start(self) -> None:
        """The worker started and serving; OSError (a port taken, a lease
        store another process holds) with its reason if not."""
        self.loop = asyncio.get_running_loop()
        self._stopping = False
        await self._spawn()
        self.bus.subscribe(self)
        self.leases.forward = self._send_writes

    def trouble(self) -> str | None:
        """Why it does not serve now, once it has started (/healthz says it)."""
        return None if self._started else "the DHCP worker process ended; it is being started again"

    async def started(self) -> None:
        """Another of its sockets: open if the worker serves (it opened them all)."""
        if self.proc is None or self._started == 0.0:
            raise OSError("the DHCP worker is not serving")

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        proc = self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            close_fds=True)
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(OSError):  # a smaller pipe only makes the worker wait for serve sooner
            fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._in = proc.stdout.fileno()
        os.set_blocking(self._in, False)
        self._out = Writer(proc.stdin.fileno(), loop)
        self._frames = Frames()
        self._ready, self._ended = loop.create_future(), loop.create_future()
        loop.add_reader(self._in, self._readable)
        self._sessions = self.fleet.logged_in()
        self._out.send(pickled(Tag.TABLE, self.fleet.copy()))
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), READY_TIMEOUT)
        except (asyncio.TimeoutError, OSError) as e:
            await self._end_process()
            raise OSError(str(e) or f"the DHCP worker did not start in {READY_TIMEOUT:.0f} s") from None
        self._started = loop.time()
        if self.leases.held:  # serve's lease writes while no worker ran
            held, self.leases.held = self.leases.held, []
            self._send_writes(held)

    async def stop(self) -> None:
        """The worker writes its last leases, sends its last events, and ends."""
        self._stopping = True
        self.bus.unsubscribe(self)
        self.leases.forward = None
        for task in list(self._tasks):
            task.cancel()
        await self._end_process()

    async def _end_process(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self._close_out()  # its standard input ends: it stops
        if self._ended is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._ended), STOP_TIMEOUT)
        if proc.poll() is None:
            proc.terminate()
        await self._reap(proc)
        self._close_in()
        self.proc = None

    @staticmethod
    async def _reap(proc: subprocess.Popen[bytes]) -> int | None:
        """Its exit status, once it has ended (killed if it takes more than STOP_TIMEOUT)."""
        try:
            return await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            return await asyncio.to_thread(proc.wait, STOP_TIMEOUT)

    def _close_out(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()

    def _close_in(self) -> None:
        if self._in >= 0:
            assert self.loop is not None
            self.loop.remove_reader(self._in)
            self._in = -1
            if self.proc is not None and self.proc.stdout is not None:
                self.proc.stdout.close()

    # -- from the worker ---------------------------------------------------------------

    def _readable(self) -> None:
        try:
            got = self._frames.read(self._in)
        except BlockingIOError:
            return
        except (OSError, EOFError):
            self._gone()
            return
        try:
            for tag, payload in got:
                self._received(tag, payload)
        except PipeError as e:
            self.bus.emit(Kind.DHCP_ERROR, why=f"the DHCP worker sent {e}: it is stopped (and started again)")
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()

    def _received(self, tag: Tag, payload: bytes) -> None:
        if tag is Tag.BATCH:
            events, writes = batch(payload)
            if writes:
                try:
                    self.leases.replay(writes)
                except (ValueError, TypeError) as e:  # a row of the wrong shape
                    raise PipeError(f"a lease write that is not one: {e}") from None
            self._publish(events)
        elif tag is Tag.ADOPT:
            self._spawn_task(self._adopt(text(payload)))
        elif tag is Tag.READY:
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        elif tag is Tag.FAILED:
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(OSError(text(payload)))
        else:
            raise PipeError(f"a {tag.name} frame, which only serve sends")

    def _publish(self, events: list[Wire]) -> None:
        kinds, publish = self._kinds, self.bus.publish
        for kind, when, mac, ip, hostname, initiator, target, peer, fields in events:
            trace = fields.pop("traceback", None) if fields else None
            publish(Event(kinds.get(kind, kind), when, mac, ip, hostname, initiator, target, peer,
                          fields or MappingProxyType({})))
            if trace:
                log.error("the DHCP worker's traceback of the %s above:\n%s", kind, str(trace).rstrip())

    def _gone(self) -> None:
        """Its pipe ended: it stopped as asked, or died (started again after a pause)."""
        self._close_in()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(OSError("the DHCP worker ended before it served (its reason is above)"))
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)
        if self._stopping or self._started == 0.0:
            return  # stopping, or a start that failed: its caller says so
        assert self.loop is not None
        if self.loop.time() - self._started > STEADY:
            self._deaths = 0  # it had served a while: a new run of deaths
        self._started = 0.0
        self._close_out()
        self._spawn_task(self._restart())

    async def _restart(self) -> None:
        """After a death: said with its exit status, then a new worker after
        a pause that grows while they keep dying (RESTART_AFTER)."""
        code = await self._reap(self.proc) if self.proc is not None else None
        self.proc = None
        why = "ended" if code is None or code >= 0 else f"was killed by signal {-code}"
        while not self._stopping:
            pause = RESTART_AFTER[min(self._deaths, len(RESTART_AFTER) - 1)]
            self._deaths += 1
            status = f" (exit status {code})" if code is not None and code > 0 else ""
            self.bus.emit(Kind.DHCP_ERROR, why=f"the DHCP worker process {why}{status}; "
                                               f"started again in {pause:.0f} s")
            await asyncio.sleep(pause)
            try:
                await self._spawn()
                return
            except OSError as e:
                why, code = f"did not start again ({e})", None

    # -- to the worker -------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        """The bus: a change of the fleet, or of who is logged in, is sent
        once per loop iteration however many events said it. Any thread
        may publish, so it is handed to the loop."""
        if event.kind in TABLE_KINDS and not self._table_due:
            self._table_due = True
            self._on_loop(self._table_if_due)
        elif event.kind in SESSION_KINDS and not self._sessions_due:
            self._sessions_due = True
            self._on_loop(self._send_sessions)

    def _on_loop(self, call: Callable[[], None]) -> None:
        if self.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to send to
                self.loop.call_soon_threadsafe(call)

    def _send(self, data: bytes) -> None:
        if self._out is not None:
            self._out.send(data)

    def _table_if_due(self) -> None:
        if self._table_due:  # else an adoption's answer took it first
            self._send_table()

    def _send_table(self) -> None:
        self._table_due = False
        self._send(pickled(Tag.TABLE, self.fleet.copy()))

    def _send_sessions(self) -> None:
        self._sessions_due = False
        sessions = self.fleet.logged_in()
        if sessions != self._sessions:
            self._sessions = sessions
            self._send(plain(Tag.SESSIONS, [str(ip) for ip in sessions]))

    def _send_writes(self, writes: Named) -> None:
        if self._started:
            self._send(plain(Tag.WRITES, writes))
        else:  # no worker serves: sent to the next one
            self.leases.held.extend(writes)

    async def _adopt(self, mac: str) -> None:
        """The worker asks for a machine: the fleet makes it; the table that
        has it goes before the answer."""
        try:
            await self.fleet.adopt(mac)
        except Exception as e:  # a bug must not leave the worker waiting: it is answered all the same
            self.bus.emit(Kind.DHCP_ERROR, mac=mac, why=f"adoption failed: {e!r}")
        if self._table_due:
            self._send_table()
        self._send(plain(Tag.ADOPTED, mac))

    def _spawn_task(self, work: object) -> None:
        assert self.loop is not None
        task = self.loop.create_task(work)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
