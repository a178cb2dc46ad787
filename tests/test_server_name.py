"""A server's own name (isns.name, bootsvc/server_name.py): its control
node and iSNS entity, so that two servers sharing an iSNS server differ."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootsvc.config import load
from bootsvc.server_name import DEFAULT_STATE_DIR, check_server_name, default_server_name
from bootsvc.yamlfile import ConfigError


def test_the_default_is_the_host_and_for_another_state_dir_a_digest_of_it() -> None:
    assert default_server_name(DEFAULT_STATE_DIR, "Boot_01.lab.example") == "boot-01"
    one = default_server_name(Path("/srv/a/state"), "boot01")
    assert one == default_server_name(Path("/srv/a/state"), "boot01")  # the same across restarts
    assert one.startswith("boot01-") and one != default_server_name(Path("/srv/b/state"), "boot01")
    assert default_server_name(DEFAULT_STATE_DIR, "___") == "bootsvc"
    check_server_name(default_server_name(Path("/x"), "a" * 80))


def _config(tmp_path: Path, isns: str) -> Path:
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\niqn_prefix: iqn.2026-12.test\n{isns}")
    return cfg


def test_the_name_makes_the_control_node(tmp_path: Path) -> None:
    c = load(_config(tmp_path, "isns:\n  name: boot-a\n"))
    assert c.server_name == "boot-a" and c.control_node == "iqn.2026-12.test:bootsvc.boot-a"
    default = load(_config(tmp_path, ""))
    assert default.control_node == f"iqn.2026-12.test:bootsvc.{default_server_name(tmp_path / 'state')}"


@pytest.mark.parametrize("name", ["Boot_A", "-a", "a.", "a b", "[1, 2]", "x" * 64, "true"])
def test_a_bad_name_is_a_config_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(_config(tmp_path, f"isns:\n  name: {name}\n"))
    text = str(e.value)
    assert "bootsvc.yaml:4" in text and "isns.name" in text and "Traceback" not in text, text


def test_check_says_who_the_server_registers_as(tmp_path: Path) -> None:
    from bootsvc.server_name import isns_identity
    c = load(_config(tmp_path, "listen:\n  iscsi: [127.0.0.1:3260]\nisns:\n  server: 127.0.0.1\n  name: boot-a\n"))
    assert isns_identity(c) == ("iSNS: this server registers as entity and control node "
                                "iqn.2026-12.test:bootsvc.boot-a, isns.name; every server registering with "
                                "127.0.0.1:3205 needs a name of its own")
