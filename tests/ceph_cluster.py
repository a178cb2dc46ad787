"""A throw-away one-node Ceph cluster: 1 monitor, 1 manager, 1 OSD keeping
its objects in RAM (memstore), no authentication, everything bound to
127.0.0.1, all of it under one temporary directory.

For the tests (``tests/e2e/ceph.py`` wraps it in a fixture) and for anyone
trying bootsvc on Ceph without a cluster of their own::

    scripts/ceph-cluster.sh [--pool rbd] [--dir DIR]

prints ``CEPH_CONF=<path of its ceph.conf>`` once the cluster takes I/O,
then runs until interrupted (Ctrl-C, SIGTERM or end of stdin with
``--stdin``) and removes everything it made. It stops only the daemons it
started, by their process ids.

Needs Debian 12's ceph-mon, ceph-osd, ceph-mgr and ceph-common. Standalone
on purpose (standard library only, no import of bootsvc), so Debian's
``python3`` runs it as well as the project's venv.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

PROGRAMS = ("ceph-mon", "ceph-mgr", "ceph-osd", "ceph", "monmaptool", "ceph-authtool", "rbd")
# Daemons pick their ports from this many, kept below the kernel's ephemeral
# range (32768+) so no outgoing connection of another program takes one.
PORT_SPAN = 40
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

# Why each setting: the cluster is one OSD on loopback, throw-away, and must
# be usable in seconds. ``paxos propose interval`` (1 s by default) delays
# every map change, so every admin command would take a second. ``osd client
# watch timeout`` (30 s by default) is how long a killed client keeps an
# image's exclusive lock before librbd breaks it for the next one: the
# failover test waits it out.
CONF = """\
[global]
fsid = {fsid}
mon host = v2:{address}:{mon_port}
mon initial members = a
public addr = {address}
ms bind msgr1 = false
ms bind port min = {port_min}
ms bind port max = {port_max}
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
paxos propose interval = 0.05
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
osd fast shutdown = true
osd client watch timeout = 10
run dir = {dir}/run
admin socket = {dir}/run/$name.asok
log file = {dir}/log/$name.log
pid file = {dir}/run/$name.pid
keyring = {dir}/keyring
mon data = {dir}/$name
mgr data = {dir}/$name
osd data = {dir}/$name
crash dir = {dir}/crash
mgr initial modules =

[client]
# many clients (bootsvc, tgt, rbd, ceph) run as client.admin at once
admin socket = {dir}/run/$name.$pid.asok
log file = {dir}/log/$name.$pid.log
"""


class ClusterError(RuntimeError):
    """The cluster could not be started (the message says which step)."""


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if shutil.which(p) is None]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports(rng: random.Random) -> tuple[int, int]:
    """A monitor port and the first of PORT_SPAN free ports after it: other
    clusters (parallel test runs) pick elsewhere at random."""
    for _ in range(50):
        base = rng.randrange(10000, 32768 - PORT_SPAN - 1)
        if all(_port_free(p) for p in range(base, base + PORT_SPAN + 1)):
            return base, base + 1
    raise ClusterError(f"found no {PORT_SPAN + 1} free ports on 127.0.0.1 below 32768")


@dataclass
class Cluster:
    """Start with :meth:`start` (or ``with Cluster() as c``), stop with :meth:`stop`."""

    dir: Path | None = None
    memstore_bytes: int = 4 << 30
    # run everything in this network namespace (``ip netns exec NS``): its
    # 127.0.0.1 is then the namespace's, where a server under test runs
    netns: str | None = None
    # the address its daemons bind: another of the namespace's (on a bridge
    # the test made) lets servers in other namespaces reach the cluster too
    address: str = "127.0.0.1"
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _made_dir: bool = False

    @property
    def conf(self) -> Path:
        assert self.dir is not None
        return self.dir / "ceph.conf"

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ceph(self, *args: str, timeout: float = 30.0) -> str:
        """``ceph ARGS`` against this cluster; its standard output."""
        return self._run("ceph", "--connect-timeout", "10", *args, timeout=timeout)

    def rbd(self, *args: str, timeout: float = 30.0) -> str:
        return self._run("rbd", *args, timeout=timeout)

    def run_python(self, *args: str, timeout: float = 300.0) -> str:
        """This Python (``sys.executable``) with ``args``, where the cluster is."""
        return self._run(sys.executable, *args, conf=False, timeout=timeout)

    def create_pool(self, name: str, pgs: int = 8) -> None:
        """An RBD pool (``rbd pool init`` tags it for rbd)."""
        self.ceph("osd", "pool", "create", name, str(pgs))
        self.rbd("pool", "init", name)

    def start(self) -> None:
        missing = missing_programs()
        if missing:
            raise ClusterError(f"needs {', '.join(missing)} (apt install ceph-mon ceph-mgr ceph-osd ceph-common)")
        if self.dir is None:
            self.dir, self._made_dir = Path(tempfile.mkdtemp(prefix="bootsvc-ceph-")), True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        assert self.dir is not None
        for sub in ("run", "log", "crash", "mon.a", "mgr.x", "osd.0"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        mon_port, port_min = _pick_ports(random.Random())
        fsid = str(uuid.uuid4())
        self.conf.write_text(CONF.format(fsid=fsid, mon_port=mon_port, port_min=port_min,
                                         port_max=port_min + PORT_SPAN - 1, dir=self.dir, address=self.address,
                                         memstore_bytes=self.memstore_bytes))
        keyring = str(self.dir / "keyring")
        # ceph-mon --mkfs wants a mon. key even when nothing checks it
        self._run("ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "mon.",
                  "--cap", "mon", "allow *")
        monmap = str(self.dir / "monmap")
        self._run("monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:{self.address}:{mon_port}]", monmap)
        self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap)
        self._daemon("ceph-mon", "-i", "a")
        self._daemon("ceph-mgr", "-i", "x")
        osd_uuid = str(uuid.uuid4())
        osd_id = self.ceph("osd", "new", osd_uuid).strip()
        self._run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid, timeout=60)
        self._daemon("ceph-osd", "-i", osd_id)
        self._wait_osd_up()

    @property
    def prefix(self) -> tuple[str, ...]:
        """What runs a command where the cluster is (its namespace, if any)."""
        return ("ip", "netns", "exec", self.netns) if self.netns else ()

    @property
    def pids(self) -> tuple[int, ...]:
        """The daemons' process ids (``ip netns exec`` becomes the daemon)."""
        return tuple(p.pid for p in self.procs)

    def _run(self, *cmd: str, timeout: float = 30.0, conf: bool = True) -> str:
        try:
            r = subprocess.run([*self.prefix, *cmd, *(("-c", str(self.conf)) if conf else ())], capture_output=True,
                               text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise ClusterError(f"{' '.join(cmd)} took more than {timeout:.0f} s") from e
        if r.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
        return r.stdout

    def _daemon(self, *cmd: str) -> None:
        # -f: stays in the foreground, so the process id is ours to stop
        self.procs.append(subprocess.Popen([*self.prefix, *cmd, "-f", "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def _wait_osd_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise ClusterError(f"{p.args[0]} exited with {p.returncode}; see {self.dir}/log")
            stat = json.loads(self.ceph("osd", "stat", "-f", "json"))
            if stat.get("num_up_osds", stat.get("osdmap", {}).get("num_up_osds", 0)) >= 1:
                return
            time.sleep(0.1)
        raise ClusterError(f"the OSD was not up after {START_TIMEOUT:.0f} s; see {self.dir}/log")

    def stop(self) -> None:
        """Stop the daemons this cluster started (by PID), remove its directory."""
        # one at a time, OSD first: an OSD whose monitor is gone waits for it
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=STOP_TIMEOUT)
        self.procs.clear()
        if self._made_dir and self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir, self._made_dir = None, False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run a throw-away one-node Ceph cluster on 127.0.0.1 until "
                                             "interrupted, then remove it.")
    ap.add_argument("--pool", action="append", default=[], help="create this RBD pool (repeatable)")
    ap.add_argument("--dir", help="keep the cluster here (must not exist or be empty; kept afterwards)")
    ap.add_argument("--stdin", action="store_true", help="also stop when standard input ends")
    args = ap.parse_args(argv)
    directory = Path(args.dir) if args.dir else None
    if directory is not None and directory.exists() and any(directory.iterdir()):
        print(f"ceph-cluster: {directory} is not empty", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    cluster = Cluster(directory)
    began = time.monotonic()
    try:
        cluster.start()
        for pool in args.pool:
            cluster.create_pool(pool)
        print(f"CEPH_CONF={cluster.conf}", flush=True)
        print(f"ceph-cluster: up in {time.monotonic() - began:.1f} s; try: ceph -c {cluster.conf} -s",
              file=sys.stderr, flush=True)
        if args.stdin:
            sys.stdin.buffer.read()
        else:
            signal.pause()
    except ClusterError as e:
        print(f"ceph-cluster: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
