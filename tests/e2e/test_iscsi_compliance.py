"""libiscsi's compliance suite against bootsvc, with tgt run beside it on the
same machine and an image of the same size as the reference: every test tgt
passes in the families that apply to a disk target, bootsvc must pass too."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.compliance import FAMILIES, applicable, counts, regressions, run
from tests.e2e.conftest import need
from tests.e2e.peers import bootsvc_export, tgt_export

pytestmark = pytest.mark.e2e


def _image(tmp_path: Path, name: str) -> Path:
    img = tmp_path / f"{name}.img"
    subprocess.run(["truncate", "-s", "1G", str(img)], check=True)
    return img


def test_compliance_matches_or_beats_tgt(tmp_path: Path) -> None:
    need("iscsi-test-cu", "tgtd", "tgtadm")
    with tgt_export(_image(tmp_path, "tgt")) as portal:
        reference = run(portal.url())
    with bootsvc_export(_image(tmp_path, "bootsvc"), log=tmp_path / "bootsvc.log") as portal:
        ours = run(portal.url())
    assert reference and ours, "iscsi-test-cu produced no results"
    print(f"\ntgt:     all {counts(reference)}, applicable {counts(applicable(reference))}")
    print(f"bootsvc: all {counts(ours)}, applicable {counts(applicable(ours))}")
    missing = [f for f in FAMILIES if not any(k.startswith(f + ".") for k in ours)]
    assert not missing, f"families that did not run: {missing}"
    worse = regressions(applicable(reference), ours)
    assert not worse, "tests tgt passes but bootsvc does not: " + ", ".join(
        f"{k} ({ours.get(k, 'missing')})" for k in worse)
    assert counts(applicable(ours))["passed"] >= counts(applicable(reference))["passed"]
