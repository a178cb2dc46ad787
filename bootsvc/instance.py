"""One ``bootsvc serve`` per state_dir: its pid file is also its lock.

A second server on the same state would answer DHCP beside the first,
fight over the leases and the iSNS database, and, as it exited, delete the
first's pid file (so ``bootsvc reload`` could no longer find it). The pid
file is held with an exclusive flock for the server's whole life; a second
``serve`` finds it held, names the PID that holds it and exits before it
touches anything. The lock dies with the process, so a crash leaves no
stale lock behind (a stale pid file is simply taken over)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

PID_FILE = "bootsvc.pid"


class AlreadyServing(Exception):
    def __init__(self, state_dir: Path, pid: str) -> None:
        super().__init__(f"another bootsvc serve (PID {pid or 'unknown'}) is serving {state_dir}; "
                         f"stop it first, or give this one another state_dir")
        self.pid = pid


class InstanceLock:
    def __init__(self, state_dir: Path) -> None:
        """Take the lock and write our PID; AlreadyServing if it is held."""
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / PID_FILE
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip()
            os.close(self.fd)
            raise AlreadyServing(state_dir, holder) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Remove the pid file, then let go of the lock: the file is ours until then."""
        if self.fd < 0:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = -1
