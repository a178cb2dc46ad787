"""Two `bootsvc serve` on one Ceph pool, one machine in both (issue 22):

- the CHAP secret bootsvc makes for the machine is the pool's
  (bootsvc/shared_secrets.py): A's script and B's hand out the same one,
  the `rados` tool reads it in the pool, neither server logs it, and a login
  to B with the secret A gave (a running machine moved to B keeps the one
  in its iBFT) succeeds (libiscsi's iscsi-inq);
- both register with one iSNS server side by side (open-isns's isnsd, and
  bootsvc's own iSNS server in a third bootsvc), each under its own control
  node and entity; the machine's target is registered only by the server
  holding its disk, so the machine asking iSNS as itself (isnsadm --query)
  finds only that server's portal; when the disk moves (A stops, B is
  logged in to) A's entity goes and B's portal is the one found.

There is no kernel initiator here (no `iscsiadm -m discovery -t isns`):
isnsadm asks as the machine instead."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bootsvc.ceph_images import RbdPool
from bootsvc.events import EVENT_FILE
from bootsvc.inventory import generated_machine
from bootsvc.shared_secrets import SharedCredentialStore, SharedSecretError, object_name
from tests.ceph_cluster import Cluster
from tests.e2e.ceph import POOL
from tests.e2e.conftest import need
from tests.e2e.peers import LOOPBACK, free_port, isnsadm, isnsd, stop, wait_for_port

pytestmark = pytest.mark.e2e

MIB = 1 << 20
PREFIX = "iqn.2026-11.test.two"
MAC = "52:54:00:00:02:01"
MACHINE_IP = "127.77.2.1"


@contextlib.contextmanager
def _bootsvc_isns(tmp_path: Path, names: list[str]) -> Iterator[int]:
    """A third bootsvc serving only iSNS, the two servers its control nodes."""
    port = free_port()
    cfg = tmp_path / "isns.yaml"
    controls = ", ".join(f"{PREFIX}:bootsvc.{n}" for n in names)
    cfg.write_text(f"state_dir: {tmp_path / 'isns-state'}\niqn_prefix: {PREFIX}\n"
                   f"listen:\n  isns: {LOOPBACK}:{port}\nisns:\n  control_nodes: [{controls}]\n")
    proc = subprocess.Popen([sys.executable, "-m", "bootsvc", "serve", "-c", str(cfg)], stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        stop(proc)


@pytest.fixture(params=["isnsd", "bootsvc"])
def isns_port(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[int]:
    need("isnsadm")
    if request.param == "isnsd":
        need("isnsd")
        with isnsd(tmp_path, f"{PREFIX}:isnsd", default_dd=False) as port:
            yield port
    else:
        with _bootsvc_isns(tmp_path, ["server-a", "server-b"]) as port:
            yield port


def _server(tmp_path: Path, name: str, cluster: Cluster, base: str, host: str, isns: int) -> tuple[Path, int, int]:
    """A server's config (its own state_dir, iSCSI and HTTP port, iSNS name)."""
    d = tmp_path / name
    (d / "profiles").mkdir(parents=True)
    (d / "profiles" / "keep.yaml").write_text(f"base: {base}.raw\noverlay: persistent\n")  # auth: chap
    iscsi, http = free_port(), free_port()
    cfg = d / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {d / 'state'}\niqn_prefix: {PREFIX}\nprofiles_dir: profiles\n"
                   f"listen:\n  iscsi: [{LOOPBACK}:{iscsi}]\n  http: {LOOPBACK}:{http}\n"
                   f"isns:\n  server: {LOOPBACK}:{isns}\n  name: server-{name}\n"
                   f"storage: {{backend: ceph, pool: {POOL}, conf: {cluster.conf}}}\n"
                   f"machines:\n  {MAC}: {{hostname: {host}, profile: keep, ip: {MACHINE_IP}}}\n")
    return cfg, iscsi, http


def _script_secret(http: int) -> str:
    """The CHAP secret in the machine's iPXE script, fetched as the machine."""
    r = subprocess.run(["curl", "-sS", "--max-time", "10", "--interface", MACHINE_IP,
                        f"http://{LOOPBACK}:{http}/boot/{MAC.replace(':', '-')}.ipxe"],
                       capture_output=True, text=True, timeout=20)
    found = re.search(r"^set password (\S+)$", r.stdout, re.M)
    assert found, r.stdout + r.stderr
    return found.group(1)


def _inq(port: int, host: str, secret: str) -> subprocess.CompletedProcess[str]:
    """libiscsi's iscsi-inq logging in as the machine with ``secret``."""
    url = f"iscsi://{PREFIX}:{host}%{secret}@{LOOPBACK}:{port}/{PREFIX}:boot.{host}/0"
    return subprocess.run(["iscsi-inq", "-i", f"{PREFIX}:{host}", url], capture_output=True, text=True, timeout=30)


def _wait(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # bounded poll
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _found_portals(tmp_path: Path, isns: int, host: str) -> str:
    """The ports of the portals isnsadm finds for the machine's target, asking as the machine."""
    me = f"{PREFIX}:{host}"
    isnsadm(tmp_path, isns, me, "--register", f"initiator={me}")
    rc, out = isnsadm(tmp_path, isns, me, "--query", f"iscsi-name={PREFIX}:boot.{host}")
    return " ".join(sorted(set(re.findall(r"Portal TCP/UDP port = (\d+)/tcp", out)))) if rc == 0 else f"rc {rc}"


def _entities(tmp_path: Path, isns: int) -> str:
    rc, out = isnsadm(tmp_path, isns, f"{PREFIX}:bootsvc.server-a", "--list", "entities")
    return out


def test_two_servers_share_the_machine_secret_and_iSNS_follows_the_disk(
        ceph_cluster: Cluster, tmp_path: Path, isns_port: int) -> None:
    need("iscsi-inq")
    need("curl")
    base = f"gold-{uuid.uuid4().hex[:6]}"
    with RbdPool(POOL, str(ceph_cluster.conf)) as pool:
        pool.add_base(base, 8 * MIB, lambda offset, n: b"\x11" * n)
    host = f"pair-{uuid.uuid4().hex[:6]}"
    (cfg_a, iscsi_a, http_a), (cfg_b, iscsi_b, http_b) = (
        _server(tmp_path, n, ceph_cluster, base, host, isns_port) for n in ("a", "b"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # one after the other: two servers making the same machine's clone at
        # the same moment is the image store's business (see HELPER_NOTES)
        for cfg, http in ((cfg_a, http_a), (cfg_b, http_b)):
            procs.append(subprocess.Popen([sys.executable, "-m", "bootsvc", "serve", "-c", str(cfg)],
                                          stderr=subprocess.DEVNULL))
            wait_for_port(http, procs[-1])
        a, b = procs
        secret = _script_secret(http_a)
        assert _script_secret(http_b) == secret  # B hands out A's secret
        got = subprocess.run(["rados", "-c", str(ceph_cluster.conf), "-p", POOL, "get", object_name(MAC), "-"],
                             capture_output=True, text=True, timeout=30)
        assert got.returncode == 0 and json.loads(got.stdout)["secret"] == secret, got.stderr

        # both entities, side by side; the target is nobody's until a server holds the disk
        _wait(lambda: "server-a" in _entities(tmp_path, isns_port) and "server-b" in _entities(tmp_path, isns_port),
              "both servers' entities")
        assert _found_portals(tmp_path, isns_port, host) in ("", "rc 1"), "registered before any claim"
        rc, portals = isnsadm(tmp_path, isns_port, f"{PREFIX}:bootsvc.server-a", "--list", "portals")
        assert rc == 0 and f"{iscsi_a}/tcp" in portals and f"{iscsi_b}/tcp" in portals, portals

        # CHAP is asked: a wrong secret is refused
        wrong = _inq(iscsi_a, host, "x" * len(secret))
        assert wrong.returncode != 0, wrong.stdout

        # the machine logs in to A: A holds the disk, iSNS gives A's portal only
        inq = _inq(iscsi_a, host, secret)
        assert inq.returncode == 0 and "Peripheral Device Type" in inq.stdout, inq.stdout + inq.stderr
        _wait(lambda: _found_portals(tmp_path, isns_port, host) == str(iscsi_a), "A's portal in iSNS")
        assert _inq(iscsi_b, host, secret).returncode != 0  # A holds the disk

        # A stops (its lock and its entity go); the machine, keeping A's secret, logs in to B
        stop(a)
        _wait(lambda: "server-a" not in _entities(tmp_path, isns_port), "A's entity to go")
        deadline = time.monotonic() + 20
        while (inq := _inq(iscsi_b, host, secret)).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert inq.returncode == 0, inq.stdout + inq.stderr
        _wait(lambda: _found_portals(tmp_path, isns_port, host) == str(iscsi_b), "B's portal in iSNS")
    finally:
        for p in procs:
            stop(p)
    for name in ("a", "b"):  # the secret is in no event nor log line
        assert secret not in (tmp_path / name / "state" / EVENT_FILE).read_text()
    subprocess.run(["rados", "-c", str(ceph_cluster.conf), "-p", POOL, "rm", object_name(MAC)], timeout=30)


def test_servers_making_a_secret_at_once_agree(ceph_cluster: Cluster) -> None:
    """Several servers asking for a new machine's secrets at the same moment:
    one exclusive create wins, the others read its secrets."""
    machine = generated_machine(f"52:54:00:00:02:{uuid.uuid4().int % 250:02x}", PREFIX, "keep")
    stores = [SharedCredentialStore(POOL, str(ceph_cluster.conf)) for _ in range(8)]
    start = threading.Barrier(len(stores))
    got: list[str] = []

    def ask(store: SharedCredentialStore) -> None:
        start.wait(10)
        got.append(store.secrets_of(machine)[0].secret.decode())

    threads = [threading.Thread(target=ask, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert len(got) == len(stores) and len(set(got)) == 1, got
        assert stores[0].secrets_of(machine)[0].secret.decode() == got[0]  # kept in memory
    finally:
        for s in stores:
            s.close()
        subprocess.run(["rados", "-c", str(ceph_cluster.conf), "-p", POOL, "rm", object_name(machine.mac)],
                       timeout=30)


def test_a_damaged_secret_object_is_an_error_not_a_new_secret(ceph_cluster: Cluster) -> None:
    machine = generated_machine(f"52:54:00:00:03:{uuid.uuid4().int % 250:02x}", PREFIX, "keep")
    oid = object_name(machine.mac)
    subprocess.run(["rados", "-c", str(ceph_cluster.conf), "-p", POOL, "put", oid, "/dev/null"], check=True,
                   timeout=30)
    store = SharedCredentialStore(POOL, str(ceph_cluster.conf))
    try:
        with pytest.raises(SharedSecretError, match="damaged"):
            store.secrets_of(machine)
    finally:
        store.close()
        subprocess.run(["rados", "-c", str(ceph_cluster.conf), "-p", POOL, "rm", oid], timeout=30)
    missing = SharedCredentialStore("no-such-pool", str(ceph_cluster.conf))
    with pytest.raises(SharedSecretError, match="no-such-pool"):
        missing.secrets_of(machine)
