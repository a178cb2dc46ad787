"""`bootsvc image import`: disks made by qemu-img in every format bootsvc
takes become bases that `qemu-img compare` finds equal to the original and
that machines boot overlays on; everything else is refused in one line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bootsvc.cli import main
from bootsvc.image_import import base_name, import_image, probe
from bootsvc.images import ImageError, ImageStore
from target import open_backing
from tests.qcow2_oracle import assert_check_clean, assert_same, qemu_img
from tests.test_images import store, write  # noqa: F401 (the fixture: a state dir, profile p on gold.raw, machines a, b)

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img (qemu-utils)")
SIZE = 6 << 20


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """A raw disk: a boot sector, data, and holes (zeros) between."""
    data = bytearray(SIZE)
    data[:512] = os.urandom(510) + b"\x55\xaa"
    data[1 << 20:(1 << 20) + 300000] = os.urandom(300000)
    data[SIZE - 4096:] = os.urandom(4096)
    path = tmp_path / "disk.raw"
    path.write_bytes(data)
    return path


def convert(src: Path, fmt: str, dest: Path) -> Path:
    r = qemu_img("convert", "-O", fmt, str(src), str(dest))
    assert r.returncode == 0, r.stderr
    return dest


def quiet(line: str) -> None:
    pass


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "vmdk", "vdi"])
def test_each_format_is_imported_as_it_was(store: ImageStore, disk: Path, tmp_path: Path, fmt: str) -> None:
    src = disk if fmt == "raw" else convert(disk, fmt, tmp_path / f"vm-disk.{fmt}")
    assert probe(src).format == fmt
    base = import_image(store, src, say=quiet)
    assert base == store.images_dir / ("disk.qcow2" if fmt == "raw" else "vm-disk.qcow2")
    assert not os.stat(base).st_mode & 0o222  # bases are read-only
    assert qemu_img("compare", str(base), str(disk)).returncode == 0
    assert_check_clean(base)
    img = open_backing(str(base), "qcow2", 0)  # bootsvc's own qcow2 reads what qemu-img wrote
    try:
        assert img.size == SIZE and img.read_sync(0, 512) == disk.read_bytes()[:512]
    finally:
        img.close()
    assert not [p for p in store.images_dir.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_name_without_qcow2_makes_a_raw_base(store: ImageStore, disk: Path, tmp_path: Path) -> None:
    qcow = convert(disk, "qcow2", tmp_path / "src.qcow2")
    base = import_image(store, qcow, "mine.img", say=quiet)
    assert qemu_img("info", str(base)).stdout.count("file format: raw") == 1
    assert qemu_img("compare", str(base), str(disk)).returncode == 0


def test_a_backing_chain_is_flattened(store: ImageStore, disk: Path, tmp_path: Path) -> None:
    lower = convert(disk, "qcow2", tmp_path / "lower.qcow2")
    top = tmp_path / "top.qcow2"
    assert qemu_img("create", "-f", "qcow2", "-b", str(lower), "-F", "qcow2", str(top)).returncode == 0
    write(top, 2 << 20, b"\x5a" * 65536)
    expected = bytearray(disk.read_bytes())
    expected[2 << 20:(2 << 20) + 65536] = b"\x5a" * 65536
    (tmp_path / "expected.raw").write_bytes(expected)
    said: list[str] = []
    base = import_image(store, top, "flat.qcow2", say=said.append)
    assert "backing file" not in qemu_img("info", str(base)).stdout
    assert_same(base, tmp_path / "expected.raw")
    assert any("backing chain is merged" in line and "lower.qcow2" in line for line in said)


def test_refusals(store: ImageStore, disk: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a disk\n" * 100)
    zeros = tmp_path / "zeros.raw"
    zeros.write_bytes(bytes(1 << 20))
    vhd = convert(disk, "vpc", tmp_path / "disk.vhd")
    truncated = tmp_path / "cut.vmdk"
    truncated.write_bytes(convert(disk, "vmdk", tmp_path / "whole.vmdk").read_bytes()[:1000])
    for path, why in ((text, "notes.txt is not a disk image"), (zeros, "zeros.raw is not a disk image"),
                      (vhd, "disk.vhd is a vpc image; bootsvc imports raw, qcow2, vmdk and vdi"),
                      (truncated, "qemu-img cannot read .*cut.vmdk: .*truncated"),
                      (tmp_path / "gone.qcow2", "gone.qcow2 does not exist"),
                      (tmp_path, "is not a disk image file")):
        with pytest.raises(ImageError, match=why):
            import_image(store, path, say=quiet)
    for name in ("../escape.qcow2", "sub/x.qcow2", ".hidden.qcow2", ""):
        with pytest.raises(ImageError, match="is not a base image name"):
            import_image(store, disk, name, say=quiet)
    with pytest.raises(ImageError, match="'.hidden.qcow2' is not a base image name"):
        import_image(store, disk.rename(tmp_path / ".hidden.raw"), say=quiet)
    assert sorted(p.name for p in store.images_dir.iterdir()) == ["gold.raw"]


def test_default_names() -> None:
    assert base_name(Path("/srv/ubuntu-22.04-cloudimg.img"), None) == "ubuntu-22.04-cloudimg.qcow2"
    assert base_name(Path("web.VMDK"), None) == "web.qcow2"
    assert base_name(Path("disk-2024.11"), None) == "disk-2024.11.qcow2"
    assert base_name(Path("x.vdi"), "mine.raw") == "mine.raw"


def test_replacing_a_base(store: ImageStore, disk: Path, tmp_path: Path) -> None:
    """--force replaces a base nothing depends on; a base overlays use stays."""
    import_image(store, disk, "gold.raw", force=True, say=quiet)
    assert qemu_img("compare", str(store.images_dir / "gold.raw"), str(disk)).returncode == 0
    with pytest.raises(ImageError, match="gold.raw exists; pick another name"):
        import_image(store, disk, "gold.raw", say=quiet)
    overlay = store.create("a")
    with pytest.raises(ImageError, match="refusing to modify base gold.raw: 1 image.*a"):
        import_image(store, disk, "gold.raw", force=True, say=quiet)
    assert_same(overlay, disk)  # machine a sees the imported disk


def test_cli(store: ImageStore, disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(store.cfg.path)
    assert main(["image", "-c", cfg, "import", str(disk), "new.qcow2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"importing {disk} (raw, 6 MiB) as ") and out[-1] == str(store.images_dir / "new.qcow2")
    assert main(["image", "-c", cfg, "import", str(disk), "new.qcow2"]) == 1
    assert capsys.readouterr().err == (f"bootsvc image import: {store.images_dir / 'new.qcow2'} exists; "
                                       "pick another name or remove it first\n")


def test_an_overlay_made_during_a_forced_import_keeps_its_base(store: ImageStore, disk: Path) -> None:
    """The dependents are asked again before the new base takes the name."""
    gold = (store.images_dir / "gold.raw").read_bytes()

    def overlay_meanwhile(line: str) -> None:
        if line.startswith("importing"):
            store.create("b")

    with pytest.raises(ImageError, match="refusing to modify base gold.raw: 1 image.*b"):
        import_image(store, disk, "gold.raw", force=True, say=overlay_meanwhile)
    assert (store.images_dir / "gold.raw").read_bytes() == gold
    assert sorted(p.name for p in store.images_dir.iterdir()) == ["gold.raw"]
