"""The front door and the target together: a diskless QEMU VM in a network
namespace asks for DHCP, its iPXE ROM gets the root-path of its own iSCSI
target and its initiator name from bootsvc, and sanboots its overlay from
bootsvc (the boot sector reads a payload at the end of the disk and prints
it). Authoritative: bootsvc hands out the address too. Proxy: dnsmasq, in
its own namespace on the same bridge, hands out the address and bootsvc
answers only with boot options (on port 67, and 4011 for iPXE's
ProxyDHCPREQUEST). Chain: the machine's profile script makes the NIC's
iPXE fetch Debian's undionly.kpxe from bootsvc's TFTP and chain to it (as a
PXE ROM that is not iPXE would), and that iPXE, on the NIC's UNDI, sanboots.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from tests.e2e import qemu
from tests.e2e.bootdisk import build
from tests.e2e.conftest import need
from tests.e2e.netns import boot_bridge, can_make_namespaces, namespaces
from tests.e2e.peers import bootsvc_serve, dnsmasq_dhcp, stop

pytestmark = pytest.mark.e2e
MAC = "52:54:00:77:00:01"


# iPXE's netX/chip is the driver's name: "undionly" once chained, so the loop ends there
CHAIN_PROFILE = """base: bootdisk.raw
overlay: ephemeral
script: |
  #!ipxe
  iseq ${net0/chip} undionly || chain tftp://${next-server}/undionly.kpxe
  {{chap}}
  sanboot {{root_path}}
"""


@pytest.mark.parametrize("mode", ["authoritative", "proxy", "chain"])
def test_vm_boots_its_overlay_through_bootsvc_dhcp(tmp_path: Path, mode: str) -> None:
    need("nasm", *(["dnsmasq"] if mode == "proxy" else []))
    reason = qemu.available() or can_make_namespaces()
    if reason:
        pytest.skip(reason)
    state = tmp_path / "state"
    (state / "images").mkdir(parents=True)
    text = build(state / "images" / "bootdisk.raw")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "disk.yaml").write_text(
        CHAIN_PROFILE if mode == "chain" else "base: bootdisk.raw\noverlay: ephemeral\n")
    cfg = tmp_path / "bootsvc.yaml"
    fixed_ip = ", ip: 10.214.0.11" if mode != "proxy" else ""
    cfg.write_text(f"""
state_dir: {state}
iqn_prefix: iqn.2026-11.test.lab
profiles_dir: profiles
listen:
  dhcp: {{interface: bsv-br0, address: 10.214.0.1}}
  iscsi: [10.214.0.1:3260]
  tftp: 10.214.0.1:69
dhcp:
  subnet: 10.214.0.0/24
  mode: {"proxy" if mode == "proxy" else "authoritative"}
  ipv6_ra: true  # proxy mode's opt-in (the network is the test's own): iPXE does not wait 16 s for a router
machines:
  {MAC}: {{hostname: node01, profile: disk{fixed_ip}}}
""")
    with namespaces("boot", "dhcp") as (ns, other):
        boot_bridge(ns, other, "10.214.0")
        log = tmp_path / "serve.log"
        with dnsmasq_dhcp(other, "bsv-dh0", "10.214.0.100,10.214.0.150,255.255.255.0,1h", tmp_path, "--log-dhcp") \
                if mode == "proxy" else contextlib.nullcontext():
            server = bootsvc_serve(cfg, log, "ready:", netns=ns)
            try:
                start = time.monotonic()
                with qemu.netboot_vm(tmp_path, ns, "bsv-tap0", MAC) as console:
                    seen = qemu.wait_for(console, ("BOOTSVC-SANBOOT-OK", "BOOTSVC-SANBOOT-FAIL"), 150)
                    out = console.read_text(errors="replace") if console.exists() else ""
                elapsed = time.monotonic() - start
                if mode != "chain":
                    # the VM is gone without a Logout (its session stays open until
                    # NOPs time out): the next boot still gets a fresh ephemeral disk
                    with qemu.netboot_vm(tmp_path, ns, "bsv-tap0", MAC) as console:
                        again = qemu.wait_for(console, ("BOOTSVC-SANBOOT-OK", "BOOTSVC-SANBOOT-FAIL"), 150)
            finally:
                stop(server)
    served = log.read_text(errors="replace")
    if mode != "chain":
        assert again == "BOOTSVC-SANBOOT-OK", served[-3000:]
        assert served.count("event=disk.renewed") == 1 and "event=disk.kept" in served, served[-3000:]
    print(f"\n{mode} DHCP -> iPXE -> sanboot of the overlay: marker after {elapsed:.1f} s")
    assert seen == "BOOTSVC-SANBOOT-OK" and text in out, f"console:\n{out[-1500:]}\nserver:\n{served[-3000:]}"
    assert "iqn.2026-11.test.lab:node01" in served  # logged in with the initiator name DHCP gave it
    if mode != "proxy":
        assert "event=dhcp.ack" in served and "ipxe=True" in served
    if mode == "chain":
        # (iPXE prints on the screen, not the serial console: the server's log tells the story)
        sent = [line.split("file=")[1].split()[0] for line in served.splitlines() if "event=tftp.sent" in line]
        assert sent == ["boot/52-54-00-77-00-01.ipxe", "undionly.kpxe", "boot/52-54-00-77-00-01.ipxe"], sent
        assert served.count("event=dhcp.ack") == 2, served[-3000:]  # the NIC's iPXE, then undionly's
    if mode == "proxy":
        dhcp = [line for line in served.splitlines() if "event=dhcp.offer" in line or "event=dhcp.ack" in line]
        assert "proxydhcp serving" in served and dhcp, served[-3000:]
        # every answer ours is a proxy one; ip= is the address dnsmasq gave it (its script goes only there)
        assert all("proxy=True" in line for line in dhcp), dhcp
        assert "event=tftp.sent" in served and "file=boot/52-54-00-77-00-01.ipxe" in served
        assert "DHCPACK(bsv-dh0) 10.214.0.1" in (tmp_path / "dnsmasq.log").read_text()  # from dnsmasq
