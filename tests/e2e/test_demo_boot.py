"""The whole product at once: `bootsvc image build-demo` builds the demo
Linux, `bootsvc vm` boots diskless QEMU VMs on a private boot network in a
namespace, and each VM goes DHCP → iPXE sanboot of its own overlay →
SYSLINUX → Linux → iBFT login with open-iscsi's iscsistart → root mounted
from the iSCSI disk → a file written → success marker → power off.

Checked afterwards, with tools that are not bootsvc's: each machine's
record file is in its own overlay only (qemu-img converts the overlay,
debugfs reads the ext4 root), not in the base; qemu-img check finds every
overlay clean; iSNS held each machine's DD {initiator, target} with the
target registered. One VM, then a storm of four at once; then UEFI
machines (OVMF): one through its NIC's EFI iPXE ROM, one like a real UEFI
machine whose own PXE client loads snponly.efi from bootsvc's TFTP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bootsvc import config
from bootsvc.demo import build_demo
from bootsvc.vm import qemu
from bootsvc.vm.run import Options, boot_address, run
from bootsvc.vm.timeline import ORDER, diagnose
from tests.e2e.conftest import need, need_vm_lab
from tests.e2e.demo_checks import check_booted, record, recorded
from tests.e2e.netns import ip, namespaces
from tests.e2e.peers import bootsvc_serve, machine_secret, stop

pytestmark = pytest.mark.e2e
HOSTS = [f"node{i:02}" for i in range(1, 5)]
KERNEL_HOST = "node05"  # profile demo-linux-kernel: iPXE loads the kernel itself
MUTUAL_HOST = "node06"  # profile mutual: bootsvc proves its own secret back (reverse CHAP)
WRONG_HOST = "node07"  # profile wrong-secret: its script gives iPXE a password that is not its own
PROFILES = {
    "mutual": "base: demo-linux.qcow2\nauth: mutual\n",
    "wrong-secret": ("base: demo-linux.qcow2\nscript: |\n  #!ipxe\n  {{chap}}\n  set password not-my-secret-1\n"
                     "  sanboot {{root_path}}\n"),
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> config.Config:
    need("qemu-img", "debugfs", "iscsistart", "syslinux", "mcopy", "mkfs.vfat", "mke2fs")
    need_vm_lab(qemu.Firmware.BIOS)
    work = tmp_path_factory.mktemp("demo")
    (work / "profiles").mkdir()
    for name, text in PROFILES.items():
        (work / "profiles" / f"{name}.yaml").write_text(text)
    machines = "\n".join(f"  52:54:00:77:01:{i:02x}: {{hostname: {h}, ip: 10.215.0.{10 + i}, profile: {p}}}"
                         for i, (h, p) in enumerate([*((h, "demo-linux") for h in HOSTS),
                                                     (KERNEL_HOST, "demo-linux-kernel"), (MUTUAL_HOST, "mutual"),
                                                     (WRONG_HOST, "wrong-secret")], 1))
    path = work / "bootsvc.yaml"
    path.write_text(f"""
state_dir: {work / 'state'}
profiles_dir: {work / 'profiles'}
iqn_prefix: iqn.2026-11.test.demo
listen:
  dhcp: {{interface: bsv-demo0, address: 10.215.0.1}}
  iscsi: [10.215.0.1:3260]
  tftp: 10.215.0.1:69
  http: 10.215.0.1:80
  isns: 127.0.0.1:3205
dhcp:
  subnet: 10.215.0.0/24
recorder: {{stall: 20}}  # a boot quiet for 20 s has failed (the wrong-secret VM's run ends on it)
machines:
{machines}
""")
    cfg = config.load(path)
    build_demo(cfg, say=lambda line: print(line))
    return cfg


def check_overlays(cfg: config.Config, hosts: list[str], work: Path) -> None:
    overlays = {h: cfg.overlays_dir / f"{h}.qcow2" for h in hosts}
    initiators = {h: f"{cfg.iqn_prefix}:{h}" for h in [*HOSTS, KERNEL_HOST, MUTUAL_HOST]}
    for host, overlay in overlays.items():
        check = subprocess.run(["qemu-img", "check", str(overlay)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0 and "No errors" in check.stdout, check.stdout + check.stderr
        lines = record(overlay, work).splitlines()
        assert lines, f"{host} wrote nothing into its overlay"
        for line in lines:  # its own boots only, none of another machine's
            assert f"initiator={initiators[host]} " in line, (host, lines)
    assert record(cfg.images_dir / "demo-linux.qcow2", work) == ""  # the base is untouched


def test_one_vm_boots_linux_from_its_overlay(lab: config.Config, tmp_path: Path) -> None:
    """... with CHAP on: iPXE logs in with the secret its script set (MD5,
    all iPXE knows), Linux with the one iPXE wrote into the iBFT (SHA3-256:
    the demo's initramfs offers the strongest first)."""
    timelines = run(lab, Options(count=1, accel="auto", timeout=240))
    check_booted(timelines[0])
    check_overlays(lab, HOSTS[:1], tmp_path)
    served = (lab.state_dir / "vm" / "serve.log").read_text()
    assert "auth=chap-md5" in served and "auth=chap-sha3-256" in served, served[-3000:]
    secrets = lab.state_dir / "secrets" / "chap.json"
    assert secrets.stat().st_mode & 0o777 == 0o600 and secrets.parent.stat().st_mode & 0o777 == 0o700
    assert machine_secret(lab.state_dir, "52:54:00:77:01:01") not in served  # never logged
    (lab.state_dir / "vm" / "serve.log").rename(tmp_path / "serve-1.log")
    # the flight recorder kept the boot, readable with serve gone
    (boot,) = recorded(lab, "node01")
    steps = [s["step"] for s in boot["steps"]]
    assert boot["state"] == "booted" and boot["diagnosis"] == "booted" and boot["duration"] > 0, boot
    for step in ("ipxe-ack", "script", "login", "first-read", "os-login", "os-read"):
        assert step in steps, steps
    assert steps.index("login") < steps.index("os-login") < steps.index("os-read")


def test_mutual_chap_vm_boots(lab: config.Config, tmp_path: Path) -> None:
    mac = next(m.mac for m in lab.machines.values() if m.hostname == MUTUAL_HOST)
    timelines = run(lab, Options(macs=(mac,), accel="auto", timeout=240))
    check_booted(timelines[0])
    served = (lab.state_dir / "vm" / "serve.log").read_text()
    assert "auth=mutual-chap-md5" in served and "auth=mutual-chap-sha3-256" in served, served[-3000:]
    check_overlays(lab, [MUTUAL_HOST], tmp_path)


def test_a_wrong_secret_fails_with_a_clear_event(lab: config.Config) -> None:
    mac = next(m.mac for m in lab.machines.values() if m.hostname == WRONG_HOST)
    # the run ends once bootsvc's flight recorder says the login was refused (its stall, 20 s, at most)
    (t,) = run(lab, Options(macs=(mac,), accel="auto", timeout=60, end_on=frozenset({"login_refused"})))
    assert not t.booted
    said = diagnose(t)
    assert "never logged in" in said and "CHAP credentials" in said, said
    # the first refusals say why; after five in a minute the source is throttled, and that is said too
    assert "wrong CHAP response (secret)" in t.refusals[0], t.refusals
    (boot,) = recorded(lab, WRONG_HOST)
    assert boot["state"] == "failed" and "iSCSI login refused by CHAP" in boot["diagnosis"], boot
    table = json.loads(subprocess.run([sys.executable, "-m", "bootsvc", "machines", "-c", str(lab.path), "--json"],
                                      capture_output=True, text=True, check=True, timeout=60).stdout)
    row = next(r for r in table if r["hostname"] == WRONG_HOST)
    assert row["state"] == "failed" and "refused by CHAP" in row["diagnosis"]
    served = (lab.state_dir / "vm" / "serve.log").read_text()
    assert f"initiator={lab.iqn_prefix}:{WRONG_HOST}" in served and "not-my-secret" not in served


def test_four_vms_boot_at_once_each_from_its_own_overlay(lab: config.Config, tmp_path: Path) -> None:
    timelines = run(lab, Options(count=4, accel="auto", timeout=400))
    for t in timelines:
        check_booted(t)
    check_overlays(lab, HOSTS, tmp_path)
    worst = max(t.at[ORDER[-1]] for t in timelines)
    print(f"\n4 VMs: the last success marker after {worst:.1f} s")


def test_kernel_profile_boots_with_the_disk_hooked(lab: config.Config, tmp_path: Path) -> None:
    """boot: kernel: iPXE sanhooks the disk (the iBFT describes it), fetches
    the demo's kernel and initramfs over HTTP, and Linux logs in from the
    iBFT as in a sanboot, with its root on its own overlay."""
    mac = next(m.mac for m in lab.machines.values() if m.hostname == KERNEL_HOST)
    timelines = run(lab, Options(macs=(mac,), accel="auto", timeout=240))
    check_booted(timelines[0])
    served = (lab.state_dir / "vm" / "serve.log").read_text()
    for name in ("demo-linux/vmlinuz", "demo-linux/initrd.img"):
        assert f"path=/files/{name} status=200" in served, served[-3000:]
    check_overlays(lab, [KERNEL_HOST], tmp_path)
    # iPXE logs in again before it boots the kernel: that login is iPXE's, the OS's comes after the kernel
    (boot,) = recorded(lab, KERNEL_HOST)
    steps = [s["step"] for s in boot["steps"]]
    assert boot["state"] == "booted" and steps.count("os-login") >= 1, boot
    assert max(i for i, s in enumerate(steps) if s == "kernel") < steps.index("os-login") < steps.index("os-read")


@pytest.mark.parametrize("firmware_pxe", [False, True], ids=["nic-ipxe-rom", "firmware-pxe"])
def test_uefi_vm_boots_linux(lab: config.Config, tmp_path: Path, firmware_pxe: bool) -> None:
    host = HOSTS[2] if firmware_pxe else HOSTS[1]
    mac = next(m.mac for m in lab.machines.values() if m.hostname == host)
    timelines = run(lab, Options(macs=(mac,), firmware=qemu.Firmware.UEFI, nic_rom=not firmware_pxe, accel="auto",
                                 timeout=240))
    check_booted(timelines[0])
    served = (lab.state_dir / "vm" / "serve.log").read_text()
    if firmware_pxe:  # OVMF's PXE (arch 7) got snponly.efi, whose iPXE then asked again and sanbooted
        assert "arch=7" in served and "event=tftp.sent" in served and "file=snponly.efi" in served, served[-3000:]
    check_overlays(lab, [host], tmp_path)


def test_attach_to_a_running_bootsvc(lab: config.Config, tmp_path: Path) -> None:
    """`bootsvc vm --attach`: the bridge and `bootsvc serve` are already
    there (here in a namespace the test makes); the VM joins that bridge
    and its boot is followed on its console."""
    bridge, address = boot_address(lab)
    with namespaces("attach") as (ns,):
        ip("-n", ns, "link", "add", bridge, "type", "bridge")
        ip("-n", ns, "addr", "add", str(address), "dev", bridge)
        ip("-n", ns, "link", "set", bridge, "up")
        server = bootsvc_serve(lab.path, tmp_path / "serve.log", "ready:", netns=ns)
        try:
            r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "bootsvc", "vm", "-c", str(lab.path),
                                "--attach", "--mac", "52:54:00:77:01:04", "--timeout", "240"],
                               capture_output=True, text=True, timeout=300)
        finally:
            stop(server)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "node04: booted" in r.stdout and "node04: root after" in r.stdout, r.stdout
    assert "node04 (flight recorder): booted in " in r.stdout, r.stdout
    assert "event=iscsi.login" in (tmp_path / "serve.log").read_text()
