"""Per-machine iPXE scripts: generated for sanboot and kernel profiles,
templates with placeholders, and script names in iPXE's MAC spellings."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootsvc.inventory import Machine
from bootsvc.profiles import BootMethod, Profile, load_profile
from bootsvc.scripts import ScriptInputs, mac_of_script, script
from bootsvc.yamlfile import ConfigError

M = Machine("52:54:00:12:34:56", "pc1", "p", "iqn.2026-11.t:pc1", "iqn.2026-11.t:boot.pc1")
ROOT = "iscsi:10.0.0.1::3260::iqn.2026-11.t:boot.pc1"


def inputs(profile: Profile) -> ScriptInputs:
    return ScriptInputs(M, profile, "10.0.0.1", ROOT, "http://10.0.0.1:8080/files")


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
    (tmp_path / "p.yaml").write_text("base: b.img\nscript: t.ipxe\n")
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
