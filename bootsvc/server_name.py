"""A bootsvc server's own name (``isns.name``): what tells two servers
apart at one iSNS server (docs/scale-out.md).

Each server registers as its own network entity with its own control node,
``<iqn_prefix>:bootsvc.<name>`` (RFC 4171 §6.2.1: the Entity Identifier is
unique in the server's database; two servers under one name would replace
each other's registrations). The default is the host's name; a server whose
state_dir is not the packaged default gets a short digest of its state_dir
appended, so two servers on one host (each with its own state_dir, as
``bootsvc serve`` requires) still differ, and a server keeps its name
across restarts.
"""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from .yamlfile import Checker, LineMap, plain

if TYPE_CHECKING:
    from .config import Config

DEFAULT_STATE_DIR = Path("/var/lib/bootsvc")
MAX_NAME = 63  # one DNS label: the name usually is the host's
# an iSCSI name's characters (RFC 3722 stringprep leaves lowercase ASCII
# letters, digits, '-' and '.'), starting and ending with a letter or digit
_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?\Z")


def check_server_name(name: str) -> str:
    """``name`` if it may be a server's name, else ValueError saying why."""
    if len(name) > MAX_NAME or not _NAME_RE.match(name):
        raise ValueError(f"{plain(name)} is not a server name: lowercase letters, digits, '-' and '.', "
                         f"starting and ending with a letter or digit, at most {MAX_NAME} characters")
    return name


def default_server_name(state_dir: Path, host: str | None = None) -> str:
    """The host's name (lowercase, other characters as '-'), and for a
    state_dir other than the default a digest of its path."""
    host = host if host is not None else socket.gethostname()
    short = re.sub(r"[^a-z0-9.-]+", "-", host.split(".")[0].lower()).strip("-.") or "bootsvc"
    short = short[:MAX_NAME - 7]
    if state_dir.absolute() == DEFAULT_STATE_DIR:
        return short
    digest = hashlib.sha256(str(state_dir.absolute()).encode()).hexdigest()[:6]
    return f"{short}-{digest}"


def parse_server_name(c: Checker, m: LineMap) -> str | None:
    """isns.name, checked; None when not given (the default applies)."""
    given = m.get("name")
    if given is None:
        return None
    if not isinstance(given, (str, int)) or isinstance(given, bool):
        c.err(m, "isns.name", f"expected a server name, got {plain(given)}")
        return None
    try:
        return check_server_name(str(given))
    except ValueError as e:
        c.err(m, "isns.name", str(e))
        return None


def isns_identity(cfg: Config) -> str:
    """What ``bootsvc check`` says of the server's iSNS identity."""
    how = "isns.name" if cfg.isns.name else "the default from the host name (isns.name sets it)"
    return (f"iSNS: this server registers as entity and control node {cfg.control_node}, {how}; "
            f"every server registering with {cfg.isns.target} needs a name of its own")
