"""librbd's completions of one image handed to the event loop through an
eventfd, the way SPDK's bdev_rbd and fio's rbd engine take them: no Python
runs on librbd's threads.

librbd (Ceph 16, librbd.h) writes to the image's notification eventfd
(``rbd_set_image_notification``) when an aio request made without a
callback completes, and queues the completion; the loop, woken by the
eventfd, takes every queued completion in batches with
``rbd_poll_io_events``, reads each one's return value and releases it. One
wake-up of the loop serves every completion that arrived meanwhile, and
librbd's threads never take the GIL (target/librbd.py says why that
matters).

A request's buffers (a read's destination, a write's data) are kept here
until librbd has completed it, even when its waiter gave up (a connection
closed mid-read): librbd writes into a read's buffer until then.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from ctypes import byref, c_void_p
from typing import Any

from .librbd import EVENT_TYPE_EVENTFD, CephError, check, libs

BATCH = 128  # completions taken per rbd_poll_io_events call


class Completions:
    """The in-flight aio requests of one open image, and their completions."""

    def __init__(self, image: int) -> None:
        self._lib = libs()
        self._image = image
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            check(self._lib.rbd_set_image_notification(image, self._fd, EVENT_TYPE_EVENTFD),
                  "rbd_set_image_notification")
        except CephError:
            os.close(self._fd)
            raise
        # completion handle -> (its waiter, what librbd uses until it completes)
        self._pending: dict[int, tuple[asyncio.Future[int], object]] = {}
        self._batch = (c_void_p * BATCH)()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop watching the eventfd
        # taking completions (poll, release, forget) one thread at a time:
        # the fleet may close an image from another thread while the loop
        # takes its completions, and a completion must not be released
        # while close() waits on it
        self._taking = threading.Lock()

    def __len__(self) -> int:
        return len(self._pending)

    def start(self, call: Callable[..., int], *args: Any, keep: object = None) -> asyncio.Future[int]:
        """``call(image, *args, completion)`` (an rbd_aio_* function) started;
        the future gets its return value (a negative errno on failure).
        ``keep`` is held until librbd is done with the request. CephError
        when librbd refuses it at once."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._watch(loop)
        lib = self._lib
        comp = c_void_p()
        check(lib.rbd_aio_create_completion(None, None, byref(comp)), "rbd_aio_create_completion")
        ret = call(self._image, *args, comp)
        if ret < 0:
            lib.rbd_aio_release(comp)
            raise CephError(-ret, "aio")
        # nothing completes before this is recorded: completions are taken
        # on this thread, by the loop's reader below
        future: asyncio.Future[int] = loop.create_future()
        self._pending[comp.value] = (future, keep)  # type: ignore[index]
        return future

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """The eventfd watched by ``loop`` (the loop of the first request,
        or a later one once the first is closed, as in tests)."""
        old = self._loop
        if old is not None and not old.is_closed():
            old.remove_reader(self._fd)
        loop.add_reader(self._fd, self._take)
        self._loop = loop

    def _take(self) -> None:
        """On the loop, eventfd readable: every queued completion settled."""
        if self._fd < 0:  # closed from another thread; the reader goes on the loop's next turn
            return
        try:
            os.eventfd_read(self._fd)  # reset first: a completion queued from now on writes it again
        except BlockingIOError:
            pass
        with self._taking:
            done = self._settled()
        loop = self._loop
        for future, ret in done:
            _hand(future, ret, loop)

    def _settled(self) -> list[tuple[asyncio.Future[int], int]]:
        """(waiter, return value) of every queued completion, forgotten."""
        pending = self._pending
        return [(entry[0], ret) for comp, ret in self._poll() if (entry := pending.pop(comp, None)) is not None]

    def _poll(self) -> list[tuple[int, int]]:
        """(completion, return value) of every queued completion, released."""
        lib, batch, done = self._lib, self._batch, []
        while True:
            n = lib.rbd_poll_io_events(self._image, batch, BATCH)
            for i in range(max(n, 0)):
                comp = batch[i]
                done.append((comp, lib.rbd_aio_get_return_value(comp)))
                lib.rbd_aio_release(comp)
            if n < BATCH:
                return done

    def close(self) -> None:
        """Before the image is closed: waits for the requests still in
        flight (their waiters get their results if their loop still runs),
        then stops watching. Blocks, like closing the image does."""
        with self._taking:
            for comp in list(self._pending):
                self._lib.rbd_aio_wait_for_complete(comp)
            done = self._settled()
        here = _running_loop()
        for future, ret in done:
            _hand(future, ret, here)
        self._unwatch()

    def _unwatch(self) -> None:
        """The eventfd closed after the loop stopped watching it, on the
        loop's own thread when it runs elsewhere: asyncio's selector is not
        thread-safe, and a closed fd left registered there would confuse it
        when its number is reused."""
        loop, fd = self._loop, self._fd
        self._fd = -1
        if fd < 0:
            return
        if loop is None or loop.is_closed():
            os.close(fd)
            return
        if loop.is_running() and _running_loop() is not loop:
            loop.call_soon_threadsafe(_forget, loop, fd)
        else:
            _forget(loop, fd)


def _hand(future: asyncio.Future[int], ret: int, here: asyncio.AbstractEventLoop | None) -> None:
    """``ret`` to ``future``, through its loop's thread unless that is ``here``."""
    loop = future.get_loop()
    if loop is here:
        _settle(future, ret)
    elif not loop.is_closed():
        loop.call_soon_threadsafe(_settle, future, ret)


def _settle(future: asyncio.Future[int], ret: int) -> None:
    if not future.done():  # a waiter that gave up
        future.set_result(ret)


def _forget(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    if not loop.is_closed():
        loop.remove_reader(fd)
    os.close(fd)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None

