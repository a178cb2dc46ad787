"""`bootsvc image commit`, `rebase` and `check` on a Ceph config, against a
real pool (bootsvc/ceph_images.py): the same commands and refusals as with
files, on RBD clones."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bootsvc.ceph_images import BASE_SNAP, RbdPool
from bootsvc.config import load
from bootsvc.images import image_store
from target.rbd import open_rbd
from tests.ceph_cluster import Cluster
from tests.e2e.ceph import POOL
from tests.e2e.test_ceph_fleet import _config
from tests.e2e.test_ceph_images import _disk_write

pytestmark = pytest.mark.e2e

MIB = 1 << 20
SIZE = 16 * MIB


def _digest(pool: RbdPool, disk: str) -> str:
    b = open_rbd(pool.lun_path(disk))
    try:
        return hashlib.sha256(b.read_sync(0, b.size)).hexdigest()
    finally:
        b.close()


def _bases(cluster: Cluster, tag: str) -> tuple[str, str]:
    """Two bases: ``gold`` (0xee everywhere) and ``alt`` (0x11 in its first
    8 MiB, zeros after), so a rebase has blocks to copy and blocks to skip."""
    gold, alt = f"gold-{tag}", f"alt-{tag}"
    with RbdPool(POOL, str(cluster.conf)) as pool:
        pool.add_base(gold, SIZE, lambda offset, n: b"\xee" * n)
        pool.add_base(alt, SIZE, lambda offset, n: (b"\x11" if offset < 8 * MIB else b"\0") * n)
    return gold, alt


def _dead_holder(cluster: Cluster, lun: str) -> None:
    """A client that takes the disk's lock and dies without releasing it."""
    code = (f"from target.rbd import open_rbd\nb = open_rbd({lun!r})\nb.claim()\nprint('held', flush=True)\n"
            "import time\ntime.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).parents[2])
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
    finally:
        child.kill()
        child.wait(10)


def test_commit_rebase_and_check_on_the_pool(ceph_cluster: Cluster, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    gold, alt = _bases(ceph_cluster, tag)
    host, other = f"pc-{tag}", f"idle-{tag}"
    cfg = _config(tmp_path, ceph_cluster, gold, {host: "keep", other: "keep"})
    store = image_store(load(cfg))
    machine = next(m for m in store.machines.values() if m.hostname == host)
    spec, _ = store.prepared(machine)
    lun = spec.luns[0].path
    _disk_write(lun, 1 * MIB, b"\x42" * MIB)   # over gold's data
    _disk_write(lun, 12 * MIB, b"\x43" * 4096)  # where alt has zeros and gold data

    def image(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bootsvc", "image", "-c", str(cfg), *argv],
                              capture_output=True, text=True, timeout=120)

    with RbdPool(POOL, str(ceph_cluster.conf)) as pool:
        before = _digest(pool, host)

        # a disk a server holds is refused, naming the server
        held = open_rbd(lun)
        held.claim()
        try:
            for argv in (("commit", host, f"new-{tag}.raw"), ("rebase", host, f"{alt}.raw")):
                refused = image(*argv)
                assert refused.returncode == 1 and f"disk {host} is in use: bootsvc on" in refused.stderr \
                    and "stop serving it first" in refused.stderr, refused.stderr
        finally:
            held.close()
        assert not pool.exists(f"new-{tag}")

        # commit: a new protected base with what the machine sees; a name taken needs --force
        done = image("commit", host, f"new-{tag}.raw")
        assert done.returncode == 0 and done.stdout.strip() == f"rbd:{POOL}/new-{tag}@{BASE_SNAP}", done.stderr
        assert _digest(pool, f"new-{tag}") == before
        again = image("commit", host, f"new-{tag}.raw")
        assert again.returncode == 1 and "already exists" in again.stderr and "--force" in again.stderr
        assert image("commit", "--force", host, f"new-{tag}.raw").returncode == 0
        pool.clone(gold, other)  # a base is never committed over a machine's disk
        try:
            disk_named = image("commit", "--force", host, f"{other}.raw")
            assert disk_named.returncode == 1 and f"{other} in pool {POOL} is not a base" in disk_named.stderr
        finally:
            pool.remove_disk(other)
        pool.clone(f"new-{tag}", f"user-{tag}")
        used = image("commit", "--force", host, f"new-{tag}.raw")
        assert used.returncode == 1 and f"1 clone(s) use it (user-{tag})" in used.stderr, used.stderr
        pool.remove_disk(f"user-{tag}")

        # rebase: the same contents, now a clone of alt; what it cost is the blocks that differ
        started = time.monotonic()
        moved = image("rebase", host, f"{alt}.raw")
        took = time.monotonic() - started
        assert moved.returncode == 0 and moved.stdout.strip() == f"{host} now on {alt}.raw", moved.stderr
        assert _digest(pool, host) == before
        info = {d.name: d for d in pool.disks()}[host]
        assert info.base == alt and info.allocated >= SIZE - 4 * MIB  # gold's data differs from alt's nearly everywhere
        assert not [n for n in pool.names() if n.startswith(f".{host}.")]
        missing = image("rebase", host, f"nobase-{tag}.raw")
        assert missing.returncode == 1 and f"no image nobase-{tag} in pool {POOL}" in missing.stderr

        # check: clean, a leftover renewal, a lock whose holder died
        clean = image("check", host)
        assert clean.returncode == 0 and clean.stdout.startswith(f"rbd:{POOL}/{host}: clean;"), clean.stdout
        assert f"a clone of {alt}, not of its profile's base {gold} (rebased)" in clean.stdout
        everyone = image("check")
        assert everyone.returncode == 0 and f"rbd:{POOL}/{other}: clean" in everyone.stdout \
            and "no disk in the pool yet" in everyone.stdout, everyone.stdout
        pool.clone(gold, f".{host}.renewal")
        _dead_holder(ceph_cluster, lun)
        deadline = time.monotonic() + 30  # the dead client's watch times out (10 s in the test cluster)
        while time.monotonic() < deadline:
            found = image("check", host)
            if "which is gone" in found.stdout:
                break
            time.sleep(1)
        assert found.returncode == 2 and "2 stale item(s)" in found.stdout, found.stdout + found.stderr
        assert f".{host}.renewal left over" in found.stdout and "locked by client" in found.stdout
        repaired = image("check", "--repair", host)
        assert repaired.returncode == 0 and "2 repaired" in repaired.stdout, repaired.stdout + repaired.stderr
        assert image("check", host).stdout.startswith(f"rbd:{POOL}/{host}: clean;")
        assert not pool.exists(f".{host}.renewal")
        unknown = image("check", "nosuch")
        assert unknown.returncode == 1 and "no machine" in unknown.stderr
        print(f"\nrebase of a {SIZE >> 20} MiB clone in {took:.2f} s (with the CLI's start)")

        pool.remove_disk(host)
        for base in (f"new-{tag}", gold, alt):
            pool.remove_base(base)
