"""libiscsi's compliance suite against bootsvc, with tgt run beside it on the
same machine and an image of the same size as the reference: every test tgt
passes in the families that apply to a disk target, bootsvc must pass too,
serving a raw file and serving a qcow2 overlay (whose writes, UNMAPs and
WRITE SAMEs then go through the copy-on-write code); and the families tgt
does not implement (EXTENDED COPY, SANITIZE, WRITE ATOMIC) bootsvc passes
on its own; and bootsvc fails no test but the one no target can pass
(``TEST_DEFECTS``). The runs, and the RBD clone's (tests/e2e/test_rbd_compliance.py),
go side by side (tests/e2e/conftest.py ``compliance_runs``)."""

from __future__ import annotations

import pytest

from tests.e2e.compliance import FAMILIES, TEST_DEFECTS, Runs, applicable, counts, failures, own_shortfalls, regressions
from tests.qcow2_oracle import assert_check_clean

pytestmark = pytest.mark.e2e


def test_compliance_matches_or_beats_tgt(compliance_runs: Runs) -> None:
    reference = compliance_runs.results("tgt")
    assert not any(reference.get(k) == "passed" for k in TEST_DEFECTS)  # else not the test's defect
    print(f"\ntgt:     all {counts(reference)}, applicable {counts(applicable(reference))}")
    # the raw file's run is shared with the RBD comparison
    overlay = compliance_runs.work / "overlay.qcow2"
    for name, image, ours in (("bootsvc", None, compliance_runs.results("file")),
                              ("overlay", overlay, compliance_runs.results("overlay"))):
        print(f"{name + ':':8} all {counts(ours)}, applicable {counts(applicable(ours))}")
        missing = [f for f in FAMILIES if not any(k.startswith(f + ".") for k in ours)]
        assert not missing, f"{name}: families that did not run: {missing}"
        worse = regressions(applicable(reference), ours)
        assert not worse, f"{name}: tests tgt passes but bootsvc does not: " + ", ".join(
            f"{k} ({ours.get(k, 'missing')})" for k in worse)
        assert counts(applicable(ours))["passed"] >= counts(applicable(reference))["passed"]
        failed = failures(ours)
        assert not failed, f"{name}: failed: {failed}"
        # copy offload, SANITIZE, WRITE ATOMIC: tgt skips them, bootsvc passes
        # them (atomic writes on the overlay only: a raw file cannot promise them)
        # (SANITIZE runs on the overlay only: tests/e2e/compliance.py run())
        short = own_shortfalls(ours, atomic=image is not None, sanitize=image is not None)
        assert not short, f"{name}: " + ", ".join(f"{k} ({ours.get(k)})" for k in short)
    assert_check_clean(overlay)
