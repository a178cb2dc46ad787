"""The shape DESIGN.md asks of the code, checked on every run: no function
above cyclomatic complexity 20 (radon), and target/ and isns/ importable
on their own (neither imports bootsvc; they import each other only through
isns.client)."""

from __future__ import annotations

import ast
from pathlib import Path

from radon.complexity import cc_visit

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bootsvc", "target", "isns")
MAX_COMPLEXITY = 20


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_no_function_above_complexity_20() -> None:
    too_complex = [f"{path.relative_to(ROOT)}:{block.lineno} {block.fullname} ({block.complexity})"
                   for package in PACKAGES for path in sources(package)
                   for block in cc_visit(path.read_text()) if block.complexity > MAX_COMPLEXITY]
    assert too_complex == []


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_target_and_isns_stand_alone() -> None:
    leaks = [f"{path.relative_to(ROOT)} imports {other}" for package in ("target", "isns")
             for path in sources(package) for other in imported(path) & set(PACKAGES) - {package}]
    assert leaks == []
