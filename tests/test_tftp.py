"""TFTP: file name checks, the file cache, and the service against the
tftp-hpa and busybox clients on loopback (the transfer state machine:
test_tftp_core.py)."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootsvc.tftp import files as files_mod
from bootsvc.tftp.files import FILL_FROM, FileSource, Filling, ReadError
from bootsvc.tftp.service import BUSY_POLL, TftpService, _Solo
from tests.e2e.peers import free_port
from tests.loop_thread import serving


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


def test_a_name_too_long_for_the_file_system_is_not_found(tmp_path: Path) -> None:
    # found by bench/fuzz.py: is_file() raised OSError (ENAMETOOLONG), which the HTTP
    # service's /files/ route does not catch
    files = FileSource([tmp_path])
    for name in ("x" * 300, "a/" + "y" * 5000):
        with pytest.raises(FileNotFoundError):
            files.path(name)


def test_file_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files_mod, "CACHE_BYTES", 2500)
    for name in "abc":
        (tmp_path / name).write_bytes(name.encode() * 1000)
    files = FileSource([tmp_path])
    for name in "abcab":
        assert files.read(name) == name.encode() * 1000
    assert list(p.name for p in files._cache) == ["a", "b"] and files._cached_bytes == 2000
    (tmp_path / "a").write_bytes(b"new")  # a changed file is read again
    assert files.read("a") == b"new" and files._cached_bytes == 1003


def test_large_file_read_while_sent_and_a_short_read_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(FILL_FROM + 12345)
    (tmp_path / "k").write_bytes(data)
    files = FileSource([tmp_path])
    filling = files.open("k")
    assert isinstance(filling, Filling) and len(filling) == len(data)
    filling.ensure(1468)
    assert filling.buffer[:1468] == data[:1468] and files.read("k") == data
    # a file shorter than it said it was (it shrank): its transfers fail, the next request reads again
    real = os.fstat
    monkeypatch.setattr(files_mod.os, "fstat", lambda fd: os.stat_result(
        tuple(real(fd))[:6] + (real(fd).st_size + 4096,) + tuple(real(fd))[7:]))
    bad = Filling(tmp_path / "k")
    with pytest.raises(ReadError, match="shrank"):
        bad.ensure(len(bad))
    monkeypatch.undo()
    assert files.read("k") == data


@pytest.fixture(params=[BUSY_POLL, 0.0], ids=["busy-poll", "sleep"])
def service(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[TftpService, Path]]:
    """The service, with a lone transfer polling for its ACKs (the default)
    and sleeping for each one."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "small.bin").write_bytes(os.urandom(1000))
    # past FILL_FROM: the real clients below get it while it is still being read (Filling)
    (root / "big.bin").write_bytes(os.urandom(FILL_FROM + (1 << 20)))
    service = TftpService(FileSource([root]), "127.0.0.1", free_port(), busy_poll=request.param)
    with serving(service.start, service.stop):
        yield service, root


@pytest.fixture
def server(service: tuple[TftpService, Path]) -> tuple[int, Path]:
    return service[0].port, service[1]


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


@pytest.mark.skipif(not shutil.which("busybox"), reason="needs busybox")
def test_lone_transfer_moves_over_when_others_start(service: tuple[TftpService, Path], tmp_path: Path) -> None:
    """The first two transfers run on threads of their own; when more start
    they go on on the shared sender without a gap, and every client gets
    its bytes."""
    svc, root = service

    def fetch(i: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["busybox", "tftp", "-b", "512", "-g", "-r", "big.bin", "-l", str(tmp_path / f"{i}"),
                                 "127.0.0.1", str(svc.port)])

    def solos(n: int) -> set[_Solo]:
        deadline = time.monotonic() + 10
        while len(svc._solos) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(svc._solos) == n
        return set(svc._solos)

    first = fetch(0)
    lone = solos(1)
    second = fetch(1)
    pair = solos(2)
    assert lone < pair and not any(s.crowded for s in pair)
    others = [fetch(i) for i in range(2, 5)]
    for p in [first, second, *others]:
        assert p.wait(60) == 0
    assert all(s.crowded for s in pair)  # told to move, and their clients got every byte
    for i in range(5):
        assert (tmp_path / f"{i}").read_bytes() == (root / "big.bin").read_bytes()
    assert svc.counters["sent"] == 5 and not svc.active and not svc._solos


def test_silent_client_times_out_and_the_server_goes_on(service: tuple[TftpService, Path]) -> None:
    """An RRQ and then silence: the lone transfer resends, gives up after its
    retries, and the next client is served."""
    svc, root = service
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.sendto(b"\0\1small.bin\0octet\0", ("127.0.0.1", svc.port))
        s.settimeout(5)
        first, _ = s.recvfrom(1024)
        again, _ = s.recvfrom(1024)  # no ACK: the block comes again after the timeout
        assert first == again and first[:4] == b"\0\3\0\1"
        deadline = time.monotonic() + 15
        while svc.counters["failed"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert svc.counters["failed"] == 1 and not svc.active
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(b"\0\1small.bin\0octet\0", ("127.0.0.1", svc.port))
        data, peer = s.recvfrom(1024)
        assert data[:4] == b"\0\3\0\1" and data[4:] == (root / "small.bin").read_bytes()[:512]
        s.sendto(b"\0\4\0\1", peer)


def test_busy_poll_gives_way_to_a_slow_client(tmp_path: Path) -> None:
    """A lone transfer polls for its ACKs only while they come quickly: a
    client that takes 3 ms per block (a slow link or machine) gets a server
    that sleeps, not one that burns a millisecond of CPU per block."""
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(150 * 512 + 100)  # 151 blocks
    (root / "slow.bin").write_bytes(data)
    svc = TftpService(FileSource([root]), "127.0.0.1", free_port(), busy_poll=BUSY_POLL)
    with serving(svc.start, svc.stop), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        cpu = time.process_time()  # this process: the server's threads and this client
        s.sendto(b"\0\1slow.bin\0octet\0", ("127.0.0.1", svc.port))
        got = b""
        while True:
            packet, peer = s.recvfrom(1024)
            assert packet[:2] == b"\0\3"
            if packet[2:4] == struct.pack("!H", len(got) // 512 + 1):
                got += packet[4:]
            time.sleep(0.003)
            s.sendto(b"\0\4" + packet[2:4], peer)
            if len(packet) < 516:
                break
        cpu = time.process_time() - cpu
    assert got == data
    # polling every wait in full would take 151 x 1 ms = 0.15 s of CPU
    assert cpu < 0.06, f"{cpu:.3f} s of CPU for a slow client"


def test_errors_carry_their_message(service: tuple[TftpService, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """An ERROR says what is wrong in our words (RFC 1350 §5), also with
    code 0, which tftpy's packet class could not encode: a busy server."""
    svc, _ = service
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(b"\0\1nope.bin\0octet\0", ("127.0.0.1", svc.port))
        assert s.recvfrom(1024)[0] == b"\0\5\0\1nope.bin not found\0"
        monkeypatch.setattr("bootsvc.tftp.service.MAX_TRANSFERS", 0)
        s.sendto(b"\0\1small.bin\0octet\0", ("127.0.0.1", svc.port))
        assert s.recvfrom(1024)[0] == b"\0\5\0\0server busy, try again\0"
    assert svc.counters["busy"] == 1


def test_one_address_gets_only_its_share_of_transfers(service: tuple[TftpService, Path]) -> None:
    """Transfers from one address beyond its cap get an ERROR saying so;
    another address (127.0.0.2) is still served."""
    svc, _ = service
    svc.max_per_source = 2
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        for c in clients:
            c.settimeout(5)
        clients[3].bind(("127.0.0.2", 0))
        for c in clients[:2]:  # two transfers that never ACK: they hold their slots
            c.sendto(b"\0\1big.bin\0octet\0", ("127.0.0.1", svc.port))
            assert c.recvfrom(1024)[0][:4] == b"\0\3\0\1"
        clients[2].sendto(b"\0\1big.bin\0octet\0", ("127.0.0.1", svc.port))
        assert clients[2].recvfrom(1024)[0] == b"\0\5\0\0too many transfers from your address\0"
        clients[3].sendto(b"\0\1big.bin\0octet\0", ("127.0.0.1", svc.port))
        assert clients[3].recvfrom(1024)[0][:4] == b"\0\3\0\1"
    finally:
        for c in clients:
            c.close()
    assert svc.counters["busy_source"] == 1
