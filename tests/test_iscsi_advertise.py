"""iscsi.advertise: the portal a machine's root-path names (RFC 4173), a
floating address that moves to another server when this one dies
(docs/scale-out.md "Portals"; tested end to end in
tests/e2e/test_ceph_debian_boot.py)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from types import SimpleNamespace

import pytest

from bootsvc.boot import BootPlanner
from bootsvc.config import ConfigError, load
from bootsvc.host import HostNetwork
from bootsvc.inventory import Machine

M = Machine("52:54:00:12:34:56", "pc1", "p", "iqn.2026-11.t:pc1", "iqn.2026-11.t:boot.pc1")


def config(tmp_path: Path, portals: str, iscsi: str = "") -> Path:
    p = tmp_path / "bootsvc.yaml"
    p.write_text(f"state_dir: {tmp_path}\nlisten:\n  iscsi: {portals}\n{iscsi}")
    return p


def root_path(path: Path, server: str = "10.0.0.1") -> str | None:
    fleet = SimpleNamespace(cfg=load(path), servable=lambda machine: True)
    return BootPlanner(fleet, iscsi_port=3260).root_path(M, server)  # type: ignore[arg-type]


def test_without_it_the_root_path_names_the_address_the_machine_reached(tmp_path: Path) -> None:
    assert root_path(config(tmp_path, "[10.0.0.1:3260]")) == "iscsi:10.0.0.1::3260::iqn.2026-11.t:boot.pc1"


@pytest.mark.parametrize("portals, advertise, expected", [
    ("[10.0.0.1:3260, 10.0.0.100:3260]", "10.0.0.100", "iscsi:10.0.0.100::3260::iqn.2026-11.t:boot.pc1"),
    ("[10.0.0.1:3260, 10.0.0.100:3261]", "10.0.0.100:3261", "iscsi:10.0.0.100::3261::iqn.2026-11.t:boot.pc1"),
    ("['0.0.0.0:3260']", "10.0.0.100", "iscsi:10.0.0.100::3260::iqn.2026-11.t:boot.pc1"),
    ("['[fd00::1]:3260', '[fd00::64]:3260']", "'[fd00::64]:3260'", "iscsi:[fd00::64]::3260::iqn.2026-11.t:boot.pc1"),
])
def test_the_root_path_names_the_advertised_portal(tmp_path: Path, portals: str, advertise: str,
                                                   expected: str) -> None:
    path = config(tmp_path, portals, f"iscsi: {{advertise: {advertise}}}\n")
    assert root_path(path) == expected


@pytest.mark.parametrize("portals, advertise, why", [
    ("[10.0.0.1:3260]", "10.0.0.100", "10.0.0.100:3260 is not one of listen.iscsi's portals (10.0.0.1:3260); "
                                      "list it there too"),
    ("[10.0.0.1:3260]", "boot.example", "expected an IP address (and :PORT) of this server's iSCSI portal, "
                                        "got boot.example"),
    ("['0.0.0.0:3260']", "0.0.0.0", "expected an IP address (and :PORT) of this server's iSCSI portal, got 0.0.0.0"),
    ("[10.0.0.1:3260]", "[10.0.0.1]", "expected an IP address (and :PORT) of this server's iSCSI portal, "
                                      "got a list"),
    ("[]", "10.0.0.1", "needs listen.iscsi: machines are sent to a portal this server serves"),
])
def test_a_wrong_advertise_is_an_error_with_file_line_and_key(tmp_path: Path, portals: str, advertise: str,
                                                              why: str) -> None:
    path = config(tmp_path, portals, f"iscsi:\n  advertise: {advertise}\n")
    with pytest.raises(ConfigError) as e:
        load(path)
    assert f"{path}:5: iscsi.advertise: {why}" in e.value.problems, e.value.problems


@pytest.mark.parametrize("nonlocal_bind", [frozenset(), frozenset({4})])
def test_a_standby_listens_on_the_floating_address_only_with_nonlocal_bind(tmp_path: Path,
                                                                          nonlocal_bind: frozenset[int]) -> None:
    """A standby server (keepalived BACKUP) lists the floating portal it does
    not hold yet: fine where the kernel lets it bind it, an error elsewhere,
    and only for listen.iscsi (an HTTP or DHCP address that is not the host's
    is a mistake)."""
    host = HostNetwork(frozenset({"lo", "eth0"}), frozenset({ipaddress.ip_address("10.0.0.2")}), nonlocal_bind)
    path = config(tmp_path, "[10.0.0.2:3260, 10.0.0.100:3260]", "iscsi: {advertise: 10.0.0.100}\n")
    if nonlocal_bind:
        cfg = load(path, host)
        assert cfg.iscsi.advertise is not None and str(cfg.iscsi.advertise) == "10.0.0.100:3260"
        assert cfg.warnings == (f"{path}:3: warning: listen.iscsi: 10.0.0.100 is not an address of this host yet; "
                                "listening on it anyway (net.ipv4.ip_nonlocal_bind = 1): a floating address",)
    else:
        with pytest.raises(ConfigError) as e:
            load(path, host)
        assert e.value.problems == [f"{path}:3: listen.iscsi: 10.0.0.100 is not an address of this host (it has: "
                                    "10.0.0.2; for a config meant for another machine: bootsvc check --elsewhere; "
                                    "a floating address: net.ipv4.ip_nonlocal_bind = 1)"]
    path.write_text(f"state_dir: {tmp_path}\nlisten:\n  http: 10.0.0.100:80\n")
    with pytest.raises(ConfigError, match="listen.http: 10.0.0.100 is not an address of this host"):
        load(path, host)
