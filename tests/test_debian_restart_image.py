"""The Debian image's settings that let a machine ride out a restart of
bootsvc (issue 20): iscsid's replacement timeout (which also reaches the
root session the initramfs made: iscsid logs in again with it), the
test-only tick unit."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bootsvc.debian import tree

KEY = "node.session.timeo.replacement_timeout"


def test_iscsid_conf_line_is_replaced_in_place(tmp_path: Path) -> None:
    conf = tmp_path / "etc/iscsi/iscsid.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(f"# the comment stays\n{KEY} = 120\nnode.conn[0].timeo.login_timeout = 15\n")
    tree.set_iscsid_conf(tmp_path)
    assert conf.read_text() == (f"# the comment stays\n{KEY} = {tree.REPLACEMENT_TIMEOUT}\n"
                                "node.conn[0].timeo.login_timeout = 15\n")
    tree.set_iscsid_conf(tmp_path)  # again: the same
    assert conf.read_text().count(KEY) == 1
    assert conf.stat().st_mode & 0o777 == 0o600  # as open-iscsi ships it: CHAP secrets may go there


def test_iscsid_conf_commented_or_missing_key(tmp_path: Path) -> None:
    conf = tmp_path / "etc/iscsi/iscsid.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(f"#{KEY} = 120\n{KEY} = 120\n")  # an example commented out, then the setting
    tree.set_iscsid_conf(tmp_path, {KEY: "7", "node.conn[0].timeo.noop_out_interval": "5"})
    assert conf.read_text() == f"{KEY} = 7\n{KEY} = 7\nnode.conn[0].timeo.noop_out_interval = 5\n"
    conf.unlink()
    tree.set_iscsid_conf(tmp_path, {KEY: "7"})  # no file: one is made
    assert conf.read_text() == f"{KEY} = 7\n"


def test_configure_restart_units(tmp_path: Path) -> None:
    tree.configure_restart(tmp_path)
    assert f"{KEY} = {tree.REPLACEMENT_TIMEOUT}" in (tmp_path / "etc/iscsi/iscsid.conf").read_text()
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants"
    assert (wants / "bootsvc-tick.service").is_symlink()
    script = tmp_path / "usr/local/sbin/bootsvc-tick"
    assert script.stat().st_mode & 0o111
    r = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    # the tick unit runs only where a test asked for it
    assert "ConditionKernelCommandLine=bootsvc.tick" in tree.TICK_UNIT
