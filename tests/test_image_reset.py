"""`bootsvc image reset HOST` on a base prepared as build-debian prepares
Debian's (tree.forget_identity: empty machine-id, no SSH host keys): what a
machine's first boot made lives only in its overlay, and a reset puts a
fresh overlay on the base, so the next boot makes a new identity. The
file system is read and written with debugfs, as the e2e tests do."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bootsvc.config import load
from bootsvc.debian import tree
from bootsvc.images import ImageStore
from target.qcow2 import open_image
from tests.qcow2_oracle import assert_check_clean, qemu_img

pytestmark = pytest.mark.skipif(not (shutil.which("qemu-img") and shutil.which("debugfs")),
                                reason="needs qemu-img (qemu-utils) and debugfs (e2fsprogs)")
CHUNK = 64 << 10
MACHINE_ID = "4f1c0ffee0ddba11c0ffee0ddba11c0f\n"


def debugfs(disk: Path, *requests: str, write: bool = False) -> str:
    """The output of one request (-R); several are written together (-f)."""
    args = ["-R", requests[0]] if len(requests) == 1 else ["-f", "-"]
    r = subprocess.run(["debugfs", *(["-w"] if write else []), *args, str(disk)], input="\n".join(requests),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def read_file(overlay: Path, tmp_path: Path, path: str) -> str:
    raw = tmp_path / "seen.raw"
    assert qemu_img("convert", "-O", "raw", str(overlay), str(raw)).returncode == 0
    return debugfs(raw, f"cat {path}")


def first_boot(overlay: Path, tmp_path: Path) -> None:
    """What the machine's first boot writes (machine-id, an SSH host key),
    written into its overlay as its own writes through iSCSI would be."""
    raw = tmp_path / "boot.raw"
    assert qemu_img("convert", "-O", "raw", str(overlay), str(raw)).returncode == 0
    before = raw.read_bytes()
    (tmp_path / "id").write_text(MACHINE_ID)
    (tmp_path / "key").write_text("ssh-ed25519 AAAA root@node01\n")
    debugfs(raw, "rm /etc/machine-id", f"write {tmp_path / 'id'} /etc/machine-id",
            f"write {tmp_path / 'key'} /etc/ssh/ssh_host_ed25519_key.pub", write=True)
    after = raw.read_bytes()
    img = open_image(overlay, read_only=False)
    try:
        for pos in range(0, len(after), CHUNK):
            if after[pos:pos + CHUNK] != before[pos:pos + CHUNK]:
                img.write_sync(pos, after[pos:pos + CHUNK])
        img.flush_sync()
    finally:
        img.close()


def allocated(overlay: Path) -> tuple[int, str]:
    img = open_image(overlay, read_only=True)
    try:
        return img.allocated_bytes(), img.header.backing_file
    finally:
        img.close()


def test_reset_gives_a_fresh_identity(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")  # the build host's
    (root / "etc/ssh/ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAA root@buildhost\n")
    tree.forget_identity(root)
    disk = tmp_path / "root.raw"
    r = subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(root), str(disk), "8M"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    cfg = tmp_path / "bootsvc.yaml"
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "deb.yaml").write_text("base: deb.qcow2\n")
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nprofiles_dir: profiles\ndefault_profile: deb\n"
                   "machines:\n  52:54:00:00:00:01: {hostname: node01}\n")
    store = ImageStore(load(cfg))
    store.add_base(disk, "deb.qcow2")
    overlay = store.create("node01")
    fresh = allocated(overlay)
    assert read_file(overlay, tmp_path, "/etc/machine-id") == ""  # the base has none
    first_boot(overlay, tmp_path)
    assert read_file(overlay, tmp_path, "/etc/machine-id") == MACHINE_ID
    assert "root@node01" in read_file(overlay, tmp_path, "/etc/ssh/ssh_host_ed25519_key.pub")

    assert store.reset(store.machine("node01")) == overlay
    assert read_file(overlay, tmp_path, "/etc/machine-id") == ""  # systemd makes a new one at the next boot
    assert "root@" not in read_file(overlay, tmp_path, "/etc/ssh/ssh_host_ed25519_key.pub")
    assert allocated(overlay) == fresh  # nothing of node01's writes is left
    assert_check_clean(overlay)
