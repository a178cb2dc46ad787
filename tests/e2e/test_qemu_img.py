"""QEMU's iscsi:// block driver against bootsvc and, for the same
assertions, against tgt: reads give the image's bytes, writes land in it,
read-only exports refuse writes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from target.qcow2_create import create_image
from tests.e2e.conftest import need
from tests.e2e.peers import Portal, bootsvc_export, tgt_export
from tests.qcow2_oracle import assert_check_clean, assert_same

pytestmark = pytest.mark.e2e
SIZE = 64 << 20

Exporter = Callable[..., contextlib.AbstractContextManager[Portal]]


@contextlib.contextmanager
def tgt_read_only(image: Path) -> Iterator[Portal]:
    """tgt with its LUN flagged read-only, like `bootsvc export --read-only`."""
    with tgt_export(image) as portal:
        control = str(1000 + portal.port % 30000)
        subprocess.run(["tgtadm", "-C", control, "--lld", "iscsi", "--op", "update", "--mode", "logicalunit",
                        "--tid", "1", "--lun", "1", "--params", "readonly=1"], check=True, capture_output=True)
        yield portal


EXPORTS: dict[str, tuple[Exporter, Exporter]] = {
    "bootsvc": (bootsvc_export, lambda img: bootsvc_export(img, "iqn.2026-11.test.bootsvc:disk", "--read-only")),
    "tgt": (tgt_export, tgt_read_only),
}


@pytest.fixture(params=sorted(EXPORTS))
def exports(request: pytest.FixtureRequest) -> tuple[Exporter, Exporter]:
    need("qemu-img", "qemu-io")
    if request.param == "tgt":
        need("tgtd", "tgtadm")
    return EXPORTS[request.param]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "disk.img"
    rnd = hashlib.shake_256(b"bootsvc").digest(1 << 20)
    with open(p, "wb") as f:
        for i in range(SIZE >> 20):
            f.write(bytes((b + i) & 0xFF for b in rnd[:4096]) * 256)
    return p


def qemu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=120)


def test_info_read_and_write(exports: tuple[Exporter, Exporter], image: Path, tmp_path: Path) -> None:
    export, _ = exports
    original = image.read_bytes()
    payload = os.urandom(4 << 20)
    src = tmp_path / "payload.raw"
    src.write_bytes(payload)
    with export(image) as portal:
        info = qemu("info", "--output=json", portal.url())
        assert info.returncode == 0, info.stderr
        assert f'"virtual-size": {SIZE}' in info.stdout
        out = tmp_path / "out.raw"
        r = qemu("convert", "-O", "raw", portal.url(), str(out))
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == original
        # write 4 MiB at 1 MiB through the iscsi:// driver
        r = subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P 0x5a {1 << 20} {4 << 20}",
                            "-c", "flush", portal.url()], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "wrote" in r.stdout, r.stdout + r.stderr
        r = qemu("convert", "-n", "-f", "raw", "-O", "raw", str(src), portal.url())
        assert r.returncode == 0, r.stderr
    data = image.read_bytes()
    assert data[: len(payload)] == payload
    assert data[len(payload):5 << 20] == b"\x5a" * ((5 << 20) - len(payload))
    assert data[5 << 20:] == original[5 << 20:]


def test_pattern_write_lands_in_the_file(exports: tuple[Exporter, Exporter], image: Path) -> None:
    export, _ = exports
    with export(image) as portal:
        r = subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P 0x5a {8 << 20} {4 << 20}", portal.url()],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    data = image.read_bytes()
    assert data[8 << 20:12 << 20] == b"\x5a" * (4 << 20)


def test_read_only_export_refuses_writes(exports: tuple[Exporter, Exporter], image: Path) -> None:
    _, export_ro = exports
    before = hashlib.sha256(image.read_bytes()).digest()
    with export_ro(image) as portal:
        r = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x11 0 64k", portal.url()],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 or "failed" in (r.stdout + r.stderr).lower(), r.stdout
        r = qemu("convert", "-O", "raw", portal.url(), str(image.with_suffix(".copy")))
        assert r.returncode == 0, r.stderr
    assert hashlib.sha256(image.read_bytes()).digest() == before


def test_qcow2_overlay_served_read_only(image: Path, tmp_path: Path) -> None:
    """A qcow2 overlay on a raw base, served by bootsvc, reads over iSCSI
    exactly as qemu-img reads the file itself."""
    need("qemu-img", "qemu-io")
    ov = tmp_path / "ov.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b", image.name, "-F", "raw", str(ov)], check=True,
                   capture_output=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x77 3M 5M", "-c", "write -z 20M 2M", str(ov)],
                   check=True, capture_output=True)
    expected = tmp_path / "expected.raw"
    assert qemu("convert", "-O", "raw", str(ov), str(expected)).returncode == 0
    with bootsvc_export(ov, "iqn.2026-11.test.bootsvc:ov", "--read-only") as portal:
        got = tmp_path / "got.raw"
        r = qemu("convert", "-O", "raw", portal.url(), str(got))
        assert r.returncode == 0, r.stderr
    assert got.read_bytes() == expected.read_bytes()


def test_qcow2_overlay_written_over_iscsi(image: Path, tmp_path: Path) -> None:
    """Writes, zeroing (WRITE SAME) and discards (UNMAP) from QEMU's
    initiator land in a bootsvc-made overlay: qemu-img check finds it clean
    and compare finds exactly what was written, the base untouched."""
    need("qemu-img", "qemu-io")
    base_before = image.read_bytes()
    ov = tmp_path / "ov.qcow2"
    create_image(ov, backing=image.name, backing_format="raw")
    with bootsvc_export(ov, "iqn.2026-11.test.bootsvc:ov") as portal:
        r = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x77 3M 5M", "-c", "write -P 0x12 100k 3k",
                            "-c", "write -z 20M 2M", "-c", "discard 30M 1M", "-c", "flush", portal.url()],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "wrote" in r.stdout, r.stdout + r.stderr
        got = tmp_path / "got.raw"
        assert qemu("convert", "-O", "raw", portal.url(), str(got)).returncode == 0
    expected = bytearray(base_before)
    expected[3 << 20:8 << 20] = b"\x77" * (5 << 20)
    expected[100 << 10:103 << 10] = b"\x12" * (3 << 10)
    expected[20 << 20:22 << 20] = bytes(2 << 20)
    expected[30 << 20:31 << 20] = bytes(1 << 20)
    (tmp_path / "expected.raw").write_bytes(expected)
    assert got.read_bytes() == expected
    assert_check_clean(ov)
    assert_same(ov, tmp_path / "expected.raw")
    assert image.read_bytes() == base_before
