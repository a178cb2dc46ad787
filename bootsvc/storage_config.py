"""The config's ``storage`` section: where machines' disks live.

    storage: {backend: ceph, pool: NAME, conf: /etc/ceph/ceph.conf, user: NAME, release_after: 20,
              stall_after: 10}

``backend: file`` (the default) keeps disks as files under state_dir;
``ceph`` names an RBD pool (docs/scale-out.md). The Ceph settings are also
the defaults of every ``rbd:POOL/IMAGE`` LUN in ``targets`` that does not
give its own ``conf=`` or ``id=``. ``stall_after`` (either backend): seconds
a request to a disk may wait before ``disk.stalled`` says so.
"""

from __future__ import annotations

import enum
import importlib.util
import os
from dataclasses import dataclass, replace
from pathlib import Path

from target import LunSpec, TargetSpec
from target.backend import BackendError
from target.rbd import MISSING_BINDINGS, is_rbd, parse_spec

from .yamlfile import Checker, LineMap, plain

STORAGE_KEYS = {"backend", "pool", "conf", "user", "release_after", "stall_after"}
CEPH_KEYS = {"pool", "conf", "user", "release_after"}
# seconds a machine's disk stays claimed after its last session ended (a
# reconnect or a reboot within it keeps the claim), like iSCSI's
# DefaultTime2Retain (RFC 7143 §13.16, default 20)
RELEASE_AFTER = 20
RELEASE_AFTER_MAX = 86400
# seconds a request to a disk may wait before it is reported (disk.stalled):
# librbd waits for ever on a cluster that does not answer (no rados osd op
# timeout by default), and a machine's OS times a command out after 30 s
STALL_AFTER = 10
STALL_AFTER_MAX = 3600
DEFAULT_CONF = "/etc/ceph/ceph.conf"
# Ceph refuses these in a pool name, and rbd: LUN names use them as separators
_POOL_FORBIDDEN = set("/@: \t")


class StorageBackend(enum.Enum):
    FILE = "file"
    CEPH = "ceph"


@dataclass(frozen=True)
class StorageSettings:
    backend: StorageBackend = StorageBackend.FILE
    pool: str = ""
    conf: str = DEFAULT_CONF
    user: str | None = None  # None: librados' own default (client.admin)
    release_after: int = RELEASE_AFTER
    stall_after: int = STALL_AFTER

    @property
    def place(self) -> tuple[StorageBackend, str, str, str | None]:
        """Where the disks and the secrets are: what a reload cannot change
        under a logged-in machine (the timers can change at any time)."""
        return self.backend, self.pool, self.conf, self.user


def load_storage(c: Checker, doc: LineMap, base: Path) -> StorageSettings:
    """The storage section (relative paths are relative to the config file)."""
    section = doc.get("storage")
    if section is None or (m := c.mapping(doc, "storage", section)) is None:
        return StorageSettings()
    c.unknown(m, STORAGE_KEYS, "storage.")
    word = m.get("backend", StorageBackend.FILE.value)
    try:
        backend = StorageBackend(word)
    except ValueError:
        c.err(m, "storage.backend", f"expected file or ceph, got {plain(word)}")
        return StorageSettings()
    stall_after = c.integer(m, "stall_after", "storage.stall_after", STALL_AFTER, STALL_AFTER_MAX,
                            "seconds a request to a disk may wait before it is reported")
    if not stall_after:
        c.err(m, "storage.stall_after", "expected at least 1 (seconds)")
    if backend is StorageBackend.FILE:
        for key in sorted(CEPH_KEYS & set(m)):
            c.err(m, f"storage.{key}", "only with backend: ceph")
        return StorageSettings(stall_after=stall_after)
    if importlib.util.find_spec("rbd") is None:
        c.err(m, "storage.backend", MISSING_BINDINGS)
    return StorageSettings(backend, _pool(c, m), _conf(c, m, base), _user(c, m),
                           c.integer(m, "release_after", "storage.release_after", RELEASE_AFTER, RELEASE_AFTER_MAX,
                                     "seconds a disk stays claimed after its machine's last session"),
                           stall_after)


def _word(c: Checker, m: LineMap, key: str) -> str | None:
    value = m.get(key)
    if value is None:
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        return str(value).strip()
    c.err(m, f"storage.{key}", f"expected a name, got {plain(value)}")
    return None


def _pool(c: Checker, m: LineMap) -> str:
    pool = _word(c, m, "pool")
    if pool is None:
        if "pool" not in m:
            c.err(m, "storage.pool", "backend: ceph needs the RBD pool that holds the disks")
        return ""
    if _POOL_FORBIDDEN & set(pool):
        c.err(m, "storage.pool", f"{plain(pool)} is not a pool name (no /, @, : or spaces)")
    return pool


def _conf(c: Checker, m: LineMap, base: Path) -> str:
    conf = _word(c, m, "conf")
    path = base / (conf or DEFAULT_CONF)  # an absolute conf stays as it is
    if not os.path.isfile(path):  # os.path's: False, not OSError, for a bad name
        c.err(m, "storage.conf", f"{path} is not a file (the cluster's ceph.conf)")
    return str(path)


def _user(c: Checker, m: LineMap) -> str | None:
    user = _word(c, m, "user")
    if user is None:
        return None
    # librados takes the id without its type; operators often write client.NAME
    user = user.removeprefix("client.")
    if not user or _POOL_FORBIDDEN & set(user):
        c.err(m, "storage.user", f"{plain(m.get('user'))} is not a Ceph user name")
    return user


def check_rbd_lun(c: Checker, lun: LineMap, key: str, text: str) -> None:
    """A target's ``rbd:`` LUN name, written as QEMU writes it."""
    try:
        parse_spec(text)
    except BackendError as e:
        c.err(lun, key, str(e).removeprefix(f"{text}: "))


def with_storage_defaults(targets: tuple[TargetSpec, ...], storage: StorageSettings) -> tuple[TargetSpec, ...]:
    """Targets whose ``rbd:`` LUNs without their own conf=/id= use the
    storage section's cluster and user."""
    if storage.backend is not StorageBackend.CEPH:
        return targets
    return tuple(replace(t, luns=tuple(_lun_defaults(lun, storage) for lun in t.luns)) for t in targets)


def _lun_defaults(lun: LunSpec, storage: StorageSettings) -> LunSpec:
    if not is_rbd(lun.path):
        return lun
    try:
        spec = parse_spec(lun.path)
    except BackendError:  # already reported by check_rbd_lun
        return lun
    path = lun.path
    if spec.conf is None:
        path += f":conf={storage.conf}"
    if spec.user is None and storage.user is not None:
        path += f":id={storage.user}"
    return replace(lun, path=path)
