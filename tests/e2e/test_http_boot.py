"""UEFI firmware's own network boot against bootsvc, in QEMU (TCG) on a
private bridge in a network namespace:

- x64 UEFI HTTP boot: Debian's OVMF, its PXE entries switched off, asks
  DHCP with vendor class HTTPClient (arch 16), gets a URL on bootsvc's
  HTTP, loads Debian's snponly.efi from it; that iPXE then asks DHCP as
  iPXE. Authoritative, and proxy beside dnsmasq (EDK2 takes dnsmasq's
  address and bootsvc's proxy offer with the URL).
- ARM64: Debian's AAVMF PXE-boots (arch 11) and fetches, over TFTP, the
  file dhcp.bootfiles.efi-arm64 names (Debian has no ARM64 iPXE: any file
  stands in for it)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from tests.e2e import qemu
from tests.e2e.conftest import need
from tests.e2e.netns import boot_bridge, can_make_namespaces, namespaces
from tests.e2e.peers import bootsvc_serve, dnsmasq_dhcp, stop

pytestmark = pytest.mark.e2e
MAC = "52:54:00:77:00:21"
SNPONLY = Path("/usr/lib/ipxe/snponly.efi")


def config(tmp_path: Path, mode: str, extra: str = "") -> Path:
    """bootsvc on 10.215.0.1 with one known machine (a tiny disk: its iPXE
    is given a root-path only when its disk is served)."""
    state = tmp_path / "state"
    (state / "images").mkdir(parents=True)
    (state / "images" / "tiny.raw").write_bytes(bytes(1 << 20))
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "tiny.yaml").write_text("base: tiny.raw\noverlay: ephemeral\n")
    fixed_ip = ", ip: 10.215.0.11" if mode == "authoritative" else ""
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"""state_dir: {state}
iqn_prefix: iqn.2026-11.test.lab
profiles_dir: profiles
listen:
  dhcp: {{interface: bsv-br0, address: 10.215.0.1}}
  iscsi: [10.215.0.1:3260]
  tftp: 10.215.0.1:69
  http: 10.215.0.1:8080
dhcp:
  subnet: 10.215.0.0/24
  mode: {mode}
{extra}machines:
  {MAC}: {{hostname: node21, profile: tiny{fixed_ip}}}
""")
    return cfg


def events(log: Path, kind: str) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if f"event={kind} " in line]


@pytest.mark.parametrize("mode", ["authoritative", "proxy"])
def test_ovmf_http_boot_loads_ipxe_from_bootsvc_http(tmp_path: Path, mode: str) -> None:
    need(*(["dnsmasq"] if mode == "proxy" else []))
    reason = qemu.OVMF.missing() or can_make_namespaces() or (None if SNPONLY.exists() else f"{SNPONLY} (ipxe)")
    if reason:
        pytest.skip(reason)
    cfg = config(tmp_path, mode)
    log = tmp_path / "serve.log"
    with namespaces("hboot", "hdhcp") as (ns, other):
        boot_bridge(ns, other, "10.215.0")
        with dnsmasq_dhcp(other, "bsv-dh0", "10.215.0.100,10.215.0.150,255.255.255.0,1h", tmp_path) \
                if mode == "proxy" else contextlib.nullcontext():
            server = bootsvc_serve(cfg, log, "ready:", netns=ns)
            try:
                start = time.monotonic()
                with qemu.uefi_netboot_vm(tmp_path, ns, "bsv-tap0", MAC, qemu.OVMF, *qemu.NO_PXE) as console:
                    # iPXE, loaded over HTTP, asks DHCP as iPXE (user class iPXE): the hand-over worked
                    seen = qemu.wait_for(log, ("ipxe=True",), 90)
                    out = console.read_text(errors="replace") if console.exists() else ""
                elapsed = time.monotonic() - start
            finally:
                stop(server)
    served = log.read_text(errors="replace")
    print(f"\n{mode}: OVMF HTTP boot -> snponly.efi over HTTP -> iPXE's DHCP after {elapsed:.1f} s")
    assert "Start HTTP Boot over IPv4" in out, out[-2000:]
    offers = [line for line in events(log, "dhcp.offer") if "arch=16" in line]
    assert offers, served[-3000:]
    if mode == "proxy":
        assert all("proxy=True" in line for line in offers), offers
    got = [line for line in events(log, "http.request") if "path=/files/snponly.efi" in line]
    assert any("method=GET" in line and "status=200" in line for line in got), served[-3000:]
    assert seen == "ipxe=True", f"console:\n{out[-1500:]}\nserver:\n{served[-3000:]}"


def test_arm64_uefi_pxe_fetches_its_configured_bootfile(tmp_path: Path) -> None:
    reason = qemu.AAVMF.missing() or can_make_namespaces()
    if reason:
        pytest.skip(f"{reason} (Debian: qemu-system-arm qemu-efi-aarch64, installed by scripts/install-deps.sh)")
    root = tmp_path / "tftp"
    (root / "arm64").mkdir(parents=True)
    # any small file stands in for iPXE's bin-arm64-efi/snponly.efi: the fetch is what is tested
    (root / "arm64" / "snponly.efi").write_bytes(b"MZ not really iPXE\n" * 64)
    cfg = config(tmp_path, "authoritative", f"  bootfiles: {{efi-arm64: arm64/snponly.efi}}\ntftp: {{roots: [{root}]}}\n")
    log = tmp_path / "serve.log"
    with namespaces("aboot", "adhcp") as (ns, other):
        boot_bridge(ns, other, "10.215.0")
        server = bootsvc_serve(cfg, log, "ready:", netns=ns)
        try:
            start = time.monotonic()
            with qemu.uefi_netboot_vm(tmp_path, ns, "bsv-tap0", MAC, qemu.AAVMF) as console:
                seen = qemu.wait_for(log, ("file=arm64/snponly.efi",), 90)
                # the transfer's end event follows its start, as slowly as an
                # emulated client on a busy host acknowledges the blocks
                deadline = time.monotonic() + 60
                while seen and time.monotonic() < deadline and not any(
                        "file=arm64/snponly.efi" in line for line in events(log, "tftp.sent")):
                    time.sleep(0.2)
                out = console.read_text(errors="replace") if console.exists() else ""
            elapsed = time.monotonic() - start
        finally:
            stop(server)
    served = log.read_text(errors="replace")
    print(f"\nAAVMF PXE -> TFTP arm64/snponly.efi after {elapsed:.1f} s")
    assert seen, f"console:\n{out[-1500:]}\nserver:\n{served[-3000:]}"
    assert any("arch=11" in line for line in events(log, "dhcp.offer")), served[-3000:]
    assert any("file=arm64/snponly.efi" in line for line in events(log, "tftp.sent")), served[-3000:]
