"""One TCP connection to the target: asyncio I/O around the login state
machine and the session (RFC 7143 §5: login phase, then full feature phase).

Reading feeds :class:`~target.framing.PduReader`; writing goes through
:class:`~target.sender.Sender` so responses keep their order and file data
leaves by ``sendfile``. Nothing protocol-specific lives here.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from .backend import Segment, segments_length
from .events import peer_text
from .framing import DigestError, PduReader, crc32c_digest, frame, padding
from .login import Login, LoginStatus
from .pdu import LoginRequest, NopOut, Pdu, PduFormatError, Reject, RejectReason
from .sender import Sender
from .session import DropReason, Session, SessionFailure

if TYPE_CHECKING:
    from .keys import SessionParams
    from .server import TargetServer
    from .targets import Target


LOGIN_MAX_DATA = 8192  # §13.12: the limit before MaxRecvDataSegmentLength is declared
LOGIN_TIMEOUT = 30.0
# Past this a data segment is not skipped but taken as proof that the peer
# does not speak iSCSI (the field allows 16 MiB; we declare 256 KiB).
FFP_HARD_LIMIT = 1 << 24
RECV_SIZE = 1 << 18


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
        self.statsn = 0
        self.cid = 0
        self.login_cmdsn = 0
        self.session: Session | None = None
        self.closing = False
        # why the connection ends, reported if it takes a session with it
        self.end_reason: DropReason | None = None
        self.peer = peer_text(sock.getpeername())
        self.login: Login | None = None
        self.local_address: tuple[str, int] = sock.getsockname()[:2]
        self.last_rx = time.monotonic()
        self.ping_ttt = 0
        self.ping_sent = 0.0

    # -- output -----------------------------------------------------------------

    def emit(self, pdu: Pdu, segments: Sequence[Segment] | None = None, length: int | None = None) -> None:
        """Send ``pdu``; its data segment is ``segments`` (``length`` bytes,
        counted here when not given) or, without segments, ``pdu.data``."""
        digests = self.reader.digests
        if segments is None:
            self.sender.send(frame(pdu, digests))
            return
        n = segments_length(segments) if length is None else length
        items = frame(pdu, digests, data_length=n)
        items += segments
        pad = padding(n)
        if pad:
            items.append(pad)
        if digests.data and n:
            # with data digests on, the session hands over bytes, never file extents
            items.append(crc32c_digest(*cast("list[bytes]", segments), pad))
        self.sender.send(items)

    def close_after_send(self, reason: DropReason | None = None) -> None:
        self.closing = True
        self.end_reason = self.end_reason or reason
        self.loop.create_task(self._close_when_drained())

    async def _close_when_drained(self) -> None:
        try:
            await asyncio.wait_for(self.sender.drain(), 30)
        except asyncio.TimeoutError:
            pass
        self.close()

    def close(self, reason: DropReason | None = None) -> None:
        self.closing = True
        self.end_reason = self.end_reason or reason
        if self.finished is not None:
            self._finish()
        self.sender.close()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- input ------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await asyncio.wait_for(self._login(), LOGIN_TIMEOUT)
            if self.session is not None:
                await self._full_feature()
        except (asyncio.TimeoutError, ConnectionError, OSError) as e:
            self.server.event("iscsi.connection_lost", peer=self.peer, why=str(e) or type(e).__name__)
        except (PduFormatError, SessionFailure) as e:
            self.end_reason = self.end_reason or DropReason.PROTOCOL_ERROR
            self.server.event("iscsi.stream_error", logging.WARNING, peer=self.peer, why=str(e))
        finally:
            self.close()
            if self.session is not None and self.session.conn is self:
                self.session.close(self.end_reason or DropReason.CONNECTION_LOST)
            self.sock.close()

    def _login_failed(self, why: str, **fields: object) -> None:
        """``iscsi.login_failed``, with the names the login had given so far."""
        names = {}
        if self.login is not None:
            p = self.login.params
            names = {k: v for k, v in (("initiator", p.initiator_name), ("target", p.target_name)) if v}
        self.server.event("iscsi.login_failed", peer=self.peer, **names, why=why, **fields)

    async def _recv(self) -> bool:
        data = await self.loop.sock_recv(self.sock, RECV_SIZE)
        if not data:
            return False
        self.last_rx = time.monotonic()
        self.reader.feed(data)
        return True

    async def _login(self) -> None:
        login = self.login = Login(ctx=_LoginContext(self), target_prefs=self.server.key_preferences,
                                   window=self.server.window)
        while True:
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
            result = login.receive(pdu)
            self.statsn = login.statsn
            self.emit(result.response)
            if result.failed:
                status = LoginStatus((result.response.status_class << 8) | result.response.status_detail)
                self._login_failed(result.why, status=status.name)
                await self.sender.drain()
                return
            if result.params is not None:
                p = result.params
                self.reader.max_data = p.target_max_recv
                self.reader.hard_limit = FFP_HARD_LIMIT
                self.reader.digests.header = p.header_digest
                self.reader.digests.data = p.data_digest
                self.server.event("iscsi.login", peer=self.peer, initiator=p.initiator_name, target=p.target_name,
                                  session_type=p.session_type, tsih=login.tsih)
                return

    async def _full_feature(self) -> None:
        """Full Feature Phase is driven by a reader callback registered once:
        awaiting ``sock_recv`` per read would add and remove the socket from
        epoll every time, two system calls per command on the hot path."""
        assert self.session is not None
        pinger = self.loop.create_task(self._pinger()) if self.server.nop_interval > 0 else None
        self.finished = self.loop.create_future()
        self._process()  # PDUs that arrived together with the last login request
        if not self.finished.done():
            self.loop.add_reader(self.fd, self._on_readable)
            self.reading = True
        try:
            await self.finished
        finally:
            self._stop_reading()
            if pinger is not None:
                pinger.cancel()

    def _finish(self, error: BaseException | None = None) -> None:
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
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._finish(e)
            return
        if not data:
            self._finish()
            return
        self.last_rx = time.monotonic()
        self.reader.feed(data)
        self._process()

    def _process(self) -> None:
        """Handle every complete PDU received so far."""
        session = self.session
        assert session is not None
        reader = self.reader
        self.sender.corked = True
        try:
            self._handle_input(session, reader)
        finally:
            self.sender.corked = False
        if self.closing:
            self._finish()
            return
        self.sender.flush()
        if self.sender.congested and self.reading:
            # stop taking commands until the initiator has read some data
            self._stop_reading()
            self.loop.create_task(self._resume_when_drained())

    def _handle_input(self, session: Session, reader: PduReader) -> None:
        while not self.closing:
            try:
                for pdu in reader.pdus():
                    if type(pdu) is NopOut and pdu.itt == 0xFFFFFFFF and pdu.ttt == self.ping_ttt:
                        self.ping_sent = 0.0
                    session.receive(pdu)
                    if self.closing:
                        break
                break
            except DigestError as e:
                if e.header:  # §7.8: the header cannot be trusted, so neither can the framing
                    self.server.event("iscsi.header_digest_error", logging.WARNING, peer=self.peer)
                    self.end_reason = self.end_reason or DropReason.PROTOCOL_ERROR
                    self._finish()
                    return
                session.reject(e.bhs, RejectReason.DATA_DIGEST_ERROR, str(e))
            except PduFormatError as e:
                if not e.bhs:
                    self._finish(e)
                    return
                session.reject(e.bhs, e.reason, str(e))
            except SessionFailure as e:
                self._finish(e)
                return

    async def _resume_when_drained(self) -> None:
        await self.sender.drain()
        if not self.finished.done() and not self.closing:
            self.loop.add_reader(self.fd, self._on_readable)
            self.reading = True
            self._process()

    async def _pinger(self) -> None:
        """§11.19: ping an idle initiator; drop it if it stops answering."""
        interval = self.server.nop_interval
        while not self.closing:
            await asyncio.sleep(interval / 2)
            now = time.monotonic()
            if self.ping_sent and now - self.ping_sent > self.server.nop_timeout:
                self.server.event("iscsi.nop_timeout", peer=self.peer)
                self.close(DropReason.NOP_TIMEOUT)
                return
            if not self.ping_sent and now - self.last_rx > interval and self.session is not None:
                self.ping_ttt = (self.ping_ttt % 0xFFFF) + 1 | 0x80000000
                self.ping_sent = now
                self.session.ping(self.ping_ttt)


class _LoginContext:
    """The server as the login state machine sees it, for one connection."""

    def __init__(self, conn: IscsiConnection) -> None:
        self.conn = conn
        self.portal_group_tag = conn.server.portal_group_tag

    def find_target(self, name: str) -> Target | None:
        return self.conn.server.targets.get(name)

    def admit(self, isid: bytes, tsih: int, params: SessionParams) -> int:
        return self.conn.server.admit(self.conn, isid, tsih, params)

