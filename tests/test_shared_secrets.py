"""The CHAP secrets store on Ceph (bootsvc/shared_secrets.py) without a
cluster: which store a config gets, and the cluster's answers that are
hard to cause on a real one (a create lost to another server, no answer).
Against a real cluster: tests/e2e/test_ceph_two_servers.py."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from bootsvc.config import load
from bootsvc.credentials import CredentialStore, credential_store
from bootsvc.inventory import generated_machine
from bootsvc.shared_secrets import SharedCredentialStore, SharedSecretError

pytest.importorskip("rados")

MACHINE = generated_machine("52:54:00:00:09:01", "iqn.2026-12.test", "p")


def test_ceph_storage_gets_the_pool_store_and_files_the_state_dir(tmp_path: Path) -> None:
    cfg = tmp_path / "bootsvc.yaml"
    (tmp_path / "ceph.conf").write_text("[global]\n")
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nstorage: {{backend: ceph, pool: disks, conf: ceph.conf}}\n")
    store = credential_store(load(cfg))
    assert isinstance(store, SharedCredentialStore) and store.pool == "disks"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\n")
    assert isinstance(credential_store(load(cfg)), CredentialStore)


class _Done:
    def __init__(self, value: int) -> None:
        self.value = value

    def get_return_value(self) -> int:
        return self.value


class _Op:
    def new(self, flags: int) -> None:
        pass

    def write_full(self, data: bytes) -> None:
        self.data = data

    def release(self) -> None:
        pass


class FakeIoctx:
    """A pool whose object appears (another server's create) between our
    read and our create; or that never answers."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.objects: dict[str, bytes] = {}
        self.creates = 0

    def aio_read(self, oid: str, length: int, offset: int, cb: Any) -> _Done:
        done = _Done(0 if oid in self.objects else -errno.ENOENT)
        if self.answer:
            cb(done, self.objects.get(oid, b""))
        return done

    def create_write_op(self) -> _Op:
        return _Op()

    def operate_aio_write_op(self, op: _Op, oid: str, cb: Any) -> _Done:
        self.creates += 1
        # the other server's create came first
        self.objects[oid] = json.dumps({"hostname": "x", "secret": "theirs-123456789",
                                        "reverse_secret": "theirs-reverse-1"}).encode()
        done = _Done(-errno.EEXIST)
        cb(done)
        return done


def _store(ioctx: FakeIoctx, timeout: float = 5.0) -> SharedCredentialStore:
    store = SharedCredentialStore("disks", timeout=timeout)
    store._io = lambda: ioctx  # type: ignore[method-assign]
    return store


def test_a_create_lost_to_another_server_takes_its_secret() -> None:
    ioctx = FakeIoctx()
    store = _store(ioctx)
    forward, reverse = store.secrets_of(MACHINE)
    assert forward.secret == b"theirs-123456789" and reverse.secret == b"theirs-reverse-1"
    assert forward.user == MACHINE.initiator_iqn and reverse.user == MACHINE.target_iqn
    store.secrets_of(MACHINE)
    assert ioctx.creates == 1  # kept in memory


def test_a_cluster_that_does_not_answer_is_an_error_in_plain_words() -> None:
    with pytest.raises(SharedSecretError) as e:
        _store(FakeIoctx(answer=False), timeout=0.05).secrets_of(MACHINE)
    assert str(e.value) == f"cannot read bootsvc.chap.{MACHINE.mac} in pool disks: the cluster did not answer " \
                           "within 0.05 s"
