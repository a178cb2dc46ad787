"""qemu-img as the judge of qcow2 images the tests write."""

from __future__ import annotations

import subprocess
from pathlib import Path


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=120)


def assert_check_clean(image: Path, leaks_ok: bool = False) -> None:
    """``qemu-img check``: exit 0 is clean, 3 is leaks only, 2 is corruption."""
    r = qemu_img("check", str(image))
    allowed = (0, 3) if leaks_ok else (0,)
    assert r.returncode in allowed, f"qemu-img check {image}: rc={r.returncode}\n{r.stdout}{r.stderr}"


def assert_same(image: Path, expected_raw: Path) -> None:
    r = qemu_img("compare", "-f", "qcow2", "-F", "raw", str(image), str(expected_raw))
    assert r.returncode == 0, f"qemu-img compare: {r.stdout}{r.stderr}"


def to_raw(image: Path, out: Path) -> bytes:
    r = qemu_img("convert", "-O", "raw", str(image), str(out))
    assert r.returncode == 0, r.stderr
    return out.read_bytes()
