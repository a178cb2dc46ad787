"""libiscsi's compliance suite against bootsvc, with tgt run beside it on the
same machine and an image of the same size as the reference: every test tgt
passes in the families that apply to a disk target, bootsvc must pass too,
serving a raw file and serving a qcow2 overlay (whose writes, UNMAPs and
WRITE SAMEs then go through the copy-on-write code); and the families tgt
does not implement (EXTENDED COPY, SANITIZE, WRITE ATOMIC) bootsvc passes
on its own."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from target.qcow2_create import create_image
from tests.e2e.compliance import FAMILIES, applicable, counts, own_shortfalls, regressions, run
from tests.e2e.conftest import need
from tests.e2e.peers import Portal, bootsvc_export, tgt_export
from tests.qcow2_oracle import assert_check_clean

pytestmark = pytest.mark.e2e


def _image(tmp_path: Path, name: str) -> Path:
    img = tmp_path / f"{name}.img"
    subprocess.run(["truncate", "-s", "1G", str(img)], check=True)
    return img


def _suite(export: Callable[..., AbstractContextManager[Portal]], image: Path, **kw: object) -> dict[str, str]:
    with export(image, **kw) as portal:
        return run(portal.url())


def test_compliance_matches_or_beats_tgt(tmp_path: Path, file_lun_compliance: dict[str, str]) -> None:
    need("iscsi-test-cu", "tgtd", "tgtadm", "qemu-img")
    overlay = tmp_path / "overlay.qcow2"
    create_image(overlay, backing=_image(tmp_path, "base").name, backing_format="raw")
    # tgt's run and the overlay's side by side: each is mostly libiscsi's
    # sleeps (a minute of them in Sanitize.Reset alone), not CPU
    with ThreadPoolExecutor(2) as pool:
        tgt_run = pool.submit(_suite, tgt_export, _image(tmp_path, "tgt"))
        overlay_run = pool.submit(_suite, bootsvc_export, overlay, log=tmp_path / "overlay.log")
        reference, overlay_results = tgt_run.result(), overlay_run.result()
    assert reference, "iscsi-test-cu produced no results"
    print(f"\ntgt:     all {counts(reference)}, applicable {counts(applicable(reference))}")
    # the raw file's run is shared with the RBD comparison (tests/e2e/conftest.py)
    for name, image, ours in (("bootsvc", None, file_lun_compliance), ("overlay", overlay, overlay_results)):
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
