"""The Debian mirror to build from, read from the host's own apt
configuration at run time (deb822 ``*.sources`` files, one-line
``sources.list`` files), so the image is built from whatever mirror or
proxy the host already uses and no host name is written in the code."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

APT_DIR = Path("/etc/apt")


class MirrorError(Exception):
    """No usable mirror in the apt configuration; the message says where it looked."""


@dataclass(frozen=True)
class AptSource:
    """One apt source: where it was read (file:line), its URIs, suites and components."""

    where: str
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]


def _deb822_paragraphs(text: str) -> list[tuple[int, dict[str, str]]]:
    """deb822 paragraphs (sources.list(5) "DEB822-STYLE FORMAT") with the
    line each starts at; keys are lower-cased, continuation lines joined."""
    out: list[tuple[int, dict[str, str]]] = []
    fields: dict[str, str] = {}
    start, key = 0, ""
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                out.append((start, fields))
            fields, key = {}, ""
            continue
        if line[0] in " \t" and key:
            fields[key] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue  # apt itself would refuse the file; a mirror may still be found elsewhere
        if not fields:
            start = n
        key = name.strip().lower()
        fields[key] = value.strip()
    if fields:
        out.append((start, fields))
    return out


def parse_deb822(text: str, name: str) -> list[AptSource]:
    """The enabled binary (``Types: deb``) sources of a ``.sources`` file."""
    out = []
    for line, f in _deb822_paragraphs(text):
        if "deb" not in f.get("types", "").split() or f.get("enabled", "yes").lower() == "no":
            continue
        out.append(AptSource(f"{name}:{line}", tuple(f.get("uris", "").split()), tuple(f.get("suites", "").split()),
                             tuple(f.get("components", "").split())))
    return out


def parse_one_line(text: str, name: str) -> list[AptSource]:
    """The ``deb`` lines of a one-line-style ``.list`` file:
    ``deb [options] URI suite [component...]``."""
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"\[[^]]*\]", " ", raw.split("#", 1)[0]).split()
        if len(line) >= 3 and line[0] == "deb":
            out.append(AptSource(f"{name}:{n}", (line[1],), (line[2],), tuple(line[3:])))
    return out


def host_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    """Every enabled binary source of the host, in apt's reading order
    (sources.list, then sources.list.d/ by name); unreadable files are skipped."""
    files = [apt_dir / "sources.list"] + sorted((apt_dir / "sources.list.d").glob("*"))
    out: list[AptSource] = []
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        if f.name.endswith(".sources"):
            out += parse_deb822(text, str(f))
        elif f.name.endswith(".list"):
            out += parse_one_line(text, str(f))
    return out


def mirror_for(sources: list[AptSource], suite: str, apt_dir: Path = APT_DIR) -> str:
    """The first URI of the first source that carries ``suite`` (bookworm)
    with the main component."""
    for s in sources:
        if suite in s.suites and "main" in s.components and s.uris:
            return s.uris[0]
    raise MirrorError(f"no apt source for Debian {suite} (main) in {apt_dir / 'sources.list'} or "
                      f"{apt_dir / 'sources.list.d'}: add one, or name a mirror with --mirror")


def image_sources(sources: list[AptSource], suite: str) -> str:
    """The image's own /etc/apt/sources.list.d/debian.sources: the host's
    sources for ``suite`` and its updates and security suites (main only)."""
    paragraphs = []
    for s in sources:
        suites = [x for x in s.suites if x == suite or x.startswith(f"{suite}-")]
        if suites and "main" in s.components and s.uris:
            paragraphs.append(f"Types: deb\nURIs: {' '.join(s.uris)}\nSuites: {' '.join(suites)}\n"
                              "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    return "\n".join(paragraphs)
