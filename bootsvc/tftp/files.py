"""Which bytes a TFTP file name stands for: files under the configured
roots (Debian's iPXE binaries by default) or generated per-machine files,
with every way out of the roots refused (``..``, absolute names, symlinks
pointing outside)."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

CACHE_FILES = 64
CACHE_MAX_FILE = 64 << 20
CACHE_BYTES = 256 << 20  # all cached files together: a bound on the memory a storm can pin

# (name, client address, our address) -> contents, or None when not a generated name
Generator = Callable[[str, str, str], "bytes | None"]


def check_name(name: str) -> None:
    """Refuse names that could leave the roots before looking at any file."""
    if not name or "\0" in name or "\\" in name:
        raise PermissionError("bad file name")
    if name.startswith("/"):
        raise PermissionError("absolute paths are refused")
    if ".." in name.split("/"):
        raise PermissionError("'..' is refused")


class FileSource:
    def __init__(self, roots: list[Path], generate: Generator | None = None) -> None:
        self.roots = [r.resolve() for r in roots]
        self.generate = generate
        self._cache: OrderedDict[Path, tuple[int, int, bytes]] = OrderedDict()  # least recently used first
        self._cached_bytes = 0

    def read(self, name: str, client: str = "", local: str = "") -> bytes:
        """The file's bytes; FileNotFoundError or PermissionError (with a
        message fit to send back in a TFTP ERROR) otherwise. ``client`` and
        ``local`` are the addresses a generated file is made for."""
        check_name(name)
        if self.generate is not None:
            data = self.generate(name, client, local)
            if data is not None:
                return data
        return self._load(self.path(name))

    def path(self, name: str) -> Path:
        """The file under the first root that has it (no generated files)."""
        check_name(name)
        for root in self.roots:
            path = (root / name).resolve()
            if not path.is_relative_to(root):
                raise PermissionError("the name leads outside the root")
            if path.is_file():
                return path
        raise FileNotFoundError(f"{name} not found")

    def _load(self, path: Path) -> bytes:
        st = path.stat()
        cached = self._cache.get(path)
        if cached is not None and cached[:2] == (st.st_mtime_ns, st.st_size):
            self._cache.move_to_end(path)
            return cached[2]
        with open(path, "rb") as f:
            data = f.read()
        if len(data) <= CACHE_MAX_FILE:  # a boot storm reads the same few files again and again
            old = self._cache.pop(path, None)
            self._cached_bytes += len(data) - (len(old[2]) if old else 0)
            self._cache[path] = (st.st_mtime_ns, st.st_size, data)
            while len(self._cache) > CACHE_FILES or self._cached_bytes > CACHE_BYTES:
                self._cached_bytes -= len(self._cache.popitem(last=False)[1][2])
        return data


def default_roots() -> list[Path]:
    """Debian's ipxe package puts its binaries here."""
    return [p for p in (Path("/usr/lib/ipxe"),) if p.is_dir()] or [Path(os.devnull).parent]
