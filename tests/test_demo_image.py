"""Pieces of the demo image builder that need no kernel download: the
initramfs archive format (read back by busybox cpio, a real unpacker), the
MBR, and the clear errors for bad input."""

from __future__ import annotations

import io
import struct
import subprocess
from pathlib import Path

import pytest

from bootsvc import config
from bootsvc.demo import DemoImageError, build_demo
from bootsvc.demo.cpio import CpioWriter
from bootsvc.demo.disk import SYSLINUX_MBR, Layout, write_mbr
from tests.e2e.conftest import need


def test_cpio_newc_read_back_by_busybox(tmp_path: Path) -> None:
    need("busybox")
    out = io.BytesIO()
    w = CpioWriter(out)
    w.directory("bin")
    w.file("bin/hello", b"#!/bin/sh\necho hi\n", 0o755)
    w.symlink("bin/hi", "hello")
    w.file("odd", b"x" * 5)  # padding after data of a length not a multiple of 4
    w.close()
    assert len(out.getvalue()) % 4 == 0
    (tmp_path / "x").mkdir()
    r = subprocess.run(["busybox", "cpio", "-i", "-d"], input=out.getvalue(), cwd=tmp_path / "x",
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "x" / "bin" / "hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (tmp_path / "x" / "bin" / "hello").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "x" / "bin" / "hi").readlink() == Path("hello")
    assert (tmp_path / "x" / "odd").read_bytes() == b"xxxxx"


def test_mbr_partitions(tmp_path: Path) -> None:
    if not SYSLINUX_MBR.is_file():
        pytest.skip(f"needs {SYSLINUX_MBR} (syslinux-common)")
    disk = tmp_path / "d.raw"
    layout = Layout()
    disk.write_bytes(bytes(4096))
    write_mbr(disk, layout)
    mbr = disk.read_bytes()[:512]
    assert mbr[510:] == b"\x55\xaa" and mbr[:440] == SYSLINUX_MBR.read_bytes()[:440]
    boot = struct.unpack("<B3sB3sII", mbr[446:462])
    root = struct.unpack("<B3sB3sII", mbr[462:478])
    assert (boot[0], boot[2], boot[4] * 512, boot[5] * 512) == (0x80, 0x0E, layout.boot.start, layout.boot.size)
    assert (root[0], root[2], root[4] * 512) == (0, 0x83, layout.boot.start + layout.boot.size)
    assert (root[4] + root[5]) * 512 == layout.size


def test_bad_kernel_package_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "bootsvc.yaml"
    p.write_text(f"state_dir: {tmp_path / 'state'}\n")
    cfg = config.load(p)
    with pytest.raises(DemoImageError, match="no such kernel package"):
        build_demo(cfg, kernel_deb=tmp_path / "missing.deb", say=lambda _: None)
    junk = tmp_path / "junk.deb"
    junk.write_bytes(b"not a deb")
    with pytest.raises(DemoImageError, match="dpkg-deb"):
        build_demo(cfg, kernel_deb=junk, say=lambda _: None)
    assert not (tmp_path / "state" / "images" / "demo-linux.qcow2").exists()
