"""HTTP: request-head parsing (fuzzed) and the service against curl on
loopback: scripts, files with sendfile, health, refusals, persistent
connections, and garbage that must not stop it."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootsvc.http.message import HttpError, Status, parse_head
from bootsvc.http.service import HttpService
from bootsvc.service import Health
from bootsvc.tftp.files import FileSource
from tests.e2e.peers import LOOPBACK, free_port
from tests.loop_thread import serving

MAC = "52:54:00:12:34:56"
HEALTHY = Health(True, {"dhcp": "serving"})


def test_parse_head() -> None:
    r = parse_head(b"GET /boot/52-54-00-12-34-56.ipxe?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close")
    assert (r.method, r.path, r.query, r.keep_alive) == ("GET", "/boot/52-54-00-12-34-56.ipxe", "x=1", False)
    assert parse_head(b"GET /%41 HTTP/1.0").path == "/A" and not parse_head(b"GET / HTTP/1.0").keep_alive
    for bad, status in ((b"GET /", Status.BAD_REQUEST), (b"GET / HTTP/2.0", Status.VERSION_NOT_SUPPORTED),
                        (b"GET http://x/ HTTP/1.1", Status.BAD_REQUEST),
                        (b"GET / HTTP/1.1\r\nbad header", Status.BAD_REQUEST),
                        (b"POST / HTTP/1.1\r\nContent-Length: 5", Status.BAD_REQUEST),
                        (b"GET /%ff HTTP/1.1", Status.BAD_REQUEST), (b"GET /%00 HTTP/1.1", Status.BAD_REQUEST),
                        (b"GET / HTTP/1.1" + b"\r\nX: y" * 200, Status.HEADERS_TOO_LARGE)):
        with pytest.raises(HttpError) as e:
            parse_head(bad)
        assert e.value.status == status, bad


@pytest.mark.parametrize("length", ["\xb3", "\u0663", "+1", "-0", " 1"])
def test_content_length_not_in_ascii_digits_is_a_bad_request(length: str) -> None:
    # found by bench/fuzz.py: "\xb3" (superscript three) passed str.isdigit() and int() raised ValueError
    with pytest.raises(HttpError) as e:
        parse_head(f"POST / HTTP/1.1\r\nContent-Length: {length}".encode("latin-1", "replace"))
    assert e.value.status == Status.BAD_REQUEST


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_parse_head_fuzz(head: bytes) -> None:
    try:
        parse_head(head)
    except HttpError:
        pass


@pytest.fixture
def http(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "vmlinuz").write_bytes(bytes(range(256)) * 4096)
    (root / "sub" / "initrd.img").write_bytes(b"initrd")
    (tmp_path / "secret").write_text("no")
    (root / "escape").symlink_to(tmp_path / "secret")

    def scripts(name: str, client: str, local: str) -> str | None:
        return f"#!ipxe\necho {client} {local}\n" if name == "boot/52-54-00-12-34-56.ipxe" else None

    port = free_port()
    service = HttpService(FileSource([root]), scripts, lambda: HEALTHY, LOOPBACK, port)
    with serving(service.start, service.stop):
        yield port, root


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20)


@pytest.mark.skipif(not shutil.which("curl"), reason="needs curl")
def test_curl(http: tuple[int, Path], tmp_path: Path) -> None:
    port, root = http
    base = f"http://{LOOPBACK}:{port}"
    r = curl("-w", "%{http_code}", f"{base}/boot/52-54-00-12-34-56.ipxe")
    assert r.stdout == f"#!ipxe\necho {LOOPBACK} {LOOPBACK}\n200", r.stderr
    assert curl(f"{base}/healthz").stdout == "ok\ndhcp: serving\n"
    out = tmp_path / "k"
    # two files over one connection (what iPXE does with kernel and initrd)
    r = curl("-v", "-o", str(out), f"{base}/files/vmlinuz", "-o", str(tmp_path / "i"), f"{base}/files/sub/initrd.img")
    assert out.read_bytes() == (root / "vmlinuz").read_bytes() and (tmp_path / "i").read_bytes() == b"initrd"
    assert "Re-using existing connection" in r.stderr or "Reusing existing" in r.stderr, r.stderr
    head = curl("-I", f"{base}/files/vmlinuz").stdout
    assert "200 OK" in head and f"Content-Length: {256 * 4096}" in head
    for path, code in (("/files/escape", "403"), ("/files/../secret", "403"), ("/files/%2e%2e/secret", "403"),
                       ("/files/nope", "404"), ("/boot/52-54-00-00-00-00.ipxe", "404"), ("/other", "404")):
        assert curl("--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", base + path).stdout == code, path
    assert curl("-X", "POST", "-o", "/dev/null", "-w", "%{http_code}", f"{base}/healthz").stdout == "405"


@pytest.mark.skipif(not shutil.which("curl"), reason="needs curl")
def test_healthz_is_503_naming_what_does_not_serve(tmp_path: Path) -> None:
    """A service that failed to start: 503, and the body says which and why."""
    health = Health(False, {"dhcp": "failed: Address already in use", "http": "serving"})
    port = free_port()
    service = HttpService(FileSource([tmp_path]), lambda *a: None, lambda: health, LOOPBACK, port)
    with serving(service.start, service.stop):
        r = curl("-w", "%{http_code}", f"http://{LOOPBACK}:{port}/healthz")
    assert r.stdout == "degraded\ndhcp: failed: Address already in use\nhttp: serving\n503", r.stderr


def test_garbage_then_still_serving(http: tuple[int, Path]) -> None:
    port, _ = http
    for junk in (b"\x00\xff" * 100 + b"\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"A" * 70000, b"GET /healthz"):
        with socket.create_connection((LOOPBACK, port), timeout=5) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            reply = s.recv(200)
        assert reply == b"" or reply.startswith(b"HTTP/1.1 4") or reply.startswith(b"HTTP/1.1 5"), reply
    with socket.create_connection((LOOPBACK, port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(200).startswith(b"HTTP/1.1 200 OK")


def test_one_source_cannot_take_every_slot(tmp_path: Path) -> None:
    """Idle connections from one address fill only that address's share:
    the next one from it gets 503, another address (curl from 127.0.0.2)
    still gets its script."""
    (tmp_path / "root").mkdir()
    port = free_port()
    service = HttpService(FileSource([tmp_path / "root"]), lambda name, client, local: "#!ipxe\n",
                          lambda: HEALTHY, LOOPBACK, port)
    service.listener.max_per_source = 8
    idle: list[socket.socket] = []
    with serving(service.start, service.stop):
        try:
            for _ in range(8):
                idle.append(socket.create_connection((LOOPBACK, port)))
            with socket.create_connection((LOOPBACK, port), timeout=5) as extra:
                assert extra.recv(4096).startswith(b"HTTP/1.1 503")
            r = curl("--interface", "127.0.0.2", "-w", "%{http_code}", "-o", "/dev/null",
                     f"http://{LOOPBACK}:{port}/boot/52-54-00-12-34-56.ipxe")
            assert r.stdout == "200", r.stderr
        finally:
            for s in idle:
                s.close()


def test_a_client_that_stops_reading_is_let_go(tmp_path: Path) -> None:
    """A client that asks for a large file and never reads it holds its
    slot and the file only until the reply's time is up."""
    import time

    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "big").write_bytes(bytes(8 << 20))
    port = free_port()
    service = HttpService(FileSource([tmp_path / "root"]), lambda *a: None, lambda: HEALTHY, LOOPBACK, port)
    service.send_grace, service.send_floor = 0.5, 64 << 20  # 8 MiB: 0.625 s
    with serving(service.start, service.stop):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((LOOPBACK, port))
            started = time.monotonic()
            s.sendall(b"GET /files/big HTTP/1.1\r\nHost: x\r\n\r\n")
            while not service.counters["send_timeout"] and time.monotonic() < started + 10:
                time.sleep(0.05)
            assert service.counters["send_timeout"] == 1 and time.monotonic() - started >= 0.6
            time.sleep(0.1)
            assert not service.listener.clients
