"""Multipath against real peers: ``bootsvc serve`` with one target on two
portals (127.0.0.1 and 127.0.0.2, one portal group each, from the config's
listen.iscsi list), and

- libiscsi's MultipathIO family given both paths, with tgt (both portals in
  its portal group 1) run beside it as the reference;
- libiscsi's iscsi-inq decoding VPD page 83h through each portal;
- iSNS: every portal registered, and the target's Portal Group objects
  (RFC 4171 §6.5) with each portal's tag, as open-isns's isnsadm reads them;
- two sessions of one initiator through the two portals with I/O in flight
  on both, one path's TCP connection reset by the client mid-command: the
  other path carries on (cut from either end), and what was written through one path reads back
  through the other (docs/multipath.md).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from target.pdu import DataIn, ScsiResponse
from tests.e2e import compliance
from tests.e2e.conftest import need
from tests.e2e.peers import Portal, free_port, isnsadm, stop, tgt_export, wait_for_port
from tests.e2e.test_isns_tgt import isns_objects, of_kind
from tests.iscsi_client import Client, read10, write10

pytestmark = pytest.mark.e2e

HOSTS = ("127.0.0.1", "127.0.0.2")
IQN = "iqn.2026-11.test.bootsvc:paths"
ADMIN = "iqn.2026-11.test.bootsvc:admin"
SIZE = 64 << 20
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends RST, as a dead link's peer would see


def _image(tmp_path: Path, name: str) -> Path:
    """A fresh zeroed image: MultipathIO.CompareAndWrite expects block 256
    (one past what it clears with WRITE SAME) to be zero, so it only
    passes on a disk it has not run on before."""
    img = tmp_path / f"{name}.img"
    subprocess.run(["truncate", "-s", str(SIZE), str(img)], check=True)
    return img


@contextlib.contextmanager
def serve_two_portals(tmp_path: Path, image: Path, isns: int | None = None) -> Iterator[Portal]:
    """``bootsvc serve`` of ``image`` as LUN 0 of IQN on both loopback
    addresses, one port; its log in tmp_path/serve.log. ``isns``: the port
    of its iSNS server too (ADMIN its control node)."""
    port = free_port()
    cfg = tmp_path / "bootsvc.yaml"
    isns_config = (f"  isns: {HOSTS[0]}:{isns}\nisns: {{control_nodes: [{ADMIN}]}}\n" if isns else "")
    cfg.write_text(f"""
state_dir: {tmp_path / "state"}
listen:
  iscsi: [{HOSTS[0]}:{port}, {HOSTS[1]}:{port}]
{isns_config}targets:
  - iqn: {IQN}
    luns: [{image}]
    auth: none
""")
    check = subprocess.run([sys.executable, "-m", "bootsvc", "check", "-c", str(cfg)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0 and f"{HOSTS[1]}:{port} (portal group 2)" in check.stdout, check.stdout + check.stderr
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bootsvc", "serve", "-c", str(cfg)],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
        yield Portal(port, IQN, 0, proc.pid)
    finally:
        stop(proc)


def test_libiscsi_multipathio_two_paths(tmp_path: Path) -> None:
    need("iscsi-test-cu", "tgtd", "tgtadm")
    with tgt_export(_image(tmp_path, "tgt"), more_hosts=HOSTS[1:]) as portal:
        reference = compliance.run(portal.url(), "ALL.MultipathIO.*", 300, multipath=portal.url(host=HOSTS[1]))
    with serve_two_portals(tmp_path, _image(tmp_path, "bootsvc")) as portal:
        ours = compliance.run(portal.url(), "ALL.MultipathIO.*", 300, multipath=portal.url(host=HOSTS[1]))
    print(f"\ntgt:     {compliance.counts(reference)} {reference}\nbootsvc: {compliance.counts(ours)} {ours}")
    assert len(ours) == 4 and set(ours.values()) == {"passed"}, ours
    assert compliance.counts(ours)["passed"] >= compliance.counts(reference)["passed"]


def test_iscsi_inq_decodes_each_paths_designators(tmp_path: Path) -> None:
    """libiscsi's own decoder (iscsi-inq) on VPD page 83h through each
    portal: the logical unit's designators the same, the target port's
    name each path's own; standard INQUIRY says TPGS 1 (implicit ALUA)."""
    need("iscsi-inq")
    pages = []
    with serve_two_portals(tmp_path, _image(tmp_path, "disk")) as portal:
        for host in HOSTS:
            r = subprocess.run(["iscsi-inq", "-e", "1", "-c", "131", portal.url(host=host)], capture_output=True,
                               timeout=30)
            assert r.returncode == 0, r.stderr
            pages.append(r.stdout.split(b"DEVICE DESIGNATOR #")[1:])
            r = subprocess.run(["iscsi-inq", portal.url(host=host)], capture_output=True, text=True, timeout=30)
            assert "TPGS:1" in r.stdout.splitlines(), r.stdout
    lu = [[d.split(b"\n", 1)[1] for d in page if b"LOGICAL_UNIT" in d] for page in pages]
    assert len(lu[0]) == 2 and lu[0] == lu[1]  # NAA and T10 vendor id, byte for byte
    for tag, page in enumerate(pages, 1):
        assert any(b"Association:(1) TARGET_PORT" in d and f"Designator:[{IQN},t,0x{tag:04x}]".encode() in d
                   for d in page), page
        assert sum(b"RELATIVE_TARGET_PORT" in d or b"TARGET_PORT_GROUP" in d for d in page) == 2, page


def test_isns_has_every_portal_and_its_group(tmp_path: Path) -> None:
    need("isnsadm")
    isns = free_port()
    with serve_two_portals(tmp_path, _image(tmp_path, "disk"), isns) as portal:
        wait_for_port(isns)
        deadline = time.monotonic() + 20
        while "event=isns.synced" not in (tmp_path / "serve.log").read_text():  # bounded: 20 s
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        rc, out = isnsadm(tmp_path, isns, ADMIN, "--list", "portals")
        assert rc == 0, out
        portals = [p for _, p in isns_objects(out) if "Portal IP address" in p]
        assert sorted((p["Portal IP address"], p["Portal TCP/UDP port"]) for p in portals) == [
            (h, f"{portal.port}/tcp") for h in HOSTS], out
        rc, out = isnsadm(tmp_path, isns, ADMIN, "--query", f"iscsi-name={IQN}")
        assert rc == 0, out
        every = of_kind(isns_objects(out), "iSCSI Portal Group")
        # bootsvc's control node is reached at no portal: its groups have a NULL tag, not the default 1
        assert sorted((g["Portal group address"], g["Portal group tag"]) for g in every
                      if g["Portal group name"] != IQN) == [(h, "<empty>") for h in HOSTS], out
        groups = [g for g in every if g["Portal group name"] == IQN]
        assert sorted((g["Portal group name"], g["Portal group address"], g["Portal group port"],
                       g["Portal group tag"]) for g in groups) == [
            (IQN, h, f"{portal.port}/tcp", str(tag)) for tag, h in enumerate(HOSTS, 1)], out


class OnePath:
    """One path: a session through one portal, with commands in flight."""

    def __init__(self, host: str, port: int, isid: int) -> None:
        self.client = Client(host, port, isid=isid.to_bytes(6, "big"))
        r = self.client.login(IQN)
        assert r.status_class == 0 and r.transit, r
        assert self.client.keys["TargetPortalGroupTag"] == str(HOSTS.index(host) + 1)
        self.waiting: dict[int, bytearray] = {}

    def write(self, lba: int, data: bytes) -> None:
        itt = self.client.command(write10(lba, len(data) // 512), write=data, immediate_len=len(data))
        self.waiting[itt] = bytearray()

    def read(self, lba: int, blocks: int) -> int:
        itt = self.client.command(read10(lba, blocks), read=blocks * 512)
        self.waiting[itt] = bytearray()
        return itt

    def complete(self) -> dict[int, bytes]:
        """Wait for every command sent (each PDU within the client's 10 s);
        each must end GOOD. Returns the data read, by ITT."""
        done: dict[int, bytes] = {}
        for _ in range(10 * len(self.waiting) + 10):  # PDUs: bounded however the data is split
            if not self.waiting:
                return done
            pdu = self.client.recv()
            assert pdu is not None, "the target closed a path that was not cut"
            if isinstance(pdu, DataIn):
                self.waiting[pdu.itt] += pdu.data
                status = pdu.status if pdu.status_present else None
            else:
                assert isinstance(pdu, ScsiResponse), pdu
                status = pdu.status
            if status is not None:
                assert status == 0, f"ITT {pdu.itt}: status {status}"
                done[pdu.itt] = bytes(self.waiting.pop(pdu.itt))
        raise AssertionError(f"commands never completed: {sorted(self.waiting)}")

    def cut(self, side: str) -> None:
        """The link dies under the session, commands still in flight: the
        initiator resets it, or the target's socket is destroyed under
        bootsvc (``ss -K``: the kernel aborts it and resets the peer)."""
        if side == "initiator":
            self.client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        else:
            host, port = self.client.sock.getsockname()[:2]
            server_port = self.client.sock.getpeername()[1]
            r = subprocess.run(["ss", "-K", "-t", "dst", host, "sport", "=", f":{server_port}",
                                "dport", "=", f":{port}"], capture_output=True, text=True, timeout=10)
            assert r.returncode == 0 and f":{port}" in r.stdout, r.stdout + r.stderr
        self.client.close()


ROUNDS, CUT_AT = 40, 15
BLOCKS = 8  # 4 KiB a write


@pytest.mark.parametrize("side", ["initiator", "target"])
def test_one_path_cut_during_io_the_other_carries_on(tmp_path: Path, side: str) -> None:
    """Round i: each path writes its own 4 KiB block and reads the block the
    other path wrote in round i-1 (completed, so it must be there),
    everything in flight at once. At CUT_AT path A is reset with a write
    and a read outstanding, by the initiator or under the target; B goes on
    alone, its reads of A's blocks still right. A new session through A's
    portal then reads every block B wrote."""
    a_lba, b_lba = 0, 4096  # each path's own region, in blocks
    written: dict[int, bytes] = {}
    with serve_two_portals(tmp_path, _image(tmp_path, "disk")) as portal:
        a = OnePath(HOSTS[0], portal.port, 0x400000000001)
        b = OnePath(HOSTS[1], portal.port, 0x400000000002)
        peers = [f"peer={p.client.sock.getsockname()[0]}:{p.client.sock.getsockname()[1]}" for p in (a, b)]
        for i in range(ROUNDS):
            mine = [(b, b_lba + i * BLOCKS, b_lba + (i - 1) * BLOCKS, a_lba + (i - 1) * BLOCKS)]
            if i <= CUT_AT:
                mine.append((a, a_lba + i * BLOCKS, a_lba + (i - 1) * BLOCKS, b_lba + (i - 1) * BLOCKS))
            checks = {}
            for path, lba, _, other in mine:
                written[lba] = os.urandom(BLOCKS * 512)
                path.write(lba, written[lba])
                if i and other in written:
                    checks[(path, path.read(other, BLOCKS))] = written[other]
            if i == CUT_AT:
                a.cut(side)
                del written[a_lba + i * BLOCKS]  # in flight when cut: it may or may not have landed
                a.waiting.clear()
            for path in (a, b) if i < CUT_AT else (b,):
                got = path.complete()
                for (p, itt), expected in checks.items():
                    if p is path:
                        assert got[itt] == expected, f"round {i}: stale data through the other path"
        b.client.logout()
        again = OnePath(HOSTS[0], portal.port, 0x400000000001)
        for lba, data in written.items():
            again.read(lba, BLOCKS)
            assert next(iter(again.complete().values())) == data, f"LBA {lba} through path A after the cut"
        again.client.logout()
    log = (tmp_path / "serve.log").read_text().splitlines()
    logins = [line for line in log if "event=iscsi.login" in line]
    assert [("portal_group=1" in line, "portal_group=2" in line) for line in logins] == [
        (True, False), (False, True), (True, False)]
    dropped = [line for line in log if "event=iscsi.session_dropped" in line]
    assert len(dropped) == 1 and peers[0] in dropped[0] and "reason=connection_lost" in dropped[0], dropped
