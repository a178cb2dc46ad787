"""docs/licensing.md's table of runtime dependencies stays true: it names
every requirement of pyproject.toml with the licence its installed
metadata declares, and bootsvc's own licence is GPL-2.0-only everywhere it
is stated."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "licensing.md"


def requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0] for r in project["dependencies"]]


def declared(name: str) -> str:
    meta = metadata.metadata(name)
    return str(meta.get("License-Expression") or meta.get("License"))


def test_every_runtime_dependency_is_in_the_table() -> None:
    rows = {cells[1].strip(): cells[3] for line in DOC.read_text().splitlines()
            if (cells := line.split("|")) and len(cells) > 4}
    for name in requirements():
        assert name in rows, f"docs/licensing.md has no row for {name}"
        assert f"`{declared(name)}`" in rows[name], (name, declared(name), rows[name])


def test_no_apache_only_library_in_the_program() -> None:
    """prometheus-client (Apache-2.0) is test-only: nothing shipped imports it."""
    for top in ("bootsvc", "isns", "target"):
        for path in (ROOT / top).rglob("*.py"):
            assert not re.search(r"^\s*(from|import)\s+prometheus_client\b", path.read_text(), re.M), path


def test_the_licence_is_gpl_2_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "GPL-2.0-only"
    assert (ROOT / "LICENSE").read_text().split()[:5] == ["GNU", "GENERAL", "PUBLIC", "LICENSE", "Version"]
    assert "GPL-2.0-only" in (ROOT / "README.md").read_text()
