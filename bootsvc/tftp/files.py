"""Which bytes a TFTP file name stands for: files under the configured
roots (Debian's iPXE binaries by default) or generated per-machine files,
with every way out of the roots refused (``..``, absolute names, symlinks
pointing outside). Files are kept in memory for the next client; a large
one is read in the background while its first transfer already sends
(Filling)."""

from __future__ import annotations

import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

CACHE_FILES = 64
CACHE_MAX_FILE = 64 << 20
CACHE_BYTES = 256 << 20  # all cached files together: a bound on the memory a storm can pin
FILL_FROM = 4 << 20  # files this large (kernels, initrds) are read while being sent: Filling
FILL_CHUNK = 256 << 10  # what the reader thread reads at a time, once under way
FILL_FIRST = 16 << 10  # its first read, what the first block waits for; the chunks double up to FILL_CHUNK

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


class ReadError(OSError):
    """A Filling's file could not be read to the end (it shrank, or an I/O error)."""


class Filling:
    """A large file read into memory by a thread of its own while transfers
    already send its beginning, instead of all of it on the event loop
    before the first block. Reading 30 MiB into fresh memory took 18-22 ms
    here, mostly page faults (docs/benchmarks.md, TFTP); a lock-step transfer
    runs on one core with its client, so the reader takes the other one, and
    the transfer waits (``ensure``) only for the first chunk. Transfers of the
    same file share one Filling through the cache, as they share whole files.
    The file stays open until it is all in: a file replaced by rename
    meanwhile is sent as it was when first asked for; one that shrinks
    underneath fails its transfers (ReadError) instead of sending a mix."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb", buffering=0)  # the reader closes it
        self.filled = 0  # bytes [0, filled) are in; only grows
        self.error: ReadError | None = None
        self._cond = threading.Condition()
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            # private anonymous memory, not bytearray(size), which would touch (fault in) every page here
            pages = mmap.mmap(-1, max(self.size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            self.buffer = memoryview(pages)[:self.size]
            threading.Thread(target=self._read, name="tftp-fill", daemon=True).start()
        except BaseException as e:
            self._file.close()
            if isinstance(e, RuntimeError):  # no thread to be had: the request is refused, the service goes on
                raise OSError(f"cannot start reading {path}: {e}") from None
            raise

    def __len__(self) -> int:
        return self.size

    def _read(self) -> None:
        try:
            with self._file:
                while self.filled < self.size:
                    offset = self.filled
                    chunk = min(FILL_CHUNK, max(FILL_FIRST, offset))
                    # preadv releases the GIL for the copy and its page faults
                    n = os.preadv(self._file.fileno(), [self.buffer[offset:offset + chunk]], offset)
                    if n <= 0:
                        raise ReadError(f"{self._file.name} shrank while being read")
                    with self._cond:
                        self.filled = offset + n
                        self._cond.notify_all()
        except Exception as e:  # whatever stops the reader must not leave a transfer waiting
            with self._cond:
                self.error = e if isinstance(e, ReadError) else ReadError(
                    f"cannot read {self._file.name}: {getattr(e, 'strerror', None) or e}")
                self._cond.notify_all()

    def ensure(self, end: int) -> None:
        """Wait until bytes [0, end) are in (end is clipped to the size);
        ReadError when they will not come."""
        if end <= self.filled:
            return  # nearly always: the reader is far ahead of any transfer
        with self._cond:
            while self.filled < min(end, self.size):
                if self.error is not None:
                    raise self.error
                self._cond.wait()

    def contents(self) -> bytes:
        self.ensure(self.size)
        return self.buffer.tobytes()


class FileSource:
    def __init__(self, roots: list[Path], generate: Generator | None = None) -> None:
        self.generate = generate
        self.roots: list[Path] = []
        self._cache: OrderedDict[Path, tuple[int, int, bytes | Filling]] = OrderedDict()  # least recently used first
        self._cached_bytes = 0
        self.set_roots(roots)

    def set_roots(self, roots: list[Path]) -> None:
        """Serve from other roots (a reloaded config); what was cached from
        the old ones is dropped."""
        self.roots = [r.resolve() for r in roots]
        self._cache.clear()
        self._cached_bytes = 0

    def read(self, name: str, client: str = "", local: str = "") -> bytes:
        """The file's bytes; FileNotFoundError or PermissionError (with a
        message fit to send back in a TFTP ERROR) otherwise. ``client`` and
        ``local`` are the addresses a generated file is made for."""
        data = self.open(name, client, local)
        return data.contents() if isinstance(data, Filling) else data

    def open(self, name: str, client: str = "", local: str = "") -> bytes | Filling:
        """As read(), but a large file comes as a Filling: read in the
        background, its transfers wait (``ensure``) only for the bytes they send."""
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
            if os.path.isfile(path):  # False, not OSError, for a name too long for the file system
                return path
        raise FileNotFoundError(f"{name} not found")

    def has(self, name: str) -> bool:
        """Whether a root holds a file of this name (no generated files)."""
        try:
            self.path(name)
        except (FileNotFoundError, PermissionError):
            return False
        return True

    def _load(self, path: Path) -> bytes | Filling:
        st = path.stat()
        cached = self._cache.get(path)
        if cached is not None and cached[:2] == (st.st_mtime_ns, st.st_size) and not (
                isinstance(cached[2], Filling) and cached[2].error is not None):  # a failed read is tried again
            self._cache.move_to_end(path)
            return cached[2]
        data: bytes | Filling
        if st.st_size >= FILL_FROM:
            data = Filling(path)
        else:
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
