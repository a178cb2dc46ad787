#!/usr/bin/env python3
"""iSNS: open-isns's isnsd against bootsvc's iSNS server, in one run.

1. Registrations/s: ``--entities`` targets register themselves, each one
   network entity with one iSCSI node and one portal in one DevAttrReg
   (RFC 4171 §5.6.5.1), spread over ``--clients`` connections.
2. Queries/s: for ``--seconds``, each registered node asks for itself by
   iSCSI name with open-iscsi's discovery attributes (name, node type,
   portal, portal group: what ``iscsiadm -m discovery -t isns`` sends for a
   target name, §5.6.5.2), over the same number of connections.

Each client connection is its own process, sending pre-encoded PDUs and
checking only the status of each response: isns.client's encoding and
decoding cost about 40 µs a request, enough to blur the servers' numbers
(``--client-lib`` measures with isns.client instead). One request at a
time per connection, as iSNS clients do.

Servers, both on loopback, fresh for every round (rounds alternate the
order A B, B A, ...); default discovery domain off in both, so a node sees
itself only:

- default, as deployed: ``bootsvc serve`` with ``listen.isns`` (its
  SQLite store, an event log line per change) against isnsd with a file
  database (``Database = DIR``, as Debian's isnsd.conf has it);
- ``--memory``: bootsvc's IsnsServer without a store, in a process of its
  own, against isnsd with its in-memory database (no ``Database`` line).

Prints medians and the ratio bootsvc/isnsd (goal >= 1.0).

    python3 bench/isns.py [--rounds 3] [--entities 2000] [--clients 4] [--seconds 3] [--memory] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from isns.client import IsnsClient, NodeSpec, PortalSpec  # noqa: E402
from isns.codec import Attr, Port, address, encode_message, request  # noqa: E402
from isns.protocol import HEADER_SIZE, EntityProtocol, Function, NodeType, Tag  # noqa: E402
from tests.e2e.peers import LOOPBACK, bootsvc_serve, free_port, isnsd, stop, wait_for_port  # noqa: E402

TIMEOUT = 120  # seconds any one phase may take
PREFIX = "iqn.2026-11.bench"
# what open-iscsi asks for in its iSNS discovery (usr/isns discovery: isns_query_request_attr_tag)
QUERY_ATTRS = (Tag.ISCSI_NAME, Tag.ISCSI_NODE_TYPE, Tag.PORTAL_IP_ADDRESS, Tag.PORTAL_PORT, Tag.PG_ISCSI_NAME,
               Tag.PG_PORTAL_IP_ADDR, Tag.PG_PORTAL_PORT, Tag.PG_TAG)


def node(i: int) -> str:
    return f"{PREFIX}:target{i:06d}"


def portal(i: int) -> str:
    return f"127.{1 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"  # a portal is one entity's (§6.3)


def registration(i: int) -> bytes:
    eid = Attr(Tag.ENTITY_IDENTIFIER, f"bench-{i:06d}")
    msg = request(Function.DEV_ATTR_REG, 1, Attr(Tag.ISCSI_NAME, node(i)), [eid],
                  [eid, Attr(Tag.ENTITY_PROTOCOL, int(EntityProtocol.ISCSI)),
                   Attr(Tag.PORTAL_IP_ADDRESS, address(portal(i))), Attr(Tag.PORTAL_PORT, Port(3260)),
                   Attr(Tag.ISCSI_NAME, node(i)), Attr(Tag.ISCSI_NODE_TYPE, int(NodeType.TARGET))])
    return b"".join(encode_message(msg))


def query(i: int) -> bytes:
    msg = request(Function.DEV_ATTR_QRY, 1, Attr(Tag.ISCSI_NAME, node(i)), [Attr(Tag.ISCSI_NAME, node(i))],
                  [Attr(t) for t in QUERY_ATTRS])
    return b"".join(encode_message(msg))


# -- the client loop ------------------------------------------------------------------------


def _exchange(sock: socket.socket, pdu: bytes) -> bytes:
    """Send one request, return its response's payload (one PDU: both servers
    answer these in one)."""
    sock.sendall(pdu)
    head = sock.recv(HEADER_SIZE, socket.MSG_WAITALL)
    if len(head) < HEADER_SIZE:
        raise ConnectionError("the server closed the connection")
    length = struct.unpack_from("!H", head, 4)[0]
    body = sock.recv(length, socket.MSG_WAITALL) if length else b""
    if len(body) < length or not head[6] & 0x08:  # LAST_PDU (§5.1.4)
        raise ConnectionError("a short or multi-PDU response")
    return body


def _worker(port: int, pdus: list[bytes], seconds: float, barrier: mp.synchronize.Barrier,
            out: mp.connection.Connection) -> None:
    """Send ``pdus`` in turn (all once, or round and round for ``seconds``);
    report (requests, refused, start, end)."""
    done = refused = 0
    try:
        with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            barrier.wait(30)
            start = time.monotonic()
            deadline = start + (seconds if seconds else TIMEOUT)
            while time.monotonic() < deadline:
                for pdu in pdus:
                    if _exchange(sock, pdu)[:4] != b"\0\0\0\0":
                        refused += 1
                    done += 1
                if not seconds:
                    break
            out.send((done, refused, start, time.monotonic()))
    except Exception as e:  # report, do not hang the parent
        out.send(repr(e))


def _lib_worker(port: int, entities: list[int], seconds: float, barrier: mp.synchronize.Barrier,
                out: mp.connection.Connection) -> None:
    """The same through isns.client (``--client-lib``)."""
    done = refused = 0
    try:
        c = IsnsClient(LOOPBACK, port, node(entities[0]), timeout=10)
        c.call(Function.DEV_ATTR_QRY, [Attr(Tag.ISCSI_NAME, node(entities[0]))])  # connected before the start
        barrier.wait(30)
        start = time.monotonic()
        deadline = start + (seconds if seconds else TIMEOUT)
        while time.monotonic() < deadline:
            for i in entities:
                c.source = node(i)  # one connection, each entity's own source
                if seconds:
                    msg = c.call(Function.DEV_ATTR_QRY, [Attr(Tag.ISCSI_NAME, node(i))],
                                 [Attr(t) for t in QUERY_ATTRS])
                    refused += msg.status != 0
                else:
                    c.register(f"bench-{i:06d}", [NodeSpec(node(i), NodeType.TARGET)],
                               [PortalSpec(portal(i), 3260)])
                done += 1
            if not seconds:
                break
        out.send((done, refused, start, time.monotonic()))
        c.close()
    except Exception as e:
        out.send(repr(e))


def run_clients(port: int, entities: int, clients: int, seconds: float, make: Callable[[int], bytes] | None,
                lib: bool) -> float:
    """Requests per second over ``clients`` connections (entity i on
    connection i mod clients)."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(clients)
    procs, pipes = [], []
    for w in range(clients):
        mine = list(range(w, entities, clients))
        recv, send = ctx.Pipe(duplex=False)
        if lib:
            p = ctx.Process(target=_lib_worker, args=(port, mine, seconds, barrier, send))
        else:
            assert make is not None
            p = ctx.Process(target=_worker, args=(port, [make(i) for i in mine], seconds, barrier, send))
        p.start()
        procs.append(p)
        pipes.append(recv)
    results = []
    try:
        for recv in pipes:
            if not recv.poll(TIMEOUT + seconds + 30):
                raise RuntimeError("a client did not report in time")
            results.append(recv.recv())
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    errors = [r for r in results if isinstance(r, str)]
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]}")
    done = sum(r[0] for r in results)
    refused = sum(r[1] for r in results)
    if refused:
        raise RuntimeError(f"{refused} of {done} requests refused")
    if not seconds and done != entities:
        raise RuntimeError(f"{done} of {entities} registrations sent")
    return done / (max(r[3] for r in results) - min(r[2] for r in results))


def check(port: int, entities: int) -> None:
    """Every entity registered, and a query answers with its node and portal."""
    for i in (0, entities // 2, entities - 1):
        with IsnsClient(LOOPBACK, port, node(i)) as c:
            msg = c.call(Function.DEV_ATTR_QRY, [Attr(Tag.ISCSI_NAME, node(i))], [Attr(t) for t in QUERY_ATTRS])
            values = [a.value for a in msg.attrs]
            if msg.status != 0 or node(i) not in values or address(portal(i)) not in values:
                raise RuntimeError(f"query for {node(i)}: {msg.status} {[str(a) for a in msg.attrs]}")


# -- the servers -------------------------------------------------------------------------------


@contextlib.contextmanager
def reference(work: Path, memory: bool) -> Iterator[int]:
    """isnsd with its file database (Debian's default), or in memory."""
    db = work / "isnsd-db"
    shutil.rmtree(db, ignore_errors=True)
    with isnsd(work, f"{PREFIX}:isnsd", default_dd=False, database=None if memory else db) as port:
        yield port


@contextlib.contextmanager
def bootsvc(work: Path, memory: bool) -> Iterator[int]:
    port = free_port()
    if memory:
        proc = subprocess.Popen([sys.executable, __file__, "--serve-memory", str(port)])
        try:
            wait_for_port(port, proc)
            yield port
        finally:
            stop(proc)
        return
    state = work / "state"
    shutil.rmtree(state, ignore_errors=True)
    cfg = work / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {state}\niqn_prefix: {PREFIX}\nlisten:\n  isns: {LOOPBACK}:{port}\n"
                   "isns: {default_dd: hidden}\n")
    proc = bootsvc_serve(cfg, work / "serve.log", "ready:")
    try:
        yield port
    finally:
        stop(proc)


def serve_memory(port: int) -> None:
    """``--serve-memory PORT``: bootsvc's iSNS server alone, no store."""
    from isns.registry import Registry
    from isns.server import IsnsServer

    async def main() -> None:
        server = IsnsServer(Registry(default_dd_visible=False), LOOPBACK, port)
        await server.start()
        await asyncio.Event().wait()  # until SIGTERM

    asyncio.run(main())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--entities", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=4, help="connections, each its own process")
    ap.add_argument("--seconds", type=float, default=3, help="of queries per round")
    ap.add_argument("--memory", action="store_true", help="no persistence in either server")
    ap.add_argument("--client-lib", action="store_true", help="clients use isns.client, not pre-encoded PDUs")
    ap.add_argument("--json")
    ap.add_argument("--serve-memory", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_memory:
        serve_memory(args.serve_memory)
        return 0
    if not 1 <= args.clients <= 64 or not 1 <= args.entities <= 100_000 or not 0 < args.seconds <= 60:
        ap.error("--clients 1-64, --entities 1-100000, --seconds up to 60")
    servers = {"isnsd": reference, "bootsvc": bootsvc}
    rates: dict[str, dict[str, list[float]]] = {s: {"register": [], "query": []} for s in servers}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for name in order:
                with servers[name](work, args.memory) as port:
                    rates[name]["register"].append(run_clients(port, args.entities, args.clients, 0, registration,
                                                               args.client_lib))
                    check(port, args.entities)
                    rates[name]["query"].append(run_clients(port, args.entities, args.clients, args.seconds, query,
                                                            args.client_lib))
            print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n]['register'][-1]:.0f} reg/s "
                                                 f"{rates[n]['query'][-1]:.0f} qry/s" for n in servers), flush=True)
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in rates.items()}
    what = {"register": f"registrations/s ({args.entities} entities, 1 node + 1 portal each)",
            "query": f"queries/s (DevAttrQry by own name, {args.seconds:g} s)"}
    for kind, label in what.items():
        ratio = med["bootsvc"][kind] / med["isnsd"][kind]
        print(f"{label}: isnsd {med['isnsd'][kind]:.0f}, bootsvc {med['bootsvc'][kind]:.0f} "
              f"-> bootsvc/isnsd {ratio:.2f} (goal >= 1.0)")
    if args.json:
        Path(args.json).write_text(json.dumps({"median_per_s": med, "all_per_s": rates, "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
