"""iSCSI target (RFC 7143) with SCSI block commands (SBC-3) over image backends.

Importable on its own: nothing here imports :mod:`bootsvc`. What an
embedder needs is exported here::

    from target import ChapAuth, ChapSecret, LunSpec, Portal, Target, TargetServer, TargetSpec

    auth = ChapAuth(ChapSecret("node01", b"a-secret-of-12+"))  # or None: no CHAP
    target = Target.open(TargetSpec("iqn.2026-11.example:disk", (LunSpec("disk.qcow2"),), auth=auth))
    server = TargetServer([target], [Portal("0.0.0.0")], on_event=print)
    await server.start()
"""

from .backend import Backend, BackendError
from .chap import ChapAlgorithm, ChapAuth, ChapSecret
from .events import EventSink
from .qcow2 import MAGIC as QCOW2_MAGIC
from .qcow2 import Kind, Qcow2Backend, Qcow2Error, open_backing, open_image, resolve_backing
from .qcow2_check import CheckReport
from .qcow2_check import check as check_image
from .qcow2_create import create_image, set_backing
from .server import Portal, TargetServer
from .session import DropReason
from .targets import LunSpec, Standby, Target, TargetConfigError, TargetSpec, check_iscsi_name, open_backend

__all__ = [
    "QCOW2_MAGIC",
    "Backend",
    "BackendError",
    "ChapAlgorithm",
    "ChapAuth",
    "ChapSecret",
    "CheckReport",
    "DropReason",
    "EventSink",
    "Kind",
    "LunSpec",
    "Portal",
    "Qcow2Backend",
    "Qcow2Error",
    "Standby",
    "Target",
    "TargetConfigError",
    "TargetServer",
    "TargetSpec",
    "check_image",
    "check_iscsi_name",
    "create_image",
    "open_backend",
    "open_backing",
    "open_image",
    "resolve_backing",
    "set_backing",
]
