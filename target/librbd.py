"""librados and librbd (Ceph 16's C API, librados.h and librbd.h) through
ctypes: the calls an RBD LUN makes, and one cluster connection per
(conf, user) shared by every image opened through it.

Why not the python3-rbd binding: its aio calls complete through a Python
callback on librbd's own thread, which must take the GIL the event loop
holds; every completion then costs a GIL hand-over between the two threads
(futex wake-ups on both sides), and the binding makes a closure and a
completion object per call. librbd can instead say "completions ready" on
an eventfd (``rbd_set_image_notification``) and hand them over in batches
(``rbd_poll_io_events``), no Python on its threads: that is what
target/rbd_completions.py does, and it needs the image's C handle, which
the binding does not expose. So the image is opened here, and everything
done on it goes through this one handle (two handles of one image in one
process would each have their own cache and exclusive-lock state).

The calls that cannot block (starting an aio, polling and releasing
completions) go through a PyDLL handle, keeping the GIL: librbd's threads
never need it, and not releasing it saves a hand-over per call. Every other
call (connect, open, close, locks, metadata, a synchronous read) may wait
on the cluster and goes through a CDLL handle, which releases the GIL.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable
from ctypes import POINTER, byref, c_char_p, c_int, c_size_t, c_ssize_t, c_uint8, c_uint64, c_void_p
from typing import Any, Generic, TypeVar

LIBRADOS = "librados.so.2"
LIBRBD = "librbd.so.1"
RBD_LOCK_MODE_EXCLUSIVE = 0  # librbd.h rbd_lock_mode_t
H = TypeVar("H")  # a connection handle: a rados_t here, a rados.Rados for the binding
EVENT_TYPE_EVENTFD = 2  # librbd.h: the notification fd is an eventfd
CONNECT_TIMEOUT = 10  # seconds librados waits for the monitors before an open fails
IO_THREAD = "io_context_pool"  # librados' threads that run librbd's requests (their name in /proc)

# int (*)(uint64_t offset, size_t length, int exists, void *arg): rbd_diff_iterate2's callback
DIFF_CALLBACK = ctypes.CFUNCTYPE(c_int, c_uint64, c_size_t, c_int, c_void_p)

# name: (restype, argtypes) of each call; the hot ones keep the GIL (see above)
_RADOS = {
    "rados_create": (c_int, [POINTER(c_void_p), c_char_p]),
    "rados_conf_read_file": (c_int, [c_void_p, c_char_p]),
    "rados_conf_set": (c_int, [c_void_p, c_char_p, c_char_p]),
    "rados_connect": (c_int, [c_void_p]),
    "rados_shutdown": (None, [c_void_p]),
    "rados_ioctx_create": (c_int, [c_void_p, c_char_p, POINTER(c_void_p)]),
    "rados_ioctx_destroy": (None, [c_void_p]),
    "rados_ioctx_set_namespace": (None, [c_void_p, c_char_p]),
}
_RBD = {
    "rbd_open": (c_int, [c_void_p, c_char_p, POINTER(c_void_p), c_char_p]),
    "rbd_open_read_only": (c_int, [c_void_p, c_char_p, POINTER(c_void_p), c_char_p]),
    "rbd_close": (c_int, [c_void_p]),
    "rbd_get_size": (c_int, [c_void_p, POINTER(c_uint64)]),
    "rbd_lock_acquire": (c_int, [c_void_p, c_int]),
    "rbd_lock_release": (c_int, [c_void_p]),
    "rbd_lock_get_owners": (c_int, [c_void_p, POINTER(c_int), POINTER(c_char_p), POINTER(c_size_t)]),
    "rbd_lock_get_owners_cleanup": (None, [POINTER(c_char_p), c_size_t]),
    "rbd_metadata_get": (c_int, [c_void_p, c_char_p, c_char_p, POINTER(c_size_t)]),
    "rbd_metadata_set": (c_int, [c_void_p, c_char_p, c_char_p]),
    "rbd_metadata_remove": (c_int, [c_void_p, c_char_p]),
    "rbd_read": (c_ssize_t, [c_void_p, c_uint64, c_size_t, c_char_p]),
    "rbd_diff_iterate2": (c_int, [c_void_p, c_char_p, c_uint64, c_uint64, c_uint8, c_uint8, DIFF_CALLBACK,
                                  c_void_p]),
    "rbd_set_image_notification": (c_int, [c_void_p, c_int, c_int]),
    "rbd_aio_wait_for_complete": (c_int, [c_void_p]),
}
_RBD_HOT = {
    "rbd_aio_create_completion": (c_int, [c_void_p, c_void_p, POINTER(c_void_p)]),
    "rbd_aio_read": (c_int, [c_void_p, c_uint64, c_size_t, c_char_p, c_void_p]),
    "rbd_aio_write": (c_ssize_t, [c_void_p, c_uint64, c_size_t, c_char_p, c_void_p]),
    "rbd_aio_write_zeroes": (c_int, [c_void_p, c_uint64, c_size_t, c_void_p, c_int, c_int]),
    "rbd_aio_flush": (c_int, [c_void_p, c_void_p]),
    "rbd_aio_get_return_value": (c_ssize_t, [c_void_p]),
    "rbd_aio_release": (None, [c_void_p]),
    "rbd_poll_io_events": (c_int, [c_void_p, POINTER(c_void_p), c_int]),
}


class CephError(OSError):
    """A librados/librbd call failed: ``errno`` is its (positive) error."""


def check(ret: int, what: str) -> int:
    """``ret`` if it is not a negative errno, else CephError."""
    if ret < 0:
        raise CephError(-ret, what)
    return ret


class Libs:
    """The C functions, as attributes (``libs().rbd_open(...)``): plain
    attributes, since the hot ones are looked up on every request."""

    def __init__(self, **tables: tuple[Any, dict[str, tuple[Any, list[Any]]]]) -> None:
        for lib, table in tables.values():
            for name, (restype, argtypes) in table.items():
                fn = getattr(lib, name)
                fn.restype, fn.argtypes = restype, argtypes
                setattr(self, name, fn)

    def __getattr__(self, name: str) -> Any:  # only for names not declared above
        raise AttributeError(f"{name} is not declared in target/librbd.py")


_libs: Libs | None = None
_libs_lock = threading.Lock()


def libs() -> Libs:
    """The libraries, loaded once; OSError when they are not installed."""
    global _libs
    with _libs_lock:
        if _libs is None:
            _libs = Libs(rados=(ctypes.CDLL(LIBRADOS), _RADOS), rbd=(ctypes.CDLL(LIBRBD), _RBD),
                         rbd_hot=(ctypes.PyDLL(LIBRBD), _RBD_HOT))
        return _libs


def _c(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


class Shared(Generic[H]):
    """Connections opened once per key (conf, user) and shared by every
    image opened through them, closed with their last user: each librados
    connection costs a dozen threads and sockets, and a server opens an
    image per machine."""

    def __init__(self, connect: Callable[[str | None, str | None], H], shutdown: Callable[[H], None]) -> None:
        self._connect, self._shutdown = connect, shutdown
        self._lock = threading.Lock()
        self._open: dict[tuple[str | None, str | None], list[Any]] = {}  # key: [handle, users]

    def acquire(self, conf: str | None, user: str | None) -> H:
        with self._lock:
            entry = self._open.get((conf, user))
            if entry is None:
                entry = self._open[(conf, user)] = [self._connect(conf, user), 0]
            entry[1] += 1
            return entry[0]  # type: ignore[no-any-return]

    def release(self, handle: H) -> None:
        with self._lock:
            for key, entry in list(self._open.items()):
                if entry[0] == handle:  # a rados_t is an int: equal, not the same object
                    entry[1] -= 1
                    if entry[1] == 0:
                        del self._open[key]
                        self._shutdown(handle)
                    return


def _connect(conf: str | None, user: str | None) -> int:
    """A connected ``rados_t``; CephError if it cannot connect."""
    lib = libs()
    cluster = c_void_p()
    threads = _threads()
    check(lib.rados_create(byref(cluster), _c(user)), "rados_create")
    try:
        check(lib.rados_conf_read_file(cluster, _c(conf)), "rados_conf_read_file")
        # rados_connect has no timeout of its own
        check(lib.rados_conf_set(cluster, b"client_mount_timeout", str(CONNECT_TIMEOUT).encode()), "rados_conf_set")
        check(lib.rados_connect(cluster), "rados_connect")
    except CephError:
        lib.rados_shutdown(cluster)
        raise
    _no_wakeup_preemption(_threads() - threads)
    return int(cluster.value or 0)


def _threads() -> set[str]:
    """This process's thread ids."""
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return set()


def _no_wakeup_preemption(tids: set[str]) -> None:
    """librados' ``io_context_pool`` threads among ``tids`` made SCHED_BATCH.

    The event loop hands every request to that thread (rbd_aio_read posts
    it there) and so wakes it once per request; as a normal thread, woken
    on a busy machine, it preempted the loop in the middle of its batch of
    commands: a task switch there and back per request, which was a
    quarter of the loop thread's time. A SCHED_BATCH thread gets the same
    share of the CPU but does not preempt the thread that woke it
    (sched(7)), so the loop finishes its batch and the librados thread
    runs on the other CPU or right after. Measured: 20-25 % less server
    CPU per random 4 KiB read (docs/benchmarks.md). Where the policy
    cannot be set, nothing changes."""
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != IO_THREAD:
                    continue
            os.sched_setscheduler(int(tid), os.SCHED_BATCH, os.sched_param(0))
        except OSError:  # the thread ended, or no /proc
            continue


CONNECTIONS: Shared[int] = Shared(_connect, lambda cluster: libs().rados_shutdown(cluster))


def open_image(cluster: int, pool: str, namespace: str, name: str, snapshot: str | None,
               read_only: bool) -> tuple[int, int]:
    """(ioctx, image) handles of an image; CephError saying which step
    failed (``rados_ioctx_create``: the pool, ``rbd_open``: the image)."""
    lib = libs()
    ioctx, image = c_void_p(), c_void_p()
    check(lib.rados_ioctx_create(cluster, pool.encode(), byref(ioctx)), "rados_ioctx_create")
    if namespace:
        lib.rados_ioctx_set_namespace(ioctx, namespace.encode())
    opener = lib.rbd_open_read_only if read_only else lib.rbd_open
    try:
        check(opener(ioctx, name.encode(), byref(image), _c(snapshot)), "rbd_open")
    except CephError:
        lib.rados_ioctx_destroy(ioctx)
        raise
    return int(ioctx.value or 0), int(image.value or 0)


def image_size(image: int) -> int:
    size = c_uint64()
    check(libs().rbd_get_size(image, byref(size)), "rbd_get_size")
    return size.value


def metadata_get(image: int, key: str) -> str:
    """An image metadata value; CephError(ENOENT) when it is not set."""
    lib = libs()
    length = c_size_t(256)
    for _ in range(4):  # -ERANGE says how long the value is: grown that far
        buf = ctypes.create_string_buffer(length.value)
        ret = lib.rbd_metadata_get(image, key.encode(), buf, byref(length))
        if ret != -errno.ERANGE:
            check(ret, "rbd_metadata_get")
            return buf.value.decode(errors="replace")
    raise CephError(errno.ERANGE, "rbd_metadata_get")


def lock_owners(image: int) -> list[str]:
    """Who holds the image's exclusive lock (librbd's client names)."""
    lib = libs()
    mode, count = c_int(), c_size_t(8)
    for _ in range(4):  # -ERANGE says how many there are
        owners = (c_char_p * count.value)()
        ret = lib.rbd_lock_get_owners(image, byref(mode), owners, byref(count))
        if ret == -errno.ENOENT:  # nobody holds it
            return []
        if ret != -errno.ERANGE:
            check(ret, "rbd_lock_get_owners")
            names = [(owners[i] or b"").decode(errors="replace") for i in range(count.value)]
            lib.rbd_lock_get_owners_cleanup(owners, count)
            return names
    raise CephError(errno.ERANGE, "rbd_lock_get_owners")
