"""TFTP: the transfer state machine (options, windows, lost ACKs, block
number wrap), file name checks, and the asyncio service against the
tftp-hpa and busybox clients on loopback."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tftpy.TftpPacketTypes import TftpPacketACK, TftpPacketRRQ

from bootsvc.tftp.files import FileSource
from bootsvc.tftp.service import TftpService
from bootsvc.tftp.transfer import ReadTransfer, TftpFormatError, decode, parse_request
from tests.e2e.peers import free_port
from tests.loop_thread import serving


def rrq(name: str, **options: str) -> TftpPacketRRQ:
    p = TftpPacketRRQ()
    p.filename, p.mode, p.options = name, "octet", options
    return decode(bytes(p.encode().buffer))  # type: ignore[return-value]


def ack(n: int) -> TftpPacketACK:
    p = TftpPacketACK()
    p.blocknumber = n
    return p


def run_transfer(t: ReadTransfer, drop_every: int = 0) -> bytes:
    """Play a client: collect DATA, ACK what arrives in order, lose some."""
    got = bytearray()
    expect = 1
    out = t.start()
    count = 0
    while not t.done:
        if not out:
            out = t.on_timeout()
            continue
        acked = None
        for pkt in out:
            count += 1
            if drop_every and count % drop_every == 0:
                continue
            op, n = struct.unpack("!HH", pkt[:4])
            if op == 6:
                acked = 0
            elif op == 3 and n == expect & 0xFFFF:
                got += pkt[4:]
                acked = n
                expect += 1
        out = t.on_packet(ack(acked)) if acked is not None else t.on_timeout()
    return bytes(got)


@pytest.mark.parametrize("options", [{}, {"blksize": "1468", "tsize": "0"}, {"blksize": "512", "windowsize": "8"}])
def test_transfer_with_options_and_losses(options: dict[str, str]) -> None:
    data = os.urandom(100_000)
    for drop in (0, 7):
        t = ReadTransfer(parse_request(rrq("f", **options)), data)
        assert run_transfer(t, drop) == data and not t.failed


def test_block_numbers_wrap() -> None:
    data = os.urandom(70_000 * 8)  # 70000 blocks of 8 bytes: past 65535
    t = ReadTransfer(parse_request(rrq("f", blksize="8", windowsize="16")), data)
    assert run_transfer(t) == data


def test_gives_up_after_retries() -> None:
    t = ReadTransfer(parse_request(rrq("f")), b"x" * 2000)
    t.start()
    for _ in range(10):
        t.on_timeout()
    assert t.done and "retries" in t.failed


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_garbage_raises_only_format_errors(blob: bytes) -> None:
    try:
        parse_request(decode(blob))
    except (TftpFormatError, PermissionError):
        pass


def test_file_names(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.bin").write_bytes(b"a")
    (tmp_path / "secret").write_text("no")
    (root / "link").symlink_to(tmp_path / "secret")
    files = FileSource([root], lambda name, client, local: b"script" if name == "boot/x.ipxe" else None)
    assert files.read("sub/a.bin") == b"a" and files.read("boot/x.ipxe") == b"script"
    for bad, kind in (("../secret", PermissionError), ("/etc/passwd", PermissionError), ("link", PermissionError),
                      ("sub/../../secret", PermissionError), ("a\\b", PermissionError), ("nope", FileNotFoundError)):
        with pytest.raises(kind):
            files.read(bad)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    root = tmp_path / "root"
    root.mkdir()
    (root / "small.bin").write_bytes(os.urandom(1000))
    (root / "big.bin").write_bytes(os.urandom(3 << 20))
    port = free_port()
    service = TftpService(FileSource([root]), "127.0.0.1", port)
    with serving(service.start, service.close):
        yield port, root


@pytest.mark.skipif(not shutil.which("tftp"), reason="needs tftp-hpa")
def test_tftp_hpa_client(server: tuple[int, Path], tmp_path: Path) -> None:
    port, root = server
    for name in ("small.bin", "big.bin"):
        out = tmp_path / f"got-{name}"
        r = subprocess.run(["tftp", "-m", "binary", "127.0.0.1", str(port), "-c", "get", name, str(out)],
                           capture_output=True, text=True, timeout=60)
        assert out.read_bytes() == (root / name).read_bytes(), r.stdout + r.stderr
    r = subprocess.run(["tftp", "127.0.0.1", str(port), "-c", "get", "../etc/passwd", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=30)
    assert "Error code 2" in (r.stdout + r.stderr)  # access violation
    r = subprocess.run(["tftp", "127.0.0.1", str(port), "-c", "put", str(root / "small.bin"), "up.bin"],
                       capture_output=True, text=True, timeout=30)
    assert "Error code 4" in (r.stdout + r.stderr) and not (root / "up.bin").exists()  # read-only


@pytest.mark.skipif(not shutil.which("busybox"), reason="needs busybox")
def test_busybox_client_with_blksize(server: tuple[int, Path], tmp_path: Path) -> None:
    port, root = server
    out = tmp_path / "bb.bin"
    procs = [subprocess.Popen(["busybox", "tftp", "-b", "1468", "-g", "-r", "big.bin", "-l", f"{out}.{i}",
                               "127.0.0.1", str(port)]) for i in range(8)]  # eight at once
    for p in procs:
        assert p.wait(60) == 0
    for i in range(8):
        assert Path(f"{out}.{i}").read_bytes() == (root / "big.bin").read_bytes()
