"""Per-firmware boot files (dhcp.bootfiles) and UEFI HTTP boot, without
sockets: what the planner and the responder answer each architecture in
both DHCP modes, when the file is missing, and what check says."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from types import SimpleNamespace

import pytest
from scapy.layers.dhcp import BOOTP, DHCP

from bootsvc.boot import BootPlanner
from bootsvc.bootfile_check import bootfile_warnings
from bootsvc.cli import main
from bootsvc.config import ConfigError, load
from bootsvc.dhcp.bootfiles import DEFAULT_BOOTFILES, Firmware, firmware_of
from bootsvc.dhcp.leases import LeaseStore
from bootsvc.dhcp.message import ClientArch, IPv4, MessageType, Request, decode, encode
from bootsvc.dhcp.responder import Machines, Mode, Responder, Subnet
from bootsvc.events import Bus, Event, Kind
from bootsvc.inventory import Machine
from bootsvc.recorder.steps import Step, step_of

NODE = Machine(mac="52:54:00:77:00:01", hostname="node01", profile="demo-linux",
               initiator_iqn="iqn.2026-11.t:node01", target_iqn="iqn.2026-11.t:boot.node01", ip=IPv4("10.77.0.11"))
SERVER = IPv4("10.77.0.1")
SUBNET = Subnet(ipaddress.IPv4Network("10.77.0.0/24"), SERVER, IPv4("10.77.0.100"), IPv4("10.77.0.101"))
BOOTFILES = {**DEFAULT_BOOTFILES, Firmware.EFI_ARM64: "arm64/snponly.efi"}
SERVED = {"undionly.kpxe", "snponly.efi", "arm64/snponly.efi"}  # no ipxe-i386.efi, as in Debian


def http_client(arch: int) -> tuple[object, ...]:
    """What EDK2's HttpBootDxe sends: option 93 and its vendor class."""
    return ((93, arch.to_bytes(2, "big")), ("vendor_class_id", f"HTTPClient:Arch:{arch:05d}:UNDI:003001".encode()))


def pxe_client(arch: int) -> tuple[object, ...]:
    return ((93, arch.to_bytes(2, "big")), ("vendor_class_id", f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode()))


def request(msg: str, *opts: object) -> Request:
    pkt = BOOTP(op=1, xid=7, chaddr=bytes.fromhex(NODE.mac.replace(":", "")) + bytes(10))
    return decode(bytes(pkt / DHCP(options=[("message-type", msg), *opts, "end"])))


def options(reply: object) -> dict[object, object]:
    pkt = BOOTP(encode(reply))  # type: ignore[arg-type]
    return {o[0]: o[1] for o in pkt[DHCP].options if isinstance(o, tuple)}


def lab(mode: Mode = Mode.AUTHORITATIVE, http_port: int | None = 8080,
        served: set[str] = SERVED) -> tuple[Responder, list[Event]]:
    """A responder with the real planner over a fleet that has only a
    config (the binary's path asks nothing else of it)."""
    bus = Bus()
    seen: list[Event] = []
    bus.subscribe(seen.append)
    fleet = SimpleNamespace(cfg=SimpleNamespace(dhcp=SimpleNamespace(bootfiles=BOOTFILES)))
    planner = BootPlanner(fleet, bus.emit, http_port=http_port, has_file=served.__contains__)  # type: ignore[arg-type]
    return Responder([SUBNET], Machines({NODE.mac: NODE}), LeaseStore(":memory:"), planner, mode=mode,
                     emit=bus.emit), seen


@pytest.mark.parametrize("mode", [Mode.AUTHORITATIVE, Mode.PROXY])
@pytest.mark.parametrize("arch, url", [
    (ClientArch.EFI_X64_HTTP, "http://10.77.0.1:8080/files/snponly.efi"),
    (ClientArch.EFI_ARM64_HTTP, "http://10.77.0.1:8080/files/arm64/snponly.efi"),
])
def test_http_boot_gets_httpclient_and_a_url_in_both_modes(mode: Mode, arch: int, url: str) -> None:
    r, _ = lab(mode)
    offer = r.handle(request("discover", *http_client(arch)), SERVER, 0)
    assert offer is not None and offer.msg_type is MessageType.OFFER
    o = options(offer)
    # EDK2 HttpBootDhcp4.c: "HTTPClient" in 60 makes it an HTTP offer; the URI in 67 (and the file field)
    assert o["vendor_class_id"] == b"HTTPClient" and o["boot-file-name"] == url.encode()
    assert offer.bootfile == url and str(offer.siaddr) == "0.0.0.0" and "vendor_specific" not in o
    if mode is Mode.PROXY:  # EDK2's "ProxyIpUri" offer: no address
        assert str(offer.yiaddr) == "0.0.0.0" and "lease_time" not in o
        # it requests its address from the DHCP server only: no ACK of ours
        assert r.handle(request("request", *http_client(arch), ("requested_addr", "10.77.0.50"),
                                ("server_id", "10.77.0.254")), SERVER, 1) is None
    else:
        assert offer.yiaddr == NODE.ip
        ack = r.handle(request("request", *http_client(arch), ("requested_addr", "10.77.0.11"),
                               ("server_id", "10.77.0.1")), SERVER, 1)
        assert ack is not None and ack.msg_type is MessageType.ACK and options(ack)["boot-file-name"] == url.encode()


@pytest.mark.parametrize("mode", [Mode.AUTHORITATIVE, Mode.PROXY])
@pytest.mark.parametrize("arch, name", [
    (ClientArch.BIOS, "undionly.kpxe"), (ClientArch.EFI_X64, "snponly.efi"), (ClientArch.EFI_BC, "snponly.efi"),
    (ClientArch.EFI_ARM64, "arm64/snponly.efi"),
])
def test_pxe_gets_the_bootfile_of_its_firmware_over_tftp(mode: Mode, arch: int, name: str) -> None:
    r, _ = lab(mode)
    offer = r.handle(request("discover", *pxe_client(arch)), SERVER, 0)
    assert offer is not None and offer.bootfile == name and offer.siaddr == SERVER
    assert options(offer)["vendor_class_id"] == b"PXEClient"


@pytest.mark.parametrize("mode", [Mode.AUTHORITATIVE, Mode.PROXY])
def test_a_missing_file_is_not_offered_and_said(mode: Mode) -> None:
    r, seen = lab(mode)
    offer = r.handle(request("discover", *pxe_client(ClientArch.EFI_IA32)), SERVER, 0)
    if mode is Mode.PROXY:
        assert offer is None  # nothing to boot: no proxy answer
    else:
        assert offer is not None and offer.yiaddr == NODE.ip and not offer.bootfile  # an address only
    refused = [e for e in seen if e.kind is Kind.BOOT_REFUSED]
    assert len(refused) == 1 and refused[0].fields["file"] == "ipxe-i386.efi"
    assert "dhcp.bootfiles.efi-ia32" in str(refused[0].fields["why"])


def test_http_boot_without_listen_http_is_refused_and_said() -> None:
    r, seen = lab(http_port=None)
    offer = r.handle(request("discover", *http_client(ClientArch.EFI_X64_HTTP)), SERVER, 0)
    assert offer is not None and not offer.bootfile and "vendor_class_id" not in options(offer)
    assert any(e.kind is Kind.BOOT_REFUSED and "listen.http" in str(e.fields["why"]) for e in seen)


def test_an_architecture_without_ipxe_is_refused() -> None:
    assert firmware_of(None) is Firmware.BIOS and firmware_of(ClientArch.EFI_IA32_HTTP) is Firmware.EFI_IA32
    r, seen = lab()
    offer = r.handle(request("discover", *pxe_client(ClientArch.EFI_ARM32)), SERVER, 0)
    assert offer is not None and not offer.bootfile
    assert [e.kind for e in seen if e.kind is Kind.BOOT_REFUSED] == [Kind.BOOT_REFUSED]


CONFIG = """state_dir: {state}
listen:
  dhcp: {{interface: br0, address: 10.77.0.1}}
  tftp: 127.0.0.1:6969
{http}tftp: {{roots: [{root}]}}
dhcp:
  subnet: 10.77.0.0/24
{bootfiles}"""


def write(tmp_path: Path, bootfiles: str = "", http: str = "  http: 127.0.0.1:8080\n") -> Path:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    path = tmp_path / "bootsvc.yaml"
    path.write_text(CONFIG.format(state=tmp_path / "state", http=http, root=root, bootfiles=bootfiles))
    return path


def test_bootfiles_config_defaults_and_overrides(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "  bootfiles: {efi-arm64: arm64/snponly.efi, bios: undionly.kkpxe}\n"))
    assert cfg.dhcp is not None
    assert cfg.dhcp.bootfiles == {**DEFAULT_BOOTFILES, Firmware.EFI_ARM64: "arm64/snponly.efi",
                                  Firmware.BIOS: "undionly.kkpxe"}
    assert load(write(tmp_path)).dhcp.bootfiles == DEFAULT_BOOTFILES  # type: ignore[union-attr]


@pytest.mark.parametrize("bootfiles, line, why", [
    ("  bootfiles:\n    efi-arm64: ../arm.efi\n", 10, "dhcp.bootfiles.efi-arm64: ../arm.efi: '..' is refused"),
    ("  bootfiles:\n    bios: /boot/x.kpxe\n", 10, "dhcp.bootfiles.bios: /boot/x.kpxe: absolute paths are refused"),
    ("  bootfiles:\n    efi-x86: a.efi\n", 10, "dhcp.bootfiles.efi-x86: unknown key"),
    ("  bootfiles:\n    efi-x64: 7\n", 10, "dhcp.bootfiles.efi-x64: expected a file name"),
    ("  bootfiles: snponly.efi\n", 9, "dhcp.bootfiles: expected a mapping"),
])
def test_bootfiles_errors_name_file_line_and_key(tmp_path: Path, bootfiles: str, line: int, why: str) -> None:
    path = write(tmp_path, bootfiles)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert any(p.startswith(f"{path}:{line}: {why}") for p in e.value.problems), e.value.problems


def test_check_warns_once_per_firmware_whose_file_is_missing(tmp_path: Path) -> None:
    path = write(tmp_path, "  bootfiles: {efi-arm64: arm64/snponly.efi}\n")
    root = tmp_path / "root"
    (root / "undionly.kpxe").write_bytes(b"x")
    warnings = bootfile_warnings(load(path))
    # efi-ia32 is not configured (Debian has no build): said when such a machine asks, not here
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f"dhcp.bootfiles.efi-x64: snponly.efi is in none of the TFTP roots ({root})")
    assert "apt install ipxe" in warnings[0]
    assert warnings[1].startswith("dhcp.bootfiles.efi-arm64: arm64/snponly.efi is in none")
    assert "no ARM64 build" in warnings[1] and "bin-arm64-efi/snponly.efi" in warnings[1]
    (root / "arm64").mkdir()
    (root / "arm64" / "snponly.efi").write_bytes(b"x")
    (root / "snponly.efi").write_bytes(b"x")
    assert bootfile_warnings(load(path)) == []


def test_bootsvc_check_prints_the_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "  bootfiles: {efi-arm64: ipxe-arm64.efi.custom}\n", http="")
    assert main(["check", "--elsewhere", "-c", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"{path}: warning: dhcp.bootfiles.efi-arm64: ipxe-arm64.efi.custom is in none of the TFTP roots" in err
    assert "efi-ia32" not in err


def test_uefi_http_boots_head_is_no_fetch_for_the_recorder() -> None:
    """EDK2 sends HEAD, then GET, of its boot file: one fetch, so three
    HTTP boots are not taken for a chainload loop."""
    def request_event(method: str, status: int) -> Event:
        return Event(Kind.HTTP_REQUEST, 0.0, NODE.mac, fields={"method": method, "path": "/files/snponly.efi",
                                                                "status": status})
    assert step_of(request_event("HEAD", 200)) is None
    assert step_of(request_event("GET", 200)) is Step.BOOTFILE
    assert step_of(request_event("HEAD", 404)) is Step.FILE_MISSING
