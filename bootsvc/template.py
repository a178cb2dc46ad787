"""iPXE script templates: ``{{name}}`` placeholders (double braces, so
iPXE's own ``${var}`` settings pass through untouched)."""

from __future__ import annotations

import re

PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
FIELDS = ("hostname", "mac", "profile", "server", "root_path", "initiator_iqn", "target_iqn", "kernel", "initrd",
          "cmdline", "files", "chap")


def unknown_placeholders(template: str) -> list[str]:
    """Placeholders a template uses that no machine can fill in."""
    return sorted({m.group(1) for m in PLACEHOLDER.finditer(template)} - set(FIELDS))


def render(template: str, values: dict[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
