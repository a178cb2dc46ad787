"""A reload that changes ``storage:`` (issue 22): the fleet moves every
machine's disk and the secrets bootsvc makes to the new storage (files in
state_dir ⇄ the test cluster's pool), and refuses, changing nothing, while
a machine is logged in to its disk (bootsvc/fleet.py ``_leave_storage``)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path

import pytest

from bootsvc.config import Config, load
from bootsvc.credentials import CredentialStore
from bootsvc.events import Bus, Kind
from bootsvc.fleet import Fleet, FleetError
from bootsvc.shared_secrets import SharedCredentialStore, object_name
from tests.ceph_cluster import Cluster
from tests.e2e.ceph import POOL
from tests.e2e.test_ceph_fleet import PREFIX, _base
from tests.test_fleet import recorded

pytestmark = pytest.mark.e2e

MAC = "52:54:00:00:00:01"


def _config(tmp_path: Path, cluster: Cluster, base: str, host: str, pool: str | None, extra: str = "") -> Config:
    """The machine ``host`` booting ``base``: from files, or from ``pool``."""
    (tmp_path / "profiles").mkdir(exist_ok=True)
    (tmp_path / "profiles" / "p.yaml").write_text(f"base: {base}.raw\noverlay: persistent\n")
    images = tmp_path / "state" / "images"
    images.mkdir(parents=True, exist_ok=True)
    (images / f"{base}.raw").write_bytes(b"\xee" * (1 << 20))
    storage = f"storage: {{backend: ceph, pool: {pool}, conf: {cluster.conf}{extra}}}\n" if pool else ""
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\niqn_prefix: {PREFIX}\nprofiles_dir: profiles\n{storage}"
                   f"machines:\n  {MAC}: {{hostname: {host}, profile: p}}\n")
    return load(cfg)


def _pool_secret(cluster: Cluster) -> str | None:
    got = subprocess.run(["rados", "-c", str(cluster.conf), "-p", POOL, "get", object_name(MAC), "-"],
                         capture_output=True, text=True, timeout=30)
    return json.loads(got.stdout)["secret"] if got.returncode == 0 else None


def test_a_reload_moves_disks_and_secrets_to_the_new_storage_or_refuses(ceph_cluster: Cluster,
                                                                         tmp_path: Path) -> None:
    base = _base(ceph_cluster)
    host = f"mv-{uuid.uuid4().hex[:6]}"
    subprocess.run(["rados", "-c", str(ceph_cluster.conf), "-p", POOL, "rm", object_name(MAC)],
                   capture_output=True, timeout=30)  # a machine of an earlier run with this MAC
    on_files = _config(tmp_path, ceph_cluster, base, host, None)
    on_pool = _config(tmp_path, ceph_cluster, base, host, POOL)
    bus = Bus()
    events = recorded(bus)
    fleet = Fleet(on_files, bus)
    fleet.open()

    def served() -> tuple[str, bytes]:
        disk = fleet.disk(MAC)
        assert disk is not None and disk.spec.auth is not None
        return disk.spec.luns[0].path, disk.spec.auth.forward.secret

    async def main() -> None:
        path, file_secret = served()
        assert path.endswith(f"{host}.qcow2") and isinstance(fleet.credentials, CredentialStore)

        diff = await fleet.apply(on_pool)
        path, secret = served()
        assert path.startswith(f"rbd:{POOL}/{host}") and isinstance(fleet.credentials, SharedCredentialStore)
        assert secret.decode() == _pool_secret(ceph_cluster) and secret != file_secret
        assert "settings applied: storage" in diff.lines()
        assert fleet.cfg is on_pool

        # the same pool, a timer changed: nothing moves, the store's pool connection is handed on
        pool = fleet.store._pool  # type: ignore[attr-defined]
        assert pool is not None
        diff = await fleet.apply(_config(tmp_path, ceph_cluster, base, host, POOL, ", release_after: 30"))
        assert fleet.store._pool is pool and fleet.disk(MAC) is not None  # type: ignore[attr-defined]
        assert served() == (path, secret) and "settings applied: storage" in diff.lines()
        assert fleet.cfg.storage.release_after == 30

        # a machine logged in to its disk: refused, nothing changed
        disk = fleet.disk(MAC)
        assert disk is not None
        current = fleet.cfg
        disk.target.sessions.add(object())  # type: ignore[arg-type]
        with pytest.raises(FleetError) as refused:
            await fleet.apply(on_files)
        said = str(refused.value)
        assert said.startswith(f"{on_files.path}: storage:") and host in said and "nothing of this reload" in said
        assert f"pool {POOL} of {ceph_cluster.conf}, now files in state_dir" in said
        assert served()[0].startswith("rbd:") and fleet.cfg is current and fleet.disk(MAC) is disk
        disk.target.sessions.clear()

        # logged out: back to the files, with the secret kept there
        await fleet.apply(on_files)
        path, secret = served()
        assert path.endswith(f"{host}.qcow2") and secret == file_secret
        fleet.close()

    asyncio.run(main())
    assert not [e for e in events if e.kind is Kind.DISK_FAILED], events
