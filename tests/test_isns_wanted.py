"""What bootsvc registers in iSNS (bootsvc/isns_registration.py ``wanted``):
on shared storage only the disks this server holds are registered at its
portals, and every machine it has keeps its DD."""

from __future__ import annotations

from pathlib import Path

from bootsvc.config import load
from bootsvc.isns_registration import wanted


def test_only_held_disks_are_registered_but_every_machine_has_its_dd(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "p.yaml").write_text("base: gold.raw\n")
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\niqn_prefix: iqn.2026-12.test\nprofiles_dir: profiles\n"
                   "default_profile: p\nlisten:\n  iscsi: [127.0.0.1:3260]\n"
                   "machines:\n  52:54:00:00:00:01: {hostname: a}\n  52:54:00:00:00:02: {hostname: b}\n")
    c = load(cfg)
    a, b = sorted(c.machines.values(), key=lambda m: m.hostname)
    w = wanted(c, c.machines.values(), {a.target_iqn: "a"}, {a.target_iqn, b.target_iqn})
    assert [n.name for n in w.nodes] == [c.control_node, a.target_iqn]  # b's disk is another server's
    assert {g.name for g in w.groups} == {a.target_iqn, c.control_node}
    assert w.dds == {"boot-a": (a.initiator_iqn, a.target_iqn), "boot-b": (b.initiator_iqn, b.target_iqn)}
    alone = wanted(c, c.machines.values(), {a.target_iqn: "a"})  # files: what is served is registered
    assert list(alone.dds) == ["boot-a"]
