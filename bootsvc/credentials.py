"""CHAP credentials: how the config gives them and where the fleet keeps the
ones it makes (DESIGN.md "Naming and identities"; docs/security.md).

A profile says ``auth: chap | mutual | none`` (chap unless it says
otherwise). A machine's credentials come from its config entry
(``chap:``/``mutual_chap:``), else its profile's, else they are made on the
machine's first use and kept in ``state_dir/secrets/chap.json``: mode 0600
in a 0700 directory, written by rename so a crash never leaves half a file,
and never logged. With ``storage: {backend: ceph}`` they are kept in the
pool instead, shared by every server on it (bootsvc/shared_secrets.py). The forward name is the machine's initiator IQN, the
reverse name its target IQN; each secret is 16 characters (96 random bits),
the most Windows' initiator takes.

A secret given in the config is checked here: 12 to 255 bytes (RFC 7143
§12.1.3 asks for secrets nobody can guess; Windows asks for 12 at least),
printable ASCII without spaces or ``$`` so that it passes through an iPXE
script untouched.
"""

from __future__ import annotations

import enum
import json
import os
import secrets
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from target import ChapAuth, ChapSecret

from .yamlfile import Checker, LineMap

if TYPE_CHECKING:
    from .config import Config
    from .inventory import Machine

SECRET_CHARACTERS = 16


class AuthMode(str, enum.Enum):
    CHAP = "chap"  # the machine proves its secret
    MUTUAL = "mutual"  # and bootsvc proves its own back
    NONE = "none"  # no authentication: anyone who knows the names may log in


def parse_chap(c: Checker, parent: LineMap, key: str, where: str) -> ChapSecret | None:
    """``key: {user: NAME, secret: TEXT}`` (or ``secret_file: PATH``,
    relative to the config file) under ``parent``; None if absent."""
    raw = parent.get(key)
    if raw is None:
        return None
    if not isinstance(raw, LineMap) or set(raw) - {"user", "secret", "secret_file"}:
        c.err(parent, f"{where}.{key}", "expected {user: NAME, secret: TEXT} or {user: NAME, secret_file: PATH}")
        return None
    secret = raw.get("secret")
    if "secret_file" in raw:
        path = Path(str(raw["secret_file"]))
        path = path if path.is_absolute() else c.path.parent / path
        try:
            secret = path.read_text().strip()
        except OSError as e:
            c.err(raw, f"{where}.{key}.secret_file", f"cannot read {path}: {e.strerror}")
            return None
    try:
        return chap_secret(raw.get("user"), secret)
    except ValueError as e:
        c.err(raw, f"{where}.{key}", str(e))
        return None


def check_pair(c: Checker, where: LineMap, name: str, forward: ChapSecret | None,
               reverse: ChapSecret | None) -> None:
    """A mutual secret equal to the forward one would let an initiator
    reflect our challenge (RFC 7143 §12.1.3)."""
    if forward is not None and reverse is not None and forward.secret == reverse.secret:
        c.err(where, f"{name}.mutual_chap", "the mutual CHAP secret must differ from the chap one")


def chap_secret(user: Any, secret: Any) -> ChapSecret:
    """A configured name and secret, or ValueError saying what is wrong
    (never the secret itself)."""
    if not isinstance(user, str) or not user:
        raise ValueError("needs a user name")
    if not isinstance(secret, str):
        raise ValueError("needs a secret (a string)")
    if not all(33 <= ord(ch) < 127 and ch != "$" for ch in secret):
        raise ValueError("a secret is printable ASCII without spaces or '$' (it goes into an iPXE script)")
    return ChapSecret(user, secret.encode())


def chap_auth(mode: AuthMode, forward: ChapSecret | None, reverse: ChapSecret | None) -> ChapAuth | None:
    """What a target asks under ``mode``, from the given secrets."""
    if mode is AuthMode.NONE or forward is None:
        return None
    return ChapAuth(forward, reverse if mode is AuthMode.MUTUAL else None)


class Credentials(Protocol):
    """Where the fleet gets the credentials bootsvc makes for a machine."""

    def secrets_of(self, machine: Machine) -> tuple[ChapSecret, ChapSecret]:
        """The machine's forward and reverse secrets, made and kept on first use."""

    def close(self) -> None:
        """Let go of what it holds open (a cluster connection)."""


def credential_store(cfg: Config) -> Credentials:
    """state_dir's file; on Ceph the pool, which every server on it shares
    (a machine moved to another server keeps its secret: bootsvc/shared_secrets.py)."""
    from .storage_config import StorageBackend
    if cfg.storage.backend is StorageBackend.CEPH:
        from .shared_secrets import SharedCredentialStore
        return SharedCredentialStore(cfg.storage.pool, cfg.storage.conf, cfg.storage.user)
    return CredentialStore(cfg.state_dir)


class CredentialStore:
    """The credentials bootsvc made for machines, by MAC, in one 0600 file."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "secrets" / "chap.json"
        self._lock = threading.Lock()  # disks are made in worker threads
        self._entries: dict[str, dict[str, str]] | None = None

    def secrets_of(self, machine: Machine) -> tuple[ChapSecret, ChapSecret]:
        """The machine's forward and reverse secrets, made and kept on first use."""
        with self._lock:
            entries = self._load()
            entry = entries.get(machine.mac)
            if entry is None:
                entry = new_entry(machine.hostname)
                entries[machine.mac] = entry
                self._save(entries)
        return (ChapSecret(machine.initiator_iqn, entry["secret"].encode()),
                ChapSecret(machine.target_iqn, entry["reverse_secret"].encode()))

    def close(self) -> None:
        """Nothing is held open: the file is read and written per change."""

    def _load(self) -> dict[str, dict[str, str]]:
        if self._entries is None:
            try:
                self._entries = json.loads(self.path.read_text())
            except FileNotFoundError:
                self._entries = {}
            except (OSError, ValueError) as e:
                # never start over silently: every machine would lose its secret
                raise OSError(f"cannot read the CHAP secrets in {self.path}: {e}") from e
        return self._entries

    def _save(self, entries: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def new_entry(hostname: str) -> dict[str, str]:
    """A machine's new secrets, as both stores keep them."""
    return {"hostname": hostname, "secret": _new_secret(), "reverse_secret": _new_secret()}


def _new_secret() -> str:
    # token_urlsafe: letters, digits, '-' and '_': safe in iPXE scripts and the iBFT
    return secrets.token_urlsafe(SECRET_CHARACTERS * 3 // 4)
