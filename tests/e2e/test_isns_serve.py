"""`bootsvc serve` with listen.isns: the target registers its portal and
targets, every machine gets its DD boot-<hostname>, and an initiator asking
iSNS (open-isns's isnsadm acting as that machine) sees only its own boot
target; `bootsvc isns` lists and edits; a reload adds and removes DDs; a
restart keeps the database."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import need
from tests.e2e.peers import LOOPBACK, bootsvc_command, bootsvc_serve, free_port, isns_names, isnsadm, stop

pytestmark = pytest.mark.e2e
PREFIX = "iqn.2026-11.test.lab"


def write_config(path: Path, state: Path, iscsi: int, isns: int, hosts: list[str]) -> None:
    machines = "\n".join(f"  52:54:00:00:00:{i + 1:02x}: {{hostname: {h}, profile: keep}}" for i, h in enumerate(hosts))
    path.write_text(f"""
state_dir: {state}
iqn_prefix: {PREFIX}
profiles_dir: profiles
listen:
  iscsi: [{LOOPBACK}:{iscsi}]
  isns: {LOOPBACK}:{isns}
isns:
  control_nodes: [{PREFIX}:admin]
machines:
{machines}
""")


def bootsvc_isns(cfg: Path, *args: str) -> str:
    r = subprocess.run([*bootsvc_command(), "isns", "-c", str(cfg), *args], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def wait_for(check, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():  # bounded poll
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_targets_and_machine_dds_in_isns(tmp_path: Path) -> None:
    need("isnsadm")
    state = tmp_path / "state"
    (state / "images").mkdir(parents=True)
    (state / "images" / "gold.raw").write_bytes(b"\0" * (4 << 20))
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "keep.yaml").write_text("base: gold.raw\noverlay: persistent\n")
    iscsi, isns = free_port(), free_port()
    cfg = tmp_path / "bootsvc.yaml"
    write_config(cfg, state, iscsi, isns, ["alpha", "beta"])
    log = tmp_path / "serve.log"
    proc = bootsvc_serve(cfg, log, "event=isns.synced")
    try:
        nodes = bootsvc_isns(cfg, "list")
        assert re.search(rf"target\s+{PREFIX}:boot.alpha\s+alpha", nodes), nodes
        assert f"{PREFIX}:boot.beta" in nodes and re.search(rf"control +{PREFIX}:bootsvc\.\S+", nodes)
        portals = bootsvc_isns(cfg, "list", "portals")
        assert f"{LOOPBACK}" in portals and f"{iscsi}/tcp" in portals, portals
        dds = bootsvc_isns(cfg, "dd", "list")
        assert re.search(rf"boot-alpha\s+{PREFIX}:alpha, {PREFIX}:boot.alpha", dds), dds

        # each machine's initiator, registering and asking as itself, sees its own target only
        for me, other in (("alpha", "beta"), ("beta", "alpha")):
            rc, out = isnsadm(tmp_path, isns, f"{PREFIX}:{me}", "--register", f"initiator={PREFIX}:{me}")
            assert rc == 0, out
            rc, out = isnsadm(tmp_path, isns, f"{PREFIX}:{me}", "--list", "nodes")
            assert rc == 0 and sorted(isns_names(out)) == sorted([f"{PREFIX}:{me}", f"{PREFIX}:boot.{me}"]), out
            rc, out = isnsadm(tmp_path, isns, f"{PREFIX}:{me}", "--query", f"iscsi-name={PREFIX}:boot.{other}")
            assert rc == 0 and f"boot.{other}" not in out, out
        # a stranger in no DD sees nothing but itself (default_dd: hidden)
        stranger = "iqn.2026-11.test.other:intruder"
        isnsadm(tmp_path, isns, stranger, "--register", f"initiator={stranger}")
        rc, out = isnsadm(tmp_path, isns, stranger, "--list", "nodes")
        assert rc == 0 and isns_names(out) == [stranger], out

        # DDs by hand, as bootsvc's control node
        assert "created" in bootsvc_isns(cfg, "dd", "add", "lab", f"{PREFIX}:boot.alpha", stranger)
        rc, out = isnsadm(tmp_path, isns, stranger, "--list", "nodes")
        assert sorted(isns_names(out)) == sorted([stranger, f"{PREFIX}:boot.alpha"]), out
        assert "removed" in bootsvc_isns(cfg, "dd", "remove", "lab")
        # the configured control node (isnsadm's admin) manages DDs too
        rc, out = isnsadm(tmp_path, isns, f"{PREFIX}:admin", "--list", "dds")
        assert rc == 0 and 'DD name = "boot-beta"' in out, out

        # reload: gamma joins, beta leaves; its DD and target go
        write_config(cfg, state, iscsi, isns, ["alpha", "gamma"])
        subprocess.run([*bootsvc_command(), "reload", "-c", str(cfg)], check=True, timeout=30)
        wait_for(lambda: "boot-gamma" in bootsvc_isns(cfg, "dd", "list") and
                 "boot-beta" not in bootsvc_isns(cfg, "dd", "list"), "the DDs to follow the reload")
        assert f"{PREFIX}:boot.beta" not in bootsvc_isns(cfg, "list")
    finally:
        stop(proc)
    assert "event=isns.deregistered" in log.read_text()  # the target said goodbye at stop
    assert (state / "isns.db").exists()

    # a restart keeps the database: the initiators registered before are there at once
    proc = bootsvc_serve(cfg, log, "isns serving")
    try:
        rc, out = isnsadm(tmp_path, isns, f"{PREFIX}:admin", "--list", "nodes")
        assert rc == 0 and f"{PREFIX}:alpha" in isns_names(out), out
    finally:
        stop(proc)
