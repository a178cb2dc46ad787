"""qcow2 reading (writing is in test_qcow2_write.py), with qemu-img and qemu-io as the oracle: whatever QEMU
writes into an image, the backend must read back exactly as
`qemu-img convert -O raw` does."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from target.backend import materialize
from target.qcow2 import MAGIC, Qcow2Error, open_image, parse_header

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img (qemu-utils)")
SIZE = 8 << 20


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=60)


def read_all(path: Path) -> bytes:
    backend = open_image(path)
    try:
        out = bytearray()
        for off in range(0, backend.size, 1 << 20):  # in pieces that cross cluster and L2 bounds
            n = min(1 << 20, backend.size - off)
            out += materialize(asyncio.run(backend.read(off, n)))
        return bytes(out)
    finally:
        backend.close()


def oracle(path: Path, tmp: Path) -> bytes:
    out = tmp / "oracle.raw"
    sh("qemu-img", "convert", "-O", "raw", str(path), str(out))
    return out.read_bytes()


@pytest.fixture
def base(tmp_path: Path) -> Path:
    p = tmp_path / "base.raw"
    p.write_bytes(os.urandom(SIZE))
    return p


@pytest.mark.parametrize("cluster", ["4k", "64k", "2M"])
def test_overlay_on_raw_base(base: Path, tmp_path: Path, cluster: str) -> None:
    ov = tmp_path / "ov.qcow2"
    sh("qemu-img", "create", "-f", "qcow2", "-o", f"cluster_size={cluster}", "-b", base.name, "-F", "raw", str(ov))
    sh("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 100k 300k", "-c", "write -z 2M 1M",
       "-c", "write -P 0x11 6M 1536k", str(ov))
    assert read_all(ov) == oracle(ov, tmp_path)


def test_chain_of_overlays_and_short_backing(tmp_path: Path) -> None:
    small = tmp_path / "small.raw"
    small.write_bytes(os.urandom(1 << 20))
    mid = tmp_path / "mid.qcow2"
    top = tmp_path / "top.qcow2"
    sh("qemu-img", "create", "-f", "qcow2", "-b", small.name, "-F", "raw", str(mid), str(SIZE))
    sh("qemu-io", "-f", "qcow2", "-c", "write -P 0x22 512k 1M", str(mid))
    sh("qemu-img", "create", "-f", "qcow2", "-b", mid.name, "-F", "qcow2", str(top))
    sh("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 1M 64k", "-c", "write -z 600k 8k", str(top))
    assert read_all(top) == oracle(top, tmp_path)


def test_compressed_clusters(base: Path, tmp_path: Path) -> None:
    comp = tmp_path / "comp.qcow2"
    sh("qemu-img", "convert", "-c", "-O", "qcow2", str(base), str(comp))
    assert read_all(comp) == base.read_bytes()


def test_v2_image(base: Path, tmp_path: Path) -> None:
    v2 = tmp_path / "v2.qcow2"
    sh("qemu-img", "convert", "-O", "qcow2", "-o", "compat=0.10", str(base), str(v2))
    assert read_all(v2) == base.read_bytes()


def test_refusals_name_the_feature(tmp_path: Path) -> None:
    img = tmp_path / "x.qcow2"
    sh("qemu-img", "create", "-f", "qcow2", "-o", "extended_l2=on", str(img), "1M")
    with pytest.raises(Qcow2Error, match="extended L2"):
        open_image(img)
    sh("qemu-img", "create", "-f", "qcow2", "-o", "compat=0.10", str(img), "1M")
    with pytest.raises(Qcow2Error, match="version 2 images are served read-only"):
        open_image(img, read_only=False)
    sh("qemu-img", "create", "-f", "qcow2", str(img), "1M")
    sh("qemu-img", "snapshot", "-c", "snap1", str(img))
    with pytest.raises(Qcow2Error, match="internal snapshots"):
        open_image(img, read_only=False)
    sh("qemu-img", "create", "-f", "qcow2", str(img), "1M")
    sh("qemu-img", "bitmap", "--add", str(img), "b0")
    with pytest.raises(Qcow2Error, match="dirty bitmaps"):
        open_image(img, read_only=False)
    open_image(img).close()  # reading is fine
    raw = bytearray(img.read_bytes())
    raw[79] |= 0x40  # an incompatible feature bit nobody defines
    img.write_bytes(bytes(raw))
    with pytest.raises(Qcow2Error, match="unknown incompatible"):
        open_image(img)


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=300))
def test_garbage_headers_raise_only_qcow2_errors(blob: bytes) -> None:
    for raw in (blob, MAGIC + blob):
        try:
            parse_header(raw, 1 << 20)
        except Qcow2Error:
            pass
