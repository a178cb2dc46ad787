"""Fixtures for tests that start real peers. Each skips with the reason when
the peer's program is missing, which CI (make test) never lets happen."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest

from bootsvc.demo.loader import SYSTEMD_BOOT
from bootsvc.vm import qemu
from tests.e2e import debian_build
from tests.e2e.ceph import POOL, ceph_cluster
from tests.e2e.compliance import Runs, file_lun_results, overlay_results, rbd_results, tgt_results
from tests.e2e.netns import can_make_namespaces
from tests.e2e.peers import have

__all__ = ["ceph_cluster", "compliance_runs", "need", "need_vm_lab"]  # fixtures for every e2e test module


@pytest.fixture(scope="session")
def compliance_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """libiscsi's suite on tgt, bootsvc serving a raw file, a qcow2 overlay
    and an RBD clone, once per session, all started by the first compliance
    test that asks (tests/e2e/compliance.py ``Runs``); each test awaits the
    runs it compares."""
    need("iscsi-test-cu")
    work = tmp_path_factory.mktemp("compliance")
    jobs: dict[str, Callable[[], dict[str, str]]] = {"file": partial(file_lun_results, work)}
    without: dict[str, str] = {}
    if have("tgtd", "tgtadm", "qemu-img"):
        jobs["tgt"] = partial(tgt_results, work)
        jobs["overlay"] = partial(overlay_results, work / "overlay.qcow2", work)
    else:
        without["tgt"] = without["overlay"] = "needs tgtd, tgtadm and qemu-img (installed by scripts/install-deps.sh)"
    try:
        jobs["rbd"] = partial(rbd_results, request.getfixturevalue("ceph_cluster"), POOL, work)
    except pytest.skip.Exception as e:
        without["rbd"] = str(e)
    with ThreadPoolExecutor(len(jobs)) as pool:
        yield Runs(work, {name: pool.submit(job) for name, job in jobs.items()}, without)


def need(*commands: str) -> None:
    if not have(*commands):
        pytest.skip(f"needs {' and '.join(commands)} (installed by scripts/install-deps.sh)")


def need_vm_lab(firmware: qemu.Firmware) -> None:
    """What booting the demo image in QEMU VMs on a private network needs:
    systemd-boot for the image, network namespaces, QEMU with ``firmware``."""
    if not SYSTEMD_BOOT.is_file():
        pytest.skip(f"needs {SYSTEMD_BOOT} (systemd-boot-efi, installed by scripts/install-deps.sh)")
    reason = can_make_namespaces()
    try:
        qemu.check(firmware)
    except qemu.QemuError as e:
        reason = str(e)
    if reason:
        pytest.skip(reason)


# The Debian tests (marked ``debian``) boot a base that takes minutes to
# build on a fresh machine: they run last, and their build starts as soon
# as they are collected, so it overlaps the rest of the session
# (tests/e2e/debian_build.py).
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "debian: boots the Debian base that tests/e2e/debian_build.py builds")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("debian") is not None)  # stable: order kept otherwise


def pytest_collection_finish(session: pytest.Session) -> None:
    if not session.config.option.collectonly and any(item.get_closest_marker("debian") for item in session.items):
        debian_build.start()


def pytest_sessionfinish() -> None:
    debian_build.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    said = debian_build.summary()
    if said:
        terminalreporter.write_line(said)
