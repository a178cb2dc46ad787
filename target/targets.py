"""Targets as the server runs them: a name, an alias, LUNs and who may log in.

:class:`TargetSpec` and :class:`LunSpec` are the plain description (from a
config file or the command line); :class:`Target` holds the opened LUNs and
the sessions logged in to it (for LUN and target resets, §11.5.1).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .backend import Backend, BackendError, RawBackend
from .chap import ChapAuth
from .qcow2 import MAGIC as QCOW2_MAGIC
from .qcow2 import open_image
from .rbd import is_rbd, open_rbd
from .scsi import Lun
from .scsi.inquiry import naa_id
from .scsi.inquiry import DEFAULT_PRODUCT, DEFAULT_VENDOR

if TYPE_CHECKING:
    from .session import Session

# RFC 3720 §3.2.6.3: iqn.yyyy-mm.reversed.domain[:anything] or eui.16hex / naa.
_NAME_RE = re.compile(r"^(iqn\.\d{4}-\d{2}\.[a-z0-9][a-z0-9.-]*(:[^\s]+)?|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$")


class TargetConfigError(ValueError):
    """A target or LUN description that cannot be served."""


def check_iscsi_name(name: str) -> str:
    if len(name.encode()) > 223 or not _NAME_RE.match(name):
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise TargetConfigError(f"{shown} is not an iSCSI name (iqn.YYYY-MM.domain:id, eui. or naa.)")
    return name


@dataclass(frozen=True)
class LunSpec:
    path: str
    read_only: bool = False
    block_size: int = 512
    lun_id: int | None = None  # None: the next free number
    limit: int | None = None  # qcow2: bytes the image may allocate (thin provisioning limit)


@dataclass(frozen=True)
class TargetSpec:
    """A target to serve.

    ``vendor`` and ``product`` are what every LUN of the target reports in
    standard INQUIRY data (SPC-4 §6.6.2: at most 8 and 16 ASCII characters,
    longer values are cut): an embedding product names itself here, e.g.
    ``TargetSpec(iqn, luns, vendor="ACME", product="acme boot disk")``.
    They are per target, not per server, because a target is what a host
    sees as one device model; one server can export disks of several kinds.
    """

    iqn: str
    luns: tuple[LunSpec, ...]
    alias: str = ""
    # None: any initiator name may log in (CHAP, below, is what proves who it is)
    allowed_initiators: frozenset[str] | None = None
    # the CHAP an initiator must pass (and, mutual, the target's answer); None: AuthMethod=None
    auth: ChapAuth | None = None
    vendor: str = DEFAULT_VENDOR
    product: str = DEFAULT_PRODUCT
    # one session at a time while it can be written (a machine's own disk):
    # the same initiator logging in again replaces it, any other is refused
    single_writer: bool = False
    # a directory where each LUN keeps persistent reservations made with
    # APTPL across restarts (<lun>.json; SPC-4 §5.12.5); None: APTPL is
    # refused (PTPL_C 0)
    reservations: str | None = None


def open_backend(spec: LunSpec) -> Backend:
    """The backend for a LUN: an RBD image by its ``rbd:`` name, else a
    file, qcow2 by its magic, else raw."""
    if is_rbd(spec.path):
        return open_rbd(spec.path, read_only=spec.read_only)
    try:
        with open(spec.path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise TargetConfigError(f"cannot open {spec.path}: {e.strerror}") from e
    if magic == QCOW2_MAGIC:
        return open_image(spec.path, read_only=spec.read_only, limit=spec.limit)
    return RawBackend(spec.path, read_only=spec.read_only)


def device_id(target_iqn: str, lun_id: int) -> bytes:
    """A stable 16-byte identity per (target, LUN) for VPD page 83h: the
    same disk keeps its NAA id across restarts, so multipath and udev links
    stay put."""
    return hashlib.sha256(f"{target_iqn}/{lun_id}".encode()).digest()[:16]


@dataclass
class Standby:
    """Disks made ready for a target's next boot, while the last boot's
    sessions may still be open (a machine reset without logging out):
    they replace the LUNs' backends when that boot's first session is
    admitted, which proves the machine is booting anew. ``swapped`` is
    told the backends they replaced, once; the owner renames files,
    reports, and closes them when the dropped sessions' work is done."""

    backends: dict[int, Backend]
    swapped: Callable[[list[Backend]], None]

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()


@dataclass
class Target:
    name: str
    alias: str
    luns: dict[int, Lun]
    allowed_initiators: frozenset[str] | None = None
    sessions: set[Session] = field(default_factory=set)
    single_writer: bool = False
    auth: ChapAuth | None = None
    standby: Standby | None = None  # swapped in at the next boot's first session
    claim_error: str = ""  # why the last claim of its disks failed (shared storage)

    def allows(self, initiator_name: str) -> bool:
        return self.allowed_initiators is None or initiator_name in self.allowed_initiators

    @property
    def claimed(self) -> bool:
        """Whether every LUN's disk is this server's to serve (shared
        storage: claimed; see :meth:`Backend.claim`)."""
        return all(lun.backend.claimed for lun in self.luns.values())

    def claim(self) -> None:
        """Claim every LUN's disk (blocking: off the event loop)."""
        for lun in self.luns.values():
            lun.backend.claim()
        self.claim_error = ""

    def release(self) -> None:
        """Give up every LUN's claim (blocking: off the event loop)."""
        for lun in self.luns.values():
            lun.backend.release()

    def try_claim(self) -> None:
        """:meth:`claim`, keeping why it failed in ``claim_error`` (a login's refusal says it)."""
        try:
            self.claim()
        except BackendError as e:
            self.claim_error = str(e)

    @property
    def one_writer(self) -> bool:
        """Whether a new session must replace or be refused by the one it has."""
        return self.single_writer and not all(lun.read_only for lun in self.luns.values())

    @classmethod
    def open(cls, spec: TargetSpec) -> Target:
        check_iscsi_name(spec.iqn)
        luns: dict[int, Lun] = {}
        next_id = 0
        try:
            for ls in spec.luns:
                lun_id = next_id if ls.lun_id is None else ls.lun_id
                if lun_id in luns or not 0 <= lun_id < 16384:
                    raise TargetConfigError(f"{spec.iqn}: LUN {lun_id} used twice or out of range")
                backend = open_backend(ls)
                if backend.size % ls.block_size:
                    backend.close()
                    raise TargetConfigError(
                        f"{ls.path}: size {backend.size} is not a multiple of the block size {ls.block_size}")
                luns[lun_id] = Lun(
                    backend, lun_id=lun_id, block_size=ls.block_size,
                    serial=device_id(spec.iqn, lun_id).hex()[:16],
                    device_id=device_id(spec.iqn, lun_id),
                    read_only=ls.read_only or backend.read_only,
                    vendor=spec.vendor, product=spec.product,
                    reservations=Path(spec.reservations) / f"{lun_id}.json" if spec.reservations else None,
                )
                next_id = lun_id + 1
        except BaseException:
            for lun in luns.values():
                lun.backend.close()
            raise
        _copy_within(luns)
        return cls(spec.iqn, spec.alias, luns, spec.allowed_initiators, single_writer=spec.single_writer,
                   auth=spec.auth)

    def close(self) -> None:
        for lun in self.luns.values():
            lun.backend.close()
        if self.standby is not None:
            self.standby.close()
            self.standby = None

    def swap_standby(self) -> None:
        """The standby disks become the LUNs' backends (on the loop, between
        two requests: no session sees a half-swapped target)."""
        standby, self.standby = self.standby, None
        if standby is None:
            return
        old = []
        for lun_id, backend in standby.backends.items():
            old.append(self.luns[lun_id].backend)
            self.luns[lun_id].backend = backend
        standby.swapped(old)


def _copy_within(luns: dict[int, Lun]) -> None:
    """An EXTENDED COPY through one of ``luns`` may name any of them as
    source or destination (by its VPD 83h NAA designator): the LUNs the
    issuing I_T nexus reaches through this target, and no other target's."""
    by_name = {naa_id(lun.identity.device_id): lun for lun in luns.values()}
    for lun in luns.values():
        lun.copy_targets = by_name.get


def lun_from_field(lun_field: int) -> int:
    """The LUN number in an 8-byte SAM LUN field (peripheral or flat space)."""
    first = lun_field >> 48
    method = first >> 14
    if method in (0, 1):
        return first & 0x3FFF
    return -1  # other addressing methods address nothing of ours


def lun_to_field(lun: int) -> int:
    return ((lun | 0x4000) if lun > 255 else lun) << 48
