"""libiscsi's compliance suite against bootsvc, with tgt run beside it on the
same machine and an image of the same size as the reference: every test tgt
passes in the families that apply to a disk target, bootsvc must pass too,
serving a raw file and serving a qcow2 overlay (whose writes, UNMAPs and
WRITE SAMEs then go through the copy-on-write code); and the families tgt
does not implement (EXTENDED COPY, SANITIZE, WRITE ATOMIC) bootsvc passes
on its own."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from target.qcow2_create import create_image
from tests.e2e.compliance import FAMILIES, applicable, counts, own_shortfalls, regressions, run
from tests.e2e.conftest import need
from tests.e2e.peers import bootsvc_export, tgt_export
from tests.qcow2_oracle import assert_check_clean

pytestmark = pytest.mark.e2e


def _image(tmp_path: Path, name: str) -> Path:
    img = tmp_path / f"{name}.img"
    subprocess.run(["truncate", "-s", "1G", str(img)], check=True)
    return img


def test_compliance_matches_or_beats_tgt(tmp_path: Path, file_lun_compliance: dict[str, str]) -> None:
    need("iscsi-test-cu", "tgtd", "tgtadm", "qemu-img")
    overlay = tmp_path / "overlay.qcow2"
    create_image(overlay, backing=_image(tmp_path, "base").name, backing_format="raw")
    with tgt_export(_image(tmp_path, "tgt")) as portal:
        reference = run(portal.url())
    assert reference, "iscsi-test-cu produced no results"
    print(f"\ntgt:     all {counts(reference)}, applicable {counts(applicable(reference))}")
    for name, image in (("bootsvc", None), ("overlay", overlay)):
        if image is None:
            ours = file_lun_compliance  # the raw file's run, shared with the RBD comparison
        else:
            with bootsvc_export(image, log=tmp_path / f"{name}.log") as portal:
                ours = run(portal.url())
        print(f"{name + ':':8} all {counts(ours)}, applicable {counts(applicable(ours))}")
        missing = [f for f in FAMILIES if not any(k.startswith(f + ".") for k in ours)]
        assert not missing, f"{name}: families that did not run: {missing}"
        worse = regressions(applicable(reference), ours)
        assert not worse, f"{name}: tests tgt passes but bootsvc does not: " + ", ".join(
            f"{k} ({ours.get(k, 'missing')})" for k in worse)
        assert counts(applicable(ours))["passed"] >= counts(applicable(reference))["passed"]
        # copy offload, SANITIZE, WRITE ATOMIC: tgt skips them, bootsvc passes
        # them (atomic writes on the overlay only: a raw file cannot promise them)
        # (SANITIZE runs on the overlay only: tests/e2e/compliance.py run())
        short = own_shortfalls(ours, atomic=image is not None, sanitize=image is not None)
        assert not short, f"{name}: " + ", ".join(f"{k} ({ours.get(k)})" for k in short)
    assert_check_clean(overlay)
