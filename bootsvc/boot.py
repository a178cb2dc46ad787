"""What a booting machine is told to load (DESIGN.md "The boot flow"):
a PXE ROM gets iPXE for its architecture over TFTP; iPXE itself gets the
iSCSI root-path of the machine's own target and its initiator name, after
checking that the target and its LUN are really served, and for kernel
boots and custom scripts the URL of its iPXE script (bootsvc/scripts.py)."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from . import scripts
from .dhcp.bootfiles import DEFAULT_BOOTFILES, HOW_TO_GET, firmware_of
from .dhcp.message import IPv4, Request
from .dhcp.responder import BootOptions, Mode
from .events import Emit, Kind, no_events
from .fleet import Fleet
from .inventory import Machine
from .profiles import BootMethod
from .scripts import ScriptInputs, mac_of_script

ANY_ADDRESSES = ("", "0.0.0.0", "::")


@dataclass
class BootPlanner:
    """Decides what a booting machine is told, asking the fleet."""

    fleet: Fleet
    emit: Emit = no_events
    iscsi_port: int = 3260
    http_port: int | None = None  # where the machines' scripts are served; None: over TFTP
    # whether TFTP and HTTP's /files/ serve a file (the FileSource's roots): a
    # client is not sent the name of a file it would fail to fetch
    has_file: Callable[[str], bool] = lambda name: True

    def __call__(self, req: Request, machine: Machine | None, server: IPv4) -> BootOptions | None:
        if not req.ipxe:
            return self.ipxe_binary(req, server)
        if machine is None:
            return None
        root_path = self.root_path(machine, str(server))
        if root_path is None:
            return None
        cfg = self.fleet.cfg
        profile = self.fleet.profile(machine)
        # A plain sanboot needs no script: iPXE boots the root-path itself. But
        # iPXE takes a proxyDHCP answer only with a boot file and next-server in
        # it (iPXE src/net/udp/dhcp.c, dhcp_has_pxeopts), so a proxy names the script;
        # and CHAP secrets go only in the script, which only the machine may fetch.
        proxy = cfg.dhcp is not None and cfg.dhcp.mode is Mode.PROXY
        chap = self.fleet.auth(machine) is not None
        script = profile.boot is not BootMethod.SANBOOT or bool(profile.script) or proxy or chap
        # With a script the root-path stays out of the answer: iPXE would hook
        # (log in to) a DHCP root-path before running the script, so before
        # the script's CHAP settings (iPXE src/usr/autoboot.c, uriboot).
        return BootOptions(bootfile=self.script_url(machine, str(server)) if script else "",
                           next_server=server if script else None, root_path="" if script else root_path,
                           initiator_iqn=machine.initiator_iqn, ipxe_no_pxedhcp=True)

    def ipxe_binary(self, req: Request, server: IPv4) -> BootOptions | None:
        """What a PXE ROM or a UEFI HTTP-boot client loads: the iPXE binary
        of its firmware (dhcp.bootfiles), by TFTP name or, for HTTP boot,
        as a URL on our HTTP (UEFI 2.10 §24.7.2: option 67 is a URI).
        None, with a refusal event, when there is none to send."""
        firmware = firmware_of(req.arch)
        if firmware is None:
            self.emit(Kind.BOOT_REFUSED, mac=req.mac, arch=req.arch,
                      why=f"no iPXE build for client architecture {req.arch}")
            return None
        d = self.fleet.cfg.dhcp
        name = (d.bootfiles if d is not None else DEFAULT_BOOTFILES)[firmware]
        if req.http and not self.http_port:
            self.emit(Kind.BOOT_REFUSED, mac=req.mac, arch=req.arch, file=name,
                      why="a UEFI HTTP-boot client needs listen.http, which is off")
            return None
        if not self.has_file(name):
            self.emit(Kind.BOOT_REFUSED, mac=req.mac, arch=req.arch, file=name,
                      why=f"{name} (dhcp.bootfiles.{firmware.value}) is in none of the TFTP roots. "
                          f"{HOW_TO_GET[firmware]}")
            return None
        if req.http:
            return BootOptions(bootfile=f"http://{server}:{self.http_port}/files/{name}")
        return BootOptions(bootfile=name, next_server=server)

    def root_path(self, machine: Machine, server: str) -> str | None:
        """The machine's iSCSI root-path (RFC 4173), only when its target and
        LUN 0 are served and it may log in; else None and a refusal event."""
        if not self.fleet.servable(machine):
            # a clear refusal instead of a root-path to nothing: iPXE reports "no boot target"
            self.emit(Kind.BOOT_REFUSED, mac=machine.mac, hostname=machine.hostname, target=machine.target_iqn,
                      why="its disk is not served (see bootsvc serve's start lines)")
            return None
        # iscsi.advertise: a floating address, which the machine's OS logs in
        # to again after this server dies (docs/scale-out.md "Portals")
        advertised = self.fleet.cfg.iscsi.advertise
        host, port = (advertised.host, advertised.port) if advertised else (server, self.iscsi_port)
        host = f"[{host}]" if ":" in host else host  # RFC 4173: an IPv6 address in brackets
        return f"iscsi:{host}::{port}::{machine.target_iqn}"

    def files_url(self, server: str) -> str:
        return f"http://{server}:{self.http_port}/files" if self.http_port else f"tftp://{server}"

    def script_url(self, machine: Machine, server: str) -> str:
        name = f"boot/{machine.mac.replace(':', '-')}.ipxe"
        return f"http://{server}:{self.http_port}/{name}" if self.http_port else f"tftp://{server}/{name}"

    def script(self, mac: str, server: str) -> str | None:
        """The iPXE script of the machine with this MAC; None if there is
        no such machine or its disk is not served."""
        machine = self.fleet.machine(mac)
        if machine is None:
            return None
        root_path = self.root_path(machine, server)
        if root_path is None:
            return None
        return scripts.script(ScriptInputs(machine, self.fleet.profile(machine), server, root_path,
                                           self.files_url(server), self.fleet.auth(machine)))

    # -- the scripts as files, for TFTP and HTTP -------------------------------------------

    def server_address(self, client: str, local: str) -> str:
        """Our address as the client reaches it: the socket's own address,
        else the DHCP server address of the client's subnet."""
        if local not in ANY_ADDRESSES:
            return local
        cfg = self.fleet.cfg
        if cfg.dhcp is not None:
            with contextlib.suppress(ValueError):
                return str(cfg.dhcp.server_for(ipaddress.IPv4Address(client)))
        return str(cfg.iscsi.portals[0].host) if cfg.iscsi.portals else local

    def script_text(self, name: str, client: str, local: str) -> str | None:
        """HTTP's ``/boot/<mac>.ipxe``: the script, or None for a name that
        is not a script or a machine without one. PermissionError when the
        client is not that machine: a script names its initiator and target
        (and, with CHAP, its secrets), so only the machine's own address
        (its fixed IP or lease, or in proxy mode the address it asked from)
        may have it."""
        mac = mac_of_script(name)
        if mac is None:
            return None
        if self.fleet.mac_at(client) != mac:
            self.emit(Kind.BOOT_SCRIPT_REFUSED, mac=mac, peer=client, file=name,
                      why="asked from an address that is not this machine's")
            raise PermissionError(f"{name} is only for the machine it names, not for {client}")
        return self.script(mac, self.server_address(client, local))

    def script_file(self, name: str, client: str, local: str) -> bytes | None:
        """TFTP's generated files: None for a name that is not a script;
        FileNotFoundError for a script of no machine, PermissionError for
        another machine's."""
        if mac_of_script(name) is None:
            return None
        text = self.script_text(name, client, local)
        if text is None:
            raise FileNotFoundError(f"{name}: no such machine, or its disk is not served")
        return text.encode()
