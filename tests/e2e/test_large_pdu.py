"""Large PDUs with real initiators: the target declares a
MaxRecvDataSegmentLength of 2**24-1 and MaxBurstLength up to as much
(RFC 7143 §13.12-13.13); QEMU's iscsi driver and libiscsi's iscsi-perf
(both libiscsi, which offers 256 KiB bursts and segments of its own)
write and read through it, their Data-Out segments received into their own
buffers (target/framing.py), and the bytes match."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from target.keys import MAX_24
from tests.e2e.conftest import need
from tests.test_target_wire import IQN, Running

pytestmark = pytest.mark.e2e
SIZE = 48 << 20


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Running, Path]]:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(SIZE))
    r = Running(image, key_preferences={"MaxRecvDataSegmentLength": str(MAX_24)})
    yield r, image
    r.stop()


def test_qemu_img_writes_and_reads_back(served: tuple[Running, Path], tmp_path: Path) -> None:
    need("qemu-img")
    srv, image = served
    url = f"iscsi://127.0.0.1:{srv.port}/{IQN}/0"
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(SIZE))
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", "-t", "none", str(src), url],
                   check=True, capture_output=True, timeout=120)
    assert image.read_bytes() == src.read_bytes()
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(back)],
                   check=True, capture_output=True, timeout=120)
    assert back.read_bytes() == src.read_bytes()


def test_iscsi_perf_reads_through_large_declarations(served: tuple[Running, Path]) -> None:
    need("iscsi-perf")
    srv, _ = served
    out = subprocess.run(["timeout", "-s", "KILL", "20", "iscsi-perf", "-b", "2048", "-m", "4", "-t", "2",
                          f"iscsi://127.0.0.1:{srv.port}/{IQN}/0"], capture_output=True, text=True).stdout
    assert "iops average" in out.replace("\r", "\n")
