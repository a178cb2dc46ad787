"""CHAP secrets every server on one Ceph pool shares (``storage: {backend:
ceph}``; docs/scale-out.md).

A machine keeps the secret it booted with: its boot firmware wrote it into
the iBFT, and the running OS logs in again with it after a path failure.
So a machine that moves from one server to another (a failover, a planned
move) must be asked for the same secret there. The secrets bootsvc makes
are therefore kept in the pool itself, one RADOS object per machine,
``bootsvc.chap.<MAC>`` (JSON: hostname, secret, reverse_secret), beside
the RBD images (which never use that prefix): every server with the pool's
credentials reads the same ones, and nobody without them can.

Made once: the object is created with an exclusive create and its contents
in one operation (``LIBRADOS_CREATE_EXCLUSIVE`` + ``write_full``), so two
servers making a machine's secrets at the same moment agree: the loser's
create fails with EEXIST and it reads the winner's. Read once per machine
and kept in memory. Every call waits at most :data:`TIMEOUT` for the
cluster, in the worker thread that prepares the machine's disk (never on
the event loop). A secret is never logged nor put in an event or an error.
"""

from __future__ import annotations

import errno
import json
import threading
from typing import TYPE_CHECKING, Any

from target import ChapSecret
from target.backend import BackendError
from target.rbd import CLUSTERS, bindings, plain_reason

from .credentials import new_entry

if TYPE_CHECKING:
    from .inventory import Machine

OBJECT_PREFIX = "bootsvc.chap."
TIMEOUT = 10.0  # seconds a read or create may take: a cluster that does not answer fails the disk
MAX_OBJECT = 4096  # bytes read: an entry is about 120
ATTEMPTS = 3  # read, create, read again (a create lost to another server)


class SharedSecretError(OSError):
    """The secrets could not be read or made; the message says why, plainly
    (an OSError: the fleet reports the machine's disk as failed)."""


def object_name(mac: str) -> str:
    return f"{OBJECT_PREFIX}{mac}"


class SharedCredentialStore:
    """The credentials bootsvc made for machines, by MAC, in ``pool``
    (the same interface as credentials.CredentialStore)."""

    def __init__(self, pool: str, conf: str | None = None, user: str | None = None,
                 timeout: float = TIMEOUT) -> None:
        self.pool, self.conf, self.user, self.timeout = pool, conf, user, timeout
        self._lock = threading.Lock()  # disks are made in worker threads
        self._entries: dict[str, dict[str, str]] = {}
        self._cluster: Any = None
        self._ioctx: Any = None

    def secrets_of(self, machine: Machine) -> tuple[ChapSecret, ChapSecret]:
        """The machine's forward and reverse secrets: the pool's, made there
        on first use by whichever server asks first."""
        with self._lock:
            entry = self._entries.get(machine.mac)
            if entry is None:
                entry = self._entries[machine.mac] = self._fetch(machine)
        return (ChapSecret(machine.initiator_iqn, entry["secret"].encode()),
                ChapSecret(machine.target_iqn, entry["reverse_secret"].encode()))

    def close(self) -> None:
        with self._lock:
            if self._ioctx is not None:
                self._ioctx.close()
                CLUSTERS.release(self._cluster)
                self._ioctx = self._cluster = None

    def _fetch(self, machine: Machine) -> dict[str, str]:
        oid = object_name(machine.mac)
        for _ in range(ATTEMPTS):
            entry = self._read(oid)
            if entry is not None:
                return entry
            entry = new_entry(machine.hostname)
            if self._create(oid, entry):
                return entry
            # another server made it first: read theirs
        raise SharedSecretError(f"cannot make the CHAP secrets of {machine.hostname} in pool {self.pool}: "
                                f"object {oid} keeps appearing and disappearing")

    def _read(self, oid: str) -> dict[str, str] | None:
        """The entry, None if there is none yet."""
        got: list[bytes] = []
        done = self._wait(f"read {oid}", lambda ioctx, cb: ioctx.aio_read(
            oid, MAX_OBJECT, 0, lambda c, data: (got.append(data or b""), cb(c))))
        if done == -errno.ENOENT:
            return None
        if done < 0:
            raise SharedSecretError(f"cannot read the CHAP secrets in pool {self.pool} ({oid}): "
                                    f"{plain_reason(OSError(-done, ''))}")
        try:
            entry = json.loads(got[0])
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) and entry[k]
                                                      for k in ("secret", "reverse_secret")):
                raise ValueError("not an entry")
        except ValueError as e:
            # never start over silently: the machine would lose its secret
            raise SharedSecretError(f"the CHAP secrets in pool {self.pool} ({oid}) are damaged; remove the "
                                    f"object (rados -p {self.pool} rm {oid}) to make new ones") from e
        return entry

    def _create(self, oid: str, entry: dict[str, str]) -> bool:
        """Create ``oid`` holding ``entry``, in one operation; False if it
        exists already (another server's create came first)."""
        rados, _ = bindings()
        data = json.dumps(entry, sort_keys=True).encode()

        def start(ioctx: Any, cb: Any) -> Any:
            op = ioctx.create_write_op()
            op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
            op.write_full(data)
            try:
                return ioctx.operate_aio_write_op(op, oid, cb)
            finally:
                op.release()

        done = self._wait(f"create {oid}", start)
        if done == -errno.EEXIST:
            return False
        if done < 0:
            raise SharedSecretError(f"cannot store the CHAP secrets in pool {self.pool} ({oid}): "
                                    f"{plain_reason(OSError(-done, ''))}")
        return True

    def _wait(self, what: str, start: Any) -> int:
        """Start an asynchronous operation and wait at most ``timeout`` for
        it (librados' own calls would wait for ever on a cluster that does
        not answer); its return value."""
        finished = threading.Event()
        try:
            completion = start(self._io(), lambda c: finished.set())
        except Exception as e:  # librados raises its own Error classes
            raise SharedSecretError(f"cannot {what} in pool {self.pool}: {plain_reason(e)}") from e
        if not finished.wait(self.timeout):
            raise SharedSecretError(f"cannot {what} in pool {self.pool}: the cluster did not answer "
                                    f"within {self.timeout:g} s")
        return int(completion.get_return_value())

    def _io(self) -> Any:
        if self._ioctx is None:
            try:
                cluster = CLUSTERS.acquire(self.conf, self.user)
            except BackendError as e:
                raise SharedSecretError(str(e)) from e
            try:
                self._ioctx = cluster.open_ioctx(self.pool)
            except Exception as e:
                CLUSTERS.release(cluster)
                raise SharedSecretError(f"cannot open pool {self.pool}: {plain_reason(e)}") from e
            self._cluster = cluster
        return self._ioctx
