"""Debian from an RBD clone (issue 22), and a running machine that survives
its server's death through a floating portal address. The Debian base of
`bootsvc image build-debian` (tests/e2e/debian_build.py) imported into the
pool with `bootsvc image import` under ``storage: {backend: ceph}``, and one
diskless QEMU VM booting it, the kernel way with ``bootsvc.tick`` (it then
writes, syncs and prints a counter every second: tests/e2e/debian_restart.py),
through server A, `bootsvc serve`, from its own clone: iPXE hooks the clone
(the iBFT names the floating portal 10.218.0.100, ``iscsi.advertise``) →
Debian's kernel → initramfs-tools + open-iscsi log in from the iBFT, with
CHAP → systemd to multi-user.target, until the machine prints
BOOTSVC-DEBIAN-OK with its own hostname and initiator name, then ticks.

Then the failover (docs/scale-out.md "When a server fails"): A is killed
(SIGKILL) mid-run, the floating address moves to server B (another `bootsvc
serve`, same pool and machine, its own namespace on the same bridge, no
DHCP, already listening on the floating address the keepalived way:
``net.ipv4.ip_nonlocal_bind``), with a gratuitous ARP as keepalived sends.
B takes the disk once Ceph breaks the dead A's lock (its watch times out:
10 s in the test cluster), and the machine's kernel initiator logs in to the
same address again, now B, and goes on writing: no tick skipped, B's log has
the login. It says how long from A's death to the machine's first write
through B.

Last, read through QEMU's rbd driver, e2fsck and debugfs (not bootsvc's
code): the clone holds the machine's own identity (machine ID, SSH host
key, initiator name), its boot's line, and every tick it printed, those
before the failover included. (That the base's snapshot stays untouched
under a clone's writes is test_ceph_demo_boot's check.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from bootsvc import config
from bootsvc.debian import DEBIAN_BASE
from bootsvc.debian.tree import BOOT_LOG, KERNEL_ARGS, TICK_FILE
from bootsvc.vm import network, qemu
from bootsvc.vm.run import FollowFile, boot_address, end_process
from tests.ceph_cluster import Cluster
from tests.e2e.ceph import POOL, need_ceph
from tests.e2e.debian import IDENTITY, need_debian_base, root_files, wait_marker
from tests.e2e.debian_build import STATE, TEST_TIMEOUT
from tests.e2e.debian_restart import BOOT_TIMEOUT, RESUME_TIMEOUT, Guest, wait_for
from tests.e2e.netns import ip, namespaces, veth
from tests.e2e.peers import bootsvc_serve, stop

# the Debian tests run last (the base's build overlaps the rest of the session)
pytestmark = [pytest.mark.e2e, pytest.mark.debian, pytest.mark.timeout(TEST_TIMEOUT)]
HOST, MAC = "cdeb01", "52:54:00:79:01:21"
NET = "10.218.0"
FLOATING = f"{NET}.100"  # the portal the machine's iBFT names: A's, then B's
CEPH = f"{NET}.250"  # the test cluster, on the bridge: both servers reach it
B_DEV = "bsv-cdebb1"  # B's end of its veth to the bridge
PROFILE = f"""\
base: {DEBIAN_BASE}
boot: kernel
kernel: debian12/vmlinuz
initrd: debian12/initrd.img
cmdline: {KERNEL_ARGS} bootsvc.tick
"""


def _config(work: Path, name: str, conf: Path, listen: str) -> config.Config:
    """Server ``name``'s config: its own state_dir, the pool, the machine."""
    path = work / f"{name}.yaml"
    path.write_text(f"""
state_dir: {work / name}
iqn_prefix: iqn.2026-12.test.cephdebian
storage: {{backend: ceph, pool: {POOL}, conf: {conf}}}
profiles_dir: {work / 'profiles'}
listen:
{listen}
iscsi: {{advertise: {FLOATING}}}
machines:
  {MAC}: {{hostname: {HOST}, ip: {NET}.11, profile: debian12-tick}}
""")
    return config.load(path)


def _servers(work: Path, conf: Path) -> tuple[config.Config, config.Config]:
    """A: DHCP, TFTP, HTTP on its own address, iSCSI there and on the
    floating one; B: iSCSI only, on its own address and the floating one."""
    (work / "profiles").mkdir()
    (work / "profiles" / "debian12-tick.yaml").write_text(PROFILE)
    # the kernel and initramfs build-debian made, where A's TFTP/HTTP serve them
    shutil.copytree(STATE / "boot" / "debian12", work / "a" / "boot" / "debian12")
    a = _config(work, "a", conf, f"""\
  dhcp: {{interface: bsv-cdeb0, address: {NET}.1}}
  iscsi: [{NET}.1:3260, {FLOATING}:3260]
  tftp: {NET}.1:69
  http: {NET}.1:80
dhcp:
  subnet: {NET}.0/24""")
    b = _config(work, "b", conf, f"  iscsi: [{NET}.2:3260, {FLOATING}:3260]")
    return a, b


def _rbd(image: str, conf: Path) -> str:
    """QEMU's options for an RBD image of the pool."""
    return f"file.driver=rbd,file.pool={POOL},file.image={image},file.conf={conf}"


def _network(ns: str, ns_b: str, bridge: str) -> None:
    """The boot bridge in ``ns`` with A's address, the floating one and the
    cluster's; B in ``ns_b`` on a veth to it, allowed to listen on the
    floating address before it holds it."""
    ip("-n", ns, "link", "add", bridge, "type", "bridge")
    for address in (f"{NET}.1", FLOATING, CEPH):
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", bridge)
    ip("-n", ns, "link", "set", bridge, "up")
    veth(ns, "bsv-cdebb0", ns_b, B_DEV)
    ip("-n", ns, "link", "set", "bsv-cdebb0", "master", bridge)
    ip("-n", ns_b, "addr", "add", f"{NET}.2/24", "dev", B_DEV)
    sysctl = subprocess.run(["ip", "netns", "exec", ns_b, "sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"],
                            capture_output=True, text=True, timeout=30)
    assert sysctl.returncode == 0, sysctl.stderr


def _move_floating(ns: str, ns_b: str, bridge: str) -> None:
    """What keepalived does when B becomes master: the address leaves A's
    host, B takes it and says so with a gratuitous ARP (the machine's ARP
    entry still names A's interface)."""
    ip("-n", ns, "addr", "del", f"{FLOATING}/24", "dev", bridge)
    ip("-n", ns_b, "addr", "add", f"{FLOATING}/24", "dev", B_DEV)
    garp = ("from scapy.all import ARP, Ether, get_if_hwaddr, sendp\n"
            f"mac = get_if_hwaddr({B_DEV!r})\n"
            f"sendp(Ether(src=mac, dst='ff:ff:ff:ff:ff:ff') / ARP(op=1, hwsrc=mac, psrc={FLOATING!r}, "
            f"pdst={FLOATING!r}), iface={B_DEV!r}, count=3, inter=0.2, verbose=False)\n")
    sent = subprocess.run(["ip", "netns", "exec", ns_b, sys.executable, "-c", garp], capture_output=True,
                          text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr


def _login(log: str) -> float:
    """When (epoch seconds) the first iSCSI login in a serve log was."""
    stamp = next(line[:23] for line in log.splitlines() if "event=iscsi.login " in line)
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_debian_on_an_rbd_clone_survives_its_servers_death(tmp_path: Path) -> None:
    need_debian_base("iscsistart")
    need_ceph()
    began = time.monotonic()
    with namespaces("cdeb", "cdebb") as (ns, ns_b):
        bridge = "bsv-cdeb0"
        _network(ns, ns_b, bridge)
        with Cluster(netns=ns, address=CEPH) as cluster:
            cluster.create_pool(POOL)
            a, b = _servers(tmp_path, cluster.conf)
            assert boot_address(a)[0] == bridge
            imported = subprocess.run([*cluster.prefix, sys.executable, "-m", "bootsvc", "image", "-c", str(a.path),
                                       "import", str(STATE / "images" / DEBIAN_BASE), DEBIAN_BASE],
                                      capture_output=True, text=True, timeout=600)
            assert imported.returncode == 0, imported.stdout + imported.stderr
            server_a = bootsvc_serve(a.path, tmp_path / "a.log", "ready:", netns=ns)
            server_b = vm_proc = None
            try:
                server_b = bootsvc_serve(b.path, tmp_path / "b.log", "ready:", netns=ns_b)
                (a.state_dir / "vm").mkdir(exist_ok=True)
                vm = qemu.Machine(HOST, MAC, network.BootNetwork(bridge, ns).add_tap(),
                                  a.state_dir / "vm" / f"{HOST}.console", accel=qemu.pick_accel("auto"))
                vm_proc = vm.start(cluster.prefix)
                guest = Guest(HOST, FollowFile(vm.console))
                wait_for([guest], {HOST: 2}, BOOT_TIMEOUT)
                booted = time.monotonic()
                said = wait_marker(a, HOST)
                before, after, took, killed_at = _fail_over(server_a, guest, ns, ns_b, bridge)
            finally:
                if vm_proc is not None:
                    end_process(vm_proc, grace=2.0)
                end_process(server_a)
                if server_b is not None:
                    stop(server_b)  # releases the disk's lock
            served_a = (tmp_path / "a.log").read_text(errors="replace")
            served_b = (tmp_path / "b.log").read_text(errors="replace")
            clone = root_files(_rbd(HOST, cluster.conf), tmp_path, *IDENTITY, BOOT_LOG, TICK_FILE,
                               prefix=cluster.prefix)
    print(f"\nboot {booted - began:.0f} s after the start; A killed at tick {before}; tick {after} written "
          f"through B {took:.1f} s after A's death (its login to B at {_login(served_b) - killed_at:.1f} s, "
          f"{served_b.count('event=iscsi.login_failed')} refused before); test {time.monotonic() - began:.0f} s")
    assert f"event=image.overlay_created mac={MAC} hostname={HOST} base=rbd:{POOL}/" in served_a, served_a[-3000:]
    assert not (a.overlays_dir / f"{HOST}.qcow2").exists()  # no local overlay was made
    assert f"host={HOST} initiator={a.iqn_prefix}:{HOST}" in said, said
    assert after == before + 1, (before, after)  # the writer went on, nothing skipped
    # the machine logged in to B, which took the disk the dead A held
    assert f"event=disk.claimed target={a.iqn_prefix}:boot.{HOST}" in served_b, served_b[-3000:]
    assert f"initiator={a.iqn_prefix}:{HOST}" in served_b, served_b[-3000:]
    assert not guest.errors(), guest.errors()
    _check_clone(clone, a.iqn_prefix, guest.last)


def _fail_over(server_a: subprocess.Popen[bytes], guest: Guest, ns: str, ns_b: str,
               bridge: str) -> tuple[int, int, float, float]:
    """A dies holding the disk, the floating address moves to B, until the
    machine wrote twice more: its last tick before, its first after, how
    long from the kill to that one, and when the kill was (epoch)."""
    server_a.kill()
    server_a.wait(30)
    killed, killed_at = time.monotonic(), time.time()
    time.sleep(0.5)  # a tick synced just before the kill may still be on its way to the console
    guest.poll()
    before = guest.last
    _move_floating(ns, ns_b, bridge)
    wait_for([guest], {HOST: before}, RESUME_TIMEOUT)
    after, resumed = next((n, t) for n, t in guest.ticks if n > before)
    wait_for([guest], {HOST: after + 2}, 60)  # and goes on writing
    return before, after, resumed - killed, killed_at


def _check_clone(clone: dict[str, str], iqn_prefix: str, last: int) -> None:
    """The clone holds the machine's identity, its boot and every tick it
    printed (each synced before it was printed), in order."""
    assert all(clone[f] for f in IDENTITY), clone
    assert f"{iqn_prefix}:{HOST}" in clone["/etc/iscsi/initiatorname.iscsi"], clone
    assert HOST in clone[BOOT_LOG], clone
    kept = [int(x) for x in clone[TICK_FILE].split() if x.isdigit()]
    assert kept[:last] == list(range(1, last + 1)), (last, kept[-5:])
