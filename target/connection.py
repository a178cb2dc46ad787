"""One TCP connection to the target: asyncio I/O around the login state
machine and the sans-I/O session (RFC 7143 §5: login phase, then full
feature phase).

Reading feeds :class:`~target.framing.PduReader`; each PDU goes to the
:class:`~target.login.Login`, then to the :class:`~target.session.Session`,
and the :mod:`~target.actions` they return are carried out here: PDUs leave
through :class:`~target.sender.Sender` (in order, file data by
``sendfile``), SCSI commands run on their LUN (eagerly, the disk waited for
in the backend's thread), the connection closes. One timer, armed from the
session's ``next_timer()``, drives its keepalive and logout deadlines.
Nothing protocol-specific lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Coroutine, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from .actions import Action, Close, Execute, Send
from .backend import FileExtent, Segment, Zeros, materialize, segments_length
from .eager import Cancellable, run_eager
from .events import peer_text
from .framing import DigestError, PduReader, crc32c_digest, frame, padding
from .login import LOGIN_MAX_DATA, Login, LoginStatus
from .pagecache import resolve_cached, warm
from .pdu import LoginRequest, Pdu, PduFormatError, Reject, RejectReason, Stage
from .scsi import ScsiResult
from .sender import Sender
from .session import DropReason, Link, Session, SessionFailure, Task
from .text import TextFormatError, decode_text

if TYPE_CHECKING:
    from .keys import SessionParams
    from .server import TargetServer
    from .targets import Target


# Past this a data segment is not skipped but taken as proof that the peer
# does not speak iSCSI (the field allows 16 MiB; we declare 256 KiB).
FFP_HARD_LIMIT = 1 << 24
RECV_SIZE = 1 << 18
DRAIN_TIMEOUT = 30.0  # a closing connection waits this long for the initiator to take its last PDUs
CLAIM_TIMEOUT = 10.0  # seconds a login waits for its disk's lock on shared storage (Target.claim)


class IscsiConnection:
    def __init__(self, server: TargetServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.sender = Sender(sock, self.loop)
        self.fd = sock.fileno()
        self.reading = False
        self.finished: asyncio.Future[None] | None = None
        # during login nothing larger than 8 KiB can be valid: refuse it at once
        # rather than wait for megabytes of garbage to arrive
        self.reader = PduReader(max_data=LOGIN_MAX_DATA, hard_limit=LOGIN_MAX_DATA)
        self.cid = 0
        self.joined = False  # the login added this connection to a session that had others (MC/S)
        self.login_cmdsn = 0
        self.session: Session | None = None
        self.closing = False
        # why the connection ends, reported if it takes a session with it
        self.end_reason: DropReason | None = None
        self.peer = peer_text(sock.getpeername())
        self.peer_host: str = sock.getpeername()[0]  # failed logins are counted per address
        self.login: Login | None = None
        self.local_address: tuple[str, int] = sock.getsockname()[:2]
        self.portal_group_tag = 1  # of the portal it came in on: the server sets it at accept
        self.running: set[Cancellable] = set()  # commands and reads that had to wait
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.wake: asyncio.Future[None] | None = None  # the login phase waits for input on it
        # when the PDU now arriving began (None between PDUs), and the reader's
        # count of PDUs when that was noted: a PDU must end pdu_timeout after it began
        self.pdu_began: float | None = None
        self.pdus_seen = 0
        self.header_error_at = -2  # the reader's PDU count at the last header digest error

    # -- output -----------------------------------------------------------------

    def emit(self, pdu: Pdu, segments: Sequence[Segment] | None = None, length: int | None = None) -> None:
        """Send ``pdu``; its data segment is ``segments`` (``length`` bytes,
        counted here when not given) or, without segments, ``pdu.data``."""
        digests = self.reader.digests
        if segments is None:
            self.sender.send(frame(pdu, digests))
            return
        n = segments_length(segments) if length is None else length
        if digests.data and any(isinstance(seg, (FileExtent, Zeros)) for seg in segments):
            # ERL 2: a task that ran on a connection without data digests
            # answers on this one (reassigned): the digest needs the bytes
            segments = (materialize(segments),)
        items = frame(pdu, digests, data_length=n)
        items += segments
        pad = padding(n)
        if pad:
            items.append(pad)
        if digests.data and n:
            # with data digests on, the session hands over bytes, never file extents
            items.append(crc32c_digest(*cast("list[bytes]", segments), pad))
        self.sender.send(items)

    def perform(self, actions: list[Action]) -> None:
        """Carry out what the session asked for, in order. SCSI commands run
        eagerly (target/eager.py): one that never waits is answered here and
        now; the rest continue as tasks."""
        for action in actions:
            if type(action) is Send:
                if action.cid == self.cid or action.cid is None:
                    self.emit(action.pdu, action.segments, action.length)
                else:  # MC/S: a task allegiant to another connection of the session (§5.1)
                    self.server.route(cast(Session, self.session), [action])
            elif type(action) is Execute:
                task = action.task
                if not task.aborted:  # e.g. by an ABORT TASK in the same batch of PDUs
                    session = cast(Session, self.session)
                    result = action.lun.read_now(task.cdb, session.nexus)
                    if result is not None:
                        self._executed(session, task, result, None)
                    else:
                        run_eager(action.lun.execute(task.cdb, action.data_out, session.nexus, task.cmd.edtl),
                                  partial(self._executed, session, task), self.running)
            elif type(action) is Close:
                if action.cid == self.cid:
                    self.end(action)
                else:  # the whole session (None), or another of its connections
                    self.server.route(cast(Session, self.session), [action])

    def end(self, action: Close) -> None:
        if action.after_send:
            self.close_after_send(action.reason)
        else:
            self.close(action.reason)

    def close_after_send(self, reason: DropReason | None = None) -> None:
        """Stop taking input; close once what is queued has left."""
        if self.closing:
            return
        self.closing = True
        self.end_reason = self.end_reason or reason
        self._stop_reading()
        self.loop.call_soon(self._close_if_drained)

    def _close_if_drained(self) -> None:
        """Usually the last PDU (a Logout Response) has already left by the
        next turn of the loop: close at once, without a task (a task and a
        timeout per logout were a fifth of a login's cost, bench/logins.py)."""
        self.sender.flush()
        if not self.sender.queue or self.sender.closed:
            self.close()
        else:
            self.loop.create_task(self._close_when_drained())

    async def _close_when_drained(self) -> None:
        try:
            await asyncio.wait_for(self.sender.drain(), DRAIN_TIMEOUT)
        except asyncio.TimeoutError:
            pass
        self.close()

    def close(self, reason: DropReason | None = None) -> None:
        self.closing = True
        self.end_reason = self.end_reason or reason
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.finished is not None:
            self._finish()
        self.sender.close()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- SCSI commands ------------------------------------------------------------

    def _executed(self, session: Session, task: Task, result: ScsiResult | None,
                  error: BaseException | None) -> None:
        if error is not None:
            self.perform(session.command_failed(task, error))
            return
        assert result is not None
        segments: Sequence[Segment] | None = result.data
        if segments and not task.aborted:
            segments = None if self.reader.digests.data else resolve_cached(segments)
            if segments is None:
                self._spawn(self._executed_slow(session, task, result))
                return
        self.perform(session.command_done(task, result, segments))

    async def _executed_slow(self, session: Session, task: Task, result: ScsiResult) -> None:
        """Data to read from disk first: for a data digest (it needs the
        bytes) or because the page cache does not hold it."""
        if self.reader.digests.data:
            segments: Sequence[Segment] = (await self.loop.run_in_executor(None, materialize, result.data),)
        else:
            await warm(result.data)
            segments = result.data
        self.perform(session.command_done(task, result, segments))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.ensure_future(coro)
        self.running.add(t)
        t.add_done_callback(self.running.discard)

    # -- input ------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._login()
            if self.session is not None and not self.closing:
                await self._full_feature()
        except (ConnectionError, OSError) as e:
            self.server.event("iscsi.connection_lost", peer=self.peer, why=str(e) or type(e).__name__)
        except (PduFormatError, SessionFailure) as e:
            self.end_reason = self.end_reason or DropReason.PROTOCOL_ERROR
            self.server.event("iscsi.stream_error", logging.WARNING, peer=self.peer, why=str(e))
        finally:
            self.close()
            self._stop_reading()  # before the descriptor is closed and its number reused
            session = self.session
            if session is not None and self.server.unbind(session, self):
                self.server.connection_ended(session, self.cid, self.end_reason or DropReason.CONNECTION_LOST)
            if session is None or session.closed:
                # at ERL 2 a command of a failed connection runs on: its task may be reassigned
                for t in list(self.running):
                    t.cancel()
            self.sock.close()

    def _login_failed(self, why: str, **fields: object) -> None:
        """``iscsi.login_failed``, with the names the login had given so far."""
        names = {}
        if self.login is not None:
            p = self.login.params
            names = {k: v for k, v in (("initiator", p.initiator_name), ("target", p.target_name)) if v}
        self.server.event("iscsi.login_failed", peer=self.peer, **names, why=why, **fields)

    async def _recv(self) -> bool:
        """One read in the login phase (False at end of stream). The socket
        is tried first, since the next request is often there already; only
        when it is empty do we wait on a reader callback, which stays
        registered for the whole login (``loop.sock_recv`` added and removed
        the socket in epoll for every request: a third of a login's cost,
        bench/logins.py)."""
        while True:
            try:
                data = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                await self._readable()
                continue
            if not data:
                return False
            self.reader.feed(data)
            return True

    async def _readable(self) -> None:
        self.wake = self.loop.create_future()
        if not self.reading:
            self.loop.add_reader(self.fd, self._login_readable)
            self.reading = True
        try:
            await self.wake
        finally:
            self.wake = None

    def _login_readable(self) -> None:
        if self.wake is None:
            self._stop_reading()  # nobody waits: epoll is level-triggered, it would fire every turn
        elif not self.wake.done():
            self.wake.set_result(None)

    async def _login(self) -> None:
        server = self.server
        login = self.login = Login(ctx=_LoginContext(self), target_prefs=server.key_preferences,
                                   window=server.window, started=self.loop.time(), timeout=server.login_timeout,
                                   discovery_auth=server.discovery_auth, chap_algorithms=server.chap_algorithms,
                                   throttled=server.throttle.refusal(self.peer_host, self.loop.time()))
        timer = self.loop.call_at(login.next_timer(), self._login_timer)
        try:
            await self._login_exchange(login)
        finally:
            timer.cancel()

    def _login_timer(self) -> None:
        assert self.login is not None
        if self.login.handle_timer(self.loop.time()) and self.session is None:
            self._login_failed(f"no Full Feature Phase after {self.login.timeout:g} s")
            self.close()

    async def _login_exchange(self, login: Login) -> None:
        while not self.closing:
            try:
                pdu = self.reader.next_pdu()
            except (DigestError, PduFormatError) as e:
                self._login_failed(str(e))
                return
            if pdu is None:
                if not await self._recv():
                    return
                continue
            if not isinstance(pdu, LoginRequest):
                # §6.1: anything but a Login Request before Full Feature Phase ends the connection
                self.emit(Reject(reason=RejectReason.PROTOCOL_ERROR, data=pdu.encode_bhs()))
                self._login_failed(f"{type(pdu).__name__} before login")
                await self.sender.drain()
                return
            self.cid = pdu.cid
            self.login_cmdsn = pdu.cmdsn
            if pdu.transit and pdu.nsg == Stage.FULL_FEATURE:
                await self._claim_for(login, pdu)
            result = login.receive(pdu)
            self.emit(result.response)
            if result.failed:
                status = LoginStatus((result.response.status_class << 8) | result.response.status_detail)
                if status is LoginStatus.AUTHENTICATION_FAILURE:
                    self.server.throttle.failed(self.peer_host, self.loop.time())
                self._login_failed(result.why, status=status.name)
                await self.sender.drain()
                return
            if result.params is not None:
                self._enter_full_feature(login, result.params)
                return

    async def _claim_for(self, login: Login, pdu: LoginRequest) -> None:
        """Before a login may step into Full Feature Phase: a disk on shared
        storage not yet this server's is claimed (RBD's lock, off the loop),
        once the initiator has proved who it is (no stranger makes this
        server take a disk). If another server holds it, admission refuses
        the login and says who (Target.claim_error)."""
        target = self.server.targets.get(login.params.target_name or _named_target(login, pdu))
        if target is None or target.claimed or login.params.session_type == "Discovery" \
                or (target.auth is not None and not login.authenticated):
            return
        # bounded: a cluster that does not answer must not hold the login
        # (the claim's thread finishes on its own; admission then refuses)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.loop.run_in_executor(None, target.try_claim), CLAIM_TIMEOUT)
        if target.claimed:  # its iSNS registration follows (bootsvc/isns_registration.py)
            self.server.event("disk.claimed", target=target.name, peer=self.peer)

    def _enter_full_feature(self, login: Login, p: SessionParams) -> None:
        assert self.session is not None
        self.reader.max_data = p.target_max_recv
        self.reader.hard_limit = FFP_HARD_LIMIT
        self.reader.digests.header = p.header_digest
        self.reader.digests.data = p.data_digest
        self.session.bind(Link(self.cid, self.peer, self.local_address), login.statsn, self.loop.time(),
                          p.initiator_max_recv)
        self.server.logged_in(self)
        if self.joined:
            # MC/S: not a new login of the machine, one more connection of its session
            self.server.event("iscsi.connection_added", peer=self.peer, initiator=p.initiator_name,
                              target=p.target_name, tsih=login.tsih, cid=self.cid,
                              connections=len(self.session.conns))
            return
        self.server.event("iscsi.login", peer=self.peer, initiator=p.initiator_name, target=p.target_name,
                          session_type=p.session_type, tsih=login.tsih, isid=login.isid.hex(),
                          portal_group=self.portal_group_tag,
                          auth=login.chap.method if login.chap is not None else "none")

    async def _full_feature(self) -> None:
        """Full Feature Phase is driven by a reader callback registered once:
        awaiting ``sock_recv`` per read would add and remove the socket from
        epoll every time, two system calls per command on the hot path."""
        self.finished = self.loop.create_future()
        self._process()  # PDUs that arrived together with the last login request
        if not (self.finished.done() or self.closing):
            self.loop.add_reader(self.fd, self._on_readable)
            self.reading = True
        try:
            await self.finished
        finally:
            self._stop_reading()

    def _finish(self, error: BaseException | None = None) -> None:
        assert self.finished is not None
        if self.finished.done():
            return
        if error is None:
            self.finished.set_result(None)
        else:
            self.finished.set_exception(error)

    def _stop_reading(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False

    def _on_readable(self) -> None:
        reader = self.reader
        # a large data segment is received straight into its own buffer
        into = reader.receive_buffer()
        try:
            if into is None:
                data = self.sock.recv(reader.read_size(RECV_SIZE))
                n = len(data)
            else:
                n = self.sock.recv_into(into)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._finish(e)
            return
        if not n:
            self._finish()
            return
        if into is None:
            reader.feed(data)
        else:
            reader.received(n)
        self._process()

    def _process(self) -> None:
        """Handle every complete PDU received so far."""
        session = self.session
        assert session is not None
        self.sender.corked = True
        try:
            self._handle_input(session, self.reader, self.loop.time())
        finally:
            self.sender.corked = False
        self.sender.flush()
        if self.closing:
            return
        self._watch_partial()
        self.arm()
        if self.sender.congested and self.reading:
            # stop taking commands until the initiator has read some data
            self._stop_reading()
            self.loop.create_task(self._resume_when_drained())

    def _handle_input(self, session: Session, reader: PduReader, now: float) -> None:
        perform = self.perform
        while not self.closing:
            try:
                perform(session.receive_all(reader.pdus(), now, self.cid))
                break
            except DigestError as e:
                if e.header:
                    if self._header_digest_error(session, e, reader.completed):
                        continue
                    self.end_reason = self.end_reason or DropReason.PROTOCOL_ERROR
                    self._finish()
                    return
                perform(session.data_digest_error(e.bhs, str(e), self.cid))
            except PduFormatError as e:
                if not e.bhs:
                    self._finish(e)
                    return
                perform(session.reject(e.bhs, e.reason, str(e), self.cid))
            except SessionFailure as e:
                self._finish(e)
                return

    def _header_digest_error(self, session: Session, e: DigestError, completed: int) -> bool:
        """§7.8: a header that failed its digest cannot be trusted, nor its
        length, so neither can the framing. At ERL 0 the connection ends.
        From ERL 1 the PDU is discarded as far as its length said, and the
        stream taken to be in step unless the next header fails too (there
        are no markers to find the next PDU by, §7.8): True to carry on."""
        carry_on = (session.params.error_recovery_level >= 1 and e.skipped
                    and self.header_error_at != completed - 1)
        self.header_error_at = completed
        self.server.event("iscsi.header_digest_error", logging.WARNING, peer=self.peer,
                          action="discarded" if carry_on else "closed")
        return carry_on

    async def _resume_when_drained(self) -> None:
        await self.sender.drain()
        if self.finished is not None and not self.finished.done() and not self.closing:
            self.loop.add_reader(self.fd, self._on_readable)
            self.reading = True
            self._process()

    # -- the session's timer ----------------------------------------------------------

    def _watch_partial(self) -> None:
        """Note when the PDU now arriving began: on the first read with part
        of it, which is also the read that completed the PDU before it."""
        reader = self.reader
        if not reader.partial:
            self.pdu_began = None
        elif self.pdu_began is None or reader.completed != self.pdus_seen:
            self.pdu_began = self.loop.time()
        self.pdus_seen = reader.completed

    def _pdu_deadline(self) -> float | None:
        if self.pdu_began is None or self.server.pdu_timeout <= 0:
            return None
        return self.pdu_began + self.server.pdu_timeout

    def arm(self) -> None:
        """Have the timer fire by the next deadline: the session's, or the
        end of the PDU now arriving. Deadlines that move later (every PDU
        pushes the keepalive back) leave the timer alone: when it fires
        early the session just names the next one."""
        session = self.session
        deadlines = [d for d in (session.next_timer() if session is not None else None, self._pdu_deadline())
                     if d is not None]
        if not deadlines:
            return
        when = min(deadlines)
        if self.timer is not None:
            if self.timer_at <= when:
                return
            self.timer.cancel()
        self.timer_at = when
        self.timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.closing or self.session is None:
            return
        now = self.loop.time()
        deadline = self._pdu_deadline()
        if deadline is not None and now >= deadline:
            self._stalled()
            return
        self.perform(self.session.handle_timer(now))
        if not self.closing:
            self.arm()

    def _stalled(self) -> None:
        """A PDU began and did not end in time: the peer trickles it, or
        announced a segment it never sends. Either way the stream is lost."""
        self.server.event("iscsi.pdu_timeout", logging.WARNING, peer=self.peer,
                          why=f"PDU incomplete {self.server.pdu_timeout:g} s after it began",
                          pending=self.reader.pending)
        self.end_reason = self.end_reason or DropReason.PDU_TIMEOUT
        self._finish()


def _named_target(login: Login, pdu: LoginRequest) -> str:
    """The TargetName of a login's first request, before the login has read
    it (a login may step from its first request straight to Full Feature
    Phase); "" if there is none or the text is bad (the login says so)."""
    if not login.first:
        return ""
    try:
        return dict(decode_text(bytes(login.pending_text) + bytes(pdu.data))).get("TargetName", "")
    except TextFormatError:
        return ""


class _LoginContext:
    """The server as the login state machine sees it, for one connection."""

    def __init__(self, conn: IscsiConnection) -> None:
        self.conn = conn
        self.portal_group_tag = conn.portal_group_tag

    def find_target(self, name: str) -> Target | None:
        return self.conn.server.targets.get(name)

    def admit(self, isid: bytes, tsih: int, params: SessionParams) -> int:
        return self.conn.server.admit(self.conn, isid, tsih, params)
