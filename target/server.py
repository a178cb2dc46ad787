"""The iSCSI target server: portals, targets and the session table
(RFC 7143 §4.3 session identity, §6.3.5 session reinstatement).

Embeddable: ``TargetServer(targets, portals)``, ``await start()``,
``await stop()``. Events (login, logout, first read, ...) go to an optional
callback so a host application can build timelines and metrics from them
(see :mod:`target.events`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass

from .actions import Action, Close, Execute
from .connection import IscsiConnection
from .chap import ALL_ALGORITHMS, ChapAlgorithm, ChapAuth
from .events import EventSink, Events
from .keys import SessionParams, declared_max_recv
from .limits import (
    DATA_OUT_TIMEOUT,
    DISCOVERY_TIMEOUT,
    MAX_UNLOGGED,
    MAX_UNLOGGED_PER_SOURCE,
    PDU_TIMEOUT,
    REPORT_INTERVAL,
    SESSION_WRITE_LIMIT,
    LoginGate,
)
from .login import LOGIN_TIMEOUT, LoginFailed, LoginStatus
from .session import DropReason, Keepalive, Session
from .targets import Target
from .throttle import LoginThrottle

log = logging.getLogger("target.iscsi")
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends RST


@dataclass(frozen=True)
class Portal:
    """An address the target listens on, in target portal group ``tpgt``
    (RFC 7143 §4.4.1; 0: the server numbers it, see :class:`TargetServer`)."""

    host: str
    port: int = 3260
    tpgt: int = 0

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class TargetServer:
    """The target: listens on ``portals`` and serves ``targets``.

    ``targets`` is either a mapping from IQN to :class:`Target`, kept by
    reference so the embedder owns the one table of targets (add or remove
    entries while serving; logins look names up at login time), or an
    iterable of targets made into such a mapping here.

    Each portal is in the target portal group its ``tpgt`` names; a portal
    that names none is put in group ``portal_group_tag`` + its index, so
    by default every portal is its own group: its own SCSI target port,
    its own path (:mod:`target.scsi.ports`). A session belongs to the
    group it logged in through (§4.4.1: its SSID is ISID and TPGT).

    ``nop_interval``/``nop_timeout`` set the keepalive (§11.19, 0 turns it
    off); ``login_timeout`` is how long a connection may take to reach Full
    Feature Phase.

    Authentication is per target (``TargetSpec.auth``: CHAP, mutual CHAP or
    none); ``discovery_auth`` is what a discovery session must prove (None:
    discovery is open: it shows only names, never data), and
    ``chap_algorithms`` the CHAP_A values accepted (§12.1.3; e.g. leave out
    MD5 where every initiator does SHA-256). Failed logins are counted per
    source address (:class:`~target.throttle.LoginThrottle`).

    Bounds on what a peer may cost (:mod:`target.limits`): a PDU must be
    complete ``pdu_timeout`` seconds after its first bytes; a Discovery
    session that asks nothing for ``discovery_timeout`` seconds is ended;
    at most ``max_unlogged`` connections, ``max_unlogged_per_source`` from
    one address, may be waiting to log in (more are closed at accept and
    reported once per second as ``iscsi.connections_refused``); a session
    solicits at most ``session_write_limit`` bytes of write data ahead of
    writing it. At ErrorRecoveryLevel >= 1 a write whose Data-Out stops
    arriving short of what was asked gets a recovery R2T for the rest after
    ``data_out_timeout`` to twice as long (RFC 7143 §11.8). 0 turns a
    timeout off.

    ``on_event(what, fields)`` receives every event (``iscsi.login``,
    ``iscsi.session_dropped``, ``iscsi.reject``, ...); when it is given the
    target does not log them itself. Without it each is logged in logfmt on
    the ``target.iscsi`` logger.
    """

    def __init__(self, targets: MutableMapping[str, Target] | Iterable[Target], portals: Iterable[Portal], *,
                 portal_group_tag: int = 1, window: int = 128, nop_interval: float = 15.0,
                 nop_timeout: float = 30.0, login_timeout: float = LOGIN_TIMEOUT,
                 key_preferences: dict[str, str] | None = None, on_event: EventSink | None = None,
                 discovery_auth: ChapAuth | None = None,
                 chap_algorithms: tuple[ChapAlgorithm, ...] = ALL_ALGORITHMS,
                 throttle: LoginThrottle | None = None,
                 pdu_timeout: float = PDU_TIMEOUT, discovery_timeout: float = DISCOVERY_TIMEOUT,
                 max_unlogged: int = MAX_UNLOGGED, max_unlogged_per_source: int = MAX_UNLOGGED_PER_SOURCE,
                 session_write_limit: int = SESSION_WRITE_LIMIT,
                 data_out_timeout: float = DATA_OUT_TIMEOUT) -> None:
        self.targets: MutableMapping[str, Target] = (
            targets if isinstance(targets, Mapping) else {t.name: t for t in targets})
        self.portal_list = [p if p.tpgt else Portal(p.host, p.port, portal_group_tag + i)
                            for i, p in enumerate(portals)]
        self.window = window
        self.nop_interval = nop_interval
        self.nop_timeout = nop_timeout
        self.login_timeout = login_timeout
        self.key_preferences = key_preferences or {}
        declared_max_recv(self.key_preferences)  # a value out of range is refused here, not at each login
        self.discovery_auth = discovery_auth
        self.chap_algorithms = chap_algorithms
        self.throttle = throttle or LoginThrottle()
        self.pdu_timeout = pdu_timeout
        self.discovery_timeout = discovery_timeout
        self.session_write_limit = session_write_limit
        self.data_out_timeout = data_out_timeout
        self.gate = LoginGate(max_unlogged, max_unlogged_per_source)
        self.unlogged: dict[IscsiConnection, str] = {}  # connections the gate admitted, to their source
        self.place_freed = asyncio.Event()  # a connection waiting to log in logged in or went
        self.refusal_report: asyncio.TimerHandle | None = None
        self.events = Events(on_event, log)
        self.sessions: dict[int, Session] = {}
        # the connections each session runs on, by CID (MC/S: several)
        self.bound: dict[Session, dict[int, IscsiConnection]] = {}
        self.next_tsih = 1
        self.listeners: list[socket.socket] = []
        self.accept_tasks: list[asyncio.Task[None]] = []
        self.connections: set[IscsiConnection] = set()
        self.conn_tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for portal in self.portal_list:
            family = socket.AF_INET6 if ":" in portal.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((portal.host, portal.port))
            except OSError as e:
                sock.close()
                raise OSError(e.errno, f"cannot listen on {portal}: {e.strerror}") from e
            sock.listen(128)
            sock.setblocking(False)
            self.listeners.append(sock)
            self.accept_tasks.append(loop.create_task(self._accept_loop(sock, portal.tpgt)))
            self.event("iscsi.listening", portal=str(portal))

    async def _accept_loop(self, listener: socket.socket, tpgt: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listener)
            except OSError as e:  # e.g. EMFILE: keep serving the sessions we have
                self.event("iscsi.accept_failed", logging.WARNING, why=str(e))
                await asyncio.sleep(0.5)
                continue
            host = address[0]
            if self.gate.crowded(host):
                await self._place_for(host)
            admitted, evict = self.gate.admit(host)
            if evict is not None:
                self._evict(evict)
            if not admitted:
                self._refuse(sock)
                continue
            conn = self._connection(sock, host)
            if conn is None:
                continue
            conn.portal_group_tag = tpgt
            task = loop.create_task(self._serve(conn))
            self.conn_tasks.add(task)
            task.add_done_callback(self.conn_tasks.discard)

    async def _place_for(self, host: str) -> None:
        """Every place for a connection waiting to log in is taken, one or
        so per address: many machines booting at once. Wait until one logs
        in or goes (at most the login timeout) instead of resetting this
        one, as an initiator takes a reset for a failed boot. Nothing more
        is accepted meanwhile: the kernel's listen backlog and the
        initiators' SYN retries hold the rest of the storm."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.login_timeout
        while self.gate.crowded(host) and loop.time() < deadline:
            self.place_freed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.place_freed.wait(), deadline - loop.time())

    def _refuse(self, sock: socket.socket) -> None:
        """Over the cap of connections waiting to log in: close at once with
        a reset (no TIME_WAIT kept for a flood) and report within a second."""
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        sock.close()
        self._schedule_report()

    def _schedule_report(self) -> None:
        if self.refusal_report is None:
            self.refusal_report = asyncio.get_running_loop().call_later(REPORT_INTERVAL, self._report_refusals)

    def _evict(self, host: str) -> None:
        """Close the oldest connection from ``host`` still waiting to log in
        (the gate has already given its place away)."""
        for conn, source in self.unlogged.items():
            if source == host:
                del self.unlogged[conn]
                conn.close()
                break
        self._schedule_report()

    def _report_refusals(self) -> None:
        """One event for every connection refused since the last report; the
        source refused most often is its ``peer``."""
        self.refusal_report = None
        refused = self.gate.take_refused()
        if refused:
            (top, _), = refused.most_common(1)
            self.event("iscsi.connections_refused", logging.WARNING, peer=top, count=refused.total(),
                       sources=len(refused), waiting=self.gate.waiting,
                       why=f"over {self.gate.total} connections waiting to log in, "
                           f"or {self.gate.per_source} from one address (the busiest address's oldest "
                           "one makes way for a quieter address)")

    def logged_in(self, conn: IscsiConnection) -> None:
        """``conn`` reached Full Feature Phase (or closed): it no longer
        counts against the cap on connections waiting to log in."""
        host = self.unlogged.pop(conn, None)
        if host is not None:
            self.gate.release(host)
            self.place_freed.set()

    def _connection(self, sock: socket.socket, host: str) -> IscsiConnection | None:
        """The connection for an accepted socket, counted as waiting to log in
        from here on (so it can be evicted at once)."""
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = IscsiConnection(self, sock)
        except OSError:  # reset before we got to it
            self.gate.release(host)
            self.place_freed.set()
            sock.close()
            return None
        self.unlogged[conn] = host
        self.connections.add(conn)
        return conn

    async def _serve(self, conn: IscsiConnection) -> None:
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            self.logged_in(conn)

    async def stop(self) -> None:
        if self.refusal_report is not None:
            self.refusal_report.cancel()
            self._report_refusals()
        for t in self.accept_tasks:
            t.cancel()
        for sock in self.listeners:
            sock.close()
        self.accept_tasks.clear()
        self.listeners.clear()
        for conn in list(self.connections):
            conn.close(DropReason.SERVER_STOP)
        if self.conn_tasks:
            await asyncio.wait(list(self.conn_tasks), timeout=5)
        for session in list(self.sessions.values()):  # ERL 2: kept for reassignment with no connection
            session.close(DropReason.SERVER_STOP)
        for t in self.targets.values():
            t.close()

    # -- what sessions and logins ask -------------------------------------------

    def event(self, what: str, level: int = logging.INFO, /, **fields: object) -> None:
        self.events.emit(what, level, **fields)

    def visible_targets(self, initiator_name: str) -> list[Target]:
        return [t for t in self.targets.values() if t.allows(initiator_name)]

    def portals(self, local: tuple[str, int]) -> list[str]:
        """TargetAddress values (§13.8, appendix C): each portal with its
        group tag, wildcard ones as the address the initiator reached us on."""
        out = []
        for p in self.portal_list:
            host = local[0] if p.host in ("0.0.0.0", "::") else p.host
            addr = f"[{host}]:{p.port}" if ":" in host else f"{host}:{p.port}"
            out.append(f"{addr},{p.tpgt}")
        return out

    @property
    def port_groups(self) -> tuple[int, ...]:
        """The target portal group tags, each once, in order."""
        return tuple(dict.fromkeys(p.tpgt for p in self.portal_list))

    def forget(self, session: Session) -> None:
        if self.sessions.get(session.tsih) is session:
            del self.sessions[session.tsih]
        self.bound.pop(session, None)

    def drop_after_send(self, session: Session, reason: DropReason) -> None:
        for conn in list(self.bound.get(session, {}).values()):
            conn.close_after_send(reason)

    def route(self, session: Session, actions: list[Action]) -> None:
        """Carry out a session's actions on the connections they name (MC/S:
        a task's PDUs go out on its own connection, §5.1); a Close without
        a CID ends every connection of the session. Actions for a
        connection that is gone are dropped with it."""
        conns = self.bound.get(session, {})
        for action in actions:
            if type(action) is Close and action.cid is None:
                for conn in list(conns.values()):
                    conn.end(action)
                continue
            cid = action.cid if type(action) is not Execute else None
            conn = conns.get(cid) if cid is not None else next(iter(conns.values()), None)
            if conn is not None:
                conn.perform([action])

    def unbind(self, session: Session, conn: IscsiConnection) -> bool:
        """``conn`` ended: whether it was still one of ``session``'s (not
        replaced by a login with its CID, §6.3.4)."""
        conns = self.bound.get(session)
        if conns is None or conns.get(conn.cid) is not conn:
            return False
        del conns[conn.cid]
        return True

    def connection_ended(self, session: Session, cid: int, reason: DropReason) -> None:
        """One of ``session``'s connections is gone: the session decides
        what becomes of its tasks (target.allegiance). At ERL 2 it may
        outlive its last connection for Time2Retain: a timer here then
        ends it if nobody comes back."""
        loop = asyncio.get_running_loop()
        self.route(session, session.connection_lost(cid, reason, loop.time()))
        if session.closed:
            return
        if not self.bound.get(session):
            self._retain(session)
        for conn in self.bound[session].values():
            conn.arm()  # its timer now also serves the failed connection's deadline

    def _retain(self, session: Session) -> None:
        when = session.next_timer()
        if when is None:
            session.close(DropReason.CONNECTION_LOST)
            return
        asyncio.get_running_loop().call_at(when, self._retention_due, session)

    def _retention_due(self, session: Session) -> None:
        if session.closed or self.bound.get(session):
            return  # ended, or a connection came back and drives its timers
        session.handle_timer(asyncio.get_running_loop().time())  # nowhere to send anything
        if not session.closed:
            self._retain(session)

    def admit(self, conn: IscsiConnection, isid: bytes, tsih: int, params: SessionParams) -> int:
        """Create the session for a login entering Full Feature Phase, or
        reinstate one (§6.3.5): a new leading login with the ISID of a live
        session between the same initiator and target, through the same
        portal group, replaces it. Through another group it is another
        session (§4.4.1: a session is ISID plus TPGT), another path."""
        tpgt = conn.portal_group_tag
        if tsih:
            return self._reconnect(conn, isid, tsih, params)
        target = self.targets.get(params.target_name) if params.session_type == "Normal" else None
        nexus = (isid, params.initiator_name, tpgt)
        # a session of the same initiator instance coming back is the same
        # boot (§6.3.5 reinstatement); any other first session is a new one
        reinstating = target is not None and any(
            (s.isid, s.params.initiator_name, s.portal_group_tag) == nexus for s in target.sessions)
        if target is not None and not target.claimed:
            # shared storage: the connection tried to claim the disk (IscsiConnection._claim_for)
            raise LoginFailed(LoginStatus.SERVICE_UNAVAILABLE,
                              target.claim_error or f"{target.name}'s disk is not this server's (shared storage)")
        if target is not None and target.one_writer:
            self._one_writer(conn, target, params, isid)
        for s in list(self.sessions.values()):
            if (s.isid, s.params.initiator_name, s.portal_group_tag) == nexus \
                    and s.params.target_name == params.target_name:
                self.event("iscsi.session_reinstated", peer=conn.peer, initiator=params.initiator_name,
                           target=params.target_name, tsih=s.tsih)
                self._drop(s, DropReason.REINSTATED)
        if target is not None and target.standby is not None and not reinstating and not target.sessions:
            target.swap_standby()
        tsih = self._new_tsih()
        session = Session(self, params, isid, tsih, conn.login_cmdsn, target, window=self.window,
                          keepalive=Keepalive(self.nop_interval, self.nop_timeout),
                          discovery_timeout=self.discovery_timeout, write_limit=self.session_write_limit,
                          portal_group_tag=tpgt, data_out_timeout=self.data_out_timeout)
        self.sessions[tsih] = session
        self.bound[session] = {conn.cid: conn}
        if target is not None:
            target.sessions.add(session)
        conn.session = session
        return tsih

    def _reconnect(self, conn: IscsiConnection, isid: bytes, tsih: int, params: SessionParams) -> int:
        """A login naming a session's TSIH (§5.3.4): with the CID of one of
        its connections, connection reinstatement (§6.3.4: Session.bind ends
        the old one's tasks, or at ERL 2 keeps them for reassignment); with
        a new CID, one more connection (MC/S), up to MaxConnections. A
        session is its ISID and TSIH between one initiator and target, in
        one portal group (§4.4.1): named through another group, or by
        anyone else, no such session exists; nor for someone who proved
        another CHAP name than the session's."""
        old = self.sessions.get(tsih)
        if old is None or old.closed or (old.isid, old.params.initiator_name, old.params.target_name,
                                         old.portal_group_tag) != (
                isid, params.initiator_name, params.target_name, conn.portal_group_tag):
            raise LoginFailed(LoginStatus.SESSION_DOES_NOT_EXIST,
                              f"no session with TSIH {tsih} in portal group {conn.portal_group_tag}")
        if params.chap_user != old.params.chap_user:
            raise LoginFailed(LoginStatus.AUTHORIZATION_FAILURE,
                              f"CHAP name {params.chap_user!r} is not the session's")
        if conn.cid not in old.conns and len(old.conns) >= old.params.max_connections:
            raise LoginFailed(LoginStatus.TOO_MANY_CONNECTIONS,
                              f"MaxConnections={old.params.max_connections} reached")
        conns = self.bound.setdefault(old, {})
        conn.joined = conn.cid not in old.conns and bool(old.conns)
        old_conn = conns.get(conn.cid)
        conns[conn.cid] = conn
        if old_conn is not None:
            old_conn.close()
        conn.session = old
        return tsih

    def _one_writer(self, conn: IscsiConnection, target: Target, params: SessionParams, isid: bytes) -> None:
        """A target that can be written has one writer: two on one disk
        would corrupt it. The same machine logging in again through the
        same portal group replaces its old session, whatever its ISID (iPXE
        abandons its session without a Logout, and the OS then logs in from
        the iBFT); its sessions through other groups stay (multipath: one
        writer on several paths); anyone else is refused while it is in
        use. With CHAP the machine is who proved the secret, not just a
        name anyone can send."""
        for s in list(target.sessions):
            if _who(s.params) != _who(params):
                raise LoginFailed(LoginStatus.SERVICE_UNAVAILABLE,
                                  f"{target.name} is in use by {s.params.initiator_name} (one writer per disk)")
            # the same ISID is a reinstatement (§6.3.5), in admit
            if s.isid != isid and s.portal_group_tag == conn.portal_group_tag:
                self.event("iscsi.session_replaced", peer=conn.peer, initiator=params.initiator_name,
                           target=target.name, tsih=s.tsih)
                self._drop(s, DropReason.REPLACED)

    def _drop(self, session: Session, reason: DropReason) -> None:
        for old_conn in list(self.bound.get(session, {}).values()):
            old_conn.close(reason)
        session.close(reason)

    def _new_tsih(self) -> int:
        while True:
            tsih = self.next_tsih
            self.next_tsih = tsih % 0xFFFF + 1  # TSIH 0 is reserved (§11.12.6)
            if tsih not in self.sessions:
                return tsih



def _who(params: SessionParams) -> tuple[str, str]:
    """Who a session is, for one writer per disk: the CHAP name it proved
    and the initiator name it gave."""
    return params.chap_user, params.initiator_name
