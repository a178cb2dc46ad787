"""A LUN on a Ceph RBD image, through librbd's asynchronous calls.

A LUN names its image the way QEMU does (``qemu-img``'s rbd driver and
this backend then agree on one spelling)::

    rbd:POOL[/NAMESPACE]/IMAGE[@SNAPSHOT][:conf=PATH][:id=USER]

``conf`` defaults to librados' own search (``/etc/ceph/ceph.conf``), ``id``
to ``admin``; a snapshot is read-only. librbd completes requests on its own
threads; each completion is handed to the event loop with
``call_soon_threadsafe``, one wake-up for however many completed meanwhile,
so nothing here blocks the loop except opening the image.

The bindings (python3-rados, python3-rbd) are Debian packages for Debian's
Python only: they are imported when an RBD LUN is opened, so everything
else works without them (docs/scale-out.md says how a venv gets them).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .backend import Backend, BackendError, DiskElsewhere, MediumError, Segment, SpaceExhausted

PREFIX = "rbd:"
MISSING_BINDINGS = "storage backend ceph needs python3-rbd: apt install python3-rbd"
CONNECT_TIMEOUT = 10  # seconds librados waits for the monitors before an open fails
ZERO_CHUNK = 1 << 30  # write_zeroes/discard requests are split below librbd's int-sized lengths
STATUS_WINDOW = 1 << 30  # GET LBA STATUS looks this far ahead (one descriptor is enough for it)
HOLDER_KEY = "bootsvc.holder"  # image metadata: which server holds its lock, for the others to say

# librbd's errors that mean "no room", which SCSI reports as a space allocation failure
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
# the client was blocklisted (Ceph's EBLOCKLISTED is ESHUTDOWN) or lost the
# image's exclusive lock to another client
_FENCED = frozenset({errno.ESHUTDOWN, errno.EROFS})


@dataclass(frozen=True)
class RbdSpec:
    """Where an RBD LUN lives (parsed from its ``rbd:`` name)."""

    pool: str
    image: str
    namespace: str = ""
    snapshot: str | None = None
    conf: str | None = None
    user: str | None = None

    @property
    def name(self) -> str:
        """POOL[/NAMESPACE]/IMAGE[@SNAPSHOT], for messages."""
        ns = f"{self.namespace}/" if self.namespace else ""
        snap = f"@{self.snapshot}" if self.snapshot else ""
        return f"{self.pool}/{ns}{self.image}{snap}"


def is_rbd(path: str) -> bool:
    return path.startswith(PREFIX)


def parse_spec(text: str) -> RbdSpec:
    """``rbd:POOL[/NS]/IMAGE[@SNAP][:conf=PATH][:id=USER]``; BackendError
    saying what is wrong otherwise."""
    if not is_rbd(text):
        raise BackendError(f"{text}: an RBD disk is written rbd:POOL/IMAGE")
    where, *options = text[len(PREFIX):].split(":")
    opts: dict[str, str] = {}
    for opt in options:
        key, sep, value = opt.partition("=")
        if not sep or key not in ("conf", "id") or not value or key in opts:
            raise BackendError(f"{text}: options after the image are conf=PATH and id=USER, each once")
        opts[key] = value
    image_part, _, snapshot = where.partition("@")
    parts = image_part.split("/")
    if len(parts) not in (2, 3) or not all(parts) or "@" in snapshot or (where.count("@") and not snapshot):
        raise BackendError(f"{text}: an RBD disk is written rbd:POOL[/NAMESPACE]/IMAGE[@SNAPSHOT]")
    pool, image = parts[0], parts[-1]
    return RbdSpec(pool, image, parts[1] if len(parts) == 3 else "", snapshot or None,
                   opts.get("conf"), opts.get("id"))


def bindings() -> tuple[ModuleType, ModuleType]:
    """The ``rados`` and ``rbd`` modules, or BackendError saying what to install."""
    try:
        import rados
        import rbd
    except ImportError as e:
        raise BackendError(MISSING_BINDINGS) from e
    return rados, rbd


class _Clusters:
    """One librados connection per (conf, user), shared by every image
    opened through it: each connection costs a dozen threads and sockets,
    and a server opens an image per machine."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[str | None, str | None], list[Any]] = {}  # key: [Rados, users]

    def acquire(self, conf: str | None, user: str | None) -> Any:
        rados, _ = bindings()
        with self._lock:
            entry = self._open.get((conf, user))
            if entry is None:
                cluster = None
                try:
                    cluster = rados.Rados(conffile=conf or "", rados_id=user)
                    # connect()'s own timeout argument is ignored by librados
                    cluster.conf_set("client_mount_timeout", str(CONNECT_TIMEOUT))
                    cluster.connect()
                except (rados.Error, OSError) as e:
                    if cluster is not None:
                        cluster.shutdown()
                    where = conf or "the default ceph.conf"
                    raise BackendError(f"cannot connect to the Ceph cluster of {where}: {plain_reason(e)}") from e
                entry = self._open[(conf, user)] = [cluster, 0]
            entry[1] += 1
            return entry[0]

    def release(self, cluster: Any) -> None:
        with self._lock:
            for key, entry in list(self._open.items()):
                if entry[0] is cluster:
                    entry[1] -= 1
                    if entry[1] == 0:
                        del self._open[key]
                        cluster.shutdown()
                    return


CLUSTERS = _Clusters()


def plain_reason(e: BaseException) -> str:
    """librados/librbd exceptions as one plain sentence."""
    code = getattr(e, "errno", None)
    if isinstance(code, int) and code:
        return os.strerror(abs(code)).lower()
    return str(e).strip() or type(e).__name__


class _Bridge:
    """librbd completions (on librbd's threads) handed to one event loop in
    batches: the first completion of a batch schedules the hand-over (a
    wake-up of the loop), the others join it.

    Measured (py-spy, perf): the callback runs on librbd's one I/O thread
    holding the GIL, and every GIL hand-over between that thread and the
    loop's costs futex wake-ups on both sides, so the callback does as
    little as it can: an append to a deque (atomic under the GIL, no lock)
    and, for the first of a batch, the wake-up."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._ready: collections.deque[tuple[asyncio.Future[Any], int, Any]] = collections.deque()
        self._scheduled = False

    def complete(self, future: asyncio.Future[Any], ret: int, value: Any) -> None:
        """On librbd's thread: ``future`` gets (ret, value) on the loop."""
        self._ready.append((future, ret, value))
        if not self._scheduled:  # two threads may both schedule: one drain then finds nothing
            self._scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def _drain(self) -> None:
        # cleared first: a completion appended from here on schedules again
        # or is popped below, so none is left behind
        self._scheduled = False
        ready = self._ready
        while ready:
            future, ret, value = ready.popleft()
            if not future.done():  # a cancelled waiter
                future.set_result((ret, value))


class RbdBackend(Backend):
    """An RBD image (or a snapshot of one, read-only) as a LUN."""

    def __init__(self, spec: RbdSpec, read_only: bool = False) -> None:
        _, rbd = bindings()
        self.spec = spec
        self.read_only = read_only or spec.snapshot is not None
        self._cluster = CLUSTERS.acquire(spec.conf, spec.user)
        self._ioctx: Any = None
        self._image: Any = None
        try:
            self._ioctx = self._cluster.open_ioctx(spec.pool)
            if spec.namespace:
                self._ioctx.set_namespace(spec.namespace)
            self._image = rbd.Image(self._ioctx, spec.image, snapshot=spec.snapshot, read_only=self.read_only)
            self.size = self._image.size()
        except Exception as e:
            self.close()
            raise BackendError(f"cannot open rbd:{spec.name}: {_open_reason(e)}") from e
        if self.size == 0:
            self.close()
            raise BackendError(f"rbd:{spec.name} is empty")
        self._bridges: dict[asyncio.AbstractEventLoop, _Bridge] = {}
        self._claimed = self.read_only  # a read-only view writes nothing: nothing to lock
        # claim and release one at a time: a login's claim and the fleet's
        # release of an idle disk may run in two threads at once
        self._claiming = threading.Lock()

    @property
    def claimed(self) -> bool:
        return self._claimed

    def claim(self) -> None:
        """librbd's exclusive lock, taken explicitly: by default librbd
        passes the lock to whichever client writes next (cooperative), so
        two servers could both write a disk; a lock acquired with
        ``lock_acquire`` stays until released (``close``) and other
        clients' writes fail. A holder that died loses it once its watch
        times out. The holder's name is left in the image's metadata for
        the other servers' refusal to say who."""
        with self._claiming:
            self._claim()

    def _claim(self) -> None:
        if self._claimed:
            return
        _, rbd = bindings()
        try:
            self._image.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)
        except rbd.ReadOnlyImage as e:
            raise DiskElsewhere(f"rbd:{self.spec.name} is in use by another server ({self._holder()})") from e
        except Exception as e:
            raise BackendError(f"rbd:{self.spec.name}: cannot take its lock: {plain_reason(e)}") from e
        self._claimed = True
        with contextlib.suppress(Exception):  # a name for others' messages only
            self._image.metadata_set(HOLDER_KEY, f"bootsvc on {socket.gethostname()}, pid {os.getpid()}")

    def release(self) -> None:
        """The lock given up, the image kept open: the next server the
        machine turns to may claim it (this one's writes now take the lock
        back only through :meth:`claim`)."""
        with self._claiming:
            if not self._claimed or self.read_only:
                return
            self._claimed = False
            with contextlib.suppress(Exception):
                self._image.metadata_remove(HOLDER_KEY)
            try:
                self._image.lock_release()
            except Exception as e:
                raise BackendError(f"rbd:{self.spec.name}: cannot release its lock: {plain_reason(e)}") from e

    def _holder(self) -> str:
        """Who holds the lock, as the holder wrote it (and librbd's owner)."""
        name = owners = ""
        with contextlib.suppress(Exception):
            name = self._image.metadata_get(HOLDER_KEY)
        with contextlib.suppress(Exception):
            owners = ", ".join(o["owner"] for o in self._image.lock_get_owners())
        return " ".join(filter(None, (name, f"client {owners}" if owners else ""))) or "unknown"

    def _bridge(self) -> _Bridge:
        loop = asyncio.get_running_loop()
        bridge = self._bridges.get(loop)
        if bridge is None:
            bridge = self._bridges[loop] = _Bridge(loop)
        return bridge

    async def _submit(self, what: str, start: Callable[[Callable[..., None]], Any]) -> Any:
        """Start one librbd aio call (``start(oncomplete)``) and await its
        completion; its value (a read's data) or MediumError/SpaceExhausted."""
        bridge = self._bridge()
        future: asyncio.Future[Any] = bridge.loop.create_future()

        def oncomplete(completion: Any, *value: Any) -> None:
            bridge.complete(future, completion.get_return_value(), value[0] if value else None)

        try:
            start(oncomplete)
        except Exception as e:  # refused before it started (closed image, bad range)
            raise MediumError(f"rbd:{self.spec.name}: {what} failed: {plain_reason(e)}") from e
        ret, value = await future
        if ret < 0:
            raise _io_error(self.spec.name, what, -ret)
        return ret, value

    async def read(self, offset: int, length: int) -> Sequence[Segment]:
        """The hot path (every SCSI READ is one aio_read): no closure or
        message is made per read; the completion hands over the read's
        buffer as librbd filled it (no copy)."""
        bridge = self._bridges.get(asyncio.get_running_loop()) or self._bridge()
        future = bridge.loop.create_future()
        try:
            self._image.aio_read(offset, length, _ReadDone(bridge, future))
        except Exception as e:  # refused before it started (closed image, bad range)
            raise MediumError(f"rbd:{self.spec.name}: read of {length} bytes at {offset} failed: "
                              f"{plain_reason(e)}") from e
        ret, data = await future
        if ret < 0:
            raise _io_error(self.spec.name, f"read of {length} bytes at {offset}", -ret)
        if data is None or len(data) < length:  # past the end: zeros, as a file reads
            data = (data or b"") + bytes(length - len(data or b""))
        return (data,)

    def read_sync(self, offset: int, length: int) -> bytes:
        try:
            data: bytes = self._image.read(offset, length)
        except Exception as e:
            raise MediumError(f"rbd:{self.spec.name}: read of {length} bytes at {offset} failed: "
                              f"{plain_reason(e)}") from e
        return data + bytes(length - len(data))

    async def write(self, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        payload = _as_bytes(data)
        await self._submit(f"write of {len(payload)} bytes at {offset}",
                           lambda done: self._image.aio_write(payload, offset, done))
        if fua:
            # librbd has no per-write FUA: a flush after it makes it durable
            # (with the RBD cache off it already is, and the flush is cheap)
            await self.flush()

    async def flush(self) -> None:
        await self._submit("flush", lambda done: self._image.aio_flush(done))

    async def discard(self, offset: int, length: int) -> None:
        """UNMAP: deallocated blocks must read as zeros (the LUN reports
        LBPRZ), and librbd's discard may leave partial objects unchanged
        (rbd_skip_partial_discard), so this zeroes: whole objects are
        still deallocated, and a clone then hides its parent's data."""
        await self.write_zeroes(offset, length)

    async def write_zeroes(self, offset: int, length: int) -> None:
        pos, end = offset, offset + length
        while pos < end:
            n = min(ZERO_CHUNK, end - pos)
            await self._submit(f"zeroing {n} bytes at {pos}",
                               lambda done, p=pos, n=n: self._image.aio_write_zeroes(p, n, done))
            pos += n

    async def block_status(self, offset: int) -> tuple[bool, int]:
        """GET LBA STATUS: librbd's allocation map (its own data and its
        parent's), asked off the loop since diff_iterate blocks."""
        return await asyncio.get_running_loop().run_in_executor(None, self._block_status, offset)

    def _block_status(self, offset: int) -> tuple[bool, int]:
        window = min(self.size - offset, STATUS_WINDOW)
        extents: list[tuple[int, int]] = []
        try:
            self._image.diff_iterate(offset, window, None, lambda o, n, exists: exists and extents.append((o, n)),
                                     include_parent=True, whole_object=False)
        except Exception as e:
            raise MediumError(f"rbd:{self.spec.name}: allocation map at {offset} unreadable: "
                              f"{plain_reason(e)}") from e
        return _first_run(offset, window, sorted(extents))

    def close(self) -> None:
        if self._image is not None:
            self._image.close()
            self._image = None
        if self._ioctx is not None:
            self._ioctx.close()
            self._ioctx = None
        if self._cluster is not None:
            CLUSTERS.release(self._cluster)
            self._cluster = None


class _ReadDone:
    """aio_read's completion callback: (return value, data) to the loop."""

    __slots__ = ("bridge", "future")

    def __init__(self, bridge: _Bridge, future: asyncio.Future[Any]) -> None:
        self.bridge, self.future = bridge, future

    def __call__(self, completion: Any, data: bytes | None) -> None:
        self.bridge.complete(self.future, completion.get_return_value(), data)


def _as_bytes(data: bytes | memoryview) -> bytes:
    """librbd's binding takes bytes only: a view of a whole bytes object is
    passed as that object, any other view is copied once."""
    if isinstance(data, bytes):
        return data
    if isinstance(data.obj, bytes) and data.nbytes == len(data.obj) and data.contiguous:
        return data.obj
    return bytes(data)


def _first_run(offset: int, window: int, extents: list[tuple[int, int]]) -> tuple[bool, int]:
    """(mapped, length) of the run starting at ``offset``, from the sorted
    allocated extents of ``window`` bytes there."""
    if not extents or extents[0][0] > offset:
        return False, (extents[0][0] - offset) if extents else window
    end = offset
    for start, length in extents:
        if start > end:
            break
        end = max(end, start + length)
    return True, min(end, offset + window) - offset


def _open_reason(e: BaseException) -> str:
    name = type(e).__name__
    if name == "ImageNotFound":
        return "no such image"
    if name == "ObjectNotFound":
        return "no such pool or namespace"
    if name in ("PermissionError", "PermissionDeniedError"):
        return "permission denied (the Ceph user may not open it)"
    return plain_reason(e)


def _io_error(name: str, what: str, code: int) -> BackendError:
    text = f"rbd:{name}: {what} failed: {os.strerror(code)}"
    if code in _NO_SPACE:
        return SpaceExhausted(text)
    if code in _FENCED:
        return MediumError(text + " (another client holds the image's lock or this one was blocklisted)")
    return MediumError(text)


def open_rbd(path: str, read_only: bool = False) -> RbdBackend:
    """The backend for a LUN named ``rbd:...``."""
    return RbdBackend(parse_spec(path), read_only=read_only)
