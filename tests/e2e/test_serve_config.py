"""`bootsvc serve -c` with targets, LUNs and a read-only flag from YAML,
checked from the outside with libiscsi's tools and qemu-img."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import need
from tests.e2e.peers import LOOPBACK, free_port, stop, wait_for_port

pytestmark = pytest.mark.e2e


def test_serve_from_config(tmp_path: Path) -> None:
    need("iscsi-ls", "qemu-img")
    (tmp_path / "a.img").write_bytes(bytes(4 << 20))
    (tmp_path / "b.img").write_bytes(b"\x11" * (2 << 20))
    port = free_port()
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"""
listen:
  iscsi: [{LOOPBACK}:{port}]
targets:
  - iqn: iqn.2026-11.test:one
    luns: [a.img, {{path: b.img, read_only: true}}]
  - iqn: iqn.2026-11.test:two
    luns: [b.img]
""")
    check = subprocess.run([sys.executable, "-m", "bootsvc", "check", "-c", str(cfg)], capture_output=True,
                           text=True)
    assert check.returncode == 0 and "2 target(s), 3 LUN(s)" in check.stdout, check.stderr
    proc = subprocess.Popen([sys.executable, "-m", "bootsvc", "serve", "-c", str(cfg)],
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        ls = subprocess.run(["iscsi-ls", "-s", f"iscsi://{LOOPBACK}:{port}"], capture_output=True, text=True,
                            timeout=30)
        assert "iqn.2026-11.test:one" in ls.stdout and "iqn.2026-11.test:two" in ls.stdout, ls.stdout
        info = subprocess.run(["qemu-img", "info", f"iscsi://{LOOPBACK}:{port}/iqn.2026-11.test:one/1"],
                              capture_output=True, text=True, timeout=30)
        assert "2 MiB" in info.stdout, info.stdout + info.stderr
        w = subprocess.run(["qemu-io", "-f", "raw", "-c", "write 0 4k",
                            f"iscsi://{LOOPBACK}:{port}/iqn.2026-11.test:one/1"],
                           capture_output=True, text=True, timeout=30)
        assert w.returncode != 0 or "failed" in (w.stdout + w.stderr).lower()
    finally:
        stop(proc)
    assert proc.returncode == 0  # SIGTERM ends it cleanly
    assert (tmp_path / "b.img").read_bytes() == b"\x11" * (2 << 20)


def test_check_reports_file_line_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("targets:\n  - iqn: nope\n    luns: [missing.img]\n")
    r = subprocess.run([sys.executable, "-m", "bootsvc", "check", "-c", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 1
    assert f"{cfg}:2: targets[0].iqn:" in r.stderr and "does not exist" in r.stderr
