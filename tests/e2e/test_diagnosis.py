"""The flight recorder's diagnosis on real failed boots: each fault is
injected into a real boot (QEMU machines through `bootsvc vm`, or kea's
perfdhcp where a VM cannot make it) and the boot the recorder kept must be
``failed`` with the diagnosis that names the step and the cause.

One lab, one demo image, two `bootsvc vm` runs: first a session dropped
(bootsvc serve stopped under it, which ends the run) beside a UEFI machine's
own PXE once iPXE for UEFI is gone; then every other fault at once, BIOS
iPXE and a UEFI machine's own PXE side by side, each VM's run ending as soon
as bootsvc's flight recorder diagnoses the failure expected of it
(``--end-on``), so the recorder's stall is waited for once and no timeout
is waited out. The faults:

- offered but never requested: perfdhcp -i (DISCOVER only) with the MAC of
  an inventory machine, relayed from a namespace on the boot bridge;
- no TFTP after the ACK: a UEFI machine's own PXE (no NIC ROM) with UDP 69
  from its address dropped by nftables inside the boot namespace;
- no iPXE for its firmware: a UEFI machine's own PXE once snponly.efi is
  gone from the lab's tftp.roots (bootsvc offers it no file, and says why);
- an iPXE chainload loop: a script that chains undionly.kpxe again;
- no iSCSI login after the script: sanboot of a portal nobody answers
  (10.215.0.250, inside the boot namespace);
- login refused by the ACL: the machine's initiator is set in the config,
  its script gives iPXE another; and a target that does not exist;
- logged in but no READ: a root-path naming LUN 7, which the target does
  not have (iPXE logs in, TEST UNIT READY fails, it gives up). sanhook
  cannot produce this rule: iPXE reads the MBR when it hooks a disk;
- READ errors: a base image whose first cluster is a corrupt compressed
  cluster, with bootsvc's own script (it retries every 5 s);
- kernel loaded but no OS login: a kernel profile whose initramfs only
  powers off;
- session dropped mid-boot: iPXE hooks the disk and holds its session
  (sanhook, then sleep); bootsvc serve is stopped under it (the first run).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootsvc import config
from bootsvc.demo import build_demo
from bootsvc.demo.cpio import CpioWriter
from bootsvc.events import EVENT_FILE, Event, Kind, read_events
from bootsvc.vm import network, qemu
from bootsvc.vm import run as vm_run
from bootsvc.vm.run import Options, run
from tests.e2e.conftest import need, need_vm_lab
from tests.e2e.netns import ip
from tests.e2e.peers import perfdhcp

pytestmark = pytest.mark.e2e
STALL = 12  # the lab's recorder.stall: a boot quiet this long has failed
PREFIX = "iqn.2026-11.test.demo"
UNANSWERED = "10.215.0.250"  # inside the boot namespace, held by nobody
RELAY = "10.215.0.3"  # perfdhcp's end of a veth on the boot bridge
# seconds each `bootsvc vm` run lets its VMs go at most: the first ends when its serve is stopped,
# the second when every VM's failure is diagnosed (about STALL after its last step)
RUN_TIMEOUT = {"drop": 60.0, "faults": 90.0}
# the diagnoses (recorder/diagnosis.py rules) that end the second run's VMs: the faults expected of them
END_ON = frozenset({"no_login", "login_refused", "no_read", "chainload_loop", "io_error", "no_os_login"})


def sanboot(root: str, initiator: str = "{{initiator_iqn}}") -> str:
    """A script that tries ``root`` once and then waits (no retry, no
    return to the BIOS, whose retry a minute later would start a new boot)."""
    return (f"#!ipxe\nset initiator-iqn {initiator}\n{{{{chap}}}}\nsanboot {root} || sleep 3600\n"
            "sleep 3600\n")


# hostname: (profile, its iPXE script ('' for bootsvc's own), extra machine fields, UEFI firmware PXE)
FAULTS: dict[str, tuple[str, str, str, bool]] = {
    "f-offer": ("demo-linux", "", "", False),  # no VM: perfdhcp
    "f-notftp": ("demo-linux", "", "", True),
    "f-nofile": ("demo-linux", "", "", True),
    "f-loop": ("loop", "#!ipxe\n{{chap}}\nchain tftp://${next-server}/undionly.kpxe\n", "", False),
    "f-noportal": ("noportal", sanboot(f"iscsi:{UNANSWERED}::::{{{{target_iqn}}}}"), "", False),
    "f-acl": ("acl", sanboot("{{root_path}}", f"{PREFIX}:f-acl-wrong"), f", initiator: '{PREFIX}:f-acl-right'", False),
    "f-notarget": ("notarget", sanboot(f"iscsi:{{{{server}}}}::::{PREFIX}:boot.nobody"), "", False),
    "f-nolun": ("nolun", sanboot("iscsi:{{server}}:::7:{{target_iqn}}"), "", False),
    "f-badread": ("badread", "", "", False),  # bootsvc's generated script, on a corrupt base
    "f-noos": ("noos", "", "", False),
    # iPXE hooks the disk (reading its MBR) and holds the session; bootsvc serve is stopped under it
    # (SIGTERM, as `bootsvc vm` ends it) a few seconds later, in a run without the other faults
    "f-drop": ("drop", "#!ipxe\nset initiator-iqn {{initiator_iqn}}\n{{chap}}\nsanhook --drive 0x80 {{root_path}}\n"
               "sleep 3600\n", "", False),
}
PROFILES = {
    "badread": "base: broken.qcow2\n",
    "noos": ("base: demo-linux.qcow2\nboot: kernel\nkernel: demo-linux/vmlinuz\n"
             "initrd: faults/initrd-no-iscsi.img\ncmdline: console=ttyS0,115200 panic=-1\n"),
}
VMS = [h for h in FAULTS if h != "f-offer"]


def mac(host: str) -> str:
    return f"52:54:00:78:02:{list(FAULTS).index(host) + 1:02x}"


def address(host: str) -> str:
    return f"10.215.0.{51 + list(FAULTS).index(host)}"


def profile_yaml(name: str, script: str) -> str:
    if name in PROFILES:
        return PROFILES[name]
    return "base: demo-linux.qcow2\nscript: |\n" + "".join(f"  {line}\n" for line in script.splitlines())


def broken_base(path: Path, work: Path) -> None:
    """A small qcow2 whose first cluster is compressed and corrupt: every
    READ of LBA 0 fails in the target's qcow2 reader (zlib: invalid block)."""
    raw = work / "broken.raw"
    raw.write_bytes((b"bootsvc fault injection: unreadable medium\n" * 2000)[:1 << 20].ljust(1 << 20, b"x"))
    subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True,
                   timeout=60)
    raw.unlink()
    with open(path, "r+b") as f:
        head = f.read(104)
        cluster_bits = struct.unpack(">I", head[20:24])[0]
        l1 = struct.unpack(">Q", head[40:48])[0]
        f.seek(l1)
        l2 = struct.unpack(">Q", f.read(8))[0] & 0x00FFFFFFFFFFFE00
        f.seek(l2)
        entry = struct.unpack(">Q", f.read(8))[0]
        assert entry & (1 << 62), "qemu-img did not compress the first cluster"
        host = entry & ((1 << (62 - (cluster_bits - 8))) - 1)
        f.seek(host)
        f.write(b"\xff" * 64)  # BFINAL=1, BTYPE=11: a reserved deflate block type


def initrd_without_iscsi(path: Path) -> None:
    """An initramfs whose /init says so and powers off: the kernel runs,
    nothing logs in from the iBFT."""
    raw = io.BytesIO()
    cpio = CpioWriter(raw)
    for d in ("bin", "dev", "proc"):
        cpio.directory(d)
    cpio.file("bin/busybox", Path(shutil.which("busybox") or "/bin/busybox").read_bytes(), 0o755)
    cpio.file("init", b"#!/bin/busybox sh\n/bin/busybox echo 'fault: an initramfs without iscsistart'\n"
              b"/bin/busybox poweroff -f\n", 0o755)
    cpio.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw.getvalue(), compresslevel=1, mtime=0))


def static_busybox() -> bool:
    found = shutil.which("busybox")
    return bool(found) and b"statically linked" in subprocess.run(["file", "-L", found], capture_output=True,
                                                                   timeout=30).stdout


def recorded(cfg: config.Config, host: str) -> dict[str, object]:
    """``bootsvc timeline HOST --json``: the machine's latest boot."""
    r = subprocess.run([sys.executable, "-m", "bootsvc", "timeline", "-c", str(cfg.path), host, "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    boot: dict[str, object] = json.loads(r.stdout)[0]
    return boot


@contextlib.contextmanager
def injected(cfg: config.Config, log: list[str]) -> Iterator[list[bool]]:
    """Faults that need the boot network: nftables drops f-notftp's UDP 69
    inside `bootsvc vm`'s namespace, and perfdhcp asks DISCOVERs only for
    f-offer from a namespace of its own once serve is ready; in the run
    the caller arms (``armed[0] = True``), once."""
    made = network.private
    client = f"bsv-fcli-{os.getpid()}"
    threads: list[threading.Thread] = []
    armed = [False]

    def private(bridge: str, addr: object) -> network.BootNetwork:
        net = made(bridge, addr)  # type: ignore[arg-type]
        assert net.ns
        if threads or not armed[0]:
            return net
        rules = ("table inet faults {\n chain input {\n  type filter hook input priority 0;\n"
                 f"  ip saddr {address('f-notftp')} udp dport 69 drop\n }}\n}}\n")
        r = subprocess.run(["ip", "netns", "exec", net.ns, "nft", "-f", "-"], input=rules, capture_output=True,
                           text=True, timeout=30)
        log.append(f"nft: rc={r.returncode} {r.stderr.strip()}")
        ip("netns", "add", client)
        ip("link", "add", "bsvf-s", "netns", net.ns, "type", "veth", "peer", "name", "bsvf-c", "netns", client)
        ip("-n", net.ns, "link", "set", "bsvf-s", "master", bridge)
        ip("-n", net.ns, "link", "set", "bsvf-s", "up")
        ip("-n", client, "addr", "add", f"{RELAY}/24", "dev", "bsvf-c")
        ip("-n", client, "link", "set", "bsvf-c", "up")
        thread = threading.Thread(target=discover_only, args=(cfg, client, log), daemon=True)
        thread.start()
        threads.append(thread)
        return net

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(network, "private", private)
        try:
            yield armed
        finally:
            for t in threads:
                t.join(60)
            subprocess.run(["ip", "netns", "del", client], capture_output=True, timeout=30)


def of(e: Event, host: str) -> bool:
    return e.mac == mac(host) or e.initiator == f"{PREFIX}:{host}"


def stop_serve_after_first_read(cfg: config.Config, host: str, log: list[str], after: float = 2.0,
                                refused: str = "") -> None:
    """Once ``host``'s iPXE has read its disk (and bootsvc has refused
    ``refused`` a boot: recorded before serve goes), SIGTERM the `bootsvc
    serve` that `bootsvc vm` starts next (its own process, by PID); the
    run ends with it."""
    started: list[subprocess.Popen[bytes]] = []
    real = vm_run.start_serve

    def start_serve(*args: object, **kw: object) -> subprocess.Popen[bytes]:
        proc = real(*args, **kw)  # type: ignore[arg-type]
        started.append(proc)
        vm_run.start_serve = real  # once
        return proc

    def watch() -> None:
        follow = vm_run.FollowFile(cfg.state_dir / EVENT_FILE, from_end=True)
        waiting = {(Kind.ISCSI_FIRST_READ, host), *([(Kind.BOOT_REFUSED, refused)] if refused else [])}
        deadline = time.monotonic() + RUN_TIMEOUT["drop"]
        while time.monotonic() < deadline:
            for e in read_events(follow.lines()):
                waiting -= {(k, h) for k, h in waiting if e.kind is k and of(e, h)}
            if not waiting:
                time.sleep(after)
                if started:
                    vm_run.end_process(started[0])
                    log.append(f"stopped bootsvc serve (PID {started[0].pid}) {after} s after {host}'s first READ")
                return
            time.sleep(0.2)
        log.append(f"not seen {sorted((k.value, h) for k, h in waiting)}: serve not stopped")

    vm_run.start_serve = start_serve  # type: ignore[assignment]
    threading.Thread(target=watch, daemon=True).start()


def discover_only(cfg: config.Config, client: str, log: list[str]) -> None:
    """perfdhcp -i: DISCOVER, OFFER and no more, as f-offer."""
    serve_log = cfg.state_dir / "vm" / "serve.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if serve_log.exists() and "ready:" in serve_log.read_text(errors="replace"):
            break
        time.sleep(0.2)
    ran = perfdhcp(client, RELAY, "10.215.0.1", "-i", "-b", f"mac={mac('f-offer')}", "-R", "1", "-r", "1",
                   "-n", "3", "-p", "5", timeout=30)
    log.append(f"perfdhcp: sent {ran.sent} received {ran.received}\n{ran.output[-1500:]}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[config.Config, list[str], float]]:
    need("qemu-img", "debugfs", "iscsistart", "syslinux", "mcopy", "mkfs.vfat", "mke2fs", "perfdhcp", "nft",
         "busybox")
    if not static_busybox():
        pytest.skip("needs a statically linked busybox (Debian's busybox) for the fault initramfs")
    need_vm_lab(qemu.Firmware.UEFI)
    work = tmp_path_factory.mktemp("faults")
    (work / "profiles").mkdir()
    for name, text, _, _ in FAULTS.values():
        if name != "demo-linux":
            (work / "profiles" / f"{name}.yaml").write_text(profile_yaml(name, text))
    ipxe = work / "ipxe"  # snponly.efi goes before f-nofile's run: bootsvc then has no iPXE for it
    ipxe.mkdir()
    for name in ("undionly.kpxe", "snponly.efi"):
        shutil.copy(f"/usr/lib/ipxe/{name}", ipxe / name)
    state = work / "state"
    (state / "boot").mkdir(parents=True)
    machines = "\n".join(f"  {mac(h)}: {{hostname: {h}, ip: {address(h)}, profile: {p}{extra}}}"
                         for h, (p, _, extra, _) in FAULTS.items())
    path = work / "bootsvc.yaml"
    path.write_text(f"""
state_dir: {state}
profiles_dir: {work / 'profiles'}
iqn_prefix: {PREFIX}
listen:
  dhcp: {{interface: bsv-demo0, address: 10.215.0.1}}
  iscsi: [10.215.0.1:3260]
  tftp: 10.215.0.1:69
  http: 10.215.0.1:80
dhcp:
  subnet: 10.215.0.0/24
tftp:
  roots: [{ipxe}, {state / 'boot'}]
recorder: {{stall: {STALL}}}
machines:
{machines}
""")
    cfg = config.load(path)
    started = time.monotonic()
    build_demo(cfg, say=lambda line: print(line))
    broken_base(cfg.images_dir / "broken.qcow2", work)
    initrd_without_iscsi(state / "boot" / "faults" / "initrd-no-iscsi.img")
    print(f"lab built in {time.monotonic() - started:.0f} s")
    log: list[str] = []
    started = time.monotonic()
    first = ("f-drop", "f-nofile")  # serve is stopped under f-drop; f-nofile's run has no iPXE for UEFI
    (state / "vm").mkdir(parents=True, exist_ok=True)
    with injected(cfg, log) as armed:
        for what, hosts in (("drop", first), ("faults", tuple(h for h in VMS if h not in first))):
            if what == "drop":
                (ipxe / "snponly.efi").unlink()
                stop_serve_after_first_read(cfg, "f-drop", log, refused="f-nofile")
            else:  # f-notftp gets snponly.efi offered (and never fetches it)
                shutil.copy("/usr/lib/ipxe/snponly.efi", ipxe / "snponly.efi")
                armed[0] = True
            (state / "vm" / "serve.log").unlink(missing_ok=True)
            out = io.StringIO()
            t0 = time.monotonic()
            # the UEFI machines boot with their firmware's own PXE, the BIOS ones with the NIC's iPXE ROM
            run(cfg, Options(macs=tuple(mac(h) for h in hosts), uefi_macs=tuple(mac(h) for h in hosts if FAULTS[h][3]),
                             nic_rom=False, accel="auto", timeout=RUN_TIMEOUT[what],
                             end_on=END_ON if what == "faults" else frozenset()), out=out)
            log.append(f"{what} run: {time.monotonic() - t0:.0f} s\n{out.getvalue()[-2500:]}")
            shutil.copy(state / "vm" / "serve.log", work / f"serve-{what}.log")
    print("\n".join(log))
    yield cfg, log, time.monotonic() - started


def failed(cfg: config.Config, host: str, wait: float = STALL + 10) -> dict[str, object]:
    """The host's latest boot once it has failed (or as it is after ``wait`` s)."""
    deadline = time.monotonic() + wait
    while True:
        boot = recorded(cfg, host)
        if boot["state"] == "failed" or time.monotonic() > deadline:
            return boot
        time.sleep(1)


def steps_of(boot: dict[str, object]) -> list[str]:
    return [str(s["step"]) for s in boot["steps"]]  # type: ignore[attr-defined,index]


def test_offered_but_never_requested(lab: tuple[config.Config, list[str], float]) -> None:
    cfg, log, _ = lab
    boot = failed(cfg, "f-offer")
    assert boot["state"] == "failed" and set(steps_of(boot)) == {"rom-offer"}, (boot, log)
    assert "offered an address but never requested it" in str(boot["diagnosis"]), boot


def test_no_tftp_after_the_ack(lab: tuple[config.Config, list[str], float]) -> None:
    cfg, log, _ = lab
    boot = failed(cfg, "f-notftp")
    steps = steps_of(boot)
    assert boot["state"] == "failed" and "rom-ack" in steps and "bootfile" not in steps, (boot, log)
    assert "no TFTP fetch after the DHCP ACK: check next-server and the firewall (UDP 69)" in str(boot["diagnosis"])


def test_bootfile_not_found(lab: tuple[config.Config, list[str], float]) -> None:
    cfg, log, _ = lab
    boot = failed(cfg, "f-nofile")
    # bootsvc offers no file it does not have: the firmware is told nothing to load, and why is recorded
    assert boot["state"] == "failed" and "boot-refused" in steps_of(boot), (boot, log)
    assert "snponly.efi (dhcp.bootfiles.efi-x64) is in none of the TFTP roots" in str(boot["diagnosis"]), boot


def test_a_script_that_chains_ipxe_again_is_a_chainload_loop(lab: tuple[config.Config, list[str], float]) -> None:
    cfg, log, _ = lab
    boot = failed(cfg, "f-loop")
    steps = steps_of(boot)
    assert boot["state"] == "failed" and steps.count("bootfile") >= 3 and "login" not in steps, (boot, log)
    assert "an iPXE chainload loop" in str(boot["diagnosis"]) and "chains iPXE" in str(boot["diagnosis"]), boot


def test_no_login_after_the_script(lab: tuple[config.Config, list[str], float]) -> None:
    cfg, log, _ = lab
    boot = failed(cfg, "f-noportal")
    steps = steps_of(boot)
    assert boot["state"] == "failed" and "script" in steps and "login" not in steps, (boot, log)
    assert "no iSCSI login after its script: check the root-path, routing and TCP 3260" in str(boot["diagnosis"])


@pytest.mark.parametrize(("host", "said"), [
    ("f-acl", f"iSCSI login refused by the target's ACL (initiator name): {PREFIX}:f-acl-wrong may not log in"),
    ("f-notarget", f"iSCSI login refused by no such target: no target {PREFIX}:boot.nobody"),
])
def test_login_refused(lab: tuple[config.Config, list[str], float], host: str, said: str) -> None:
    cfg, log, _ = lab
    boot = failed(cfg, host)
    assert boot["state"] == "failed" and "login-failed" in steps_of(boot), (boot, log)
    assert said in str(boot["diagnosis"]), boot


def test_logged_in_but_never_read(lab: tuple[config.Config, list[str], float]) -> None:
    """iPXE logs in to a LUN the target does not have and gives up before
    any READ (a sanhook would not do: iPXE reads the MBR when it hooks)."""
    cfg, log, _ = lab
    boot = failed(cfg, "f-nolun")
    steps = steps_of(boot)
    assert boot["state"] == "failed" and "login" in steps and "first-read" not in steps, (boot, log)
    assert "logged in but never read its disk" in str(boot["diagnosis"]), boot


def test_read_errors(lab: tuple[config.Config, list[str], float]) -> None:
    """The target answers MEDIUM ERROR for a cluster it cannot read; iPXE's
    script retries, and each retry is iPXE again, not the OS booting."""
    cfg, log, _ = lab
    boot = failed(cfg, "f-badread")
    steps = steps_of(boot)
    assert boot["state"] == "failed" and "os-login" not in steps, (boot, log)
    assert steps.count("io-error") >= 3 and steps.count("login") >= 3, steps  # the retries: one boot
    assert "READ errors on its disk (sense key 3)" in str(boot["diagnosis"]), boot


def test_kernel_loaded_but_no_os_login(lab: tuple[config.Config, list[str], float]) -> None:
    cfg, log, _ = lab
    boot = failed(cfg, "f-noos")
    steps = steps_of(boot)
    assert boot["state"] == "failed" and steps.count("kernel") == 2 and "os-login" not in steps, (boot, log)
    assert "but the OS never logged in: its initramfs lacks iSCSI/iBFT support" in str(boot["diagnosis"]), boot
    console = (cfg.state_dir / "vm" / "f-noos.console").read_text(errors="replace")
    assert "an initramfs without iscsistart" in console, console[-2000:]


def test_every_fault_is_in_the_machine_table(lab: tuple[config.Config, list[str], float]) -> None:
    cfg, _, took = lab
    table = json.loads(subprocess.run([sys.executable, "-m", "bootsvc", "machines", "-c", str(cfg.path), "--json"],
                                      capture_output=True, text=True, check=True, timeout=60).stdout)
    rows = {r["hostname"]: r for r in table}
    assert set(FAULTS) <= set(rows), rows.keys()
    assert all(rows[h]["state"] == "failed" for h in FAULTS), {h: rows[h]["state"] for h in FAULTS}
    print(f"\nfaults injected and diagnosed in {took:.0f} s")


def test_session_dropped_mid_boot(lab: tuple[config.Config, list[str], float]) -> None:
    """sanhook reads the disk's first sectors (so "logged in but never
    read" cannot come from it); the session iPXE then holds is dropped by
    the target stopping, a few KiB into the boot."""
    cfg, log, _ = lab
    boot = failed(cfg, "f-drop")
    steps = steps_of(boot)
    assert boot["state"] == "failed" and steps[-3:] == ["login", "first-read", "session-end"], (boot, log)
    assert "its session was dropped mid-boot (server_stop) after" in str(boot["diagnosis"]), boot
