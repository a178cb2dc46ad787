"""The image store: overlays per machine, commit, rebase, check, and the
refusals that protect bases and overlays in use; qemu-img judges."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import struct
from pathlib import Path

import pytest

from bootsvc.config import load
from bootsvc.images import ImageError, ImageStore
from target.qcow2 import open_image
from target.targets import Target
from tests.qcow2_oracle import assert_check_clean, assert_same, qemu_img

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img (qemu-utils)")
SIZE = 4 << 20


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    (tmp_path / "state" / "images").mkdir(parents=True)
    (tmp_path / "state" / "images" / "gold.raw").write_bytes(os.urandom(SIZE))
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "p.yaml").write_text("base: gold.raw\n")
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nprofiles_dir: profiles\ndefault_profile: p\n"
                   "machines:\n  52:54:00:00:00:01: {hostname: a}\n  52:54:00:00:00:02: {hostname: b}\n")
    return ImageStore(load(cfg))


def write(path: Path, offset: int, data: bytes) -> None:
    img = open_image(path, read_only=False)
    img.write_sync(offset, data)
    img.close()


def test_overlays_are_relative_and_commit_rebase_keep_contents(store: ImageStore, tmp_path: Path) -> None:
    a, b = store.create("a"), store.create("52:54:00:00:00:02")
    assert "backing file: ../images/gold.raw" in qemu_img("info", str(a)).stdout
    write(a, 12345 * 512, b"\x99" * 70000)
    seen_by_a = tmp_path / "a.raw"
    assert qemu_img("convert", "-O", "raw", str(a), str(seen_by_a)).returncode == 0
    for name in ("gold2.raw", "gold2.qcow2"):
        new = store.commit("a", name)
        assert not os.stat(new).st_mode & 0o222  # bases are read-only files
        assert qemu_img("compare", str(new), str(seen_by_a)).returncode == 0
    write(b, 0, b"\x01" * 4096)
    store.rebase("b", "gold2.qcow2")  # b keeps seeing gold + its own write, now on a's content
    expected = bytearray((store.images_dir / "gold.raw").read_bytes())
    expected[:4096] = b"\x01" * 4096
    (tmp_path / "b.raw").write_bytes(expected)
    assert_same(b, tmp_path / "b.raw")
    assert_check_clean(b)
    assert store.dependents(store.images_dir / "gold2.qcow2") == ["b"]
    assert [o.host for o in store.overlays()] == ["a", "b"]
    assert {x.name: x.dependents for x in store.bases()}["gold.raw"] == ("a",)


def test_refusals(store: ImageStore) -> None:
    a = store.create("a")
    with pytest.raises(ImageError, match="exists"):
        store.create("a")
    with pytest.raises(ImageError, match="refusing to modify base gold.raw: 1 image"):
        store.commit("a", "gold.raw")
    with pytest.raises(ImageError, match="no machine 'zz'"):
        store.create("zz")
    with pytest.raises(ImageError, match="has no overlay"):
        store.commit("b", "x.raw")
    with open(a, "rb") as f:  # what a serving bootsvc holds
        fcntl.flock(f, fcntl.LOCK_EX)
        for action in (lambda: store.reset(store.machine("a")), lambda: store.commit("a", "y.raw"),
                       lambda: store.rebase("a", "gold.raw"), lambda: store.check(["a"], repair=True)):
            with pytest.raises(ImageError, match="in use"):
                action()


def test_check_and_repair(store: ImageStore) -> None:
    a = store.create("a")
    img = open_image(a, read_only=False)
    img.write_sync(0, b"\x07" * 8192)
    img.refs.alloc()  # a leak, as a crash between the flush phases leaves
    img.flush_sync()
    img.close()
    [report] = store.check(["a"])
    assert report.leaks == 1 and not report.corruptions
    [report] = store.check([], repair=True)
    assert report.leaks_fixed == 1
    assert store.check(["a"])[0].clean
    assert_check_clean(a)


def test_a_machine_disk_keeps_reservations_under_state_dir(store: ImageStore, tmp_path: Path) -> None:
    """APTPL (SPC-4 §5.12.5): the target gets a path per LUN from its owner;
    a restart (a new Target from the same spec) finds the registrations."""
    spec = store.prepare(store.machine("a"))
    path = Path(spec.reservations or "") / "0.json"
    assert path.parent.parent == tmp_path / "state" / "reservations"
    nexus = ("iqn.2026-11.test:a", bytes(6), spec.iqn)
    register = struct.pack(">BBB2xIB", 0x5F, 0x06, 0, 24, 0)
    body = struct.pack(">QQ4xBx2x", 0, 0x1234, 0x01)  # APTPL
    target = Target.open(spec)
    result = asyncio.run(target.luns[0].execute(register, memoryview(body), nexus, 24))
    target.close()
    assert result.status == 0 and path.exists()
    again = Target.open(spec)
    assert again.luns[0].pr.keys == {nexus: 0x1234}
    again.close()
