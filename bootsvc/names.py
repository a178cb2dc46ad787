"""Host names and DNS domains as the config gives them: RFC 1123 §2.1
labels (letters, digits and '-', not at either end, 1-63 characters),
a domain being labels joined by dots, at most 253 characters (RFC 1035 §2.3.4).
They go into DHCP options 12 and 15 (RFC 2132 §3.14, §3.17) and DNS answers."""

from __future__ import annotations

import re

LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)
MAX_DOMAIN = 253


def hostname_problem(name: str) -> str | None:
    """Why ``name`` is not a host name (one label), or None."""
    if not name:
        return "missing: every machine needs a host name"
    if not LABEL.match(name):
        return f"{name[:70]} is not a host name (letters, digits and '-', not at either end, up to 63)"
    return None


def domain_problem(name: str) -> str | None:
    """Why ``name`` is not a DNS domain (labels joined by dots), or None."""
    if len(name) > MAX_DOMAIN:
        return f"{name[:70]}... is longer than {MAX_DOMAIN} characters"
    if not all(LABEL.match(label) for label in name.split(".")):
        return (f"{name[:70]} is not a domain (labels of letters, digits and '-', "
                "joined by dots, like lab.example)")
    return None
