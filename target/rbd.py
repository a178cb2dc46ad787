"""A LUN on a Ceph RBD image, through librbd's asynchronous calls.

A LUN names its image the way QEMU does (``qemu-img``'s rbd driver and
this backend then agree on one spelling)::

    rbd:POOL[/NAMESPACE]/IMAGE[@SNAPSHOT][:conf=PATH][:id=USER]

``conf`` defaults to librados' own search (``/etc/ceph/ceph.conf``), ``id``
to ``admin``; a snapshot is read-only. The LUN's image is opened through
librbd's C API (target/librbd.py, ctypes) and its requests complete through
an eventfd the event loop watches (target/rbd_completions.py), so nothing
here blocks the loop except opening and closing the image.

The bindings (python3-rados, python3-rbd; Debian packages for Debian's
Python only) are used for the pool's other work (bootsvc/ceph_images.py)
and imported only then; the C libraries come with them (docs/scale-out.md
says how a venv gets them).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from . import librbd
from .backend import Backend, BackendError, DiskElsewhere, MediumError, Segment, SpaceExhausted
from .librbd import CONNECT_TIMEOUT
from .rbd_completions import Completions

PREFIX = "rbd:"
MISSING_BINDINGS = "storage backend ceph needs python3-rbd: apt install python3-rbd"
ZERO_CHUNK = 1 << 30  # write_zeroes/discard requests are split below librbd's int-sized lengths
STATUS_WINDOW = 1 << 30  # GET LBA STATUS looks this far ahead (one descriptor is enough for it)
# ... in spans that start at this and double, each asked of the object map first (whole
# objects: 0.4 ms over 1 GiB here) and exactly only where objects hold data: librbd's exact
# diff costs with the span (33 ms over 1 GiB of a clone here), and most runs end within a
# few objects
STATUS_FIRST_SPAN = 4 << 20
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


def _connect(conf: str | None, user: str | None) -> Any:
    """A connected ``rados.Rados`` (the binding's), or BackendError."""
    rados, _ = bindings()
    cluster = None
    try:
        cluster = rados.Rados(conffile=conf or "", rados_id=user)
        # connect()'s own timeout argument is ignored by librados
        cluster.conf_set("client_mount_timeout", str(CONNECT_TIMEOUT))
        cluster.connect()
    except (rados.Error, OSError) as e:
        if cluster is not None:
            cluster.shutdown()
        raise _connect_error(conf, e) from e
    return cluster


def _connect_error(conf: str | None, e: BaseException) -> BackendError:
    return BackendError(f"cannot connect to the Ceph cluster of {conf or 'the default ceph.conf'}: {plain_reason(e)}")


# the binding's connections, for the pool's other work (bootsvc/ceph_images.py)
CLUSTERS: librbd.Shared[Any] = librbd.Shared(_connect, lambda cluster: cluster.shutdown())


def plain_reason(e: BaseException) -> str:
    """librados/librbd exceptions as one plain sentence."""
    code = getattr(e, "errno", None)
    if isinstance(code, int) and code:
        return os.strerror(abs(code)).lower()
    return str(e).strip() or type(e).__name__


class RbdBackend(Backend):
    """An RBD image (or a snapshot of one, read-only) as a LUN, opened
    through librbd's C API (target/librbd.py says why not the binding):
    its aio requests complete through an eventfd the loop watches
    (target/rbd_completions.py)."""

    def __init__(self, spec: RbdSpec, read_only: bool = False) -> None:
        try:
            self._lib = librbd.libs()
        except OSError as e:
            raise BackendError(MISSING_BINDINGS) from e
        self.spec = spec
        self.read_only = read_only or spec.snapshot is not None
        self._cluster: int | None = None
        self._ioctx: int | None = None
        self._image: int | None = None
        self._io: Completions | None = None
        try:
            self._cluster = librbd.CONNECTIONS.acquire(spec.conf, spec.user)
        except librbd.CephError as e:
            raise _connect_error(spec.conf, e) from e
        try:
            self._ioctx, self._image = librbd.open_image(self._cluster, spec.pool, spec.namespace, spec.image,
                                                         spec.snapshot, self.read_only)
            self.size = librbd.image_size(self._image)
            self._io = Completions(self._image)
        except librbd.CephError as e:
            self.close()
            raise BackendError(f"cannot open rbd:{spec.name}: {_open_reason(e)}") from e
        if self.size == 0:
            self.close()
            raise BackendError(f"rbd:{spec.name} is empty")
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
        ``rbd_lock_acquire`` stays until released (``close``) and other
        clients' writes fail. A holder that died loses it once its watch
        times out. The holder's name is left in the image's metadata for
        the other servers' refusal to say who."""
        with self._claiming:
            self._claim()

    def _claim(self) -> None:
        if self._claimed:
            return
        ret = self._lib.rbd_lock_acquire(self._image, librbd.RBD_LOCK_MODE_EXCLUSIVE)
        if ret == -errno.EROFS:  # another client holds it
            raise DiskElsewhere(f"rbd:{self.spec.name} is in use by another server ({self._holder()})")
        if ret < 0:
            raise BackendError(f"rbd:{self.spec.name}: cannot take its lock: {os.strerror(-ret).lower()}")
        self._claimed = True
        # a name for others' messages only: a failure is not an error
        self._lib.rbd_metadata_set(self._image, HOLDER_KEY.encode(),
                                   f"bootsvc on {socket.gethostname()}, pid {os.getpid()}".encode())

    def release(self) -> None:
        """The lock given up, the image kept open: the next server the
        machine turns to may claim it (this one's writes now take the lock
        back only through :meth:`claim`)."""
        with self._claiming:
            if not self._claimed or self.read_only:
                return
            self._claimed = False
            self._lib.rbd_metadata_remove(self._image, HOLDER_KEY.encode())
            ret = self._lib.rbd_lock_release(self._image)
            if ret < 0:
                raise BackendError(f"rbd:{self.spec.name}: cannot release its lock: {os.strerror(-ret).lower()}")

    def _holder(self) -> str:
        """Who holds the lock, as the holder wrote it (and librbd's owner)."""
        name = owners = ""
        with contextlib.suppress(librbd.CephError):
            name = librbd.metadata_get(self._image, HOLDER_KEY)  # type: ignore[arg-type]
        with contextlib.suppress(librbd.CephError):
            owners = ", ".join(librbd.lock_owners(self._image))  # type: ignore[arg-type]
        return " ".join(filter(None, (name, f"client {owners}" if owners else ""))) or "unknown"

    def _start(self, what: str, call: Callable[..., int], *args: Any, keep: object = None) -> asyncio.Future[int]:
        """One aio request started (``call(image, *args, completion)``);
        MediumError when librbd refuses it at once (a closed image, a bad range)."""
        if self._io is None:
            raise MediumError(f"rbd:{self.spec.name}: {what} failed: the image is closed")
        try:
            return self._io.start(call, *args, keep=keep)
        except librbd.CephError as e:
            raise MediumError(f"rbd:{self.spec.name}: {what} failed: {plain_reason(e)}") from e

    async def _submit(self, what: str, call: Callable[..., int], *args: Any, keep: object = None) -> int:
        """An aio request awaited: its return value, or MediumError/SpaceExhausted."""
        ret = await self._start(what, call, *args, keep=keep)
        if ret < 0:
            raise _io_error(self.spec.name, what, -ret)
        return ret

    async def read(self, offset: int, length: int) -> Sequence[Segment]:
        """The hot path (every SCSI READ is one aio read): librbd fills a
        fresh, uninitialised bytes object, which is then sent as it is (no
        copy, no message made per read)."""
        buf = _new_bytes(length)
        what = f"read of {length} bytes at {offset}"
        ret = await self._start(what, self._lib.rbd_aio_read, offset, length, buf, keep=buf)
        if ret < 0:  # _submit's check, here without its coroutine frame per read
            raise _io_error(self.spec.name, what, -ret)
        if ret < length:  # past the end: zeros, as a file reads
            return (buf[:ret], bytes(length - ret))
        return (buf,)

    def read_sync(self, offset: int, length: int) -> bytes:
        buf = _new_bytes(length)
        ret = self._lib.rbd_read(self._image, offset, length, buf) if self._image is not None else -errno.EBADF
        if ret < 0:
            raise MediumError(f"rbd:{self.spec.name}: read of {length} bytes at {offset} failed: "
                              f"{os.strerror(-ret).lower()}")
        return buf if ret == length else buf[:ret] + bytes(length - ret)

    async def write(self, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        payload = _as_bytes(data)
        await self._submit(f"write of {len(payload)} bytes at {offset}", self._lib.rbd_aio_write,
                           offset, len(payload), payload, keep=payload)
        if fua:
            # librbd has no per-write FUA: a flush after it makes it durable
            # (with the RBD cache off it already is, and the flush is cheap)
            await self.flush()

    async def flush(self) -> None:
        await self._submit("flush", self._lib.rbd_aio_flush)

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
            await self._submit(f"zeroing {n} bytes at {pos}", self._write_zeroes, pos, n)
            pos += n

    def _write_zeroes(self, image: int, offset: int, length: int, completion: Any) -> int:
        # rbd_aio_write_zeroes takes flags after the completion
        return int(self._lib.rbd_aio_write_zeroes(image, offset, length, completion, 0, 0))

    async def block_status(self, offset: int) -> tuple[bool, int]:
        """GET LBA STATUS: librbd's allocation map (its own data and its
        parent's), asked off the loop since diff_iterate blocks."""
        return await asyncio.get_running_loop().run_in_executor(None, self._block_status, offset)

    def _block_status(self, offset: int) -> tuple[bool, int]:
        """The run at ``offset``, up to STATUS_WINDOW, asked in doubling spans."""
        end = min(self.size, offset + STATUS_WINDOW)
        pos, span = offset, STATUS_FIRST_SPAN
        mapped: bool | None = None
        while pos < end:
            n = min(span, end - pos)
            here, length = self._run(pos, n)
            if mapped is not None and here != mapped:
                break
            mapped, pos, span = here, pos + length, span * 2
            if length < n:
                break
        return bool(mapped), pos - offset

    def _run(self, offset: int, span: int) -> tuple[bool, int]:
        """(mapped, length) of the run at ``offset`` within ``span`` bytes:
        the objects holding data (the object map, cheap) bound where the
        exact diff is asked; past the last of them nothing is mapped."""
        objects = self._extents(offset, span, whole_objects=True)
        if not objects:
            return False, span
        reach = min(span, max(start + length for start, length in objects) - offset)
        mapped, length = _first_run(offset, reach, self._extents(offset, reach, whole_objects=False))
        return (False, span) if not mapped and length == reach else (mapped, length)

    def _extents(self, offset: int, length: int, whole_objects: bool) -> list[tuple[int, int]]:
        """The allocated extents of ``length`` bytes at ``offset``, the
        parent's included, sorted; ``whole_objects``: the objects that hold
        any (from the object map where the image has one)."""
        extents: list[tuple[int, int]] = []

        def found(start: int, length: int, exists: int, _arg: Any) -> int:
            if exists:
                extents.append((start, length))
            return 0

        ret = self._lib.rbd_diff_iterate2(self._image, None, offset, length, 1, int(whole_objects),
                                          librbd.DIFF_CALLBACK(found), None)
        if ret < 0:
            raise MediumError(f"rbd:{self.spec.name}: allocation map at {offset} unreadable: "
                              f"{os.strerror(-ret).lower()}")
        return sorted(extents)

    def close(self) -> None:
        io, self._io = self._io, None  # first: a request made from now on finds the image closed
        if io is not None:
            io.close()
        if self._image is not None:
            self._lib.rbd_close(self._image)
            self._image = None
        if self._ioctx is not None:
            self._lib.rados_ioctx_destroy(self._ioctx)
            self._ioctx = None
        if self._cluster is not None:
            librbd.CONNECTIONS.release(self._cluster)
            self._cluster = None


_PyBytes_FromStringAndSize = ctypes.pythonapi.PyBytes_FromStringAndSize
_PyBytes_FromStringAndSize.restype = ctypes.py_object
_PyBytes_FromStringAndSize.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)


def _new_bytes(length: int) -> bytes:
    """A bytes object of ``length`` bytes, not zeroed (as the binding made
    them), for librbd to fill before anyone else sees it."""
    return _PyBytes_FromStringAndSize(None, length)  # type: ignore[no-any-return]


def _as_bytes(data: bytes | memoryview) -> bytes:
    """rbd_aio_write's buffer is passed as bytes (ctypes' ``c_char_p``): a
    view of a whole bytes object is passed as that object, any other view
    is copied once."""
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


def _open_reason(e: librbd.CephError) -> str:
    """What a failed open means, from the step that failed (CephError's strerror)."""
    if e.errno == errno.ENOENT:
        return "no such image" if e.strerror == "rbd_open" else "no such pool or namespace"
    if e.errno in (errno.EPERM, errno.EACCES):
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
