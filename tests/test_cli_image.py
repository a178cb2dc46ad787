"""`bootsvc image`: each subcommand's output and exit status, and an
ImageError as one line naming the subcommand."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bootsvc.cli import main

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img (qemu-utils)")


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    (tmp_path / "state" / "images").mkdir(parents=True)
    (tmp_path / "state" / "images" / "gold.raw").write_bytes(os.urandom(1 << 20))
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "p.yaml").write_text("base: gold.raw\n")
    path = tmp_path / "bootsvc.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nprofiles_dir: profiles\ndefault_profile: p\n"
                    "machines:\n  52:54:00:00:00:01: {hostname: a}\n")
    return path


def image(cfg: Path, *words: str) -> int:
    return main(["image", "-c", str(cfg), *words])


def test_image_subcommands(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overlays = cfg.parent / "state" / "overlays"
    assert image(cfg, "create", "a") == 0
    assert capsys.readouterr().out == f"{overlays / 'a.qcow2'}\n"
    assert image(cfg, "list") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"bases in {cfg.parent / 'state' / 'images'}:" and "used by a" in out[1]
    assert out[2] == f"overlays in {overlays}:" and out[3].split()[:2] == ["a", "persistent"]
    assert image(cfg, "check") == 0
    assert capsys.readouterr().out.startswith(f"{overlays / 'a.qcow2'}: clean; ")
    assert image(cfg, "reset", "a") == 0
    assert capsys.readouterr().out.strip() == str(overlays / "a.qcow2")


def test_image_errors_name_the_subcommand(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert image(cfg, "reset", "nobody") == 1
    assert capsys.readouterr().err == f"bootsvc image reset: no machine 'nobody' in {cfg}\n"
    assert image(cfg, "rebase", "a", "missing.qcow2") == 1
    assert capsys.readouterr().err.startswith("bootsvc image rebase: ")
