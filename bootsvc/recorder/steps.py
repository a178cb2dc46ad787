"""The steps of a network boot, as the server sees them, and which event is
which step (DESIGN.md "The boot flow").

A PXE ROM asks DHCP (``rom-offer``, ``rom-ack``), fetches iPXE
(``bootfile``), iPXE asks DHCP again (``ipxe-offer``, ``ipxe-ack``),
fetches its script (``script``), logs in to the machine's disk
(``login``) and reads it (``first-read``); the OS then logs in again from
the iBFT (``os-login``) and reads its root (``os-read``). Everything else
(a refusal, a missing file, a dropped session, a medium error) is a step
too, so the diagnosis (bootsvc/recorder/diagnosis.py) reads one list.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from ..events import Event, Kind
from ..scripts import mac_of_script


class Step(str, enum.Enum):
    DROPPED = "dhcp-dropped"  # a DHCP request got no answer (unknown MAC, no subnet, ...)
    ROM_OFFER = "rom-offer"  # the boot ROM was offered an address and iPXE
    ROM_ACK = "rom-ack"
    BOOTFILE = "bootfile"  # iPXE (or another file) fetched over TFTP/HTTP
    FILE_MISSING = "file-missing"  # a fetch for a file that is not there
    FETCH_FAILED = "fetch-failed"  # a transfer that started and did not finish
    IPXE_OFFER = "ipxe-offer"  # iPXE's own DHCP
    IPXE_ACK = "ipxe-ack"
    BOOT_REFUSED = "boot-refused"  # bootsvc had nothing to hand it (no disk, no iPXE for its arch)
    SCRIPT = "script"  # its iPXE script fetched
    SCRIPT_REFUSED = "script-refused"  # asked from an address that is not the machine's
    KERNEL = "kernel"  # a kernel or initrd fetched (boot: kernel profiles)
    LOGIN = "login"  # the first iSCSI login of the attempt: iPXE's
    LOGIN_FAILED = "login-failed"
    FIRST_READ = "first-read"
    OS_LOGIN = "os-login"  # a later login: the OS's, from the iBFT
    OS_READ = "os-read"  # the OS reads its root: booted
    IO_ERROR = "io-error"
    SESSION_END = "session-end"  # a logout or a dropped session, with the bytes it moved
    DISK_FAILED = "disk-failed"  # its disk could not be made
    DISK_STALLED = "disk-stalled"  # a request to its disk waited storage.stall_after seconds
    DISK_UNSTALLED = "disk-unstalled"  # that request no longer waits
    ISNS_REGISTERED = "isns-registered"  # the machine registered itself with iSNS (its OS's iscsid)
    ISNS_QUERY = "isns-query"  # it asked iSNS for its targets (discovery)


class Seen(NamedTuple):
    """One step of one boot: when, what, and what the event said of it."""

    time: float
    step: Step
    detail: Mapping[str, object]


# fields worth keeping per step (the rest of an event is in the event file)
_KEEP = ("ip", "arch", "user_class", "proxy", "file", "path", "bytes", "seconds", "status", "why", "reason",
         "peer", "auth", "isid", "read_bytes", "written_bytes", "io_errors", "sense_key", "lun", "tsih", "source",
         "entity", "op")
_KEPT = frozenset(_KEEP)
_DHCP = {Kind.DHCP_OFFER: (Step.ROM_OFFER, Step.IPXE_OFFER), Kind.DHCP_ACK: (Step.ROM_ACK, Step.IPXE_ACK)}
_DIRECT = {Kind.DHCP_DROPPED: Step.DROPPED, Kind.DHCP_UNANSWERED: Step.DROPPED, Kind.BOOT_REFUSED: Step.BOOT_REFUSED,
           Kind.BOOT_SCRIPT_REFUSED: Step.SCRIPT_REFUSED, Kind.TFTP_NOT_FOUND: Step.FILE_MISSING,
           Kind.TFTP_REFUSED: Step.FILE_MISSING, Kind.TFTP_FAILED: Step.FETCH_FAILED,
           Kind.ISCSI_LOGIN_FAILED: Step.LOGIN_FAILED, Kind.ISCSI_IO_ERROR: Step.IO_ERROR,
           Kind.ISCSI_LOGOUT: Step.SESSION_END, Kind.ISCSI_SESSION_DROPPED: Step.SESSION_END,
           Kind.DISK_FAILED: Step.DISK_FAILED, Kind.DISK_STALLED: Step.DISK_STALLED,
           Kind.DISK_UNSTALLED: Step.DISK_UNSTALLED, Kind.ISNS_REGISTERED: Step.ISNS_REGISTERED,
           Kind.ISNS_QUERIED: Step.ISNS_QUERY}
KERNEL_HINTS = ("vmlinuz", "kernel", "initrd", "bzimage", "linux")
_BOOT_PATHS = ("/boot/", "/files/")  # scripts, and kernels and files from tftp.roots (bootsvc/http)
_BOOTFILES = (".efi", ".kpxe", ".pxe", ".ipxe")


def step_of(event: Event, before: Sequence[Seen] = ()) -> Step | None:
    """The step ``event`` is in a boot whose steps so far are ``before``;
    None for events that are no step of a boot."""
    kind = event.kind
    if kind in _DHCP:
        rom, ipxe = _DHCP[kind]  # type: ignore[index]
        return ipxe if event.fields.get("ipxe") else rom
    if kind in _DIRECT:
        return _DIRECT[kind]  # type: ignore[index]
    if kind is Kind.TFTP_SENT:
        return _fetched(str(event.fields.get("file", "")))
    if kind is Kind.HTTP_REQUEST:
        return _http(event)
    if kind is Kind.ISCSI_LOGIN and event.fields.get("session_type", "Normal") == "Normal":
        return Step.OS_LOGIN if _handed_over(before, str(event.fields.get("isid") or "")) else Step.LOGIN
    if kind is Kind.ISCSI_FIRST_READ:
        last = next((s.step for s in reversed(before) if s.step in (Step.LOGIN, Step.OS_LOGIN)), None)
        return Step.OS_READ if last is Step.OS_LOGIN else Step.FIRST_READ
    return None


def _handed_over(before: Sequence[Seen], isid: str = "") -> bool:
    """Whether a new login is the OS's (from the iBFT) rather than iPXE's
    own again: not when its ISID names the same kind of initiator as the
    boot's first login (iPXE reconnects before it boots a kernel, with
    its own enterprise-number ISID, 40002723..., where open-iscsi uses 00023d...),
    and only after iPXE's session read the disk without an error and was
    not logged out. iPXE's script retries a failed sanboot (bootsvc/
    scripts.py) with a new login after a READ error or a LUN it could not
    use; the OS logs in while iPXE's vanished session is still open."""
    first = next((str(s.detail.get("isid") or "") for s in before if s.step is Step.LOGIN), "")
    if _same_initiator_kind(isid, first):
        return False
    for s in reversed(before):
        if s.step is Step.IO_ERROR:
            return False  # iPXE could not read: what follows is its retry
        if s.step is Step.SESSION_END and s.detail.get("reason") in (None, "", "logout"):
            return False  # iPXE closed its session itself (a Logout)
        if s.step in (Step.FIRST_READ, Step.OS_READ):
            return True
        if s.step in (Step.LOGIN, Step.OS_LOGIN):
            return False  # logged in and never read: iPXE gave up on the LUN
    return False


def _http(event: Event) -> Step | None:
    path = str(event.fields.get("path", ""))
    status = event.fields.get("status")
    if status == 404 and (path.startswith(_BOOT_PATHS) or path.endswith(_BOOTFILES)):
        return Step.FILE_MISSING
    if event.fields.get("failed"):
        return Step.FETCH_FAILED
    if event.fields.get("method") == "HEAD":
        return None  # UEFI HTTP boot asks a file's size first: fetched once, not twice (no chainload loop)
    if status != 200 or not path.startswith(_BOOT_PATHS) and not path.endswith(_BOOTFILES):
        return None  # /healthz, /metrics, the web page: no step of a boot
    return _fetched(path.lstrip("/"))


def _fetched(name: str) -> Step:
    if mac_of_script(name) is not None:
        return Step.SCRIPT
    base = name.rsplit("/", 1)[-1].lower()
    if any(hint in base for hint in KERNEL_HINTS):
        return Step.KERNEL
    return Step.BOOTFILE


def detail_of(event: Event) -> dict[str, object]:
    """The fields of ``event`` that say something about its step."""
    # the event's few fields looked up in the set, not the set's many in the fields: on every event's path
    out = {k: v for k, v in event.fields.items() if k in _KEPT and v is not None}
    if event.ip is not None:
        out["ip"] = event.ip
    if event.peer is not None:
        out["peer"] = event.peer
    return out


def _same_initiator_kind(a: str, b: str) -> bool:
    """Two ISIDs (hex) whose naming part (RFC 7143 §10.12.5: the type bits
    and the OUI, else the first four bytes) is the same, so of one initiator
    implementation. iPXE's is 40 00 27 23 (the enterprise-number format with
    Fen Systems' number 10019) and a 16-bit qualifier; open-iscsi's is the
    OUI format 00 02 3d."""
    if len(a) != 12 or len(b) != 12 or not all(c in "0123456789abcdef" for c in a + b):
        return False
    return a[:6] == b[:6] if int(a[0], 16) >> 2 == 0 else a[:8] == b[:8]
