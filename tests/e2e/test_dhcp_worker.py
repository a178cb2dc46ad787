"""DHCP in its worker process (``dhcp.process: worker``) with real clients
(busybox udhcpc) in namespaces the test makes: the worker answers from
serve's fleet, serve's copy of the leases lets a machine fetch its own
script over HTTP, a reload reaches the worker, a worker killed is started
again, and the leases it wrote are the inline service's after a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import need
from tests.e2e.netns import Link, can_make_namespaces, namespaces, veth
from tests.e2e.peers import bootsvc_serve, stop
from tests.e2e.test_dhcp_clients import udhcpc

pytestmark = pytest.mark.e2e
FIRST = "52:54:00:77:00:21"
SECOND = "52:54:00:77:00:22"
SERVER = "10.221.0.1"


def config(tmp: Path, process: str, second: bool) -> str:
    more = f"  {SECOND}: {{hostname: node22, ip: 10.221.0.22}}\n" if second else ""
    return f"""
state_dir: {tmp / 'state'}
profiles_dir: profiles
domain: lab.test
listen:
  dhcp: {{interface: bsv-w1, address: {SERVER}}}
  http: {SERVER}:8080
dhcp:
  subnet: 10.221.0.0/24
  range: [10.221.0.100, 10.221.0.110]
  lease_time: 10m
  process: {process}
default_profile: lab
machines:
  {FIRST}: {{hostname: node21}}
{more}"""


def worker_of(serve: subprocess.Popen[bytes]) -> int:
    """The PID of serve's DHCP worker (its child running bootsvc.dhcp.worker)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == serve.pid and b"bootsvc.dhcp.worker" in cmdline:
            return int(entry)
    raise AssertionError(f"serve ({serve.pid}) has no DHCP worker")


def wait_for(log: Path, text: str, count: int = 1, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count(text) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not {count}x in the log:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def script_status(link: Link, mac: str) -> str:
    """The HTTP status of the machine's script, asked from ``link``'s address."""
    url = f"http://{SERVER}:8080/boot/{mac.replace(':', '-')}.ipxe"
    code = ("import urllib.request,urllib.error\ntry:\n print(urllib.request.urlopen(%r, timeout=10).status)\n"
            "except urllib.error.HTTPError as e:\n print(e.code)\n") % url
    return link.run(sys.executable, "-c", code, timeout=30).stdout.strip()


def test_worker_reload_restart_and_inline(tmp_path: Path) -> None:
    need("busybox", "ip")
    reason = can_make_namespaces()
    if reason:
        pytest.skip(reason)
    (tmp_path / "state" / "images").mkdir(parents=True)
    (tmp_path / "state" / "images" / "base.raw").write_bytes(bytes(1 << 20))
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "lab.yaml").write_text("base: base.raw\nauth: none\n")
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(config(tmp_path, "worker", second=False))
    log = tmp_path / "serve.log"
    with namespaces("wsrv", "wc1", "wc2") as (srv, ns1, ns2):
        # one boot network: a bridge on serve's side, a client namespace on each of two ports
        for args in (("link", "add", "bsv-w1", "type", "bridge"), ("addr", "add", f"{SERVER}/24", "dev", "bsv-w1"),
                     ("link", "set", "bsv-w1", "up")):
            subprocess.run(["ip", "-n", srv, *args], check=True, timeout=30)
        c1 = veth(srv, "bsv-v1", ns1, "bsv-c1", FIRST)[1]
        c2 = veth(srv, "bsv-v2", ns2, "bsv-c2", SECOND)[1]
        for port in ("bsv-v1", "bsv-v2"):
            subprocess.run(["ip", "-n", srv, "link", "set", port, "master", "bsv-w1"], check=True, timeout=30)
        proc = bootsvc_serve(cfg, log, "dhcp (authoritative) serving", netns=srv)
        try:
            assert "(worker process)" in log.read_text()
            first = udhcpc(c1, tmp_path)
            assert first.get("ip") == "10.221.0.100" and first.get("hostname") == "node21", first
            # serve's copy of the worker's leases says the address is node21's: its script, to it alone
            c1.run("ip", "addr", "add", f"{first['ip']}/24", "dev", c1.dev, timeout=10)
            assert script_status(c1, FIRST) == "200"
            assert script_status(c1, SECOND) == "403"
            # a reload adds a machine: the worker answers it with its fixed address and name
            cfg.write_text(config(tmp_path, "worker", second=True))
            proc.send_signal(signal.SIGHUP)
            wait_for(log, "event=fleet.reloaded")
            second = udhcpc(c2, tmp_path)
            assert (second.get("ip"), second.get("hostname")) == ("10.221.0.22", "node22"), second
            # the worker killed: said, started again, serving
            os.kill(worker_of(proc), signal.SIGKILL)
            wait_for(log, "the DHCP worker process was killed by signal 9; started again in 1 s")
            deadline = time.monotonic() + 20
            again: dict[str, str] = {}
            while not again and time.monotonic() < deadline:
                again = udhcpc(c1, tmp_path)
            assert again.get("ip") == "10.221.0.100", log.read_text()[-3000:]
        finally:
            stop(proc)
        assert proc.returncode == 0, log.read_text()[-3000:]
        # inline, after a restart: the leases the worker wrote are the service's own
        cfg.write_text(config(tmp_path, "inline", second=True))
        proc = bootsvc_serve(cfg, tmp_path / "serve2.log", "dhcp (authoritative) serving", netns=srv)
        try:
            assert "(worker process)" not in (tmp_path / "serve2.log").read_text()
            assert udhcpc(c1, tmp_path).get("ip") == "10.221.0.100"
        finally:
            stop(proc)
