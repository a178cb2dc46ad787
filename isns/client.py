"""An iSNS client (RFC 4171): what a target or initiator registers, and what
a CLI asks, over one TCP connection to the server (§5: port 3205, one
request at a time, the response carries the request's transaction ID).

:class:`IsnsClient` blocks; :class:`AsyncIsnsClient` is the same for an
asyncio loop. Both run the same request builders and response readers:
each operation is written once, as a generator that yields requests and is
sent their responses (``_Op``), and the two clients differ only in how they
move bytes. Message encoding and decoding is :mod:`isns.codec`'s.

Results are plain dicts keyed by :class:`~isns.protocol.Tag` name, one per
object (``{"ISCSI_NAME": "iqn...", "ISCSI_NODE_TYPE": 1, ...}``): values
as the codec decodes them, except IP addresses, which are text
(``"127.0.0.1"``, not the IPv4-mapped IPv6 form of the wire), and the DD
member attributes and a DD set's ``DD_ID``, which are lists since a DD (set)
has any number of members.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

from .codec import (
    Attr,
    Message,
    Port,
    Reassembler,
    Value,
    address,
    display,
    encode_message,
    request,
    unpack_header,
)
from .protocol import (
    HEADER_SIZE,
    RESPONSE,
    EntityProtocol,
    Flags,
    Function,
    NodeType,
    Status,
    Tag,
    function_name,
)

Obj = dict[str, Any]  # one object: Tag name -> value
Objs = list[Obj]  # (a module-level alias: a method named ``list`` would shadow the builtin in the class)

# Object kinds by tag range (§6.1: each object type owns a block of tags), the
# tags that start an object in a list of attributes (its first key, §6.1),
# and what a DevGetNext walk sends as the key of its first request: every
# key attribute of the kind, zero-length (§5.6.5.3; open-isns sends them all).
_RANGES = (("entity", 1, 15), ("portal", 16, 31), ("node", 32, 47), ("pg", 48, 63), ("dds", 2049, 2064),
           ("dd", 2065, 2079))
_FIRST_KEY = {"entity": Tag.ENTITY_IDENTIFIER, "portal": Tag.PORTAL_IP_ADDRESS, "node": Tag.ISCSI_NAME,
              "pg": Tag.PG_ISCSI_NAME, "dds": Tag.DDS_ID, "dd": Tag.DD_ID}
_WALK_KEYS: dict[str, tuple[Tag, ...]] = {
    "entity": (Tag.ENTITY_IDENTIFIER,), "portal": (Tag.PORTAL_IP_ADDRESS, Tag.PORTAL_PORT),
    "node": (Tag.ISCSI_NAME,), "pg": (Tag.PG_ISCSI_NAME, Tag.PG_PORTAL_IP_ADDR, Tag.PG_PORTAL_PORT),
    "dd": (Tag.DD_ID,), "dds": (Tag.DDS_ID,)}
_MULTI = {Tag.DD_MEMBER_ISCSI_INDEX, Tag.DD_MEMBER_ISCSI_NAME, Tag.DD_MEMBER_FC_PORT_NAME,
          Tag.DD_MEMBER_PORTAL_INDEX, Tag.DD_MEMBER_PORTAL_IP_ADDR, Tag.DD_MEMBER_PORTAL_PORT}
# Requests go out in PDUs of at most 8 KiB, header included: what open-isns's own
# client sends and its isnsd reads into (ISNS_MAX_MESSAGE). A longer request is split
# (§5.4); isnsd drops the connection on it all the same, RFC servers join it.
MAX_REQUEST_PAYLOAD = 8192 - HEADER_SIZE
MAX_WALK = 100_000  # DevGetNext steps one list() may take: a server that loops must not hang us


class IsnsClientError(Exception):
    """The server refused a request (the convenience methods raise it; ``call`` does not)."""

    def __init__(self, function: int, status: Status | int, why: str = "") -> None:
        status_name = status.name if isinstance(status, Status) else str(status)
        super().__init__(f"{function_name(function)}: {status_name}" + (f" ({why})" if why else ""))
        self.function = function
        self.status = status


class IsnsProtocolError(ConnectionError):
    """The server's bytes made no sense as the response to our request; the
    connection is closed since the stream can no longer be trusted."""


@dataclass(frozen=True)
class NodeSpec:
    """An iSCSI node to register (§6.4)."""

    name: str
    type: NodeType
    alias: str | None = None


@dataclass(frozen=True)
class PortalSpec:
    """A portal to register (§6.3): where the entity's nodes are reached,
    and optionally where it takes ESI (§5.6.5.13) and SCN (§5.6.5.8)."""

    address: str
    port: int
    esi_port: int | None = None
    scn_port: int | None = None


@dataclass(frozen=True)
class PortalGroupSpec:
    """A portal group (§6.5): node ``name`` is reached at portal
    ``address``:``port`` in the iSCSI target portal group ``tag`` (what the
    initiator gets as TargetPortalGroupTag); a NULL tag (None) says it is
    not reached there (§3.4). Without any, a server relates every node and
    portal of an entity with tag 1."""

    name: str
    address: str
    port: int
    tag: int | None


@dataclass(frozen=True)
class Call:
    """One request before it gets a transaction ID."""

    function: Function
    keys: tuple[Attr, ...] = ()
    operating: tuple[Attr, ...] = ()
    flags: Flags = Flags(0)


T = TypeVar("T")
_Op = Generator[Call, Message, T]  # yields requests, is sent their responses, returns the result


# -- reading responses ------------------------------------------------------------------


def kind_of(tag: int) -> str | None:
    """The object type an attribute tag belongs to (§6.1 tag blocks)."""
    for kind, low, high in _RANGES:
        if low <= tag <= high:
            return kind
    return None


def objects(attrs: Iterable[Attr]) -> list[tuple[str, Obj]]:
    """A response's attributes cut into objects: a new object starts at a
    kind's first key attribute or where the tags move to another kind
    (§5.7.5: servers list each object's attributes together, key first).
    A DD set lists its member DDs by DD_ID (§6.11.1): those stay in the set,
    as the list ``DD_ID``."""
    out: list[tuple[str, Obj]] = []
    for a in attrs:
        kind = kind_of(a.tag)
        if kind is None:
            continue  # the delimiter, vendor-specific tags
        name = Tag(a.tag).name if a.tag in Tag._value2member_map_ else str(a.tag)
        in_set = a.tag == Tag.DD_ID and bool(out) and out[-1][0] == "dds"
        if not in_set and (not out or out[-1][0] != kind or (a.tag == _FIRST_KEY[kind] and name in out[-1][1])):
            out.append((kind, {}))
        obj = out[-1][1]
        value = _plain(a.value)
        if a.tag in _MULTI or in_set:
            obj.setdefault(name, []).append(value)
        else:
            obj[name] = value
    return out


def _plain(value: Value | Port) -> Any:
    # addresses as text: the IPv4-mapped IPv6Address of the wire is awkward to compare and print
    if value is not None and not isinstance(value, (str, int, bytes, Port)):
        return display(value)
    return value


def _check(msg: Message, *ok: Status) -> Message:
    if msg.status not in (Status.SUCCESS, *ok):
        raise IsnsClientError(msg.function & ~RESPONSE, msg.status if msg.status is not None else -1)
    return msg


# -- the operations, written once for both clients -----------------------------------------


def _register(entity: str | None, nodes: Iterable[NodeSpec], portals: Iterable[PortalSpec], replace: bool,
              period: int | None, groups: Iterable[PortalGroupSpec] = ()) -> _Op[str]:
    """DevAttrReg (§5.6.5.1). The key is the entity; without an EID it is
    a zero-length EID and the server names the new entity, as isnsadm does.
    Operating attributes: the entity's own, then each portal starting at
    its address, each node at its name and each portal group at its node
    name, after the portals and nodes it relates: servers cut the list
    into objects where a key attribute begins one."""
    eid = Attr(Tag.ENTITY_IDENTIFIER, entity)
    operating: list[Attr] = [eid, Attr(Tag.ENTITY_PROTOCOL, int(EntityProtocol.ISCSI))]
    if period is not None:
        operating.append(Attr(Tag.REGISTRATION_PERIOD, period))
    for p in portals:
        operating += [Attr(Tag.PORTAL_IP_ADDRESS, address(p.address)), Attr(Tag.PORTAL_PORT, Port(p.port))]
        if p.esi_port is not None:
            operating.append(Attr(Tag.ESI_PORT, Port(p.esi_port)))
        if p.scn_port is not None:
            operating.append(Attr(Tag.SCN_PORT, Port(p.scn_port)))
    for n in nodes:
        operating += [Attr(Tag.ISCSI_NAME, n.name), Attr(Tag.ISCSI_NODE_TYPE, int(n.type))]
        if n.alias is not None:
            operating.append(Attr(Tag.ISCSI_ALIAS, n.alias))
    for g in groups:
        operating += [Attr(Tag.PG_ISCSI_NAME, g.name), Attr(Tag.PG_PORTAL_IP_ADDR, address(g.address)),
                      Attr(Tag.PG_PORTAL_PORT, Port(g.port)), Attr(Tag.PG_TAG, g.tag)]
    flags = Flags.REPLACE if replace else Flags(0)
    reply = _check((yield Call(Function.DEV_ATTR_REG, (eid,), tuple(operating), flags)))
    # the response names the entity first (its key, then the registered objects: §5.7.5.1)
    got = next((a.value for a in reply.attrs if a.tag == Tag.ENTITY_IDENTIFIER and a.value), entity)
    return str(got)


def _deregister(attrs: tuple[Attr, ...]) -> _Op[None]:
    """DevDereg (§5.6.5.4): no message key, the objects in the operating
    attributes. Deregistering what is not there succeeds (§5.6.5.4)."""
    _check((yield Call(Function.DEV_DEREG, (), attrs)))


def _query_nodes(node_type: NodeType | None) -> _Op[Objs]:
    """DevAttrQry (§5.6.5.2) as open-iscsi's iSNS discovery sends it: keyed
    by the node type (all nodes: a zero-length iSCSI name), asking for name,
    type and alias. The server answers with what the source may see
    through its discovery domains (§3.2.1)."""
    key = Attr(Tag.ISCSI_NODE_TYPE, int(node_type)) if node_type is not None else Attr(Tag.ISCSI_NAME)
    wanted = (Attr(Tag.ISCSI_NAME), Attr(Tag.ISCSI_NODE_TYPE), Attr(Tag.ISCSI_ALIAS))
    reply = _check((yield Call(Function.DEV_ATTR_QRY, (key,), wanted)))
    _, found = reply.split()  # the key's echo, then the objects (§5.7.5.2)
    return [obj for kind, obj in objects(found) if kind == "node"]


def _walk(kind: str) -> _Op[Objs]:
    """DevGetNext (§5.6.5.3) from the first object of ``kind`` to the last:
    each request is keyed by the key of the object before it; the walk
    ends with NO_SUCH_ENTRY."""
    if kind not in _WALK_KEYS:
        raise ValueError(f"cannot list {kind!r}: one of {', '.join(_WALK_KEYS)}")
    keys = tuple(Attr(t) for t in _WALK_KEYS[kind])
    out: Objs = []
    seen: set[tuple[Attr, ...]] = set()
    for _ in range(MAX_WALK):
        reply = _check((yield Call(Function.DEV_GET_NEXT, keys)), Status.NO_SUCH_ENTRY)
        if reply.status == Status.NO_SUCH_ENTRY:
            return out
        key, attrs = reply.split()
        found = [obj for k, obj in objects(attrs) if k == kind]
        if not key or not found:
            raise IsnsProtocolError(f"DevGetNext answered without a {kind}")
        keys = tuple(key)
        if keys in seen:  # two objects with one key: the walk would go round them for ever
            raise IsnsProtocolError(f"DevGetNext returned {', '.join(map(str, keys))} twice")
        seen.add(keys)
        out.append(found[0])
    raise IsnsProtocolError(f"DevGetNext walk over {kind} did not end after {MAX_WALK} steps")


def _dd_register(dd_id: int | None, name: str | None, members: Iterable[str]) -> _Op[int]:
    """DDReg (§5.6.5.9): keyed by the DD ID to add to an existing DD, else
    a new one; the members by iSCSI name (§6.11.2.3)."""
    keys = (Attr(Tag.DD_ID, dd_id),) if dd_id is not None else ()
    operating = [*keys]  # open-isns repeats the key in the operating attributes; the RFC allows it
    if name is not None:
        operating.append(Attr(Tag.DD_SYMBOLIC_NAME, name))
    operating += [Attr(Tag.DD_MEMBER_ISCSI_NAME, m) for m in members]
    reply = _check((yield Call(Function.DD_REG, keys, tuple(operating))))
    for a in reply.attrs:
        if a.tag == Tag.DD_ID and isinstance(a.value, int):
            return a.value
    if dd_id is None:
        raise IsnsProtocolError("DDReg answered without a DD ID")
    return dd_id


def _dd_deregister(dd_id: int, members: Iterable[str]) -> _Op[None]:
    """DDDereg (§5.6.5.10): the members given, or the whole DD without them."""
    operating = tuple(Attr(Tag.DD_MEMBER_ISCSI_NAME, m) for m in members)
    _check((yield Call(Function.DD_DEREG, (Attr(Tag.DD_ID, dd_id),), operating)))


def _entity(eid: str) -> tuple[Attr, ...]:
    return (Attr(Tag.ENTITY_IDENTIFIER, eid),)


def _node(name: str) -> tuple[Attr, ...]:
    return (Attr(Tag.ISCSI_NAME, name),)


# -- the connection -------------------------------------------------------------------------


class _Base:
    def __init__(self, host: str, port: int, source: str, timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.source = source
        self.timeout = timeout
        self._xid = 0

    def _message(self, c: Call) -> Message:
        # transaction IDs count up per client and wrap within 16 bits, skipping 0 (§5.1.5)
        self._xid = self._xid % 0xFFFF + 1
        return request(c.function, self._xid, Attr(Tag.ISCSI_NAME, self.source), c.keys, c.operating, c.flags)

    @staticmethod
    def _accept(req: Message, msg: Message) -> bool:
        """Whether ``msg`` is the response to ``req``; False: something to
        skip (a request from the server, e.g. an ESI on this connection)."""
        if not msg.is_response:
            return False
        if msg.xid != req.xid or msg.function != req.function | RESPONSE:
            raise IsnsProtocolError(f"response {msg.function:#06x}/{msg.xid} to request "
                                    f"{req.function:#06x}/{req.xid}")
        return True


class IsnsClient(_Base):
    """A blocking iSNS client on one TCP connection, opened on first use and
    reopened once when the server has closed it in between (servers close
    idle connections)."""

    def __init__(self, host: str, port: int, source: str, timeout: float = 5.0) -> None:
        super().__init__(host, port, source, timeout)
        self._sock: socket.socket | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def call(self, function: Function, keys: Iterable[Attr] = (), operating: Iterable[Attr] = (),
             flags: Flags = Flags(0)) -> Message:
        """Send one request, return its response whatever its status."""
        req = self._message(Call(function, tuple(keys), tuple(operating), flags))
        pdus = b"".join(encode_message(req, MAX_REQUEST_PAYLOAD))
        for attempt in (1, 2):
            fresh = self._sock is None
            sock = self._connect()
            try:
                try:
                    sock.sendall(pdus)
                except (BrokenPipeError, ConnectionResetError):
                    raise _Closed from None
                return self._receive(sock, req)
            except _Closed:
                self.close()
                if fresh or attempt == 2:  # a new connection closed on us: the server, not idleness
                    raise ConnectionError(f"iSNS server {self.host}:{self.port} closed the connection") from None
            except BaseException:
                self.close()  # a timeout or a bad response leaves the stream mid-message
                raise
        raise AssertionError("unreachable")

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one small request at a time
        return self._sock

    def _receive(self, sock: socket.socket, req: Message) -> Message:
        deadline = time.monotonic() + self.timeout
        joined = Reassembler()
        started = False
        while True:
            head = _read(sock, HEADER_SIZE, deadline, started)
            started = True
            header = unpack_header(head)
            msg = joined.feed(header, _read(sock, header.length, deadline, True))
            if msg is not None and self._accept(req, msg):
                return msg

    def _run(self, op: _Op[T]) -> T:
        try:
            c = next(op)
            while True:
                c = op.send(self.call(c.function, c.keys, c.operating, c.flags))
        except StopIteration as done:
            result: T = done.value  # the generator's return value
            return result

    # the operations (see the generators above for what each sends)

    def register(self, entity: str | None, nodes: Iterable[NodeSpec] = (), portals: Iterable[PortalSpec] = (),
                 replace: bool = False, period: int | None = None,
                 groups: Iterable[PortalGroupSpec] = ()) -> str:
        """Register (or update, or with ``replace`` replace) an entity with
        its nodes, portals and portal groups; returns its entity identifier."""
        return self._run(_register(entity, nodes, portals, replace, period, groups))

    def deregister_entity(self, eid: str) -> None:
        self._run(_deregister(_entity(eid)))

    def deregister_node(self, name: str) -> None:
        self._run(_deregister(_node(name)))

    def query_nodes(self, node_type: NodeType | None = None) -> Objs:
        return self._run(_query_nodes(node_type))

    def list(self, kind: str) -> Objs:
        """Every object of ``kind`` ("entity", "node", "portal", "pg", "dd",
        "dds") the source may see."""
        return self._run(_walk(kind))

    def dd_register(self, name: str | None, members: Iterable[str] = ()) -> int:
        """A new discovery domain (or the one named so); returns its DD ID."""
        return self._run(_dd_register(None, name, members))

    def dd_add_members(self, dd_id: int, members: Iterable[str]) -> None:
        self._run(_dd_register(dd_id, None, members))

    def dd_remove_members(self, dd_id: int, members: Iterable[str]) -> None:
        self._run(_dd_deregister(dd_id, list(members)))

    def dd_deregister(self, dd_id: int) -> None:
        self._run(_dd_deregister(dd_id, ()))


class _Closed(Exception):
    """The server closed the connection before the response began."""


def _read(sock: socket.socket, n: int, deadline: float, started: bool) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete iSNS response in time")
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(buf))
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            if started or buf:
                raise IsnsProtocolError("the server closed the connection mid-response")
            raise _Closed
        buf += chunk
    return bytes(buf)


class AsyncIsnsClient(_Base):
    """:class:`IsnsClient` for an asyncio loop: the same operations,
    awaited. One request at a time per client (a lock keeps concurrent
    callers in turn: iSNS answers in order on one connection, §5)."""

    def __init__(self, host: str, port: int, source: str, timeout: float = 5.0) -> None:
        super().__init__(host, port, source, timeout)
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            self._streams = None
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def call(self, function: Function, keys: Iterable[Attr] = (), operating: Iterable[Attr] = (),
                   flags: Flags = Flags(0)) -> Message:
        async with self._lock:
            req = self._message(Call(function, tuple(keys), tuple(operating), flags))
            pdus = b"".join(encode_message(req, MAX_REQUEST_PAYLOAD))
            for attempt in (1, 2):
                fresh = self._streams is None
                if self._streams is None:
                    self._streams = await asyncio.wait_for(asyncio.open_connection(self.host, self.port),
                                                           self.timeout)
                reader, writer = self._streams
                try:
                    try:
                        writer.write(pdus)
                        await writer.drain()
                    except (BrokenPipeError, ConnectionResetError):
                        raise _Closed from None
                    return await asyncio.wait_for(self._receive(reader, req), self.timeout)
                except _Closed:
                    await self.close()
                    if fresh or attempt == 2:
                        raise ConnectionError(f"iSNS server {self.host}:{self.port} closed the connection") from None
                except BaseException:
                    await self.close()
                    raise
            raise AssertionError("unreachable")

    async def _receive(self, reader: asyncio.StreamReader, req: Message) -> Message:
        joined = Reassembler()
        try:
            head = await reader.readexactly(HEADER_SIZE)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            raise _Closed from None
        while True:
            try:
                header = unpack_header(head)
                msg = joined.feed(header, await reader.readexactly(header.length))
                if msg is not None and self._accept(req, msg):
                    return msg
                head = await reader.readexactly(HEADER_SIZE)
            except asyncio.IncompleteReadError:
                raise IsnsProtocolError("the server closed the connection mid-response") from None

    async def _run(self, op: _Op[T]) -> T:
        try:
            c = next(op)
            while True:
                c = op.send(await self.call(c.function, c.keys, c.operating, c.flags))
        except StopIteration as done:
            result: T = done.value  # the generator's return value
            return result

    async def register(self, entity: str | None, nodes: Iterable[NodeSpec] = (),
                       portals: Iterable[PortalSpec] = (), replace: bool = False, period: int | None = None,
                       groups: Iterable[PortalGroupSpec] = ()) -> str:
        return await self._run(_register(entity, nodes, portals, replace, period, groups))

    async def deregister_entity(self, eid: str) -> None:
        await self._run(_deregister(_entity(eid)))

    async def deregister_node(self, name: str) -> None:
        await self._run(_deregister(_node(name)))

    async def query_nodes(self, node_type: NodeType | None = None) -> Objs:
        return await self._run(_query_nodes(node_type))

    async def list(self, kind: str) -> Objs:
        return await self._run(_walk(kind))

    async def dd_register(self, name: str | None, members: Iterable[str] = ()) -> int:
        return await self._run(_dd_register(None, name, members))

    async def dd_add_members(self, dd_id: int, members: Iterable[str]) -> None:
        await self._run(_dd_register(dd_id, None, members))

    async def dd_remove_members(self, dd_id: int, members: Iterable[str]) -> None:
        await self._run(_dd_deregister(dd_id, list(members)))

    async def dd_deregister(self, dd_id: int) -> None:
        await self._run(_dd_deregister(dd_id, ()))
