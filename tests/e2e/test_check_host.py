"""`bootsvc check` and `serve` against the host they run on: inside a
network namespace the test makes, with a known interface and address,
the listen section fits; anywhere else it names the interface and the
address nobody owns, and `check --elsewhere` lets it pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.netns import can_make_namespaces, namespaces, veth

CONFIG = """\
state_dir: {state}
listen:
  dhcp: {{interface: {dev}, address: {address}}}
  http: {address}:8080
dhcp:
  subnet: 10.219.0.0/24
  range: [10.219.0.100, 10.219.0.200]
"""


def bootsvc(*args: str, ns: str | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    return subprocess.run([*prefix, sys.executable, "-m", "bootsvc", *args], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2])


def test_listen_interface_and_address_checked_where_it_runs(tmp_path: Path) -> None:
    reason = can_make_namespaces()
    if reason:
        pytest.skip(reason)
    with namespaces("chks", "chkc") as (srv, cli):
        veth(srv, "bsv-chk0", cli, "bsv-chk1", None, "10.219.0.1/24")
        good = tmp_path / "good.yaml"
        good.write_text(CONFIG.format(state=tmp_path / "state", dev="bsv-chk0", address="10.219.0.1"))
        r = bootsvc("check", "-c", str(good), ns=srv)
        assert r.returncode == 0, r.stderr
        assert ": ok (" in r.stdout

        # the same config on a host without that interface and address (the other namespace)
        r = bootsvc("check", "-c", str(good), ns=cli)
        assert r.returncode == 1
        assert f"{good}:3: listen.dhcp.interface: bsv-chk0: no such network interface on this host" in r.stderr
        assert f"{good}:3: listen.dhcp.address: 10.219.0.1 is not an address of this host" in r.stderr
        assert f"{good}:4: listen.http: 10.219.0.1 is not an address of this host" in r.stderr
        assert bootsvc("check", "--elsewhere", "-c", str(good), ns=cli).returncode == 0

        # serve checks always: it refuses before binding anything
        r = bootsvc("serve", "-c", str(good), ns=cli)
        assert r.returncode == 1 and "listen.dhcp.interface: bsv-chk0: no such network interface" in r.stderr

        bad = tmp_path / "bad.yaml"
        bad.write_text(CONFIG.format(state=tmp_path / "state", dev="bsv-chk9", address="10.219.0.2"))
        r = bootsvc("check", "-c", str(bad), ns=srv)
        assert r.returncode == 1
        assert f"{bad}:3: listen.dhcp.interface: bsv-chk9: no such network interface on this host (it has: " \
               "bsv-chk0, lo;" in r.stderr
        assert f"{bad}:3: listen.dhcp.address: 10.219.0.2 is not an address of this host (it has: 10.219.0.1;" \
               in r.stderr
