"""Running libiscsi's ``iscsi-test-cu`` and reading its results per test.

iscsi-test-cu reports a skipped test as passed; its own output says
``[SKIPPED]`` inside the test's text, so that is how skips are told apart.
Run as a script to print both targets' results side by side:
``python3 -m tests.e2e.compliance [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pytest

from target.qcow2_create import create_image
from tests.ceph_cluster import Cluster
from tests.e2e.peers import bootsvc_export, tgt_export

# The families that apply to a disk target without multipath (its own
# test): everything the issues name and the other SBC/SPC families a plain
# disk is expected to answer, persistent reservations and RESERVE/RELEASE(6)
# included, and since issue 21 copy offload (EXTENDED COPY, RECEIVE COPY
# RESULTS), SANITIZE and WRITE ATOMIC(16).
FAMILIES = (
    "CompareAndWrite", "ExtendedCopy", "GetLBAStatus", "Inquiry", "Mandatory", "ModeSense6", "NoMedia", "OrWrite",
    "Prefetch10",
    "Prefetch16", "PreventAllow", "PrinReadKeys", "PrinReportCapabilities", "PrinServiceactionRange",
    "ProutClear", "ProutPreempt", "ProutRegister", "ProutReserve", "Read6", "Read10", "Read12", "Read16",
    "ReadCapacity10", "ReadCapacity16", "ReadDefectData10", "ReadDefectData12", "ReadOnly",
    "ReceiveCopyResults", "ReportSupportedOpcodes", "Reserve6", "Sanitize", "StartStopUnit", "TestUnitReady",
    "Unmap", "Verify10", "Verify12", "Verify16", "Write10", "Write12", "Write16", "WriteAtomic16", "WriteSame10",
    "WriteSame16", "WriteVerify10", "WriteVerify12", "WriteVerify16", "iSCSIcmdsn", "iSCSIdatasn",
    "iSCSIResiduals", "iSCSITMF",
)

# Families tgt does not implement (it skips them), so the comparison with it
# does not hold bootsvc to them: bootsvc must pass every test of these
# itself, but for the skips named here. WriteAtomic16.VPD checks alignment
# and granularity restrictions only where there are some (there are none of
# the latter), and a raw file has no atomic writes at all (VPD B0h says so).
OWN_FAMILIES = ("ExtendedCopy", "ReceiveCopyResults", "Sanitize", "WriteAtomic16")
OWN_SKIPS = frozenset({"WriteAtomic16.VPD"})

# Tests that fail on every target for a defect of the test itself, so no
# target can pass them: after iSCSIDataSnInvalid's first case drops the
# connection, libiscsi reconnects and negotiates ImmediateData=Yes again (the
# test sets the negotiated value before the reconnect, not the wanted one),
# so its later one-block writes go as immediate data and no Data-Out carries
# the bad DataSN they mean to send; tgt fails it the same way
# (docs/compliance.md). Every other test bootsvc runs must pass.
TEST_DEFECTS = frozenset({"iSCSIdatasn.iSCSIDataSnInvalid"})

_SUITE = re.compile(r"^Suite: (\S+)", re.M)
_TEST = re.compile(r"^  Test: (\S+) \.\.\.", re.M)
_RESULT = re.compile(r"(passed|FAILED)")


def parse(output: str) -> dict[str, str]:
    """``{"Suite.Test": "passed" | "skipped" | "failed"}`` from verbose output."""
    results: dict[str, str] = {}
    marks = sorted([(m.start(), "suite", m) for m in _SUITE.finditer(output)]
                   + [(m.start(), "test", m) for m in _TEST.finditer(output)], key=lambda t: t[0])
    suite = "?"
    for i, (_, kind, m) in enumerate(marks):
        if kind == "suite":
            suite = m.group(1)
            continue
        end = marks[i + 1][0] if i + 1 < len(marks) else len(output)
        body = output[m.end():end]
        r = _RESULT.search(body)
        if r is None:
            status = "failed"  # the run ended inside this test (crash or timeout)
        elif r.group(1) == "FAILED":
            status = "failed"
        else:
            status = "skipped" if "[SKIPPED]" in body[:r.start()] else "passed"
        results[f"{suite}.{m.group(1)}"] = status
    return results


def run(url: str, pattern: str = "ALL.*", timeout: float = 900, multipath: str | None = None,
        sanitize: bool = True) -> dict[str, str]:
    """``multipath``: a second URL of the same LUN through another portal
    (iscsi-test-cu's second device; the MultipathIO family skips without it).
    ``sanitize`` (``--allow-sanitize``): the Sanitize family wipes the disk,
    which is a scratch image here. It alone takes about 100 s of the run
    (four 1 GiB overwrites at the sanitize pace, and a minute's wait in
    Sanitize.Reset), so the suite runs it on one LUN kind only, the served
    kind (a qcow2 overlay); without it the family skips."""
    wipe = ["--allow-sanitize"] if sanitize else []
    proc = subprocess.run(["iscsi-test-cu", "--dataloss", *wipe, "-t", pattern, url,
                           *([multipath] if multipath else [])], capture_output=True, text=True, timeout=timeout)
    return parse(proc.stdout)


def own_shortfalls(ours: dict[str, str], atomic: bool = True, sanitize: bool = True) -> list[str]:
    """Tests of :data:`OWN_FAMILIES` bootsvc does not pass, but for the
    expected skips (all of WriteAtomic16 on a LUN without ``atomic`` writes,
    all of Sanitize in a run without ``sanitize``)."""
    def expected_skip(name: str) -> bool:
        return (name in OWN_SKIPS or (not atomic and name.startswith("WriteAtomic16."))
                or (not sanitize and name.startswith("Sanitize.")))
    return sorted(k for k, v in ours.items() if k.split(".")[0] in OWN_FAMILIES and v != "passed"
                  and not (v == "skipped" and expected_skip(k)))


def applicable(results: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in results.items() if k.split(".")[0] in FAMILIES}


def counts(results: dict[str, str]) -> dict[str, int]:
    out = {"passed": 0, "skipped": 0, "failed": 0}
    for v in results.values():
        out[v] += 1
    return out


def regressions(reference: dict[str, str], ours: dict[str, str]) -> list[str]:
    """Tests the reference passes and we do not."""
    return sorted(k for k, v in reference.items()
                  if v == "passed" and ours.get(k) != "passed")


def failures(ours: dict[str, str]) -> list[str]:
    """Tests bootsvc fails, but for the test's own defects."""
    return sorted(k for k, v in ours.items() if v == "failed" and k not in TEST_DEFECTS)


def main() -> int:
    from tests.e2e.peers import bootsvc_export, tgt_export

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        results = {}
        for name, export in (("tgt", tgt_export), ("bootsvc", bootsvc_export)):
            img = Path(d) / f"{name}.img"
            subprocess.run(["truncate", "-s", args.size, str(img)], check=True)
            with export(img) as portal:
                results[name] = run(portal.url())
    for name, r in results.items():
        print(f"{name}: all {counts(r)}; applicable families {counts(applicable(r))}")
    print("regressions:", regressions(applicable(results["tgt"]), results["bootsvc"]) or "none")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def image(tmp: Path, name: str) -> Path:
    """A fresh sparse 1 GiB raw file, the size of every LUN compared here."""
    path = tmp / f"{name}.img"
    subprocess.run(["truncate", "-s", "1G", str(path)], check=True)
    return path


def file_lun_results(tmp: Path) -> dict[str, str]:
    """The suite on ``bootsvc export`` of a fresh sparse 1 GiB raw file in
    ``tmp``: what other LUNs (an overlay, an RBD clone) are held to. Without
    the Sanitize family (see :func:`run`): the overlay's run has it."""
    with bootsvc_export(image(tmp, "bootsvc"), log=tmp / "bootsvc.log") as portal:
        return run(portal.url(), sanitize=False)


def tgt_results(tmp: Path) -> dict[str, str]:
    """The reference: tgt on a fresh 1 GiB raw file."""
    with tgt_export(image(tmp, "tgt")) as portal:
        return run(portal.url())


def overlay_results(overlay: Path, tmp: Path) -> dict[str, str]:
    """The served kind of LUN, a qcow2 overlay (of an empty 1 GiB base):
    the one run with the Sanitize family."""
    create_image(overlay, backing=image(tmp, "base").name, backing_format="raw")
    with bootsvc_export(overlay, log=tmp / "overlay.log") as portal:
        return run(portal.url())


def rbd_results(cluster: Cluster, pool: str, tmp: Path) -> dict[str, str]:
    """An RBD-backed LUN, a clone of a protected snapshot (``bootsvc export
    rbd:...``), without the Sanitize family as the file LUN it is held to."""
    cluster.rbd("create", "--size", "1G", f"{pool}/compliance-base")
    cluster.rbd("snap", "create", f"{pool}/compliance-base@gold")
    cluster.rbd("snap", "protect", f"{pool}/compliance-base@gold")
    cluster.rbd("clone", f"{pool}/compliance-base@gold", f"{pool}/compliance")
    with bootsvc_export(f"rbd:{pool}/compliance:conf={cluster.conf}", log=tmp / "rbd.log") as portal:
        return run(portal.url(), sanitize=False)


@dataclass
class Runs:
    """The suite's runs on every kind of LUN the compliance tests compare
    (``tgt``, ``file``, ``overlay``, ``rbd``), started at once, each on a
    target of its own: each is mostly libiscsi's sleeps (a minute of them
    in Sanitize.Reset alone), not CPU, so together they take about the time
    of the longest, the overlay's. ``without``: the runs not started, and
    why (a peer this machine lacks)."""

    work: Path
    runs: dict[str, Future[dict[str, str]]]
    without: dict[str, str]

    def results(self, name: str) -> dict[str, str]:
        if name not in self.runs:
            pytest.skip(self.without[name])
        results = self.runs[name].result()
        assert results, f"iscsi-test-cu produced no results on the {name} LUN"
        return results
