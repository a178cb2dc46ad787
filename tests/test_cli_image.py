"""`bootsvc image`: each subcommand's output and exit status, and an
ImageError as one line naming the subcommand."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bootsvc.cli import main
from bootsvc.images import ImageStore
from tests.test_images import store  # noqa: F401 (the fixture)

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img (qemu-utils)")


@pytest.fixture
def cfg(store: ImageStore) -> Path:
    """The config of test_images' store: a base, a profile, machines a and b."""
    return store.cfg.path


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
