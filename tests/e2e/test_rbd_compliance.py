"""libiscsi's compliance suite on an RBD-backed LUN (a clone of a protected
snapshot, served by ``bootsvc export rbd:...``) against the same suite on a
file-backed LUN of the same size, same session: every test the file LUN
passes in the families that apply to a disk, the RBD LUN must pass too.
Both runs go beside the other compliance runs (tests/e2e/conftest.py
``compliance_runs``)."""

from __future__ import annotations

import pytest

from tests.e2e.compliance import FAMILIES, Runs, applicable, counts, regressions

pytestmark = pytest.mark.e2e


def test_rbd_lun_passes_what_a_file_lun_passes(compliance_runs: Runs) -> None:
    ours = compliance_runs.results("rbd")  # without the Sanitize family, as the file LUN's run
    reference = compliance_runs.results("file")
    print(f"\nfile: all {counts(reference)}, applicable {counts(applicable(reference))}")
    print(f"rbd:  all {counts(ours)}, applicable {counts(applicable(ours))}")
    missing = [f for f in FAMILIES if not any(k.startswith(f + ".") for k in ours)]
    assert not missing, f"families that did not run: {missing}"
    worse = regressions(applicable(reference), ours)
    assert not worse, "tests the file LUN passes but the RBD LUN does not: " + ", ".join(
        f"{k} ({ours.get(k, 'missing')})" for k in worse)
