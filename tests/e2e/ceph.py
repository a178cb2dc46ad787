"""The throw-away Ceph cluster as a pytest fixture (tests/ceph_cluster.py):
one per test session, with an RBD pool; skips with the reason when Ceph or
its Python bindings are missing (scripts/install-deps.sh installs both)."""

from __future__ import annotations

import importlib
import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.ceph_cluster import Cluster, ClusterError, missing_programs

POOL = "bootsvc-test"


def need_ceph() -> None:
    missing = missing_programs()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (ceph-mon, ceph-mgr, ceph-osd, ceph-common; "
                    "installed by scripts/install-deps.sh)")
    try:
        for module in ("rados", "rbd"):
            importlib.import_module(module)
    except ImportError:
        pytest.skip("needs python3-rados and python3-rbd importable from this venv "
                    "(scripts/link-ceph-bindings.sh VENV)")


@pytest.fixture(scope="session")
def ceph_cluster() -> Iterator[Cluster]:
    """A running cluster with the RBD pool ``POOL``; removed after the session."""
    need_ceph()
    cluster = Cluster()
    try:
        cluster.start()
        cluster.create_pool(POOL)
    except ClusterError as e:
        cluster.stop()
        pytest.fail(f"the test Ceph cluster did not start: {e}")
    yield cluster
    cluster.stop()


def pool_machine_chap(cluster: Cluster, mac: str, initiator: str) -> str:
    """QEMU iSCSI driver options (``,user=...,password=...``) with the CHAP
    secret bootsvc made for the machine on Ceph storage: in the pool, not
    in state_dir (bootsvc/shared_secrets.py), read with the `rados` tool."""
    from bootsvc.shared_secrets import object_name
    got = subprocess.run(["rados", "-c", str(cluster.conf), "-p", POOL, "get", object_name(mac), "-"],
                         capture_output=True, text=True, timeout=30, check=True)
    return f",user={initiator},password={json.loads(got.stdout)['secret']}"
