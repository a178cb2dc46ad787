"""vagrant/: the lab's Vagrantfile passes `vagrant validate` with the
libvirt provider's checks, its machines are the ones vagrant/bootsvc.yaml
boots, and that config passes `bootsvc check`. No VM is started (no libvirt
daemon here); the boot itself is the manual check in vagrant/README.md."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bootsvc import config as config_mod

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "vagrant"
VAGRANTFILE = LAB / "Vagrantfile"
CONFIG = LAB / "bootsvc.yaml"
UNIT = ROOT / "systemd" / "bootsvc.service"
SERVER_IP = "10.77.0.2"
NODES = {"node01": ("52:54:00:77:00:11", "10.77.0.11"), "node02": ("52:54:00:77:00:12", "10.77.0.12")}


def vagrant(tmp_path: Path, *args: str, cwd: Path = LAB, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """vagrant with its home and the machines' .vagrant folder under
    tmp_path (nothing written to ~/.vagrant.d or vagrant/), offline."""
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed (scripts/install-deps.sh installs Debian's vagrant and "
                    "vagrant-libvirt)")
    home = tmp_path / "vagrant.d"
    home.mkdir(exist_ok=True)
    full = {**os.environ, "VAGRANT_HOME": str(home), "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot-vagrant"),
            "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_NO_COLOR": "1", "VAGRANT_DEFAULT_PROVIDER": "libvirt",
            **(env or {})}
    full.pop("VAGRANT_CWD", None)
    return subprocess.run(["vagrant", *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)


def need_libvirt_plugin(tmp_path: Path) -> None:
    r = vagrant(tmp_path, "plugin", "list")
    assert r.returncode == 0, r.stdout + r.stderr
    # Without the provider, vagrant cannot check its settings and rejects
    # the diskless nodes outright ("A box must be specified"): it is the
    # provider that makes a box optional.
    assert "vagrant-libvirt" in r.stdout, (
        "vagrant is installed but the vagrant-libvirt plugin is not visible to it (with VAGRANT_HOME in a "
        f"temporary folder, only system plugins count): install Debian's vagrant-libvirt package\n{r.stdout}")


@pytest.mark.parametrize("console", ["file", "pty"])
def test_vagrant_validate(tmp_path: Path, console: str) -> None:
    need_libvirt_plugin(tmp_path)
    had_dot_vagrant = (LAB / ".vagrant").exists()  # a user's own lab; never made by this test
    r = vagrant(tmp_path, "validate", env={"BOOTSVC_LAB_CONSOLE": console})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validated successfully" in r.stdout
    assert (LAB / ".vagrant").exists() == had_dot_vagrant
    assert (tmp_path / "dot-vagrant").is_dir()


def test_vagrant_validate_checks_provider_settings(tmp_path: Path) -> None:
    """The validation above includes the libvirt provider's settings: a
    node's broken MAC, which only the provider checks, fails it."""
    need_libvirt_plugin(tmp_path)
    broken = tmp_path / "lab"
    shutil.copytree(LAB, broken, ignore=shutil.ignore_patterns(".vagrant"))
    text = VAGRANTFILE.read_text()
    assert '"52:54:00:77:00:12"' in text
    (broken / "Vagrantfile").write_text(text.replace('"52:54:00:77:00:12"', '"52:54:00:77:00:1"'))
    r = vagrant(tmp_path, "validate", cwd=broken)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Libvirt Provider" in r.stderr and "52:54:00:77:00:1'" in r.stderr, r.stdout + r.stderr


def test_vagrantfile_matches_the_config() -> None:
    """The nodes' MACs and addresses and the server's address in the
    Vagrantfile are the machines and listen addresses of bootsvc.yaml."""
    text = VAGRANTFILE.read_text()
    declared = {name: (mac, ip) for name, mac, ip in
                re.findall(r'"(node\d+)" => \{ mac: "([0-9a-f:]+)", ip: "([\d.]+)" \}', text)}
    assert declared == NODES
    assert f'SERVER_IP = "{SERVER_IP}"' in text
    assert "libvirt__dhcp_enabled: false" in text and "mgmt_attach = false" in text
    assert 'boot "network"' in text and "autostart: false" in text

    cfg = config_mod.load(CONFIG)
    assert {m.hostname: (m.mac, str(m.ip)) for m in cfg.machines.values()} == NODES
    assert {m.profile for m in cfg.machines.values()} == {"demo-linux"}
    assert cfg.profiles["demo-linux"].base == "demo-linux.qcow2"
    assert cfg.dhcp is not None
    [listener] = cfg.dhcp.listeners
    assert (str(listener.address), listener.interface) == (SERVER_IP, "eth1")  # provision.sh renames eth1
    [subnet] = cfg.dhcp.subnets
    assert str(subnet.network) == "10.77.0.0/24"
    assert all(ip.split(".")[-1] not in ("1", "2") for _, ip in NODES.values())
    assert [str(p) for p in cfg.iscsi.portals] == [f"{SERVER_IP}:3260"]
    assert cfg.isns.listen is not None and cfg.isns.listen.host == SERVER_IP
    for portal in (cfg.http, cfg.dns):
        assert portal is not None and portal.host == SERVER_IP
    assert cfg.tftp is not None and cfg.tftp.host == SERVER_IP
    assert cfg.state_dir == Path("/var/lib/bootsvc")  # the unit's StateDirectory


def test_bootsvc_check_passes() -> None:
    """`bootsvc check --elsewhere` accepts the config (it is the server
    VM's: its eth1 and 10.77.0.2 are not this host's); the demo image, built on
    the server VM, is only missing here (a warning)."""
    r = subprocess.run([sys.executable, "-m", "bootsvc", "check", "--elsewhere", "-c", str(CONFIG)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok (2 machine(s)" in r.stdout


def test_provisioning_fits_the_unit_and_config() -> None:
    """provision.sh is valid bash, installs as `make install` does (where
    systemd/bootsvc.service looks: tests/e2e/test_install.py runs it), and
    its sed finds what it replaces in bootsvc.yaml."""
    script = LAB / "provision.sh"
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    text = script.read_text()
    unit = UNIT.read_text()
    for path in ("/usr/local/bin/bootsvc", "/etc/bootsvc/bootsvc.yaml"):
        assert path in unit
    assert 'bash scripts/install.sh "$venv"' in text and "venv=/opt/bootsvc" in text
    assert "cfg=/etc/bootsvc/bootsvc.yaml" in text
    assert "build-demo" in text and "systemctl enable bootsvc" in text
    # the unit's user exists before it starts (install.sh makes it), and can read the config and own the state
    assert text.index("scripts/install.sh") < text.index("chown root:bootsvc")
    assert "User=bootsvc" in unit and "chown root:bootsvc \"$cfg.new\"" in text
    assert text.index("build-demo") < text.index("chown -R bootsvc:bootsvc /var/lib/bootsvc")
    assert CONFIG.read_text().count("interface: eth1,") == 1
    assert 'path: "provision.sh"' in VAGRANTFILE.read_text()
