"""Per-machine iPXE scripts: generated for sanboot and kernel profiles,
templates with placeholders, and script names in iPXE's MAC spellings."""

from __future__ import annotations

from pathlib import Path

import pytest

from target import ChapAuth, ChapSecret

from bootsvc.credentials import AuthMode
from bootsvc.inventory import Machine
from bootsvc.profiles import BootMethod, Profile, load_profile
from bootsvc.scripts import ScriptInputs, mac_of_script, script
from bootsvc.yamlfile import ConfigError

M = Machine("52:54:00:12:34:56", "pc1", "p", "iqn.2026-11.t:pc1", "iqn.2026-11.t:boot.pc1")
ROOT = "iscsi:10.0.0.1::3260::iqn.2026-11.t:boot.pc1"


FORWARD = ChapSecret("iqn.2026-11.t:pc1", b"forward-secret-1")
REVERSE = ChapSecret("iqn.2026-11.t:boot.pc1", b"reverse-secret-2")


def inputs(profile: Profile, auth: ChapAuth | None = None) -> ScriptInputs:
    return ScriptInputs(M, profile, "10.0.0.1", ROOT, "http://10.0.0.1:8080/files", auth)


def test_sanboot_script() -> None:
    text = script(inputs(Profile("p", Path("p.yaml"), "base.img")))
    assert text.startswith("#!ipxe\n") and f"sanboot {ROOT} || goto failed" in text
    assert "set initiator-iqn iqn.2026-11.t:pc1" in text and "goto retry" in text


def test_kernel_script() -> None:
    p = Profile("p", Path("p.yaml"), "base.img", boot=BootMethod.KERNEL, kernel="vmlinuz",
                initrd="http://elsewhere/initrd.img", cmdline="console=ttyS0 ip=ibft")
    lines = script(inputs(p)).splitlines()
    hook = lines.index(f"sanhook --drive 0x80 {ROOT} || goto failed")
    kernel = lines.index("kernel http://10.0.0.1:8080/files/vmlinuz initrd=initrd console=ttyS0 ip=ibft || goto failed")
    initrd = lines.index("initrd --name initrd http://elsewhere/initrd.img || goto failed")
    assert hook < kernel < initrd < lines.index("boot || goto failed")


def test_template(tmp_path: Path) -> None:
    (tmp_path / "t.ipxe").write_text("#!ipxe\necho {{ hostname }} ${net0/mac} {{root_path}}\n")
    (tmp_path / "p.yaml").write_text("base: b.img\nscript: t.ipxe\nauth: none\n")
    text = script(inputs(load_profile(tmp_path / "p.yaml")))
    assert text == f"#!ipxe\necho pc1 ${{net0/mac}} {ROOT}\n"
    (tmp_path / "q.yaml").write_text("base: b.img\nscript: |\n  #!ipxe\n  echo {{ nope }}\n")
    with pytest.raises(ConfigError, match=r"q.yaml:2: script: unknown placeholder\(s\) nope"):
        load_profile(tmp_path / "q.yaml")
    (tmp_path / "r.yaml").write_text("base: b.img\nscript: missing.ipxe\n")
    with pytest.raises(ConfigError, match="cannot read the script template"):
        load_profile(tmp_path / "r.yaml")


@pytest.mark.parametrize("name", ["boot/52:54:00:12:34:56.ipxe", "boot/52-54-00-12-34-56.ipxe",
                                  "boot/525400123456.ipxe", "BOOT/52-54-00-12-34-56.IPXE"])
def test_script_names(name: str) -> None:
    assert mac_of_script(name) == M.mac


@pytest.mark.parametrize("name", ["boot/52-54-00-12-34.ipxe", "52-54-00-12-34-56.ipxe", "boot/x.ipxe",
                                  "boot/52-54-00-12-34-56.ipxe/..", "boot/../52-54-00-12-34-56.ipxe"])
def test_not_script_names(name: str) -> None:
    assert mac_of_script(name) is None


def test_chap_settings_come_before_the_login() -> None:
    lines = script(inputs(Profile("p", Path("p.yaml"), "base.img"), ChapAuth(FORWARD, REVERSE))).splitlines()
    want = ["set username iqn.2026-11.t:pc1", "set password forward-secret-1",
            "set reverse-username iqn.2026-11.t:boot.pc1", "set reverse-password reverse-secret-2"]
    assert all(w in lines for w in want)
    assert max(lines.index(w) for w in want) < lines.index(f"sanboot {ROOT} || goto failed")
    forward_only = script(inputs(Profile("p", Path("p.yaml"), "base.img"), ChapAuth(FORWARD)))
    assert "set password forward-secret-1" in forward_only and "reverse" not in forward_only


def test_a_template_with_chap_gets_the_settings(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("base: b.img\nauth: mutual\nscript: |\n  #!ipxe\n  {{chap}}\n"
                                     "  sanboot {{root_path}}\n")
    profile = load_profile(tmp_path / "p.yaml")
    assert profile.auth is AuthMode.MUTUAL
    text = script(inputs(profile, ChapAuth(FORWARD, REVERSE)))
    assert "set reverse-password reverse-secret-2\nsanboot" in text


def test_a_template_without_chap_is_refused_unless_auth_none(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("base: b.img\nscript: |\n  #!ipxe\n  sanboot {{root_path}}\n")
    with pytest.raises(ConfigError, match=r"put \{\{chap\}\} before sanboot"):
        load_profile(tmp_path / "p.yaml")


@pytest.mark.parametrize(("yaml_text", "why"), [
    ("chap: {user: u, secret: short}", "12 to 255 bytes"),
    ("chap: {user: u, secret: 'has a space!!'}", "without spaces"),
    ("chap: {secret: long-enough-secret}", "needs a user"),
    ("chap: {user: u, secret: long-enough-secret, x: 1}", "expected"),
    ("auth: sometimes", "must be one of chap, mutual, none"),
])
def test_bad_profile_credentials(tmp_path: Path, yaml_text: str, why: str) -> None:
    (tmp_path / "p.yaml").write_text(f"base: b.img\n{yaml_text}\n")
    with pytest.raises(ConfigError, match=why):
        load_profile(tmp_path / "p.yaml")
