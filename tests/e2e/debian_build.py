"""The Debian base of the Debian e2e tests, built in the background.

A cold `bootsvc image build-debian` downloads about 115 MB and takes about
3 minutes, most of it waiting on the network and dpkg. So that `make test`
runs the Debian tests on a fresh machine without adding those minutes,
tests/e2e/conftest.py starts this module as a subprocess as soon as the
session's Debian tests are collected (``python -m tests.e2e.debian_build``)
and runs those tests last: the build overlaps the rest of the suite, and
the first Debian test waits for what is left of it (wait()).

The build is kept in STATE (downloads, the debootstrapped tree, the base)
between runs; the base is made again from the cached tree (under a minute)
when bootsvc/debian/*.py changed since it was built."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bootsvc import config, debian
from bootsvc.debian import build_debian
from bootsvc.vm.run import sigterm_as_interrupt

STATE = Path(os.environ.get("BOOTSVC_DEBIAN_STATE", "/var/tmp/bootsvc-e2e-debian"))
# BOOTSVC_DEBIAN_E2E=0: skip the Debian tests (and their build), e.g. offline
ENABLED = os.environ.get("BOOTSVC_DEBIAN_E2E", "1") != "0"
LOG = STATE / "e2e-build.log"
TIMEOUT = 1800.0  # seconds for the whole build, downloads included, on a busy machine
TEST_TIMEOUT = 600 + TIMEOUT  # a Debian test's, with its wait for the build
# below the VMs and servers of the tests it overlaps, whose timeouts are
# tighter; a build has no deadline but TIMEOUT
NICE = 5
STOP_GRACE = 30.0  # seconds
PR_SET_PDEATHSIG = 1  # prctl(2), linux/prctl.h
# what the build runs besides Python (the tests' own needs are checked by need())
COMMANDS = ("debootstrap", "chroot", "qemu-img", "syslinux", "mcopy", "mkfs.vfat", "mke2fs")


def build_base(cfg: config.Config) -> None:
    """The base in ``cfg.state_dir``: reused while the builder's code is
    the one that built it, else made again from the cached tree. Every
    overlay there goes first: each test run boots fresh machines, and a
    rebuild refuses a base that overlays still use."""
    shutil.rmtree(cfg.overlays_dir, ignore_errors=True)
    stamp = cfg.state_dir / "cache" / "debian" / "e2e-recipe"
    recipe = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(Path(debian.__file__).parent.glob("*.py"))))
    fresh = stamp.is_file() and stamp.read_text() == recipe.hexdigest()
    build_debian(cfg, force=not fresh, say=print)
    stamp.write_text(recipe.hexdigest())


@dataclass
class Build:
    """The background build: its process, when it started and ended (a
    thread notes it), whether the session stopped it, and how long the
    tests waited for it."""

    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    stopped: bool = False
    waited: float = 0.0

    def __post_init__(self) -> None:
        threading.Thread(target=self._note_end, daemon=True).start()

    def _note_end(self) -> None:
        self.proc.wait()
        self.ended = time.monotonic()

    def summary(self) -> str:
        took = f"{(self.ended or time.monotonic()) - self.started:.0f} s"
        if self.stopped:
            return f"the Debian base's build ({LOG}) was ended unfinished after {took}"
        return (f"the Debian base's build ({LOG}): {took} in the background, status {self.proc.returncode}; "
                f"the Debian tests waited {self.waited:.0f} s for it")


_build: Build | None = None


def can_build() -> bool:
    """Whether this machine can build (root, the build's programs); where
    it cannot, the tests skip through need() with the reason."""
    return ENABLED and os.geteuid() == 0 and all(shutil.which(c) for c in COMMANDS)


def _term_with_parent() -> None:
    """In the build's process before it runs: SIGTERM when pytest ends
    without its session's end (killed), so no orphaned debootstrap goes on.
    prctl(2) PR_SET_PDEATHSIG."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def start() -> None:
    """Start the build unless it runs already or cannot run here."""
    global _build
    if _build is not None or not can_build():
        return
    STATE.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parents[2]  # the checkout, for ``-m tests.e2e...``
    with open(LOG, "wb") as log:
        # its own session: stop() ends it and what it started (debootstrap, dpkg)
        proc = subprocess.Popen(["nice", "-n", str(NICE), sys.executable, "-u", "-m", "tests.e2e.debian_build"],
                                cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_term_with_parent)
    _build = Build(proc)


def wait() -> None:
    """Until the build has ended (started now if it was not); raises
    AssertionError with the end of its log when it failed."""
    start()
    if _build is None:
        return
    t0 = time.monotonic()
    try:
        status = _build.proc.wait(max(1.0, TIMEOUT - (t0 - _build.started)))
    except subprocess.TimeoutExpired:
        stop()
        status = None
    finally:
        _build.waited += time.monotonic() - t0
    if status != 0:
        tail = "\n".join(LOG.read_text(errors="replace").splitlines()[-30:])
        what = f"took more than {TIMEOUT:.0f} s" if status is None else f"failed (status {status})"
        raise AssertionError(f"building the Debian base {what}; the end of {LOG}:\n{tail}")


def stop() -> None:
    """End the build if it still runs (the session ends before its tests):
    SIGTERM first, which the build takes as Ctrl-C, ending debootstrap (in
    a session of its own) and unmounting what it mounted; SIGKILL after
    STOP_GRACE seconds."""
    if _build is None or _build.proc.poll() is not None:
        return
    _build.stopped = True
    _build.proc.terminate()
    try:
        _build.proc.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(_build.proc.pid, signal.SIGKILL)
        _build.proc.wait(30)


def summary() -> str | None:
    return _build.summary() if _build is not None else None


def main() -> None:
    """The build itself, in the subprocess: a config that names only STATE."""
    STATE.mkdir(parents=True, exist_ok=True)
    path = STATE / "e2e-build.yaml"
    path.write_text(f"state_dir: {STATE}\n")
    with sigterm_as_interrupt():  # stop(): the build cleans up as after Ctrl-C
        build_base(config.load(path))


if __name__ == "__main__":
    main()
