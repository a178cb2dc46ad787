"""One timeline per machine across a diskless boot, from two sources:
bootsvc's typed events (DHCP, iSCSI login and first READ, refusals: the
event file state_dir/events.jsonl) and the progress lines the demo system
prints on its serial console. Sans-I/O: events and lines go in with their
time; steps reached come out. When a boot fails, ``diagnose`` says in a
sentence where and what to look at."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ..debian import MARKER_OK as DEBIAN_OK
from ..demo import MARKER_FAIL, MARKER_OK
from ..events import Event, Kind
from ..inventory import Machine


class Step(Enum):
    """The steps of a diskless boot, in order, and how they are shown."""

    DHCP_OFFER = "dhcp-offer"
    DHCP_ACK = "dhcp-ack"          # the last ACK: the iPXE one when a PXE ROM chains to iPXE
    TARGET_LOGIN = "ipxe-login"    # iPXE's iSCSI login (sanboot)
    FIRST_READ = "first-read"      # the first READ of the boot disk
    KERNEL = "kernel"              # Linux runs: the initramfs said so
    OS_LOGIN = "os-login"          # the OS's own login from the iBFT
    ROOT = "root"                  # root file system mounted from the iSCSI disk
    BOOTED = "booted"              # the success marker


ORDER = list(Step)
# what the server says when it will not boot a machine, or refuses it a step
REFUSALS = frozenset({Kind.BOOT_REFUSED, Kind.ISCSI_LOGIN_FAILED, Kind.DHCP_NAK, Kind.DISK_FAILED,
                      Kind.DHCP_DROPPED, Kind.DHCP_UNANSWERED, Kind.TFTP_NOT_FOUND, Kind.TFTP_FAILED})
STEPS = {Kind.DHCP_OFFER: Step.DHCP_OFFER, Kind.DHCP_ACK: Step.DHCP_ACK, Kind.ISCSI_FIRST_READ: Step.FIRST_READ}
_CONSOLE = {"bootsvc-demo: initramfs": Step.KERNEL, "bootsvc-demo: iscsi-login": Step.OS_LOGIN,
            "bootsvc-demo: root-mounted": Step.ROOT,
            # Debian's kernel (not quiet) and open-iscsi's iscsistart in its initramfs
            "Run /init as init process": Step.KERNEL, "through [iface: default] is operational now": Step.OS_LOGIN,
            "EXT4-fs (sda2): mounted filesystem": Step.ROOT}


@dataclass
class Timeline:
    machine: Machine
    started: float  # Unix time the VM was started
    at: dict[Step, float] = field(default_factory=dict)  # seconds after start
    failure: str | None = None  # what the machine itself or the server said went wrong
    refusals: list[str] = field(default_factory=list)  # the server's refusals for this machine
    ended: bool = False  # QEMU exited
    isns_dd: tuple[str, ...] | None = None  # members of its DD boot-<hostname>, if iSNS runs
    isns_target: bool = False  # its target is registered in iSNS

    @property
    def booted(self) -> bool:
        return Step.BOOTED in self.at

    @property
    def done(self) -> bool:
        return self.booted or self.failure is not None or self.ended

    @property
    def last(self) -> Step | None:
        reached = [s for s in ORDER if s in self.at]
        return reached[-1] if reached else None

    def reach(self, step: Step, when: float, again: bool = False) -> bool:
        """Record ``step`` at Unix time ``when``; whether it is new."""
        if step in self.at and not again:
            return False
        self.at[step] = max(0.0, when - self.started)
        return True


class Recorder:
    """Feeds lines into the timelines of the machines being booted.
    ``end_on``: names of the flight recorder's diagnosis rules
    (recorder/diagnosis.py); bootsvc's ``boot.failed`` for a machine with
    one of them ends its boot here as failed (a fault expected and
    diagnosed: nothing more to wait for). By default none does: a slow
    boot (TCG) can stay quiet past the server's stall and still succeed."""

    def __init__(self, timelines: list[Timeline], end_on: frozenset[str] = frozenset()) -> None:
        self.timelines = timelines
        self.end_on = end_on
        self.by_mac = {t.machine.mac: t for t in timelines}
        self.by_initiator = {t.machine.initiator_iqn: t for t in timelines}

    def event(self, e: Event) -> tuple[Timeline, Step] | None:
        """One of bootsvc's events; the step it completes, if any."""
        t = self.by_mac.get(e.mac or "") or self.by_initiator.get(e.initiator or "")
        if t is None:
            return None
        if e.kind in REFUSALS:
            t.refusals.append(f"{e.name}: {e.fields.get('why', '')}".rstrip(": "))
            return None
        if e.kind is Kind.BOOT_FAILED:
            if e.fields.get("rule") in self.end_on and t.failure is None:
                t.failure = f"bootsvc diagnosed it: {e.fields.get('diagnosis', '')}"
            return None
        step = STEPS.get(e.kind)  # type: ignore[call-overload]
        if e.kind is Kind.ISCSI_LOGIN and e.fields.get("session_type", "Normal") == "Normal":
            step = Step.TARGET_LOGIN
        if step is None:
            return None
        # a PXE ROM's ACK then iPXE's: the timeline shows the last one
        return (t, step) if t.reach(step, e.time, again=step is Step.DHCP_ACK) else None

    @staticmethod
    def console_line(t: Timeline, line: str, when: float) -> Step | None:
        """A line of a machine's serial console, seen at ``when``."""
        if MARKER_OK in line or DEBIAN_OK in line:
            return Step.BOOTED if t.reach(Step.BOOTED, when) else None
        if MARKER_FAIL in line:
            t.failure = line.split(MARKER_FAIL, 1)[1].strip()
            return None
        if "Kernel panic" in line:
            t.failure = line.strip()
            return None
        for text, step in _CONSOLE.items():
            if text in line:
                return step if t.reach(step, when) else None
        return None


def diagnose(t: Timeline) -> str:
    """Where the boot stopped and what to look at, in plain words."""
    if t.booted:
        return "booted"
    last = t.last
    said = f" ({t.failure})" if t.failure else ""
    refused = f"; bootsvc said: {t.refusals[-1]}" if t.refusals else ""
    if last is None:
        return ("no DHCP offer: is the MAC in the inventory and is bootsvc's DHCP listening on the boot "
                f"network?{refused}")
    if last is Step.DHCP_OFFER:
        return f"offered an address but never acknowledged: the machine did not send a DHCP request{refused}"
    if last is Step.DHCP_ACK:
        return ("got its boot options but never logged in to its target: check the root-path, the "
                f"target's ACL and the machine's CHAP credentials{refused}")
    if last is Step.TARGET_LOGIN:
        return f"logged in but never read its disk: the firmware gave up on the LUN{refused}"
    if last is Step.FIRST_READ:
        return ("read its disk but Linux never started: no bootloader or kernel on the base image "
                f"(bootsvc image build-demo builds one){said}")
    if last is Step.KERNEL:
        return f"Linux started but its own iSCSI login failed{said}"
    if last is Step.OS_LOGIN:
        return f"logged in from the iBFT but found no root partition on the disk{said}"
    return f"mounted its root but did not finish{said}"
