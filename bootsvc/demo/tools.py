"""Running the Debian tools the demo build uses (apt, dpkg-deb, mkfs,
mtools, syslinux, busybox, ldd), each failure one clear BuildError."""

from __future__ import annotations

import subprocess
from pathlib import Path


class BuildError(Exception):
    """A step of the demo build failed; the message says which and why."""


def run(*cmd: str, cwd: Path | None = None, timeout: float = 600, error: type[BuildError] = BuildError) -> str:
    """``cmd``'s standard output; ``error`` when it is missing, fails or
    takes longer than ``timeout`` seconds."""
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise error(f"{cmd[0]} is not installed") from e
    except subprocess.TimeoutExpired as e:
        raise error(f"{' '.join(cmd)} took more than {timeout:.0f} s") from e
    if r.returncode != 0:
        raise error(f"{' '.join(cmd)} failed: {(r.stderr or r.stdout).strip()[-500:]}")
    return r.stdout
