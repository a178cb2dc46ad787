"""Per-machine iPXE scripts (DESIGN.md "The boot flow"): what a machine's
iPXE runs, served as ``boot/<mac>.ipxe`` over TFTP and HTTP.

With CHAP (the default) the script sets iPXE's ``username``/``password``
(and ``reverse-username``/``reverse-password`` for mutual CHAP) before it
logs in; iPXE logs in with them and writes them into the iBFT, from which
the OS's initiator logs in again. That is why a machine with CHAP always
gets a script, never a bare root-path in its DHCP answer: a DHCP answer
may be broadcast to the whole segment, while the script is handed only to
the machine's own address (bootsvc/boot.py).

A ``sanboot`` profile boots the iSCSI disk itself; a ``kernel`` profile
hooks the disk first (so iPXE describes it in the iBFT for the kernel's
initramfs) and then loads a kernel and initrd. A profile's ``script``
replaces the generated script; it is a template whose ``{{name}}``
placeholders are filled in (bootsvc/template.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from target import ChapAuth

from .inventory import Machine
from .profiles import BootMethod, Profile
from .template import render

SCRIPT_NAME = re.compile(r"^boot/([0-9a-f]{2}(?:[:-]?[0-9a-f]{2}){5})\.ipxe$")
RETRY_SECONDS = 5


def mac_of_script(name: str) -> str | None:
    """``boot/52-54-00-12-34-56.ipxe`` (any of iPXE's MAC spellings) -> MAC."""
    m = SCRIPT_NAME.match(name.lower())
    if m is None:
        return None
    digits = re.sub(r"[^0-9a-f]", "", m.group(1))
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


@dataclass(frozen=True)
class ScriptInputs:
    """What a script is made from; ``files`` is the URL prefix relative
    kernel and initrd names are fetched under (HTTP if it runs, else TFTP)."""

    machine: Machine
    profile: Profile
    server: str
    root_path: str
    files: str
    auth: ChapAuth | None = None

    def values(self) -> dict[str, str]:
        m, p = self.machine, self.profile
        return {"hostname": m.hostname, "mac": m.mac, "profile": p.name, "server": self.server,
                "root_path": self.root_path, "initiator_iqn": m.initiator_iqn, "target_iqn": m.target_iqn,
                "kernel": self._url(p.kernel), "initrd": self._url(p.initrd), "cmdline": p.cmdline,
                "files": self.files, "chap": "\n".join(chap_lines(self.auth))}

    def _url(self, name: str) -> str:
        return name if "://" in name or not name else f"{self.files}/{name.lstrip('/')}"


def chap_lines(auth: ChapAuth | None) -> list[str]:
    """iPXE settings for CHAP (iPXE src/net/tcp/iscsi.c reads them at login)."""
    if auth is None:
        return []
    lines = [f"set username {auth.forward.user}", f"set password {auth.forward.secret.decode()}"]
    if auth.reverse is not None:
        lines += [f"set reverse-username {auth.reverse.user}",
                  f"set reverse-password {auth.reverse.secret.decode()}"]
    return lines


def script(inputs: ScriptInputs) -> str:
    values = inputs.values()
    if inputs.profile.script:
        return render(inputs.profile.script, values)
    head = [
        "#!ipxe",
        f"# bootsvc: {values['hostname']} ({values['mac']}), profile {values['profile']}",
        f"set initiator-iqn {values['initiator_iqn']}",
        *chap_lines(inputs.auth),
        ":retry",
    ]
    if inputs.profile.boot is BootMethod.SANBOOT:
        body = [f"sanboot {values['root_path']} || goto failed"]
    else:
        # sanhook: the disk stays described in the iBFT for the kernel's initramfs
        body = [f"sanhook --drive 0x80 {values['root_path']} || goto failed"]
        cmdline = values["cmdline"]
        if values["initrd"]:
            cmdline = f"initrd=initrd {cmdline}".strip()  # the name EFI-stub kernels look for
        body.append(f"kernel {values['kernel']} {cmdline}".rstrip() + " || goto failed")
        if values["initrd"]:
            body.append(f"initrd --name initrd {values['initrd']} || goto failed")
        body.append("boot || goto failed")
    tail = [
        ":failed",
        f"echo bootsvc: {values['hostname']} could not boot (${{errno}}); retrying in {RETRY_SECONDS} s",
        "sanunhook --drive 0x80 ||",
        f"sleep {RETRY_SECONDS}",
        "goto retry",
        "",
    ]
    return "\n".join(head + body + tail)
