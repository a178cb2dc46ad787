"""tgt (tgtd 1.0.85) with its iSNS client on, against `bootsvc serve`'s iSNS
server (listen.isns), seen through open-isns's isnsadm.

Proven here:
- tgtd registers its entity (EID 127.0.0.1), its portal 127.0.0.1:P with an
  SCN port, and both its targets as iSCSI target nodes; isnsadm, asking as a
  configured control node, lists all of them; an initiator put in a DD with
  one target discovers that target and its portal, and not the other;
- deleting the targets deregisters them one by one, the last one takes the
  entity along, and tgtd then ends cleanly on `--op delete --mode system`;
- regression: tgtd with two targets keeps one SCN socket and used to spin at
  100% CPU, deaf to tgtadm, when the server opened two connections to that
  port at once (one SCN per target). Each change below sends an SCN to both
  targets at the same moment (a DD holding both, an initiator in it
  registering, then deregistering): tgtd receives every SCN, still answers
  tgtadm within seconds, does not spin, and stays registered.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from tests.e2e.conftest import need
from tests.e2e.peers import LOOPBACK, bootsvc_serve, free_port, isnsadm, stop, wait_for_port

pytestmark = pytest.mark.e2e

PREFIX = "iqn.2026-11.test.tgtisns"
ADMIN = f"{PREFIX}:admin"  # isns.control_nodes: sees every object, may register DDs
INITIATOR = f"{PREFIX}:init1"
TARGETS = (f"{PREFIX}:disk1", f"{PREFIX}:disk2")
ANSWER_WITHIN = 5.0  # seconds a healthy tgtd needs at most to answer tgtadm on loopback
OUTPUT_CAP = 4 << 20  # bytes of tgtd's debug output kept: a spinning tgtd writes megabytes a second


# -- isnsadm's output -----------------------------------------------------------------------

IsnsObject = tuple[str, dict[str, str]]  # ("iSCSI Storage Node", {"iSCSI name": "iqn...", ...})
# --query heads each object "object[N] = <KIND>", --list only "Object N:" (kind "")
_OBJECT = re.compile(r"^(?:object\[\d+\] = <(.+)>|Object \d+:)$")
_ATTR = re.compile(r"^\s+[0-9a-f]{4}\s+\S+\s*: (.+?) = (.*)$")


def isns_objects(output: str) -> list[IsnsObject]:
    """isnsadm's objects: kind and attributes by their display name
    (quotes around strings dropped; a repeated attribute keeps its first value)."""
    objects: list[IsnsObject] = []
    for line in output.splitlines():
        if m := _OBJECT.match(line):
            objects.append((m[1] or "", {}))
        elif (m := _ATTR.match(line)) and objects:
            objects[-1][1].setdefault(m[1], m[2].strip('"'))
    return objects


def of_kind(objects: list[IsnsObject], kind: str) -> list[dict[str, str]]:
    return [attrs for k, attrs in objects if k == kind]


def targets_listed(work: Path, isns: int, source: str = ADMIN) -> list[str]:
    """The iSCSI target nodes ``source`` sees, by name."""
    rc, out = isnsadm(work, isns, source, "--list", "nodes")
    assert rc == 0, out
    return sorted(n["iSCSI name"] for _, n in isns_objects(out) if n.get("iSCSI node type") == "Target")


def listed(work: Path, isns: int, what: str, source: str = ADMIN) -> list[dict[str, str]]:
    rc, out = isnsadm(work, isns, source, "--list", what)
    assert rc == 0, out
    return [attrs for _, attrs in isns_objects(out)]


def poll(check: Callable[[], bool], timeout: float) -> bool:
    """Whether ``check`` came true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    if not poll(check, timeout):
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- bootsvc serve with listen.isns ----------------------------------------------------------

@dataclass(frozen=True)
class IsnsServe:
    port: int
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def isns_serve(tmp_path: Path) -> Iterator[IsnsServe]:
    """`bootsvc serve` with its iSNS server only (no iSCSI portal, so bootsvc
    registers nothing itself); default_dd stays hidden, so ADMIN asks.
    Skips before starting anything when a peer is not installed."""
    need("tgtd", "tgtadm", "isnsadm")
    port = free_port()
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nlisten:\n  isns: {LOOPBACK}:{port}\n"
                   f"isns:\n  control_nodes: [{ADMIN}]\n  registration_period: 0\n")
    log = tmp_path / "serve.log"
    proc = bootsvc_serve(cfg, log, "isns serving")
    try:
        yield IsnsServe(port, log)
    finally:
        stop(proc)


# -- tgtd --------------------------------------------------------------------------------------

@dataclass
class CappedOutput:
    """A child's output read on a thread: the first ``cap`` bytes kept, the
    rest drained so the child never blocks on a full pipe."""

    stream: IO[bytes]
    cap: int = OUTPUT_CAP
    data: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while chunk := self.stream.read1(1 << 16):  # type: ignore[attr-defined]
            if len(self.data) < self.cap:
                self.data += chunk[:self.cap - len(self.data)]

    def text(self) -> str:
        return bytes(self.data).decode(errors="replace")


@dataclass
class Tgtd:
    proc: subprocess.Popen[bytes]
    control: int
    portal: int
    output: CappedOutput

    def adm(self, *args: str, timeout: float = ANSWER_WITHIN) -> subprocess.CompletedProcess[str]:
        """tgtadm on this tgtd's control port; raises TimeoutExpired when tgtd does not answer."""
        return subprocess.run(["tgtadm", "-C", str(self.control), *args], check=False, capture_output=True,
                              text=True, timeout=timeout)

    def must(self, *args: str) -> str:
        r = self.adm(*args)
        assert r.returncode == 0, f"tgtadm {' '.join(args)}: {r.stdout}{r.stderr}"
        return r.stdout

    def scns_received(self) -> list[str]:
        """The destination name of every SCN tgtd read from its SCN port, in
        order, from its debug output (-d 1): isns_scn_handle logs the header
        (function 8: SCN), then print_scn_pdu the names, the destination first."""
        names = []
        for block in re.split(r"isns_scn_handle\(\d+\) got a header 8 ", self.output.text())[1:]:
            if m := re.search(r"scn name: \d+, (\S+)", block):
                names.append(m[1])
        return names

    def got_scns(self, count: int, timeout: float) -> bool:
        """Whether tgtd has read ``count`` SCNs within ``timeout`` seconds."""
        return poll(lambda: len(self.scns_received()) >= count, timeout)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@contextlib.contextmanager
def tgtd(isns: int, targets: tuple[str, ...] = TARGETS) -> Iterator[Tgtd]:
    """tgtd on 127.0.0.1:<free port> registering ``targets`` (tids 1...) with
    the iSNS server on loopback ``isns``. tgt needs the portal's address
    spelled out: with 0.0.0.0 it would register the iSNS server's address."""
    portal = free_port()
    control = 1000 + portal % 30000  # tgtd's control socket is /var/run/tgtd/socket.<N>, N < 32768
    os.makedirs("/var/run/tgtd", exist_ok=True)
    proc = subprocess.Popen(["tgtd", "-f", "-d", "1", "-C", str(control), "--iscsi", f"portal={LOOPBACK}:{portal}"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    t = Tgtd(proc, control, portal, CappedOutput(proc.stdout))
    try:
        wait_for_port(portal, proc, timeout=10)
        wait_for(lambda: t.adm("--op", "show", "--mode", "sys").returncode == 0, "tgtd's control socket", 10)
        # server address and port first: `iSNS On` connects at once
        t.must("--op", "update", "--mode", "sys", "--name", "iSNSServerIP", "-v", LOOPBACK)
        t.must("--op", "update", "--mode", "sys", "--name", "iSNSServerPort", "-v", str(isns))
        t.must("--op", "update", "--mode", "sys", "--name", "iSNS", "-v", "On")
        for tid, iqn in enumerate(targets, 1):
            t.must("--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", str(tid), "-T", iqn)
            t.must("--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", str(tid), "-I", "ALL")
        yield t
    finally:
        end_tgtd(t, len(targets))


def end_tgtd(t: Tgtd, targets: int) -> None:
    """tgtd ignores SIGTERM: delete its targets, then the system; SIGKILL
    (by the PID we started) if it lingers or does not answer."""
    if t.proc.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            for tid in range(targets, 0, -1):
                t.adm("--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", str(tid), "--force")
            t.adm("--op", "delete", "--mode", "system")
        try:
            t.proc.wait(5)
        except subprocess.TimeoutExpired:
            t.proc.send_signal(signal.SIGKILL)
            t.proc.wait(5)
    t.output.thread.join(5)


def wait_registered(isns: IsnsServe, work: Path, targets: tuple[str, ...] = TARGETS) -> None:
    wait_for(lambda: targets_listed(work, isns.port) == sorted(targets),
             f"tgtd's targets in the iSNS server\n{isns.text()}")


# -- the tests ---------------------------------------------------------------------------------

def test_tgt_registers_its_targets_and_isnsadm_sees_them(tmp_path: Path, isns_serve: IsnsServe) -> None:
    with tgtd(isns_serve.port) as t:
        wait_registered(isns_serve, tmp_path)

        entities = [e for e in listed(tmp_path, isns_serve.port, "entities") if "Entity identifier" in e]
        assert [e["Entity identifier"] for e in entities] == [LOOPBACK], entities  # tgt's EID: its host address
        assert entities[0]["Entity protocol"].startswith("iSCSI"), entities
        portals = [p for p in listed(tmp_path, isns_serve.port, "portals") if "Portal IP address" in p]
        assert [(p["Portal IP address"], p["Portal TCP/UDP port"]) for p in portals] == \
            [(LOOPBACK, f"{t.portal}/tcp")], portals
        assert portals[0].get("SCN port", "").endswith("/tcp"), portals  # tgt asks for SCNs on its own port

        # discovery as the initiator would do it: in a DD with disk1 only, it
        # sees disk1 at tgt's portal, and not disk2
        rc, out = isnsadm(tmp_path, isns_serve.port, INITIATOR, "--register", f"initiator={INITIATOR}")
        assert rc == 0, out
        rc, out = isnsadm(tmp_path, isns_serve.port, ADMIN, "--dd-register", "dd-name=disk1-only",
                          f"member-name={INITIATOR}", f"member-name={TARGETS[0]}")
        assert rc == 0, out
        assert targets_listed(tmp_path, isns_serve.port, INITIATOR) == [TARGETS[0]]
        rc, out = isnsadm(tmp_path, isns_serve.port, INITIATOR, "--query", f"iscsi-name={TARGETS[0]}")
        assert rc == 0, out
        groups = of_kind(isns_objects(out), "iSCSI Portal Group")
        assert {(g["Portal group name"], g["Portal group address"], g["Portal group port"]) for g in groups} == \
            {(TARGETS[0], LOOPBACK, f"{t.portal}/tcp")}, out

        # deleting a target deregisters its node; the last one takes the entity
        t.must("--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "2")
        wait_for(lambda: targets_listed(tmp_path, isns_serve.port) == [TARGETS[0]], "disk2 deregistered")
        t.must("--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1")
        wait_for(lambda: targets_listed(tmp_path, isns_serve.port) == [], "disk1 deregistered")
        wait_for(lambda: all(e.get("Entity identifier") != LOOPBACK
                             for e in listed(tmp_path, isns_serve.port, "entities")), "tgt's entity gone")
        t.must("--op", "delete", "--mode", "system")
        assert t.proc.wait(10) == 0, t.output.text()[-2000:]
    log = isns_serve.text()
    assert f"event=isns.entity_removed entity={LOOPBACK} why=deregistered" in log, log


def test_tgt_with_two_targets_survives_scns_to_both(tmp_path: Path, isns_serve: IsnsServe) -> None:
    port = isns_serve.port
    with tgtd(port) as t:
        wait_registered(isns_serve, tmp_path)
        changes: list[tuple[str, tuple[str, ...]]] = [
            # DD_MEMBER_ADDED to both targets (a DD's registered members hear of its changes)
            (ADMIN, ("--dd-register", "dd-name=lab", f"member-name={TARGETS[0]}", f"member-name={TARGETS[1]}",
                     f"member-name={INITIATOR}")),
            # OBJECT_ADDED, then OBJECT_REMOVED: both targets see the initiator through the DD
            (INITIATOR, ("--register", f"initiator={INITIATOR}")),
            (INITIATOR, ("--deregister", f"iscsi-name={INITIATOR}")),
        ]
        for n, (source, args) in enumerate(changes, 1):
            rc, out = isnsadm(tmp_path, port, source, *args)
            assert rc == 0, out
            # one SCN per target, sent at the same moment; a wedged tgtd never
            # reads the second, so ask tgtadm before judging what arrived
            arrived = t.got_scns(2 * n, ANSWER_WITHIN)
            assert_responsive(t)
            assert arrived, f"SCNs to both targets after {args[0]}: tgtd got {t.scns_received()}\n{isns_serve.text()}"
            assert sorted(t.scns_received()[-2:]) == sorted(TARGETS), t.scns_received()
        assert "scn_failed" not in isns_serve.text(), isns_serve.text()
        assert_not_spinning(t)
        assert targets_listed(tmp_path, port) == sorted(TARGETS)  # still registered, nothing expired or dropped
        assert len(t.scns_received()) == 2 * len(changes), t.scns_received()  # nothing repeated


def assert_responsive(t: Tgtd) -> None:
    """The wedged tgtd never answered tgtadm at all: a timeout here is the bug."""
    try:
        r = t.adm("--lld", "iscsi", "--op", "show", "--mode", "target")
    except subprocess.TimeoutExpired:
        pytest.fail(f"tgtd did not answer tgtadm within {ANSWER_WITHIN} s (wedged on its SCN socket); "
                    f"its output ends:\n{t.output.text()[-3000:]}")
    assert r.returncode == 0 and all(iqn in r.stdout for iqn in TARGETS), r.stdout + r.stderr


def assert_not_spinning(t: Tgtd, window: float = 1.0) -> None:
    """An idle tgtd uses next to no CPU; the wedged one used all of a core."""
    before = t.cpu_seconds()
    time.sleep(window)
    used = t.cpu_seconds() - before
    assert used < 0.5 * window, f"tgtd used {used:.2f} s of CPU in {window} s while idle"
