"""Two `bootsvc serve` registering with open-isns's isnsd (issue 22): a
machine removed from server A's config while A was down (killed, so it
deregistered nothing) loses its discovery domain and target when A starts
again (A's record of the DDs it registered, state_dir/isns-registered.json);
server B's registrations stay as they were."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from isns.client import IsnsClient
from tests.e2e.conftest import need
from tests.e2e.peers import LOOPBACK, bootsvc_serve, free_port, isnsd, stop

pytestmark = pytest.mark.e2e
PREFIX = "iqn.2026-11.test.lab"
MACS = {"alpha": "01", "beta": "02", "gamma": "03"}


def _config(work: Path, name: str, isns: int, hosts: list[str]) -> Path:
    state = work / "state"
    (state / "images").mkdir(parents=True, exist_ok=True)
    (state / "images" / "gold.raw").write_bytes(b"\0" * (1 << 20))
    (work / "profiles").mkdir(exist_ok=True)
    (work / "profiles" / "keep.yaml").write_text("base: gold.raw\noverlay: persistent\n")
    machines = "".join(f"  52:54:00:00:00:{MACS[h]}: {{hostname: {h}, profile: keep}}\n" for h in hosts)
    cfg = work / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {state}\niqn_prefix: {PREFIX}\nprofiles_dir: profiles\n"
                   f"listen:\n  iscsi: [{LOOPBACK}:{free_port()}]\nisns:\n  server: {LOOPBACK}:{isns}\n"
                   f"  name: server-{name}\nmachines:\n{machines}")
    return cfg


def _registered(isns: int) -> tuple[set[str], set[str], dict[str, set[str]]]:
    """Entities, nodes and DDs (with their members) in isnsd."""
    with IsnsClient(LOOPBACK, isns, f"{PREFIX}:bootsvc.server-b") as c:  # a control node: sees all
        entities = {str(e["ENTITY_IDENTIFIER"]) for e in c.list("entity")}
        nodes = {str(n["ISCSI_NAME"]) for n in c.list("node")}
        dds = {str(d["DD_SYMBOLIC_NAME"]): set(map(str, d.get("DD_MEMBER_ISCSI_NAME", []))) for d in c.list("dd")}
    return entities, nodes, dds


def _wait_for(check, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():  # bounded poll
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {_registered(ISNS[0])}")
        time.sleep(0.2)


ISNS = [0]  # the port, for the timeout's message


def test_a_machine_removed_while_its_server_was_down_loses_its_dd(tmp_path: Path) -> None:
    need("isnsd")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with isnsd(tmp_path, f"{PREFIX}:isnsd", default_dd=False) as isns:
        ISNS[0] = isns
        cfg_a = _config(tmp_path / "a", "a", isns, ["alpha", "beta"])
        cfg_b = _config(tmp_path / "b", "b", isns, ["gamma"])
        a = bootsvc_serve(cfg_a, tmp_path / "a.log", "event=isns.synced")
        b = bootsvc_serve(cfg_b, tmp_path / "b.log", "event=isns.synced")
        try:
            _wait_for(lambda: {"boot-alpha", "boot-beta", "boot-gamma"} <= set(_registered(isns)[2]),
                      "both servers' DDs")
            entities, nodes, dds = _registered(isns)
            assert {f"{PREFIX}:bootsvc.server-a", f"{PREFIX}:bootsvc.server-b"} <= entities
            assert f"{PREFIX}:boot.beta" in nodes
            b_before = ({n for n in nodes if "gamma" in n or "server-b" in n}, dds["boot-gamma"])
            assert (tmp_path / "a" / "state" / "isns-registered.json").exists()

            a.kill()  # no deregistration: what A registered stays in isnsd
            a.wait(10)
            _config(tmp_path / "a", "a", isns, ["alpha"])  # beta removed while A is down
            a = bootsvc_serve(cfg_a, tmp_path / "a2.log", "event=isns.synced")
            entities, nodes, dds = _registered(isns)
            assert "boot-beta" not in dds and f"{PREFIX}:boot.beta" not in nodes, (nodes, dds)
            assert dds["boot-alpha"] == {f"{PREFIX}:alpha", f"{PREFIX}:boot.alpha"}
            assert ({n for n in nodes if "gamma" in n or "server-b" in n}, dds["boot-gamma"]) == b_before
            assert f"{PREFIX}:bootsvc.server-b" in entities
        finally:
            stop(a)
            stop(b)
