"""The config's storage section and rbd: LUNs in targets
(bootsvc/storage_config.py): what loads, and every mistake as file:line: key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootsvc.config import ConfigError, load
from bootsvc.storage_config import StorageBackend, StorageSettings

TARGET = """targets:
  - iqn: iqn.2026-11.example.lab:boot.rbd
    auth: none
    luns: [{lun}]
"""


def cfg_file(tmp_path: Path, text: str) -> Path:
    (tmp_path / "ceph.conf").write_text("[global]\n")
    p = tmp_path / "bootsvc.yaml"
    p.write_text(text)
    return p


def problems(path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        load(path)
    return "\n".join(e.value.problems)


@pytest.fixture
def bindings(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import rbd`` finds something, whether or not python3-rbd is here."""
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "rbd" else real(name, *a))


def test_file_is_the_default(tmp_path: Path) -> None:
    assert load(cfg_file(tmp_path, "domain: lab\n")).storage == StorageSettings()
    assert load(cfg_file(tmp_path, "storage: {backend: file}\n")).storage.backend is StorageBackend.FILE


def test_ceph_settings_and_rbd_luns_use_them(tmp_path: Path, bindings: None) -> None:
    cfg = load(cfg_file(tmp_path, "storage: {backend: ceph, pool: disks, conf: ceph.conf, user: client.boot}\n"
                        + TARGET.format(lun="'rbd:disks/node01', 'rbd:other/x:conf=/c.conf:id=me'")))
    assert cfg.storage == StorageSettings(StorageBackend.CEPH, "disks", str(tmp_path / "ceph.conf"), "boot")
    assert [lun.path for lun in cfg.targets[0].luns] == [
        f"rbd:disks/node01:conf={tmp_path / 'ceph.conf'}:id=boot", "rbd:other/x:conf=/c.conf:id=me"]
    assert not cfg.warnings  # bases go into the pool with bootsvc image (build-demo, build-debian, import)
    assert cfg.storage.release_after == 20  # like iSCSI's DefaultTime2Retain
    again = load(cfg_file(tmp_path, "storage: {backend: ceph, pool: disks, conf: ceph.conf, release_after: 3}\n"))
    assert again.storage.release_after == 3


def test_an_rbd_lun_without_a_storage_section_is_kept_as_written(tmp_path: Path) -> None:
    cfg = load(cfg_file(tmp_path, TARGET.format(lun="'rbd:pool/img@snap'")))
    assert cfg.targets[0].luns[0].path == "rbd:pool/img@snap"


@pytest.mark.parametrize("section, problem", [
    ("storage: {backend: nfs}", ":1: storage.backend: expected file or ceph, got nfs"),
    ("storage: {backend: file, pool: x}", ":1: storage.pool: only with backend: ceph"),
    ("storage: {backend: ceph, conf: ceph.conf}", ":1: storage.pool: backend: ceph needs the RBD pool"),
    ("storage: {backend: ceph, pool: a/b, conf: ceph.conf}", ":1: storage.pool: a/b is not a pool name"),
    ("storage: {backend: ceph, pool: [x], conf: ceph.conf}", ":1: storage.pool: expected a name, got a list"),
    ("storage: {backend: ceph, pool: p, conf: none.conf}", "none.conf is not a file (the cluster's ceph.conf)"),
    ("storage: {backend: ceph, pool: p, conf: ceph.conf, user: 'client.'}", "storage.user: client. is not a Ceph"),
    ("storage: {backend: ceph, pool: p, conf: ceph.conf, size: 1}", "storage.size: unknown key"),
    ("storage: ceph", ":1: storage: expected a mapping, got ceph"),
    ("storage: {backend: ceph, pool: p, conf: ceph.conf, release_after: -1}",
     ":1: storage.release_after: expected a whole number (seconds a disk stays claimed after its machine's last "
     "session, 0 ... 86400), got -1"),
    ("storage: {backend: ceph, pool: p, conf: ceph.conf, release_after: 1.5}", "release_after: expected a whole"),
    ("storage: {backend: file, release_after: 5}", ":1: storage.release_after: only with backend: ceph"),
])
def test_mistakes(tmp_path: Path, bindings: None, section: str, problem: str) -> None:
    assert problem in problems(cfg_file(tmp_path, section + "\n"))


def test_bad_rbd_lun_names(tmp_path: Path) -> None:
    said = problems(cfg_file(tmp_path, TARGET.format(lun="'rbd:pool'")))
    assert "bootsvc.yaml:4: targets[0].luns[0].path: an RBD disk is written rbd:POOL[/NAMESPACE]/IMAGE" in said


def test_ceph_without_the_bindings_is_a_plain_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    said = problems(cfg_file(tmp_path, "storage: {backend: ceph, pool: p, conf: ceph.conf}\n"))
    assert said.endswith(":1: storage.backend: storage backend ceph needs python3-rbd: apt install python3-rbd")
