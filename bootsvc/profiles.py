"""Boot profiles: one YAML file each (``profiles/<name>.yaml``, shipped or in
the config's ``profiles_dir``) saying what a machine boots and how its disk
behaves (DESIGN.md "Naming and identities")."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from target import ChapSecret

from .credentials import AuthMode, check_pair, parse_chap
from .template import FIELDS, unknown_placeholders
from .yamlfile import Checker, ConfigError, load_yaml, plain


def _shipped() -> Path:
    """The shipped profiles: the package data of an installed wheel
    (setup.py puts the repo's ``profiles/`` there), else, running from a
    checkout or an editable install, the repo's ``profiles/`` itself."""
    installed = Path(__file__).resolve().parent / "shipped_profiles"
    return installed if installed.is_dir() else installed.parent.parent / "profiles"


SHIPPED = _shipped()
KEYS = {"description", "base", "overlay", "overlay_limit", "boot", "kernel", "initrd", "cmdline", "script", "auth",
        "chap", "mutual_chap"}


class OverlayPolicy(str, Enum):
    PERSISTENT = "persistent"  # kept across boots
    EPHEMERAL = "ephemeral"  # fresh for every new boot of the machine


class BootMethod(str, Enum):
    SANBOOT = "sanboot"  # iPXE boots the iSCSI disk itself
    KERNEL = "kernel"  # iPXE loads a kernel and initrd, the disk is the root


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    base: str  # under state_dir/images/ unless absolute
    overlay: OverlayPolicy = OverlayPolicy.PERSISTENT
    overlay_limit: int | None = None  # bytes an overlay may allocate
    boot: BootMethod = BootMethod.SANBOOT
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    script: str = ""  # an iPXE script template replacing the generated one (its text)
    description: str = ""
    auth: AuthMode = AuthMode.CHAP  # what its machines prove when they log in to their disks
    chap: ChapSecret | None = None  # credentials shared by its machines (None: one pair per machine)
    mutual_chap: ChapSecret | None = None


def load_profile(path: Path) -> Profile:
    doc = load_yaml(path)
    c = Checker(path)
    c.unknown(doc, KEYS, "")
    if not isinstance(doc.get("base"), str) or not doc["base"]:
        c.err(doc, "base", "every profile names its base image")

    def choice(key: str, enum: type[Enum], default: Enum) -> Enum:
        value = doc.get(key, default.value)
        try:
            return enum(value)
        except (ValueError, TypeError):  # TypeError: a list or mapping
            c.err(doc, key, f"must be one of {', '.join(e.value for e in enum)}, not {plain(value)}")
            return default

    overlay = choice("overlay", OverlayPolicy, OverlayPolicy.PERSISTENT)
    boot = choice("boot", BootMethod, BootMethod.SANBOOT)
    auth = choice("auth", AuthMode, AuthMode.CHAP)
    limit = c.size(doc, "overlay_limit", "overlay_limit")
    if boot is BootMethod.KERNEL and not doc.get("kernel"):
        c.err(doc, "kernel", "boot: kernel needs a kernel (and usually an initrd)")
    script = doc.get("script") or ""
    if isinstance(script, str) and script and not script.lstrip().startswith("#!ipxe"):
        try:  # a file name, relative to the profile
            script = (path.parent / script).read_text()
        except OSError as e:
            c.err(doc, "script", f"cannot read the script template: {e.strerror or e}")
    if not isinstance(script, str):
        c.err(doc, "script", "expected an iPXE script (starting #!ipxe) or a file name")
    elif unknown := unknown_placeholders(script):
        c.err(doc, "script", f"unknown placeholder(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    elif script and auth is not AuthMode.NONE and "{{chap}}" not in script.replace(" ", ""):
        c.err(doc, "script", f"with auth: {auth.value} the script must set the machine's credentials: "
                             "put {{chap}} before sanboot/sanhook (or say auth: none)")
    chap, mutual_chap = parse_chap(c, doc, "chap", "profile"), parse_chap(c, doc, "mutual_chap", "profile")
    check_pair(c, doc, "profile", chap, mutual_chap)
    c.raise_if_any()
    text = {k: str(doc.get(k, "") or "") for k in ("kernel", "initrd", "cmdline", "script", "description")}
    text["script"] = str(script)
    return Profile(name=path.stem, path=path, base=str(doc["base"]), overlay=OverlayPolicy(overlay),
                   overlay_limit=limit, boot=BootMethod(boot), auth=AuthMode(auth), chap=chap,
                   mutual_chap=mutual_chap, **text)


def load_profiles(directories: list[Path]) -> dict[str, Profile]:
    """Every ``*.yaml`` in the directories; a later directory's profile
    replaces a shipped one of the same name."""
    profiles: dict[str, Profile] = {}
    problems: list[str] = []
    for d in directories:
        for path in sorted(d.glob("*.yaml")) if os.path.isdir(d) else ():  # False, not OSError, for a name too long
            try:
                profiles[path.stem] = load_profile(path)
            except ConfigError as e:
                problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)
    return profiles
