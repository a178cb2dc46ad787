"""Machines booting from RBD clones (storage: {backend: ceph}): the fleet's
image store on a real pool (bootsvc/ceph_images.py CephImageStore), and
`bootsvc serve` giving each machine its own clone over iSCSI with CHAP."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bootsvc.ceph_images import CephImageStore, RbdPool
from bootsvc.config import load
from bootsvc.events import EVENT_FILE, Bus
from bootsvc.fleet import Fleet
from bootsvc.images import image_store
from bootsvc.inventory import Machine
from target.rbd import open_rbd
from target.targets import Target, open_backend
from tests.ceph_cluster import Cluster
from tests.e2e.ceph import POOL, pool_machine_chap
from tests.e2e.conftest import need
from tests.e2e.peers import LOOPBACK, free_port, stop, wait_for_port

pytestmark = pytest.mark.e2e

MIB = 1 << 20
PREFIX = "iqn.2026-11.test.lab"


def _config(tmp_path: Path, cluster: Cluster, base: str, hosts: dict[str, str], port: int = 0,
            storage: str = "") -> Path:
    """A config whose machines (hostname: profile) boot from clones of ``base``."""
    (tmp_path / "profiles").mkdir(exist_ok=True)
    (tmp_path / "profiles" / "keep.yaml").write_text(f"base: {base}.raw\noverlay: persistent\n")
    (tmp_path / "profiles" / "fresh.yaml").write_text(f"base: {base}.raw\noverlay: ephemeral\n")
    (tmp_path / "profiles" / "open.yaml").write_text(f"base: {base}.raw\noverlay: persistent\nauth: none\n")
    machines = "".join(f"  52:54:00:00:00:{i:02x}: {{hostname: {h}, profile: {p}}}\n"
                       for i, (h, p) in enumerate(hosts.items(), 1))
    listen = f"listen:\n  iscsi: [{LOOPBACK}:{port}]\n" if port else ""
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\niqn_prefix: {PREFIX}\nprofiles_dir: profiles\n{listen}"
                   f"storage: {{backend: ceph, pool: {POOL}, conf: {cluster.conf}{storage}}}\nmachines:\n{machines}")
    return cfg


def _base(cluster: Cluster) -> str:
    name = f"gold-{uuid.uuid4().hex[:6]}"
    with RbdPool(POOL, str(cluster.conf)) as pool:
        pool.add_base(name, 16 * MIB, lambda offset, n: b"\xee" * n)
    return name


def test_the_store_makes_renews_and_removes_clones(ceph_cluster: Cluster, tmp_path: Path) -> None:
    base = _base(ceph_cluster)
    host = f"pc-{uuid.uuid4().hex[:6]}"
    store = image_store(load(_config(tmp_path, ceph_cluster, base, {host: "fresh"})))
    assert isinstance(store, CephImageStore)
    machine = next(iter(store.machines.values()))
    spec, made = store.prepared(machine)
    assert made and spec.luns[0].path == f"rbd:{POOL}/{host}:conf={ceph_cluster.conf}"
    assert spec.allowed_initiators == {f"{PREFIX}:{host}"} and spec.single_writer
    assert not store.prepared(machine)[1]  # there already: kept (a restart is no new boot)
    target = Target.open(spec)
    served = target.luns[0].backend

    async def write() -> None:
        await served.write(0, b"\x42" * MIB, fua=True)
    asyncio.run(write())
    # a new boot: a fresh clone made aside, served, then given the disk's name
    renewal = open_backend(store.make_renewal(machine, spec.luns[0]))
    assert renewal.read_sync(0, 4096) == b"\xee" * 4096
    store.keep_renewal(machine)  # the old disk is still open here
    now = open_rbd(spec.luns[0].path)
    assert now.read_sync(0, 4096) == b"\xee" * 4096
    now.close()
    with RbdPool(POOL, str(ceph_cluster.conf)) as pool:
        olds = [n for n in pool.names() if n.startswith(f".{host}.old.")]
        assert len(olds) == 1  # kept while open
        target.close()
        renewal.close()
        store.remove_disk(machine)
        assert not [n for n in pool.names() if host in n]
        store.drop_renewal(machine)  # none there: nothing to do
        pool.remove_base(base)


def test_serve_gives_each_machine_its_clone(ceph_cluster: Cluster, tmp_path: Path) -> None:
    need("qemu-io")
    base = _base(ceph_cluster)
    tag = uuid.uuid4().hex[:6]
    hosts = {f"keeper-{tag}": "keep", f"kiosk-{tag}": "fresh"}
    port = free_port()
    cfg = _config(tmp_path, ceph_cluster, base, hosts, port)
    check = subprocess.run([sys.executable, "-m", "bootsvc", "check", "-c", str(cfg)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([sys.executable, "-m", "bootsvc", "serve", "-c", str(cfg)], stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        for i, host in enumerate(hosts, 1):
            chap = pool_machine_chap(ceph_cluster, f"52:54:00:00:00:{i:02x}", f"{PREFIX}:{host}")
            opts = (f"driver=iscsi,transport=tcp,portal={LOOPBACK}:{port},target={PREFIX}:boot.{host},lun=0,"
                    f"initiator-name={PREFIX}:{host}{chap}")
            io = subprocess.run(["qemu-io", "--image-opts", "-c", "read -P 0xee 0 1M", "-c", "write -P 0x42 1M 1M",
                                 "-c", "flush", opts], capture_output=True, text=True, timeout=60)
            assert io.returncode == 0 and "wrote" in io.stdout and "verification failed" not in io.stdout, \
                io.stdout + io.stderr
    finally:
        stop(proc)
    with RbdPool(POOL, str(ceph_cluster.conf)) as pool:
        disks = {d.name: d for d in pool.disks()}
        for host in hosts:
            assert disks[host].base == base and disks[host].allocated >= MIB
            b = open_rbd(pool.lun_path(host))
            try:
                assert b.read_sync(MIB, 4096) == b"\x42" * 4096  # written through bootsvc, in the clone
            finally:
                b.close()
        assert {b.name: b.clones for b in pool.bases()}[base] == tuple(sorted(hosts))

    def image(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bootsvc", "image", "-c", str(cfg), *argv],
                              capture_output=True, text=True, timeout=60)

    listing = image("list")
    assert listing.returncode == 0 and f"bases in pool {POOL}:" in listing.stdout, listing.stderr
    keeper, kiosk = hosts
    assert any(line.split()[0] == keeper and "MiB allocated" in line and f"base {base}" in line
               for line in listing.stdout.splitlines()), listing.stdout
    reset = image("reset", kiosk)
    assert reset.returncode == 0 and reset.stdout.strip() == f"rbd:{POOL}/{kiosk}:conf={ceph_cluster.conf}"
    with RbdPool(POOL, str(ceph_cluster.conf)) as pool:
        assert {d.name: d.allocated for d in pool.disks()}[kiosk] == 0
    committed = image("commit", keeper, "new-gold")  # the server stopped: the disk is free
    assert committed.returncode == 0 and committed.stdout.strip() == f"rbd:{POOL}/new-gold@base", committed.stderr
    with RbdPool(POOL, str(ceph_cluster.conf)) as pool:
        pool.remove_base("new-gold")


def _qemu_io(port: int, host: str, *commands: str, tries: int = 20) -> subprocess.CompletedProcess[str]:
    """qemu-io on the machine's disk through a server, again every 0.5 s
    while the login is refused (the first server's lock goes as it stops)."""
    opts = (f"driver=iscsi,transport=tcp,portal={LOOPBACK}:{port},target={PREFIX}:boot.{host},lun=0,"
            f"initiator-name={PREFIX}:{host}")
    argv = ["qemu-io", "--image-opts", *(x for c in commands for x in ("-c", c)), opts]
    for _ in range(tries):
        io = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if io.returncode == 0 and "verification failed" not in io.stdout:
            return io
        time.sleep(0.5)
    return io


def test_a_disk_is_served_by_one_server_at_a_time(ceph_cluster: Cluster, tmp_path: Path) -> None:
    """Two servers, one pool, one machine in both configs: the first one the
    machine turns to claims its disk (RBD's lock); the other refuses it and
    says who holds it; once the first stops, the other serves the same
    contents; and when that one is killed, the first takes the disk back
    once Ceph has noticed the holder is gone."""
    need("qemu-io")
    base = _base(ceph_cluster)
    host = f"roam-{uuid.uuid4().hex[:6]}"
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        port = free_port()
        servers.append((port, _config(tmp_path / name, ceph_cluster, base, {host: "open"}, port)))
    (port_a, cfg_a), (port_b, cfg_b) = servers
    a = subprocess.Popen([sys.executable, "-m", "bootsvc", "serve", "-c", str(cfg_a)], stderr=subprocess.DEVNULL)
    b = None
    try:
        wait_for_port(port_a, a)
        wrote = _qemu_io(port_a, host, "write -P 0x41 1M 1M", "flush", tries=1)  # a login claims the disk
        assert wrote.returncode == 0 and "wrote" in wrote.stdout, \
            wrote.stdout + wrote.stderr + (tmp_path / "a" / "state" / EVENT_FILE).read_text()[-3000:]
        b = subprocess.Popen([sys.executable, "-m", "bootsvc", "serve", "-c", str(cfg_b)], stderr=subprocess.DEVNULL)
        wait_for_port(port_b, b)
        refused = _qemu_io(port_b, host, "read 0 4k", tries=4)
        assert refused.returncode != 0
        events = (tmp_path / "b" / "state" / EVENT_FILE).read_text()
        assert "in use by another server" in events and f"pid {a.pid}" in events, events[-2000:]
        stop(a)  # the lock goes with it
        moved = _qemu_io(port_b, host, "read -P 0x41 1M 1M", "write -P 0x42 2M 4k")
        assert moved.returncode == 0 and "read 1048576" in moved.stdout, moved.stdout + moved.stderr
        # B dies holding the disk: its lock outlives it until its watch times out (10 s in
        # the test cluster), then A, started again, takes the disk over with B's write in it
        b.kill()
        b.wait(10)
        a = subprocess.Popen([sys.executable, "-m", "bootsvc", "serve", "-c", str(cfg_a)],
                             stderr=subprocess.DEVNULL)
        wait_for_port(port_a, a)
        started = time.monotonic()
        back = _qemu_io(port_a, host, "read -P 0x42 2M 4k", tries=60)
        assert back.returncode == 0, back.stdout + back.stderr
        assert time.monotonic() - started < 25
    finally:
        stop(a)
        if b is not None:
            stop(b)


def _event_file(server: Path, kind: str) -> str:
    """A server's event file once it holds ``kind`` (at most 5 s): the
    event follows the release, which the other server's login may overtake."""
    for _ in range(50):
        events = (server / "state" / EVENT_FILE).read_text()
        if f'"kind":"{kind}"' in events:
            break
        time.sleep(0.1)
    return events


def test_a_disk_the_machine_stopped_using_is_released(ceph_cluster: Cluster, tmp_path: Path) -> None:
    """Two servers stay up: the machine logs in to A and out again; after
    storage.release_after (1 s here) A gives the disk up (disk.released)
    and B serves it with A's write in it, A still running; the machine
    coming back to A later is served there again once B let go."""
    need("qemu-io")
    base = _base(ceph_cluster)
    host = f"move-{uuid.uuid4().hex[:6]}"
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        port = free_port()
        servers.append((port, _config(tmp_path / name, ceph_cluster, base, {host: "open"}, port,
                                      storage=", release_after: 1")))
    (port_a, cfg_a), (port_b, cfg_b) = servers
    a = subprocess.Popen([sys.executable, "-m", "bootsvc", "serve", "-c", str(cfg_a)], stderr=subprocess.DEVNULL)
    b = subprocess.Popen([sys.executable, "-m", "bootsvc", "serve", "-c", str(cfg_b)], stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port_a, a)
        wait_for_port(port_b, b)
        wrote = _qemu_io(port_a, host, "write -P 0x51 1M 1M", "flush", tries=1)
        assert wrote.returncode == 0 and "wrote" in wrote.stdout, wrote.stdout + wrote.stderr
        ended = time.monotonic()
        moved = _qemu_io(port_b, host, "read -P 0x51 1M 1M", "write -P 0x52 2M 4k", tries=20)
        took = time.monotonic() - ended
        events_a = _event_file(tmp_path / "a", "disk.released")
        assert moved.returncode == 0 and "read 1048576" in moved.stdout, moved.stdout + moved.stderr + events_a[-3000:]
        assert a.poll() is None and "\"kind\":\"disk.released\"" in events_a and "no session for 1 s" in events_a
        assert 1.0 <= took < 10
        back = _qemu_io(port_a, host, "read -P 0x52 2M 4k", tries=20)  # B lets go in turn
        assert back.returncode == 0, back.stdout + back.stderr
        events_b = _event_file(tmp_path / "b", "disk.released")
        assert "\"kind\":\"disk.released\"" in events_b, events_b[-2000:]
        print(f"\nserved by B {took:.1f} s after the machine left A (release_after 1 s)")
    finally:
        stop(a)
        stop(b)


def test_a_shutdown_during_a_renewals_renames_leaves_it_named(ceph_cluster: Cluster, tmp_path: Path) -> None:
    """An ephemeral disk renewed on the pool: the renames that give the
    served renewal the disk's name run in a worker thread; the event loop
    ending while they run (a slow cluster) leaves the disk named once the
    fleet is closed, holding what was written to the served renewal."""
    base = _base(ceph_cluster)
    host = f"eph-{uuid.uuid4().hex[:6]}"
    fleet = Fleet(load(_config(tmp_path, ceph_cluster, base, {host: "fresh"})), Bus())
    fleet.open()
    mac = next(iter(fleet.machines))
    disk = fleet.disk(mac)
    assert disk is not None
    disk.fresh = False  # booted: its next boot renews it
    keep = fleet.store.keep_renewal

    def slow_keep(machine: Machine) -> None:
        time.sleep(0.5)
        keep(machine)

    fleet.store.keep_renewal = slow_keep  # type: ignore[method-assign]
    try:
        assert asyncio.run(fleet.renew(mac))
        served = disk.target.luns[0].backend

        async def write() -> None:
            await served.write(0, b"\x61" * 4096, fua=True)
        asyncio.run(write())
        with RbdPool(POOL, str(ceph_cluster.conf)) as pool:
            assert pool.exists(f".{host}.renewal")  # not named yet
    finally:
        fleet.close()
    with RbdPool(POOL, str(ceph_cluster.conf)) as pool:
        assert not pool.exists(f".{host}.renewal")
        b = open_rbd(pool.lun_path(host))
        try:
            assert b.read_sync(0, 4096) == b"\x61" * 4096
        finally:
            b.close()
        for name in pool.names():
            if host in name:
                pool.remove_disk(name)
        pool.remove_base(base)


def test_image_import_puts_the_base_in_the_pool(ceph_cluster: Cluster, tmp_path: Path) -> None:
    """`bootsvc image import` on a Ceph config: the disk goes to
    state_dir/images as with files, then into the pool as the base machines
    clone; a base there is kept without --force and, with clones, also with it."""
    name = f"imported-{uuid.uuid4().hex[:6]}"
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.write(b"\x33" * 510 + b"\x55\xaa")  # a boot sector, so import takes it for a disk
        f.truncate(8 * MIB)
    cfg = _config(tmp_path, ceph_cluster, name, {f"pc-{name}": "keep"})

    def image(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bootsvc", "image", "-c", str(cfg), *argv],
                              capture_output=True, text=True, timeout=120)

    first = image("import", str(raw), f"{name}.raw")
    assert first.returncode == 0, first.stderr
    assert f"is base rbd:{POOL}/{name}@base" in first.stdout and (tmp_path / "state" / "images" / f"{name}.raw").exists()
    store = image_store(load(cfg))
    machine = next(iter(store.machines.values()))
    spec, made = store.prepared(machine)  # the machine's clone of the imported base
    disk = open_rbd(spec.luns[0].path)
    try:
        assert made and disk.read_sync(0, 512) == b"\x33" * 510 + b"\x55\xaa"
    finally:
        disk.close()
    again = image("import", "--force", str(raw), f"{name}.raw")
    assert again.returncode == 1 and "clone" in again.stderr, again.stdout + again.stderr
