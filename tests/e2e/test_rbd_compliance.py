"""libiscsi's compliance suite on an RBD-backed LUN (a clone of a protected
snapshot, served by ``bootsvc export rbd:...``) against the same suite on a
file-backed LUN of the same size, same run: every test the file LUN passes
in the families that apply to a disk, the RBD LUN must pass too."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ceph_cluster import Cluster
from tests.e2e.ceph import POOL
from tests.e2e.compliance import FAMILIES, applicable, counts, regressions, run
from tests.e2e.conftest import need
from tests.e2e.peers import bootsvc_export

pytestmark = pytest.mark.e2e


def test_rbd_lun_passes_what_a_file_lun_passes(ceph_cluster: Cluster, tmp_path: Path,
                                               file_lun_compliance: dict[str, str]) -> None:
    need("iscsi-test-cu")
    ceph_cluster.rbd("create", "--size", "1G", f"{POOL}/compliance-base")
    ceph_cluster.rbd("snap", "create", f"{POOL}/compliance-base@gold")
    ceph_cluster.rbd("snap", "protect", f"{POOL}/compliance-base@gold")
    ceph_cluster.rbd("clone", f"{POOL}/compliance-base@gold", f"{POOL}/compliance")
    reference = file_lun_compliance  # the file LUN's run (tests/e2e/conftest.py), shared
    rbd_lun = f"rbd:{POOL}/compliance:conf={ceph_cluster.conf}"
    with bootsvc_export(rbd_lun, log=tmp_path / "rbd.log") as portal:
        ours = run(portal.url(), sanitize=False)  # as the file LUN's run
    print(f"\nfile: all {counts(reference)}, applicable {counts(applicable(reference))}")
    print(f"rbd:  all {counts(ours)}, applicable {counts(applicable(ours))}")
    missing = [f for f in FAMILIES if not any(k.startswith(f + ".") for k in ours)]
    assert not missing, f"families that did not run: {missing}"
    worse = regressions(applicable(reference), ours)
    assert not worse, "tests the file LUN passes but the RBD LUN does not: " + ", ".join(
        f"{k} ({ours.get(k, 'missing')})" for k in worse)
