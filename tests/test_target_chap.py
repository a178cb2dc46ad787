"""CHAP on the wire, against libiscsi (iscsi-inq, iscsi-test-cu, with the
credentials in the URL, RFC 7143 §12.1.3) and QEMU's iSCSI driver: forward
and mutual CHAP, the wrong secret refused with an event naming initiator,
target and source, failed logins throttled per source, and one writer per
disk keyed on who proved the secret."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from target.chap import ChapAuth, ChapSecret
from target.throttle import LoginThrottle
from tests.e2e import compliance
from tests.e2e.compliance import counts
from tests.test_target_wire import IQN, Running

pytestmark = pytest.mark.skipif(not shutil.which("iscsi-inq"), reason="needs libiscsi-bin")

FORWARD = ChapSecret("node01", b"forward-secret-1")
REVERSE = ChapSecret("bootsvc", b"reverse-secret-2")
INITIATOR = "iqn.2026-11.test:node01"


class Recorded(Running):
    def __init__(self, image: Path, auth: ChapAuth, **kw: Any) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []
        super().__init__(image, spec={"auth": auth, "single_writer": True},
                         on_event=lambda what, fields: self.events.append((what, fields)), **kw)

    def url(self, creds: str = "", args: str = "") -> str:
        return f"iscsi://{creds}127.0.0.1:{self.port}/{IQN}/0{args}"

    def failures(self) -> list[dict[str, object]]:
        return [f for what, f in self.events if what == "iscsi.login_failed"]


def inq(url: str, initiator: str = INITIATOR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iscsi-inq", "-i", initiator, url], capture_output=True, text=True, timeout=30)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "disk.img"
    p.write_bytes(os.urandom(8 << 20))
    return p


@pytest.fixture
def forward(image: Path) -> Iterator[Recorded]:
    r = Recorded(image, ChapAuth(FORWARD))
    yield r
    r.stop()


@pytest.fixture
def mutual(image: Path) -> Iterator[Recorded]:
    r = Recorded(image, ChapAuth(FORWARD, REVERSE))
    yield r
    r.stop()


def test_libiscsi_logs_in_with_the_secret_in_the_url(forward: Recorded) -> None:
    p = inq(forward.url("node01%forward-secret-1@"))
    assert p.returncode == 0 and "DIRECT_ACCESS" in p.stdout, p.stderr
    assert not forward.failures()


def test_no_credentials_and_a_wrong_secret_are_refused_with_an_event(forward: Recorded) -> None:
    assert inq(forward.url()).returncode != 0
    p = inq(forward.url("node01%guessed-secret@"))
    assert p.returncode != 0 and "Authentication failure" in p.stderr
    first, second = forward.failures()
    assert "requires CHAP" in str(first["why"])
    assert second["why"] == "wrong CHAP response (secret)" and second["status"] == "AUTHENTICATION_FAILURE"
    assert second["initiator"] == INITIATOR and second["target"] == IQN
    assert str(second["peer"]).startswith("127.0.0.1:")
    assert "guessed" not in repr(forward.events) and "forward-secret" not in repr(forward.events)


def test_mutual_chap_with_the_targets_secret_in_the_url(mutual: Recorded) -> None:
    good = mutual.url("node01%forward-secret-1@", "?target_user=bootsvc&target_password=reverse-secret-2")
    assert inq(good).returncode == 0
    # libiscsi checks our answer: a target that does not know the mutual secret is not trusted
    bad = mutual.url("node01%forward-secret-1@", "?target_user=bootsvc&target_password=not-the-target!")
    p = inq(bad)
    assert p.returncode != 0 and "CHAP_R" in p.stderr
    # and an initiator that does not ask for mutual CHAP is refused: the target insists
    assert inq(mutual.url("node01%forward-secret-1@")).returncode != 0
    assert "mutual CHAP is required" in str(mutual.failures()[-1]["why"])


def test_failed_logins_are_throttled_per_source(image: Path) -> None:
    r = Recorded(image, ChapAuth(FORWARD), throttle=LoginThrottle(limit=3, window=60))
    try:
        for _ in range(3):
            assert inq(r.url("node01%guessed-secret@")).returncode != 0
        p = inq(r.url("node01%forward-secret-1@"))  # even the right secret, until the window passes
        assert p.returncode != 0
        assert "failed logins from 127.0.0.1" in str(r.failures()[-1]["why"])
    finally:
        r.stop()


@pytest.mark.skipif(not shutil.which("iscsi-test-cu"), reason="needs libiscsi-bin")
def test_iscsi_test_cu_runs_with_chap(forward: Recorded) -> None:
    results = compliance.run(forward.url("node01%forward-secret-1@"), "ALL.Read10.*", timeout=120)
    assert results and counts(results)["failed"] == 0 and counts(results)["passed"] >= 3, results


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-utils")
def test_qemu_img_reads_with_chap(forward: Recorded, image: Path) -> None:
    p = subprocess.run(["qemu-img", "info", "--output=json", forward.url("node01%forward-secret-1@")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and '"virtual-size": 8388608' in p.stdout, p.stderr


def test_one_writer_is_who_proved_the_secret(forward: Recorded) -> None:
    a = forward.client(initiator=INITIATOR)
    assert a.login(IQN, chap=("node01", FORWARD.secret)).status_class == 0
    # the same machine again (a new ISID: the OS after iPXE) replaces the first session
    b = forward.client(initiator=INITIATOR, isid=bytes.fromhex("400001370001"))
    assert b.login(IQN, chap=("node01", FORWARD.secret)).status_class == 0
    assert any(what == "iscsi.session_replaced" for what, _ in forward.events)
    # a stranger with the machine's initiator name but no secret gets nowhere
    c = forward.client(initiator=INITIATOR, isid=bytes.fromhex("400001370002"))
    r = c.login(IQN)
    assert (r.status_class, r.status_detail) == (2, 1)
    for x in (a, b, c):
        x.close()


def test_discovery_chap_with_iscsi_ls(image: Path) -> None:
    r = Recorded(image, ChapAuth(FORWARD), discovery_auth=ChapAuth(ChapSecret("disco", b"discovery-secret")))
    try:
        def ls(creds: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["iscsi-ls", "-i", INITIATOR, f"iscsi://{creds}127.0.0.1:{r.port}"],
                                  capture_output=True, text=True, timeout=30)
        assert IQN not in ls("").stdout
        got = ls("disco%discovery-secret@")
        assert got.returncode == 0 and IQN in got.stdout, got.stdout + got.stderr
    finally:
        r.stop()


def test_iscsi_perf_with_chap(forward: Recorded) -> None:
    """libiscsi's iscsi-perf (random 4 KiB reads for 2 s) with the secret in the URL."""
    out = subprocess.run(["timeout", "-s", "KILL", "15", "iscsi-perf", "-i", INITIATOR, "-r", "-b", "8", "-t", "2",
                          forward.url("node01%forward-secret-1@")], capture_output=True, text=True).stdout
    assert "iops average" in out and "Authentication" not in out, out[-500:]
    assert any(what == "iscsi.login" and f.get("auth") == "chap-md5" for what, f in forward.events)
