"""open-iscsi's own iSNS discovery against `bootsvc serve`: `iscsiadm -m
discovery -t isns -o nonpersistent`, run as machine A's initiator, lists
exactly A's boot target (portal, tag 1, target IQN) and nothing else — not
B's target, not bootsvc's control node; as B, only B's; as an initiator in
no DD, nothing. An initiator put in a second DD by hand (`bootsvc isns dd
add`) lists the targets of both DDs, and only its own again once that DD
is removed. iscsiadm leaves no node, send_targets or isns records behind.

Why a stand-in for iscsid: for iSNS discovery iscsiadm needs nothing from
iscsid but the initiator's name and alias, asked over the abstract unix socket
"\\0ISCSIADM_ABSTRACT_NAMESPACE", and iscsid cannot run on the build machine
(its kernel has no NETLINK_ISCSI). tests/e2e/fake_iscsid.py answers those
two requests. Abstract sockets belong to a network namespace, so the test
makes a private one (deleted afterwards) and runs everything in it:
`bootsvc serve` (iSCSI on 127.0.0.1:3260, iSNS on 127.0.0.1:3205: the
namespace is empty, so the well-known ports are free), the stand-in and
iscsiadm. No real iscsid is reached or disturbed and every packet stays on
that namespace's loopback.

iscsiadm runs in a private mount namespace too, with a fresh temp directory
bound over /etc/iscsi (its config and record database) and another over
/run/lock (its database lock): whatever it would write lands there, where
the test looks, and the host's files cannot change. The temp iscsid.conf has
no `iscsid.startup`, so an iscsiadm that finds no iscsid never runs Debian's
default `systemctl start iscsid.socket` on the host.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import need
from tests.e2e.netns import can_make_namespaces, namespaces
from tests.e2e.peers import LOOPBACK, bootsvc_command, bootsvc_serve, stop

pytestmark = pytest.mark.e2e

PREFIX = "iqn.2026-11.test.lab"
HOSTS = ("alpha", "beta")
ISCSI_PORT, ISNS_PORT = 3260, 3205  # inside the test's own namespace
FAKE_ISCSID = Path(__file__).with_name("fake_iscsid.py")
# iscsiadm's line per discovered target: "<portal>,<portal group tag> <target name>"
TARGET_LINE = re.compile(r"^(\S+),(\d+) (\S+)$")
# private mounts for iscsiadm: $1 over /etc/iscsi, $2 over /run/lock, then exec the rest
PRIVATE_DIRS = 'mount --bind "$1" /etc/iscsi; mount --bind "$2" /run/lock; shift 2; exec "$@"'
HOST_ISCSI = Path("/etc/iscsi")


def initiator(host: str) -> str:
    return f"{PREFIX}:{host}"  # bootsvc's default initiator IQN for a machine


def target(host: str) -> str:
    return f"{PREFIX}:boot.{host}"


def portal_line(host: str) -> tuple[str, str, str]:
    return (f"{LOOPBACK}:{ISCSI_PORT}", "1", target(host))  # the server's default portal group: tag 1


@dataclass(frozen=True)
class Lab:
    ns: str
    cfg: Path
    work: Path


@dataclass(frozen=True)
class Discovery:
    rc: int
    stdout: str
    stderr: str

    @property
    def targets(self) -> list[tuple[str, str, str]]:
        """(portal, tag, target) per line; every stdout line must be one."""
        lines = self.stdout.splitlines()
        found = [(m[1], m[2], m[3]) for m in map(TARGET_LINE.match, lines) if m]
        assert len(found) == len(lines), f"unexpected iscsiadm output:\n{self}"
        return sorted(found)

    def __str__(self) -> str:
        return f"rc={self.rc}\nstdout:\n{self.stdout}stderr:\n{self.stderr}"


def write_config(path: Path, work: Path) -> None:
    state = work / "state"
    (state / "images").mkdir(parents=True)
    (state / "images" / "gold.raw").write_bytes(b"\0" * (4 << 20))
    (work / "profiles").mkdir()
    (work / "profiles" / "keep.yaml").write_text("base: gold.raw\noverlay: persistent\n")
    machines = "\n".join(f"  52:54:00:00:00:{i + 1:02x}: {{hostname: {h}, profile: keep}}"
                         for i, h in enumerate(HOSTS))
    path.write_text(f"""
state_dir: {state}
iqn_prefix: {PREFIX}
profiles_dir: {work / "profiles"}
listen:
  iscsi: [{LOOPBACK}:{ISCSI_PORT}]
  isns: {LOOPBACK}:{ISNS_PORT}
machines:
{machines}
""")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """`bootsvc serve` inside a namespace of the module's own, once it has
    registered its targets and the machines' DDs with its iSNS server."""
    need("iscsiadm", "ip", "unshare", "mount")
    reason = can_make_namespaces()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("isns-iscsiadm")
    cfg = work / "bootsvc.yaml"
    write_config(cfg, work)
    with namespaces("isnsoi") as (ns,):
        proc = bootsvc_serve(cfg, work / "serve.log", "event=isns.synced", netns=ns)
        try:
            yield Lab(ns, cfg, work)
        finally:
            stop(proc)


@contextlib.contextmanager
def stand_in(lab: Lab, name: str, timeout: float = 10.0) -> Iterator[Path]:
    """fake_iscsid answering ``name`` inside the lab's namespace; yields its
    log. Stopped (by PID) on exit, which frees the abstract socket."""
    log = lab.work / f"fake_iscsid-{name.rsplit(':', 1)[-1]}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", lab.ns, sys.executable, str(FAKE_ISCSID), name,
                                 "--alias", "e2e", "--seconds", "60"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while "listening" not in log.read_text():  # bounded poll
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"fake iscsid did not start:\n{log.read_text()}")
            time.sleep(0.02)
        yield log
    finally:
        stop(proc)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``root``: relative path -> (size, mtime). lstat:
    iscsiadm's records include symlinks that may dangle."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def private_dirs(lab: Lab) -> tuple[Path, Path]:
    """Fresh stand-ins for /etc/iscsi and /run/lock; the config file only
    keeps iscsiadm from trying to start iscsid on the host (module docstring)."""
    etc, lock = lab.work / "etc-iscsi", lab.work / "run-lock"
    for d in (etc, lock):
        shutil.rmtree(d, ignore_errors=True)  # the previous discovery's
        d.mkdir()
    (etc / "iscsid.conf").write_text("# no iscsid.startup: never start an iscsid from a test\n")
    return etc, lock


def discover(lab: Lab) -> Discovery:
    """`iscsiadm -m discovery -t isns` against bootsvc's iSNS server, with
    its config and database in temp dirs; asserts it wrote nothing there
    nor under the host's /etc/iscsi."""
    etc, lock = private_dirs(lab)
    before, host_before = snapshot(etc), snapshot(HOST_ISCSI)
    r = subprocess.run(["ip", "netns", "exec", lab.ns, "unshare", "--mount", "--propagation", "private", "--",
                        "sh", "-ec", PRIVATE_DIRS, "sh", str(etc), str(lock),
                        "iscsiadm", "-m", "discovery", "-t", "isns", "-p", f"{LOOPBACK}:{ISNS_PORT}",
                        "-o", "nonpersistent"], capture_output=True, text=True, timeout=30)
    found = Discovery(r.returncode, r.stdout, r.stderr)
    after = snapshot(etc)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"iscsiadm wrote records: {changed}\n{found}"
    assert snapshot(HOST_ISCSI) == host_before, "the host's /etc/iscsi changed"
    return found


def discover_as(lab: Lab, name: str) -> Discovery:
    with stand_in(lab, name) as log:
        found = discover(lab)
    # the name iscsiadm sent came from the stand-in (MGMT_IPC_CONFIG_INAME)
    asked = log.read_text()
    assert re.search(rf"^request command=8 bytes=\d+ -> err=0 value={re.escape(repr(name))}$", asked, re.M), asked
    return found


def bootsvc_isns(lab: Lab, *args: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", lab.ns, *bootsvc_command(), "isns", "-c", str(lab.cfg), *args],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_each_machine_discovers_only_its_own_target(lab: Lab) -> None:
    for host in HOSTS:
        found = discover_as(lab, initiator(host))
        assert found.rc == 0, found
        assert found.targets == [portal_line(host)], found


def test_initiator_in_no_dd_discovers_nothing(lab: Lab) -> None:
    found = discover_as(lab, "iqn.2026-11.test.other:stranger")
    assert found.targets == [], found
    # open-iscsi 2.1.8: an empty answer is "No portals found", exit 21 (ISCSI_ERR_NO_OBJS_FOUND)
    assert found.rc == 21 and "No portals found" in found.stderr, found


def test_second_dd_adds_its_targets_until_removed(lab: Lab) -> None:
    assert "created" in bootsvc_isns(lab, "dd", "add", "lab", target("alpha"), initiator("beta"))
    try:
        found = discover_as(lab, initiator("beta"))
        assert found.rc == 0 and found.targets == [portal_line("alpha"), portal_line("beta")], found
        # alpha's initiator is not in "lab": still only its own target
        found = discover_as(lab, initiator("alpha"))
        assert found.rc == 0 and found.targets == [portal_line("alpha")], found
    finally:
        assert "removed" in bootsvc_isns(lab, "dd", "remove", "lab")
    found = discover_as(lab, initiator("beta"))
    assert found.rc == 0 and found.targets == [portal_line("beta")], found


def test_without_the_stand_in_iscsiadm_has_no_initiator_name(lab: Lab) -> None:
    # nothing answers iscsid's socket in the namespace: the names in the other
    # tests can only have come from fake_iscsid (and no host iscsid leaks in)
    found = discover(lab)
    assert found.targets == [], found
    # open-iscsi 2.1.8: exit 20 (ISCSI_ERR_ISCSID_NOTCONN), having run no startup command
    assert found.rc == 20 and "could not connect to iscsid" in found.stderr, found
    assert "Could not start it up automatically" in found.stderr, found
