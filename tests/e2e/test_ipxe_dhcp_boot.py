"""The front door and the target together: a diskless QEMU VM in a network
namespace asks bootsvc's DHCP, its iPXE ROM gets the root-path of its own
iSCSI target and its initiator name, and sanboots its overlay from bootsvc
(the boot sector reads a payload at the end of the disk and prints it)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e import qemu
from tests.e2e.bootdisk import build
from tests.e2e.conftest import need
from tests.e2e.netns import can_make_namespaces, ip, namespaces
from tests.e2e.peers import bootsvc_serve, stop

pytestmark = pytest.mark.e2e
MAC = "52:54:00:77:00:01"


def test_vm_boots_its_overlay_through_bootsvc_dhcp(tmp_path: Path) -> None:
    need("nasm")
    reason = qemu.available() or can_make_namespaces()
    if reason:
        pytest.skip(reason)
    state = tmp_path / "state"
    (state / "images").mkdir(parents=True)
    text = build(state / "images" / "bootdisk.raw")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "disk.yaml").write_text("base: bootdisk.raw\noverlay: ephemeral\n")
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"""
state_dir: {state}
iqn_prefix: iqn.2026-11.test.lab
profiles_dir: profiles
listen:
  dhcp: {{interface: bsv-br0, address: 10.214.0.1}}
  iscsi: [10.214.0.1:3260]
dhcp:
  subnet: 10.214.0.0/24
machines:
  {MAC}: {{hostname: node01, ip: 10.214.0.11, profile: disk}}
""")
    with namespaces("boot") as (ns,):
        ip("-n", ns, "link", "add", "bsv-br0", "type", "bridge")
        ip("-n", ns, "addr", "add", "10.214.0.1/24", "dev", "bsv-br0")
        ip("-n", ns, "link", "set", "bsv-br0", "up")
        ip("-n", ns, "tuntap", "add", "dev", "bsv-tap0", "mode", "tap")
        ip("-n", ns, "link", "set", "bsv-tap0", "master", "bsv-br0")
        ip("-n", ns, "link", "set", "bsv-tap0", "up")
        log = tmp_path / "serve.log"
        server = bootsvc_serve(cfg, log, "iscsi serving", netns=ns)
        try:
            start = time.monotonic()
            with qemu.netboot_vm(tmp_path, ns, "bsv-tap0", MAC) as console:
                seen = qemu.wait_for(console, ("BOOTSVC-SANBOOT-OK", "BOOTSVC-SANBOOT-FAIL"), 150)
                out = console.read_text(errors="replace") if console.exists() else ""
            elapsed = time.monotonic() - start
        finally:
            stop(server)
    served = log.read_text(errors="replace")
    print(f"\nDHCP -> iPXE -> sanboot of the overlay: marker after {elapsed:.1f} s")
    assert seen == "BOOTSVC-SANBOOT-OK" and text in out, f"console:\n{out[-1500:]}\nserver:\n{served[-3000:]}"
    assert "event=dhcp.ack" in served and "ipxe=True" in served
    assert "iqn.2026-11.test.lab:node01" in served  # logged in with the initiator name DHCP gave it
