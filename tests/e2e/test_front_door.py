"""`bootsvc serve` with TFTP, HTTP, DNS and iSCSI on loopback, driven by
real clients (tftp-hpa, curl, dig, qemu-io): per-machine iPXE scripts over
HTTP to their own machine only (each has a fixed IP on 127.77.0.0/16, which
curl sends from) and refused over TFTP and HTTP to any other address, the
machines' names in DNS, and `bootsvc reload` adding and removing machines
while a logged-in machine keeps its iSCSI session."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import need
from tests.e2e.peers import LOOPBACK, bootsvc_command, bootsvc_serve, free_port, machine_chap, stop

pytestmark = pytest.mark.e2e
PREFIX = "iqn.2026-11.test.lab"
PC1, PC2, PC3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"
PC1_IP, PC2_IP = "127.77.0.21", "127.77.0.22"


def config(state: Path, ports: dict[str, int], machines: str, tftp: str = "roots: [files]") -> str:
    return f"""
state_dir: {state}
domain: lab.test
iqn_prefix: {PREFIX}
profiles_dir: profiles
listen:
  iscsi: [{LOOPBACK}:{ports['iscsi']}]
  tftp: {LOOPBACK}:{ports['tftp']}
  http: {LOOPBACK}:{ports['http']}
  dns: {LOOPBACK}:{ports['dns']}
dns: {{forward: false}}  # tests send nothing past loopback, a stray outside name included
tftp: {{{tftp}}}
machines:
{machines}"""


def script_name(mac: str) -> str:
    return f"boot/{mac.replace(':', '-')}.ipxe"


def curl(url: str, source: str = LOOPBACK) -> tuple[str, str]:
    r = subprocess.run(["curl", "-sS", "--max-time", "10", "--interface", source, "-w", "\n%{http_code}", url],
                       capture_output=True, text=True, timeout=20)
    body, _, code = r.stdout.rpartition("\n")
    return code, body


def dig(port: int, name: str) -> str:
    r = subprocess.run(["dig", "@" + LOOPBACK, "-p", str(port), "+short", "+time=2", "+tries=2", name],
                       capture_output=True, text=True, timeout=20)
    return r.stdout.strip()


def wait_log(log: Path, text: str, count: int = 1, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count(text) < count:
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.1)


def test_scripts_dns_and_reload(tmp_path: Path) -> None:
    need("curl", "dig", "tftp", "qemu-io")
    state = tmp_path / "state"
    (state / "images").mkdir(parents=True)
    (state / "images" / "gold.raw").write_bytes(b"\xee" * (4 << 20))
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "disk.yaml").write_text("base: gold.raw\n")
    (tmp_path / "profiles" / "linux.yaml").write_text(
        "base: gold.raw\nboot: kernel\nkernel: vmlinuz\ninitrd: initrd.img\ncmdline: console=ttyS0\n")
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "vmlinuz").write_bytes(b"kernel" * 1000)
    ports = {k: free_port() for k in ("iscsi", "tftp", "http", "dns")}
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(config(state, ports, f"  {PC1}: {{hostname: pc1, profile: disk, ip: 127.77.0.21}}\n"
                                        f"  {PC2}: {{hostname: pc2, profile: linux, ip: 127.77.0.22}}\n"))
    log = tmp_path / "serve.log"
    proc = bootsvc_serve(cfg, log, "ready: 4 of 4")
    holder = None
    try:
        http = f"http://{LOOPBACK}:{ports['http']}"
        code, body = curl(f"{http}/{script_name(PC2)}", PC2_IP)
        root_path = f"iscsi:{LOOPBACK}::{ports['iscsi']}::{PREFIX}:boot.pc2"
        assert code == "200" and f"sanhook --drive 0x80 {root_path}" in body, body
        assert f"kernel {http}/files/vmlinuz initrd=initrd console=ttyS0" in body, body
        assert curl(f"{http}/files/vmlinuz") == ("200", "kernel" * 1000)
        # a machine's script names its initiator and target: nobody else gets it
        code, body = curl(f"{http}/{script_name(PC2)}", PC1_IP)
        assert code == "403" and "only for the machine it names" in body, body
        assert curl(f"{http}/{script_name(PC1)}")[0] == "403"  # from 127.0.0.1, no machine's address
        got = tmp_path / "got.ipxe"
        r = subprocess.run(["tftp", LOOPBACK, str(ports["tftp"]), "-c", "get", script_name(PC1), str(got)],
                           capture_output=True, text=True, timeout=30)
        assert "only for the machine it names" in r.stdout + r.stderr and not got.read_bytes()
        wait_log(log, "event=boot.script_refused", 3)
        assert curl(f"{http}/healthz")[1].startswith("ok\nrecorder: serving\niscsi: serving")
        assert dig(ports["dns"], "pc1.lab.test") == PC1_IP
        assert dig(ports["dns"], "pc2.lab.test") == PC2_IP

        # pc1 logs in and stays logged in across the reload
        opts = (f"driver=iscsi,transport=tcp,portal={LOOPBACK}:{ports['iscsi']},target={PREFIX}:boot.pc1,lun=0,"
                f"initiator-name={PREFIX}:pc1" + machine_chap(state, PC1, f"{PREFIX}:pc1"))
        holder = subprocess.Popen(["qemu-io", "--image-opts", opts], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        assert holder.stdin is not None
        holder.stdin.write("write -P 0x11 0 64k\n")
        holder.stdin.flush()

        # the reload also moves TFTP and HTTP's files to another root, at once
        (tmp_path / "files2").mkdir()
        (tmp_path / "files2" / "vmlinuz").write_bytes(b"other kernel")
        cfg.write_text(config(state, ports, f"  {PC1}: {{hostname: pc1, profile: disk, ip: 127.77.0.21}}\n"
                                            f"  {PC3}: {{hostname: pc3, profile: disk, ip: 127.77.0.23}}\n",
                              tftp="roots: [files2], busy_poll_us: 0"))
        r = subprocess.run([*bootsvc_command(), "reload", "-c", str(cfg)], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        wait_log(log, "reloaded:")
        assert "reload: machines: 1 added (pc3); 1 removed (pc2)" in log.read_text(), log.read_text()
        assert "reload: settings applied: tftp" in log.read_text()  # applied, no restart asked for
        assert "next restart" not in log.read_text()
        assert curl(f"{http}/files/vmlinuz") == ("200", "other kernel")
        got = tmp_path / "got-vmlinuz"
        subprocess.run(["tftp", LOOPBACK, str(ports["tftp"]), "-c", "get", "vmlinuz", str(got)],
                       capture_output=True, timeout=30)
        assert got.read_bytes() == b"other kernel"
        assert dig(ports["dns"], "pc3.lab.test") == "127.77.0.23"
        assert dig(ports["dns"], "pc2.lab.test") == ""
        assert curl(f"{http}/{script_name(PC2)}", PC2_IP)[0] == "403"  # pc2 is gone: its address is nobody's
        assert curl(f"{http}/{script_name(PC3)}", "127.77.0.23")[0] == "200"
        pc3 = (opts.split(",user=")[0].replace("boot.pc1", "boot.pc3").replace(":pc1", ":pc3")
               + machine_chap(state, PC3, f"{PREFIX}:pc3"))
        r = subprocess.run(["qemu-io", "--image-opts", "-c", "read -P 0xee 0 64k", pc3],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr
        out, _ = holder.communicate("read -P 0x11 0 64k\nquit\n", timeout=60)
        assert "wrote 65536" in out and "read 65536" in out and "failed" not in out, out

        # a broken config is refused and the running one stays
        cfg.write_text("listen: [\n")
        subprocess.run([*bootsvc_command(), "reload", "-c", str(cfg)], capture_output=True, timeout=30)
        proc.send_signal(1)  # SIGHUP straight away too: the check happens in the server as well
        wait_log(log, "reload failed")
        assert dig(ports["dns"], "pc3.lab.test") == "127.77.0.23"
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
        stop(proc)
    assert proc.returncode == 0
    assert not (state / "bootsvc.pid").exists()
