"""iSNS name server and client (RFC 4171). Importable without :mod:`bootsvc`.

The server side: a :class:`Registry` (the database and what each request
does to it, without sockets) served by an :class:`IsnsServer` (asyncio, TCP
and UDP), kept across restarts by a :class:`Store` (SQLite). The client
side: :class:`IsnsClient` (blocking) and :class:`AsyncIsnsClient`, which
register :class:`NodeSpec`, :class:`PortalSpec` and :class:`PortalGroupSpec` and read objects back as
:data:`Objs`.
"""

from .client import AsyncIsnsClient, IsnsClient, IsnsClientError, NodeSpec, Objs, PortalGroupSpec, PortalSpec
from .events import OnEvent
from .protocol import NodeType
from .registry import Registry
from .server import IsnsServer
from .store import Store, StoreError

__all__ = ["AsyncIsnsClient", "IsnsClient", "IsnsClientError", "IsnsServer", "NodeSpec", "NodeType", "Objs",
           "OnEvent", "PortalGroupSpec", "PortalSpec", "Registry", "Store", "StoreError"]
