"""``bootsvc image import``: a base image from a disk made elsewhere (raw,
qcow2, vmdk or vdi). qemu-img reads it: ``qemu-img info`` names its format
(and its backing chain, which the conversion flattens into the base), and
``qemu-img convert`` writes the base through the image store, which refuses
to replace a base that overlays depend on and shows a base only once it is
complete. What the OS on the disk needs to boot from iSCSI is in
docs/images.md; nothing here can see inside the disk's initramfs."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .images import ImageError, ImageStore

IMPORTABLE = ("raw", "qcow2", "vmdk", "vdi")
SUFFIXES = (".raw", ".img", ".qcow2", ".qcow", ".vmdk", ".vdi")  # left out of a default base name
INFO_TIMEOUT = 120.0  # seconds; it reads headers only
CONVERT_TIMEOUT = 4 * 3600.0  # seconds; a large disk over slow storage
SECTOR = 512
# where a raw disk says it is one: the boot sector's signature (MBR, GPT's
# protective MBR, a FAT boot sector), or a file system that fills the disk
RAW_SIGNATURES = ((510, b"\x55\xaa"), (1080, b"\x53\xef"), (0, b"XFSB"), (0x10040, b"_BHRfS_M"), (0x8001, b"CD001"))


@dataclass(frozen=True)
class Source:
    """A disk image to import, as qemu-img sees it."""
    path: Path
    format: str
    virtual_size: int
    backing_chain: tuple[str, ...]  # the files below it, nearest first


def _qemu_img(args: list[str], timeout: float, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["qemu-img", *args], stdout=stdout, stderr=subprocess.PIPE, text=True,
                              errors="replace", timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError as e:
        raise ImageError("qemu-img is not installed: apt install qemu-utils") from e
    except subprocess.TimeoutExpired as e:
        raise ImageError(f"qemu-img {args[0]} took more than {timeout:.0f} s") from e


def _qemu_img_said(r: subprocess.CompletedProcess[str]) -> str:
    """qemu-img's error lines as one line, without its name in front."""
    return "; ".join(line.removeprefix("qemu-img: ").strip() for line in r.stderr.splitlines() if line.strip())


def _readable(path: Path) -> None:
    """A clear error for a file that is missing, not a file, or unreadable."""
    try:
        mode = path.stat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise ImageError(f"{path} is not a disk image file")
        with open(path, "rb") as f:
            f.read(1)
    except FileNotFoundError as e:
        raise ImageError(f"{path} does not exist") from e
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror}") from e


def _looks_like_a_disk(path: Path) -> bool:
    """Whether a file qemu-img calls raw holds a disk: qemu-img calls
    anything raw it knows no header of, a text file included."""
    with open(path, "rb") as f:
        if stat.S_ISREG(os.fstat(f.fileno()).st_mode) and os.fstat(f.fileno()).st_size % SECTOR:
            return False
        for offset, magic in RAW_SIGNATURES:
            f.seek(offset)
            if f.read(len(magic)) == magic:
                return True
    return False


def probe(path: Path) -> Source:
    """What ``path`` is; a clear error for anything bootsvc does not import."""
    _readable(path)
    r = _qemu_img(["info", "--output=json", "--backing-chain", str(path.absolute())], INFO_TIMEOUT)
    if r.returncode != 0:
        raise ImageError(f"qemu-img cannot read {path}: {_qemu_img_said(r)}")
    try:
        chain = json.loads(r.stdout)
        top, fmt, size = chain[0], chain[0]["format"], int(chain[0]["virtual-size"])
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ImageError(f"qemu-img info said something unexpected about {path}") from e
    if fmt not in IMPORTABLE:
        raise ImageError(f"{path} is a {fmt} image; bootsvc imports raw, qcow2, vmdk and vdi "
                         f"(convert it first: qemu-img convert -O qcow2 {path} NEW.qcow2)")
    if fmt == "raw" and not _looks_like_a_disk(path):
        raise ImageError(f"{path} is not a disk image: no partition table, boot sector or file system "
                         "that bootsvc knows of, and no qcow2, vmdk or vdi header")
    if size <= 0:
        raise ImageError(f"{path} is an empty disk")
    backing = tuple(str(layer.get("filename", "?")) for layer in chain[1:])
    return Source(path, fmt, size, backing if top.get("backing-filename") else ())


def base_name(path: Path, name: str | None) -> str:
    """The base's file name: NAME, or the file's own name as .qcow2
    (``ubuntu-22.04.img`` -> ``ubuntu-22.04.qcow2``)."""
    if name is None:
        name = f"{path.stem if path.suffix.lower() in SUFFIXES else path.name}.qcow2"
    if not name or "/" in name or name.startswith("."):
        raise ImageError(f"{name!r} is not a base image name: give a file name in state_dir/images, "
                         "without / and not starting with a dot")
    return name


def import_image(store: ImageStore, path: Path, name: str | None = None, force: bool = False,
                 show_progress: bool = False, say: Callable[[str], None] = print) -> Path:
    """Base ``name`` (qcow2 when it ends in .qcow2, else raw) holding the
    disk ``path``; ``force`` replaces a base no image depends on."""
    name = base_name(path, name)
    source = probe(path)
    dest = store.new_base_path(name, force)  # before the conversion, not after
    out_format = "qcow2" if dest.suffix == ".qcow2" else "raw"
    say(f"importing {path} ({source.format}, {source.virtual_size / (1 << 20):.0f} MiB) as {dest} ({out_format})")
    if source.backing_chain:
        say(f"  its backing chain is merged into the base: {' <- '.join(reversed(source.backing_chain))}")

    def convert(tmp: Path) -> None:
        r = _qemu_img(["convert", *(["-p"] if show_progress else []), "-f", source.format, "-O", out_format,
                       str(path.absolute()), str(tmp)], CONVERT_TIMEOUT, stdout=None if show_progress else
                      subprocess.DEVNULL)
        if r.returncode != 0:
            raise ImageError(f"qemu-img could not convert {path}: {_qemu_img_said(r)}")

    store.add_base_file(dest, convert)
    say(f"  its OS must log in to its root disk from the iBFT to boot diskless (docs/images.md); "
        f"try it with `bootsvc vm -c {store.cfg.path}` on a machine whose profile names base {dest.name}")
    return dest
