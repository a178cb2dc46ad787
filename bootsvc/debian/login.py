"""How root logs in to the Debian image: locked by default (debootstrap's
``*`` in /etc/shadow: no password opens it), or with the password of
``--root-password-file`` (on the serial console; Debian's sshd refuses
root passwords, ``PermitRootLogin prohibit-password``) and the public keys
of ``--ssh-key`` (root's authorized_keys, for SSH). The password goes to
``openssl passwd -6`` on its standard input, never on a command line, and
only its SHA-512 crypt hash reaches the image; nothing of it is printed."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

LOCKED = "*"
# an authorized_keys line: options are allowed before the key type
KEY_TYPE = re.compile(r"(^|[\s,])(ssh-(rsa|ed25519|dss)|ecdsa-sha2-\S+|sk-\S+@openssh\.com) +[A-Za-z0-9+/=]+")


class LoginError(Exception):
    """A root password or key file that cannot be used; the message says why."""


@dataclass(frozen=True)
class RootLogin:
    password_hash: str = LOCKED
    authorized_keys: str = ""

    @classmethod
    def from_files(cls, password_file: Path | None = None, key_file: Path | None = None) -> RootLogin:
        return cls(hash_password(password_file) if password_file else LOCKED,
                   read_public_keys(key_file) if key_file else "")

    def describe(self) -> str:
        """What the image lets root do, in words (no secret in them)."""
        ways = (["password on the serial console"] if self.password_hash != LOCKED else []) + \
            (["SSH key"] if self.authorized_keys else [])
        return f"root logs in with: {' and '.join(ways)}" if ways else "root is locked (no password, no SSH key)"

    def apply(self, root: Path) -> None:
        """Into the tree at ``root``. A tree reused from an earlier build
        gets what this build says: no password file locks root again, no
        key file removes the keys."""
        shadow = root / "etc/shadow"
        lines = shadow.read_text().splitlines(keepends=True)
        for i, line in enumerate(lines):
            fields = line.split(":")
            if fields[0] == "root" and len(fields) > 2:
                fields[1] = self.password_hash
                lines[i] = ":".join(fields)
        shadow.write_text("".join(lines))  # in place: its mode and group (shadow) stay
        ssh = root / "root/.ssh"
        keys = ssh / "authorized_keys"
        if self.authorized_keys:
            ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
            keys.unlink(missing_ok=True)
            keys.write_text(self.authorized_keys)
            keys.chmod(0o600)
        else:
            keys.unlink(missing_ok=True)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(errors="strict")
    except FileNotFoundError as e:
        raise LoginError(f"{what} {path} does not exist") from e
    except UnicodeDecodeError as e:
        raise LoginError(f"{what} {path} is not text") from e
    except OSError as e:
        raise LoginError(f"cannot read {what} {path}: {e.strerror}") from e


def hash_password(path: Path) -> str:
    """The SHA-512 crypt hash of the password on the first line of ``path``."""
    lines = _read(path, "root password file").splitlines()
    if not lines or not lines[0]:
        raise LoginError(f"root password file {path} is empty: put the password on its first line")
    try:
        r = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=lines[0] + "\n", capture_output=True,
                           text=True, timeout=60)
    except FileNotFoundError as e:
        raise LoginError("openssl is not installed: apt install openssl") from e
    hashed = r.stdout.strip()
    if r.returncode != 0 or not hashed.startswith("$6$") or ":" in hashed or "\n" in hashed:
        raise LoginError(f"openssl passwd could not hash the password of {path}")
    return hashed


def read_public_keys(path: Path) -> str:
    """The SSH public keys of ``path`` (authorized_keys lines), checked."""
    text = _read(path, "SSH key file")
    if "PRIVATE KEY" in text:
        raise LoginError(f"{path} is a private key: give its public key ({path}.pub); the private one stays with you")
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not KEY_TYPE.search(line):
            raise LoginError(f"{path}:{n} is not an SSH public key (ssh-ed25519 AAAA... or another type)")
        keys.append(line.strip())
    if not keys:
        raise LoginError(f"{path} holds no SSH public key")
    return "\n".join(keys) + "\n"
