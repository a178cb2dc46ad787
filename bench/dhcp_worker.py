#!/usr/bin/env python3
"""DHCP in a worker process: a prototype of the design in
docs/dhcp-scaling.md, and the benchmark that measures it against Kea and
``bootsvc serve`` (issue 21).

The prototype is two processes:

- **the main process** is ``bootsvc serve``'s own wiring
  (``bootsvc.server.Server``) built from the config with ``dhcp`` taken out:
  the bus with the log at INFO, the event file, the fleet, the flight
  recorder and the metrics, on serve's asyncio loop. One more service,
  "dhcp worker", starts the worker and publishes on the bus every event it
  sends, as the DHCP service would have emitted it.
- **the worker** runs the real ``DhcpService`` + ``Responder`` +
  ``LeaseStore`` + group commit on port 67 (bootsvc/dhcp/, unchanged), with
  its own GIL. The responder's ``emit`` keeps each event as a plain tuple;
  once per loop iteration the batch goes to the main process in one pipe
  write (marshal, length-prefixed). It owns the lease database, so the
  fleet's one lease-side reaction to an event (an unknown MAC seen under
  ``discover`` is recorded in the lease store) happens here.

Left out compared with the design: the fleet's machine table is the
worker's own copy, read from the config at start (no replica kept in step
with the main process, so no reload); no adoption (``unknown_machines:
default`` would need the worker to ask the main process and wait); the
lease changes are not sent back (the main process has no lease store, so
TFTP's and HTTP's ``mac_at`` do not know the leases); the responder's
counters stay in the worker.

    python3 bench/dhcp_worker.py serve -c bootsvc.yaml      # the prototype, as `bootsvc serve`
    python3 bench/dhcp_worker.py bench [--seconds 4] [--rounds 2] [--rates 1000,...]
                                       [--latency-rate 1000] [--cpu-rate 3000] [--servers kea,bootsvc,worker]

``bench``: bench/dhcp.py's network, perfdhcp steps and rate climb, the
servers in alternating order each round (A B C, C B A); then each one at
``--latency-rate`` (REQUEST->ACK), then at ``--cpu-rate`` with the CPU of
every thread of every server process (/proc/PID/task/*/stat) per DORA.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import functools
import gc
import marshal
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from enum import Enum
from pathlib import Path
from types import MappingProxyType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procstat import TICKS, children  # noqa: E402
from bootsvc import config as config_mod  # noqa: E402
from bootsvc.dhcp.leases import LeaseStore  # noqa: E402
from bootsvc.dhcp.service import DhcpService  # noqa: E402
from bootsvc.events import Event, Kind  # noqa: E402

FRAME = struct.Struct("!I")  # the length of the marshalled batch that follows
PIPE_SIZE = 1 << 20  # bytes the pipe holds (F_SETPIPE_SZ): a burst of events does not block the worker
READY_TIMEOUT = 30.0  # seconds the worker may take to bind port 67
STOP_TIMEOUT = 10.0  # seconds the worker may take to write its last leases and events
PR_SET_PDEATHSIG = 1
PLAIN = (str, int, float, bool, type(None))
Wire = tuple[object, ...]  # one event as the pipe carries it: (kind, time, mac, ip, hostname, initiator,
#                            target, peer, fields)


# -- the worker ------------------------------------------------------------------------


def plain(value: object) -> object:
    """A field as marshal carries it: what the log and the event file show
    of it (an enum by its value, an address as text)."""
    if isinstance(value, PLAIN):
        return value
    if isinstance(value, Enum):
        return value.value
    return str(value)


class Outbox:
    """The worker's ``emit``: each event kept as a tuple, the batch written
    to the pipe once per loop iteration (one write, one wake-up of the main
    process, however many events)."""

    def __init__(self, fd: int, on_discovered: Callable[[str, float, object], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.fd = fd
        self.on_discovered = on_discovered
        self.clock = clock
        self.pending: list[Wire] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.broken = asyncio.Event()

    def emit(self, kind: Kind, *, mac: str | None = None, ip: object = None, hostname: str | None = None,
             initiator: str | None = None, target: str | None = None, peer: str | None = None,
             **fields: object) -> None:
        now = self.clock()
        if kind is Kind.DHCP_DISCOVERED and mac is not None:
            self.on_discovered(mac, now, fields.get("arch"))
        if not self.pending and self.loop is not None:
            self.loop.call_soon(self.flush)
        self.pending.append((kind.value, now, mac, None if ip is None else str(ip), hostname, initiator, target,
                             peer, {k: plain(v) for k, v in fields.items() if v is not None}))

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        data = marshal.dumps(batch)
        view = memoryview(FRAME.pack(len(data)) + data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError:  # the main process is gone: nobody to serve for
            self.broken.set()


def build(cfg: config_mod.Config, fd: int) -> tuple[list[DhcpService], Outbox, LeaseStore]:
    """The worker's DHCP services (port 67, and 4011 in proxy mode) as
    ``bootsvc serve`` builds them (bootsvc/server.py), their events to ``fd``."""
    from bootsvc.boot import BootPlanner
    from bootsvc.dhcp.responder import Mode, Responder
    from bootsvc.dhcp.service import DhcpService
    from bootsvc.events import Bus
    from bootsvc.fleet import Fleet
    from bootsvc.tftp.files import FileSource

    d = cfg.dhcp
    assert d is not None
    leases = LeaseStore(cfg.state_dir / "leases.db")
    # the machine table, read from the config: the fleet's own, with no disk opened
    fleet = Fleet(cfg, Bus(), leases)

    def discovered(mac: str, now: float, arch: object) -> None:
        if fleet.machine(mac) is None:  # the fleet's subscription does this in serve (Fleet.on_event)
            leases.saw_unknown(mac, "discover", now, "" if arch is None else str(arch))

    out = Outbox(fd, discovered)
    files = FileSource(list(cfg.tftp.roots) if cfg.tftp else [])
    planner = BootPlanner(fleet, out.emit, cfg.iscsi.portals[0].port if cfg.iscsi.portals else 3260,
                          cfg.http.port if cfg.http else None, has_file=files.has)
    responder = Responder(list(d.subnets), fleet, leases, planner, d.mode, d.unknown, out.emit)
    services = []
    for listener in d.listeners:
        services.append(DhcpService(responder, listener.address, listener.interface, listener.port))
        if d.mode is Mode.PROXY:
            services.append(DhcpService(responder, listener.address, listener.interface, listener.proxy_port,
                                        reply_to_source=True))
    return services, out, leases


def worker(config: Path, fd: int) -> int:
    """The worker process: DHCP as ``bootsvc serve`` runs it, events to ``fd``."""
    # the main process ending (even by SIGKILL) ends the worker: it would hold port 67
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    cfg = config_mod.load(config)
    if cfg.dhcp is None:
        print(f"dhcp_worker: {config}: no listen.dhcp: nothing to serve", file=sys.stderr)
        return 2
    services, out, leases = build(cfg, fd)
    try:
        return asyncio.run(_work(services, out))
    finally:
        leases.close()


async def _work(services: list[DhcpService], out: Outbox) -> int:
    loop = asyncio.get_running_loop()
    out.loop = loop
    for service in services:
        try:
            await service.start()
        except OSError as e:
            print(f"dhcp_worker: port {service.port} not bound: {e.strerror or e}", file=sys.stderr)
            return 1
    gc.collect()
    gc.freeze()  # as serve does (bootsvc/server.py)
    sys.setswitchinterval(0.0005)  # the group commit's thread and the loop, as serve (bootsvc/service.py)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, out.broken.set)
    out.flush()  # an empty batch: bound, serving
    await out.broken.wait()
    for service in services:
        await service.stop()
    out.flush()
    return 0


# -- the main process -------------------------------------------------------------------


class Inbox:
    """The main process's end of the pipe: each batch's events published on
    the bus, as the DHCP service would have emitted them."""

    def __init__(self, publish: Callable[[Event], None]) -> None:
        self.publish = publish
        self.buffer = bytearray()
        self.kinds: dict[str, Kind | str] = {k.value: k for k in Kind}
        self.batches = 0
        self.events = 0

    def feed(self, data: bytes) -> None:
        """Bytes read from the pipe; every whole batch in them published."""
        self.buffer += data
        buffer, at = self.buffer, 0
        while len(buffer) - at >= FRAME.size:
            (size,) = FRAME.unpack_from(buffer, at)
            if len(buffer) - at - FRAME.size < size:
                break
            batch = marshal.loads(buffer[at + FRAME.size:at + FRAME.size + size])
            at += FRAME.size + size
            self.batches += 1
            self._publish(batch)
        del buffer[:at]

    def _publish(self, batch: list[Wire]) -> None:
        kinds, publish = self.kinds, self.publish
        for kind, when, mac, ip, hostname, initiator, target, peer, fields in batch:
            publish(Event(kinds.get(kind, kind), when, mac, ip, hostname, initiator, target,  # type: ignore[arg-type]
                          peer, fields or MappingProxyType({})))  # type: ignore[arg-type]
        self.events += len(batch)


class WorkerService:
    """The "dhcp worker" service of the main process: starts the worker,
    reads its pipe on the loop, stops it."""

    def __init__(self, config: Path, publish: Callable[[Event], None]) -> None:
        self.config = config
        self.inbox = Inbox(publish)
        self.proc: subprocess.Popen[bytes] | None = None
        self._fd = -1
        self._ready: asyncio.Future[None] | None = None
        self._ended: asyncio.Future[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        read, write = os.pipe()
        with contextlib.suppress(OSError):  # a smaller pipe only blocks the worker sooner
            fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        try:
            self.proc = subprocess.Popen([sys.executable, __file__, "worker", "-c", str(self.config),
                                          "--fd", str(write)], pass_fds=(write,), stdin=subprocess.DEVNULL)
        finally:
            os.close(write)
        os.set_blocking(read, False)
        self._fd = read
        self._ready, self._ended = loop.create_future(), loop.create_future()
        loop.add_reader(read, self._readable)
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), READY_TIMEOUT)
        except (asyncio.TimeoutError, OSError) as e:
            await self.stop()
            raise OSError(f"the DHCP worker did not start ({e or 'no answer in time'})") from None

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, PIPE_SIZE)
        except BlockingIOError:
            return
        if not data:
            self._end()
            return
        self.inbox.feed(data)
        if self._ready is not None and not self._ready.done() and self.inbox.batches:
            self._ready.set_result(None)

    def _end(self) -> None:
        asyncio.get_running_loop().remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(OSError("it ended; its reason is in the log above"))
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    async def stop(self) -> None:
        """The worker writes its last leases and sends its last events, then ends."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        if self._ended is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._ended), STOP_TIMEOUT)
        if self._fd >= 0:
            self._end()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)


def serve(config: Path, quiet: bool = False, drop: bool = False) -> int:
    """``bootsvc serve`` with DHCP in the worker; ``drop``: its events read
    and dropped, not published (what the worker does with the main process
    on a core of its own)."""
    from bootsvc import cli
    from bootsvc.server import ServeError, Server

    cli.setup_logging(quiet=quiet)
    try:
        cfg = config_mod.load(config)
    except config_mod.ConfigError as e:
        for problem in e.problems:
            print(f"dhcp_worker: {problem}", file=sys.stderr)
        return 2
    if cfg.dhcp is None:
        print(f"dhcp_worker: {config}: no listen.dhcp: nothing for the worker to serve", file=sys.stderr)
        return 2
    try:
        server = Server(replace(cfg, dhcp=None), report=lambda line: print(f"dhcp_worker serve: {line}",
                                                                             file=sys.stderr, flush=True))
    except ServeError as e:
        print(f"dhcp_worker: {e}", file=sys.stderr)
        return 1
    dhcp = WorkerService(config, (lambda event: None) if drop else server.bus.publish)
    server.services.add("dhcp worker", dhcp.start, dhcp.stop, str(cfg.dhcp.listeners[0]))
    return server.run()


# -- instructions per DORA (callgrind) --------------------------------------------------


def worker_cost(n: int, batch: int, frames: str) -> None:
    """n DORA exchanges through the worker's DHCP service, ``batch``
    clients per loop iteration (bench/dhcp_cost.py --serve's feed), its
    events written to the file ``frames``."""
    import tempfile

    import dhcp_cost  # type: ignore[import-not-found]  # bench/ is on sys.path (dhcp_cost.instructions_of)

    cfg = config_mod.load(dhcp_cost.serve_config(Path(tempfile.mkdtemp())))
    fd = os.open(frames, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    services, out, leases = build(cfg, fd)
    service = services[0]

    class Transport:
        def sendto(self, data: bytes, addr: object) -> None:
            pass

    service.transport = Transport()  # type: ignore[assignment]

    async def run() -> None:
        out.loop = asyncio.get_running_loop()
        await dhcp_cost.feed(service, n, batch)

    asyncio.run(run())
    os.close(fd)
    leases.close()


def main_cost(frames: str) -> None:
    """The main process's part: every batch of ``frames`` read and published,
    one per loop iteration, on ``bootsvc serve``'s bus (log at INFO to a
    file, event file, fleet, recorder, metrics)."""
    import tempfile

    import dhcp_cost  # type: ignore[import-not-found]

    from bootsvc import cli
    from bootsvc.server import Server

    work = Path(tempfile.mkdtemp())
    cfg = config_mod.load(dhcp_cost.serve_config(work))
    sys.stderr = open(work / "serve.log", "w")  # the log at INFO, as serve writes it
    cli.setup_logging()
    server = Server(replace(cfg, dhcp=None), lambda *a, **k: None)
    server.bus.subscribe(server.recorder.on_event)  # the flight recorder follows every boot, as in serve
    inbox = Inbox(server.bus.publish)
    data = Path(frames).read_bytes()

    async def run() -> None:
        at = 0
        while at < len(data):
            (size,) = FRAME.unpack_from(data, at)
            inbox.feed(data[at:at + FRAME.size + size])
            at += FRAME.size + size
            await asyncio.sleep(0)  # one batch per loop iteration, as read from the pipe

    asyncio.run(run())
    server.close()


def cost(exchanges: int, batch: int) -> int:
    """Instructions per DORA in each process of the prototype (the
    difference between 3N and N exchanges over 2N, start-up cancelled out),
    beside ``bootsvc serve``'s (bench/dhcp_cost.py --serve)."""
    import tempfile

    from bench import dhcp_cost

    here = Path(__file__).resolve().parent.parent
    counts: dict[str, list[int]] = {"serve": [], "worker": [], "main": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (exchanges, 3 * exchanges):
            frames = f"{tmp}/frames.{n}"
            counts["serve"].append(dhcp_cost.instructions(here, n, True, batch))
            counts["worker"].append(dhcp_cost.instructions_of(
                here, f"import dhcp_worker; dhcp_worker.worker_cost({n}, {batch}, {frames!r})"))
            counts["main"].append(dhcp_cost.instructions_of(
                here, f"import dhcp_worker; dhcp_worker.main_cost({frames!r})"))
    per = {k: (v[1] - v[0]) / (2 * exchanges) / 1e6 for k, v in counts.items()}
    print(f"M instructions per DORA, batch {batch}: bootsvc serve {per['serve']:.3f}; prototype: worker "
          f"{per['worker']:.3f} + main {per['main']:.3f} = {per['worker'] + per['main']:.3f} "
          f"({(per['worker'] + per['main']) / per['serve']:.2f}x serve; the worker alone {per['worker'] / per['serve']:.2f}x)")
    return 0


# -- the benchmark ------------------------------------------------------------------------


def threads(pid: int) -> dict[str, tuple[int, int]]:
    """Every thread of ``pid``: a label -> (user, system) clock ticks
    (proc(5) stat fields 14 and 15). Python 3.11 does not give its threads
    their names in the kernel (all are "python"), so the main thread, the
    event loop's, is "loop" and the others go by their thread id."""
    out: dict[str, tuple[int, int]] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                comm, rest = (task / "stat").read_text().rsplit(")", 1)
                fields = rest.split()
                name = "loop" if task.name == str(pid) else f"{comm.split('(', 1)[1]} {task.name}"
                out[name] = (int(fields[11]), int(fields[12]))
    return out


@contextlib.contextmanager
def worker_server(ns: str, work: Path, log: str, drop: bool = False) -> Iterator[int]:
    """bench/dhcp.py's bootsvc config, served by the prototype inside ``ns``;
    yields the main process's PID (the worker is its child). ``drop``: the
    main process drops the events (``serve --drop-events``)."""
    from bench import dhcp
    from tests.e2e.peers import stop

    config = dhcp.write_bootsvc_config(work)
    serve_log = work / "worker-serve.log"
    quiet = ("-q",) if log == "warn" else ()
    with open(serve_log, "wb") as err:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, __file__, "serve", "-c", str(config),
                                 *quiet, *(("--drop-events",) if drop else ())],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while "ready:" not in serve_log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the prototype did not start:\n{serve_log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        yield proc.pid
    finally:
        stop(proc)


def cpu_split(name: str, ns_server: str, ns_client: str, work: Path, rate: int, seconds: float,
              log: str) -> list[str]:
    """One step at ``rate`` with each thread's CPU per DORA: lines to print."""
    from bench import dhcp

    with dhcp.STARTERS[name](ns_server, work, log) as pid:
        pids = [pid, *children(pid)]
        before = {p: threads(p) for p in pids}
        result = dhcp.dora(name, pid, ns_client, rate, seconds)
        after = {p: threads(p) for p in pids}
    done = max(result.done, 1)
    lines = [f"{name} at {rate}/s: {result.done} DORA ({result.lost:.2%} lost), load {os.getloadavg()[0]:.2f}"]
    for p in pids:
        total = 0.0
        for thread, (user, system) in sorted(after[p].items()):
            u0, s0 = before[p].get(thread, (0, 0))
            us = [(v - v0) / TICKS / done * 1e6 for v, v0 in ((user, u0), (system, s0))]
            total += sum(us)
            if sum(us) >= 1:
                lines.append(f"  pid {p} {thread:18} user {us[0]:5.0f}  system {us[1]:5.0f}  us/DORA")
        lines.append(f"  pid {p} total {total:5.0f} us/DORA, {total * result.done / seconds / 1e6:.0%} of a core")
    return lines


def bench(args: argparse.Namespace) -> int:
    from bench import dhcp

    dhcp.STARTERS["worker"] = worker_server
    dhcp.STARTERS["worker-alone"] = functools.partial(worker_server, drop=True)
    servers = args.servers.split(",")
    rates = [int(r) for r in args.rates.split(",")]
    best: dict[str, list[int]] = {s: [] for s in servers}
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, {os.cpu_count()} CPUs", flush=True)
    with dhcp.network() as (srv, cli), dhcp.scratch() as work:
        for r in range(args.rounds):
            print(f"round {r + 1}, load {os.getloadavg()[0]:.2f}", flush=True)
            for name in servers if r % 2 == 0 else servers[::-1]:
                top = dhcp.climb(name, srv, cli, work, rates, args.seconds, args.log)
                best[name].append(top.rate if top else 0)
            print(f"  best: {', '.join(f'{s} {best[s][-1]}' for s in servers)}; {ratios(best, -1)}", flush=True)
        print(f"latency at {args.latency_rate}/s, load {os.getloadavg()[0]:.2f}", flush=True)
        for name in servers:
            s = dhcp.step(name, srv, cli, work, args.latency_rate, args.seconds, args.log)
            ra = s.delays.get("RA", (0.0, 0.0, 0.0))
            print(f"  {name:8} REQUEST-ACK min {ra[0]:.2f} avg {ra[1]:.2f} max {ra[2]:.1f} ms", flush=True)
        print(f"CPU per thread at {args.cpu_rate}/s", flush=True)
        for name in servers:
            print("\n".join(cpu_split(name, srv, cli, work, args.cpu_rate, args.seconds, args.log)), flush=True)
    print("best rate < 1 % lost, each round: " + ", ".join(f"{s} {best[s]}" for s in servers))
    return 0


def ratios(best: dict[str, list[int]], at: int) -> str:
    """Each server's best rate of round ``at`` over Kea's."""
    kea = best.get("kea")
    if not kea:
        return ""
    return ", ".join(f"{s}/kea {v[at] / kea[at]:.2f}" if kea[at] else f"{s}/kea -" for s, v in best.items()
                     if s != "kea")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="the prototype: bootsvc serve with DHCP in a worker process")
    s.add_argument("-c", "--config", type=Path, required=True)
    s.add_argument("-q", "--quiet", action="store_true", help="the log at WARNING (as bootsvc serve -q)")
    s.add_argument("--drop-events", action="store_true",
                   help="read the worker's events and drop them (a measuring aid: the worker as if the main "
                        "process had a core of its own)")
    w = sub.add_parser("worker", help="the worker process (started by serve)")
    w.add_argument("-c", "--config", type=Path, required=True)
    w.add_argument("--fd", type=int, required=True)
    b = sub.add_parser("bench", help="Kea, bootsvc serve and the prototype in one run")
    b.add_argument("--seconds", type=float, default=4)
    b.add_argument("--rounds", type=int, default=2)
    b.add_argument("--servers", default="kea,bootsvc,worker")
    b.add_argument("--rates", default="1000,2000,3000,4000,5000,6000,8000")
    b.add_argument("--latency-rate", type=int, default=1000)
    b.add_argument("--cpu-rate", type=int, default=3000)
    b.add_argument("--log", choices=("info", "warn"), default="info")
    c = sub.add_parser("cost", help="instructions per DORA in each process (callgrind), beside serve's")
    c.add_argument("--exchanges", type=int, default=300)
    c.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    if args.command == "cost":
        return cost(args.exchanges, args.batch)
    if args.command == "worker":
        return worker(args.config, args.fd)
    if args.command == "serve":
        return serve(args.config, args.quiet, args.drop_events)
    if os.geteuid() != 0:
        print("dhcp_worker: bench needs root (network namespaces)", file=sys.stderr)
        return 2
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
