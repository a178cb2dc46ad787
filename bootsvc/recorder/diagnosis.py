"""What became of a boot, in one line (the flight recorder's diagnosis).

A boot is ``booted`` once the OS read its root over its own session; it is
``running`` while steps keep coming; a boot that has been quiet for
``stall`` seconds without booting has ``failed`` and gets a diagnosis: the
step it stopped at and the likely cause, in words an operator can act on.
Each rule is one function of the boot's steps; the first that applies
wins, from the most specific (a refusal bootsvc itself made) to the most
general (the last step reached).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

from .steps import Seen, Step

STALL = 90.0  # seconds without a step after which an unfinished boot counts as failed
LOOP = 3  # bootfile fetches in one boot without a login: a chainload loop
# The steps a chainload loop goes round (iPXE's DHCP, its script, iPXE again):
# more of them after the loop was seen belong to the same failed boot.
LOOP_STEPS = frozenset({Step.BOOTFILE, Step.IPXE_OFFER, Step.IPXE_ACK, Step.SCRIPT, Step.KERNEL})
# The steps of iPXE's script retrying a sanboot that fails on READ errors
# (bootsvc/scripts.py: every few seconds, a new login each time).
RETRY_STEPS = frozenset({Step.LOGIN, Step.FIRST_READ, Step.IO_ERROR, Step.SESSION_END})
# Steps that say the boot went wrong. A boot that ends in three of them (a
# machine retrying a refused login every few seconds) or has nothing else
# (a DHCP request the config leaves unanswered) has failed at once: it
# never goes quiet long enough to stall.
FAILURES = frozenset({Step.DROPPED, Step.BOOT_REFUSED, Step.FILE_MISSING, Step.FETCH_FAILED, Step.SCRIPT_REFUSED,
                      Step.LOGIN_FAILED, Step.IO_ERROR, Step.DISK_FAILED})


class State(str, enum.Enum):
    RUNNING = "running"
    BOOTED = "booted"
    FAILED = "failed"


def state(steps: Sequence[Seen], now: float, stall: float = STALL) -> State:
    if any(s.step is Step.OS_READ for s in steps):
        return State.BOOTED
    if not steps:
        return State.RUNNING
    if repeating(steps):
        return State.FAILED  # a loop or a retry never goes quiet: it has failed once it is seen
    failing = [s.step in FAILURES for s in steps]
    if failing[-1] and (all(failing[-3:]) and len(failing) >= 3 or all(failing)):
        return State.FAILED
    return State.RUNNING if now - steps[-1].time < stall else State.FAILED


def diagnose(steps: Sequence[Seen], now: float, stall: float = STALL) -> str:
    """One line: ``booted``, ``running: <last step>``, or why it failed."""
    return diagnose_rule(steps, now, stall)[1]


def diagnose_rule(steps: Sequence[Seen], now: float, stall: float = STALL) -> tuple[str, str]:
    """The diagnosis and the name of the rule that made it (``booted``,
    ``running``, a rule's function name, or ``stopped``): the short class
    /metrics counts failures by, a bounded set unlike the line itself."""
    st = state(steps, now, stall)
    if st is State.BOOTED:
        return "booted", "booted"
    if st is State.RUNNING:
        return "running", f"running: {steps[-1].step.value}" if steps else "running"
    for rule in RULES:
        said = rule(steps)
        if said:
            return rule.__name__, said
    return "stopped", f"stopped after {steps[-1].step.value}"


def _last(steps: Sequence[Seen], *wanted: Step) -> Seen | None:
    for s in reversed(steps):
        if s.step in wanted:
            return s
    return None


def _has(steps: Sequence[Seen], *wanted: Step) -> bool:
    return _last(steps, *wanted) is not None


def _why(s: Seen) -> str:
    why = s.detail.get("why") or s.detail.get("reason")
    return f": {why}" if why else ""


def dropped(steps: Sequence[Seen]) -> str:
    s = _last(steps, Step.DROPPED)
    if s is None or _has(steps, Step.ROM_OFFER, Step.IPXE_OFFER):
        return ""
    return f"DHCP got no answer{_why(s)} (add the MAC under machines:, or check the subnets)"


def disk_failed(steps: Sequence[Seen]) -> str:
    s = _last(steps, Step.DISK_FAILED)
    return f"its disk could not be made{_why(s)}" if s else ""


def disk_stalled(steps: Sequence[Seen]) -> str:
    """A request to its disk waited and never ended: the storage (a Ceph
    cluster: a paused or lost OSD) stopped answering."""
    s = _last(steps, Step.DISK_STALLED, Step.DISK_UNSTALLED)
    if s is None or s.step is Step.DISK_UNSTALLED:
        return ""
    return (f"its disk stopped answering: a {s.detail.get('op', 'request')} waited {s.detail.get('seconds', '?')} s "
            "for the storage and more (Ceph: ceph -s, ceph health detail)")


def boot_refused(steps: Sequence[Seen]) -> str:
    s = _last(steps, Step.BOOT_REFUSED)
    if s is None or _has(steps, Step.LOGIN):
        return ""
    return f"bootsvc had nothing to hand it{_why(s)}"


def file_missing(steps: Sequence[Seen]) -> str:
    s = _last(steps, Step.FILE_MISSING)
    if s is None or _has(steps, Step.LOGIN):
        return ""
    name = s.detail.get("file") or s.detail.get("path") or "?"
    arch = next((x.detail.get("arch") for x in reversed(steps) if x.detail.get("arch") is not None), None)
    asked = f" (client architecture {arch})" if arch is not None else ""
    return f"bootfile not found: it asked for {name}{asked}; is it in tftp.roots?"


def looping(steps: Sequence[Seen]) -> bool:
    """iPXE fetched again and again without logging in: a chainload loop."""
    fetches = sum(1 for s in steps if s.step is Step.BOOTFILE)
    return fetches >= LOOP and not _has(steps, Step.LOGIN, Step.LOGIN_FAILED)


def repeating(steps: Sequence[Seen]) -> frozenset[Step]:
    """The steps a boot that has failed by going round in circles keeps
    taking: a chainload loop's, or those of a retry that meets READ errors
    again and again; none when it does not."""
    if looping(steps):
        return LOOP_STEPS
    if sum(1 for s in steps if s.step is Step.IO_ERROR) >= LOOP and not _has(steps, Step.OS_LOGIN, Step.OS_READ):
        return RETRY_STEPS
    return frozenset()


def chainload_loop(steps: Sequence[Seen]) -> str:
    if not looping(steps):
        return ""
    fetches = sum(1 for s in steps if s.step is Step.BOOTFILE)
    scripts = sum(1 for s in steps if s.step is Step.SCRIPT)
    if scripts:  # iPXE got its script each time, and the script loads iPXE again
        return (f"an iPXE chainload loop: iPXE was fetched {fetches} times, again after each of its {scripts} "
                "scripts (the profile's script chains iPXE instead of booting: check its chain/boot lines)")
    return (f"an iPXE chainload loop: iPXE was fetched {fetches} times and never got its script or "
            "root-path (iPXE's own DHCP request must get the script, not iPXE again)")


def script_refused(steps: Sequence[Seen]) -> str:
    s = _last(steps, Step.SCRIPT_REFUSED)
    if s is None or _has(steps, Step.LOGIN):
        return ""
    peer = s.detail.get("peer")
    return (f"its iPXE script was refused to {peer}: not the machine's address (its lease or fixed IP); "
            "another host, or a machine behind NAT")


def login_refused(steps: Sequence[Seen]) -> str:
    s = _last(steps, Step.LOGIN_FAILED)
    if s is None or _has(steps, Step.OS_READ) or (_last(steps, Step.LOGIN, Step.OS_LOGIN) or s).time > s.time:
        return ""
    status = str(s.detail.get("status", ""))
    kind = {"AUTHENTICATION_FAILURE": "CHAP", "AUTHORIZATION_FAILURE": "the target's ACL (initiator name)",
            "NOT_FOUND": "no such target", "SERVICE_UNAVAILABLE": "its disk is in use by another session"
            }.get(status, status or "refused")
    return f"iSCSI login refused by {kind}{_why(s)}"


def io_error(steps: Sequence[Seen]) -> str:
    s = _last(steps, Step.IO_ERROR)
    if s is None:
        return ""
    return f"READ errors on its disk (sense key {s.detail.get('sense_key', '?')}): check the image (bootsvc image check)"


def no_login(steps: Sequence[Seen]) -> str:
    if _has(steps, Step.LOGIN, Step.LOGIN_FAILED):
        return ""
    if _has(steps, Step.SCRIPT):
        return "no iSCSI login after its script: check the root-path, routing and TCP 3260 to the portal"
    if _has(steps, Step.IPXE_ACK):
        return "iPXE got its DHCP answer but never logged in nor fetched a script: root-path, routing"
    if _has(steps, Step.BOOTFILE):
        return "iPXE was loaded but never asked DHCP again: it may have failed to start (see the console)"
    if _has(steps, Step.ROM_ACK):
        return "no TFTP fetch after the DHCP ACK: check next-server and the firewall (UDP 69)"
    if _has(steps, Step.ROM_OFFER):
        return "offered an address but never requested it: another DHCP server answering first?"
    return ""


def no_read(steps: Sequence[Seen]) -> str:
    if not _has(steps, Step.LOGIN) or _has(steps, Step.FIRST_READ, Step.OS_LOGIN):
        return ""
    return "logged in but never read its disk: the firmware's boot order, or it gave up on the LUN (iBFT)"


def no_os_login(steps: Sequence[Seen]) -> str:
    if not _has(steps, Step.FIRST_READ) or _has(steps, Step.OS_LOGIN):
        return ""
    end = _last(steps, Step.SESSION_END)
    read = sum(int(str(s.detail.get("read_bytes", 0))) for s in steps if s.step is Step.SESSION_END)
    reason = str(end.detail.get("reason", "")) if end else ""
    if end is not None and reason not in ("", "replaced", "connection_lost", "nop_timeout") and read < (1 << 20):
        return f"its session was dropped mid-boot ({reason}) after {read} bytes"
    loaded = f" ({read >> 20} MiB read)" if read >= (1 << 20) else ""
    return ("the kernel was loaded" + loaded + " but the OS never logged in: its initramfs lacks iSCSI/iBFT "
            "support, or the NIC was reset")


def no_os_read(steps: Sequence[Seen]) -> str:
    if not _has(steps, Step.OS_LOGIN):
        return ""
    return "the OS logged in but never read its disk: no root partition it knows, or it gave up"


RULES: tuple[Callable[[Sequence[Seen]], str], ...] = (
    disk_failed, disk_stalled, dropped, boot_refused, io_error, login_refused, script_refused, file_missing, chainload_loop,
    no_login, no_read, no_os_login, no_os_read,
)
# the names a failed boot's rule goes by (``boot.failed``'s ``rule``): a bounded set, for
# /metrics' labels and `bootsvc vm --end-on`
FAILURE_RULES = frozenset({r.__name__ for r in RULES} | {"stopped"})
