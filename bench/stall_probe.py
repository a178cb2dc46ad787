"""A stall probe for ``bootsvc serve``: a watchdog thread that, whenever
the event loop's thread has been busy in one loop iteration for more than
``THRESHOLD`` (its selector has not been entered again), samples every
thread's stack (``sys._current_frames``) every ``PERIOD`` and appends one
JSON line per sample to the file named by ``BOOTSVC_STALL_PROBE``.

Load-insensitive: it says where the loop thread is while it does not turn
(in a blocking call on its own, or in Python code waiting for the GIL --
then the other threads' stacks say who has it), not how fast it runs.

Started by bench/stall_site/sitecustomize.py (PYTHONPATH) when the
environment variable is set; bench/dhcp_stalls.py runs it and sums up.
"""

from __future__ import annotations

import json
import os
import selectors
import sys
import threading
import time

THRESHOLD = 0.020  # s: an iteration longer than this is a stall
PERIOD = 0.005  # s between samples

_main = threading.main_thread().ident
_state = {"busy_since": 0.0}  # 0.0: in the selector (idle) or not started


def _wrap(cls: type) -> None:
    select = cls.select

    def timed(self: selectors.BaseSelector, timeout: float | None = None) -> list:  # type: ignore[type-arg]
        if threading.get_ident() != _main:
            return select(self, timeout)
        _state["busy_since"] = 0.0
        try:
            return select(self, timeout)
        finally:
            _state["busy_since"] = time.monotonic()

    cls.select = timed  # type: ignore[method-assign]


def _stack(frame: object, depth: int = 8) -> list[str]:
    out = []
    f = frame
    while f is not None and len(out) < depth:
        code = f.f_code  # type: ignore[attr-defined]
        out.append(f"{os.path.basename(code.co_filename)}:{f.f_lineno}:{code.co_name}")  # type: ignore[attr-defined]
        f = f.f_back  # type: ignore[attr-defined]
    return out


def _sched(tid: int) -> tuple[str, int, int, int, int]:
    """The thread's state (R running or runnable, S sleeping: a futex such
    as the GIL, D disk), its time on a CPU and waiting for one (ns), and
    its user and system time (clock ticks)."""
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            run, wait = f.read().split()[:2]
        return fields[0], int(run), int(wait), int(fields[11]), int(fields[12])
    except (OSError, ValueError, IndexError):
        return "?", 0, 0, 0, 0


def _watch(path: str) -> None:
    names = {}
    with open(path, "a", buffering=1) as out:
        stall = 0
        while True:
            time.sleep(PERIOD)
            since = _state["busy_since"]
            now = time.monotonic()
            if not since or now - since < THRESHOLD:
                continue
            if since != stall:
                stall = since
            names = {t.ident: t.name for t in threading.enumerate()}
            frames = sys._current_frames()
            me = threading.get_ident()
            state, run, wait, utime, stime = _sched(threading.main_thread().native_id or 0)
            sample = {"stall": round(since, 4), "ms": round((now - since) * 1000, 1),
                      "state": state, "run_ns": run, "wait_ns": wait, "utime": utime, "stime": stime,
                      "main": _stack(frames.get(_main)),
                      "others": {names.get(i, str(i)): _stack(f, 4) for i, f in frames.items()
                                 if i not in (_main, me)}}
            out.write(json.dumps(sample) + "\n")


def start(path: str) -> None:
    for name in ("EpollSelector", "SelectSelector", "PollSelector"):
        cls = getattr(selectors, name, None)
        if cls is not None:
            _wrap(cls)
    threading.Thread(target=_watch, args=(path,), name="stall-probe", daemon=True).start()
