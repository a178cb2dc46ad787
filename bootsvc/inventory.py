"""The machine inventory: every machine bootsvc boots, keyed by MAC
(DESIGN.md "Naming and identities")."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from target import ChapSecret, TargetConfigError, check_iscsi_name

from .credentials import check_pair, parse_chap
from .yamlfile import Checker, LineMap

MACHINE_KEYS = {"hostname", "ip", "profile", "initiator", "target", "chap", "mutual_chap"}
_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Machine:
    mac: str  # lowercase, colon form
    hostname: str
    profile: str
    initiator_iqn: str
    target_iqn: str
    ip: ipaddress.IPv4Address | None = None
    # CHAP credentials the config gives (None: the profile's, else made by bootsvc)
    chap: ChapSecret | None = None
    mutual_chap: ChapSecret | None = None


def normalize_mac(text: str) -> str:
    mac = text.strip().lower().replace("-", ":")
    if not _MAC.match(mac):
        raise ValueError(f"{text!r} is not a MAC address (like 52:54:00:12:34:56)")
    return mac


def generated_machine(mac: str, iqn_prefix: str, profile: str) -> Machine:
    """A machine for a MAC that is not in the inventory (unknown_machines:
    default): named after its MAC, so it finds the same disk after a restart."""
    hostname = "pxe-" + mac.replace(":", "")
    return Machine(mac=mac, hostname=hostname, profile=profile, initiator_iqn=f"{iqn_prefix}:{hostname}",
                   target_iqn=f"{iqn_prefix}:boot.{hostname}")


def load_machines(c: Checker, doc: LineMap, iqn_prefix: str, profiles: set[str],
                  default_profile: str | None) -> dict[str, Machine]:
    raw = doc.get("machines") or LineMap.empty(doc.lines.get("machines", doc.line))
    if not isinstance(raw, LineMap):
        c.err(doc, "machines", "expected a mapping of MAC: {hostname: ..., ...}")
        return {}
    machines: dict[str, Machine] = {}
    hostnames: set[str] = set()
    for key, entry in raw.items():
        where = f"machines.{key}"
        try:
            mac = normalize_mac(str(key))
        except ValueError as e:
            c.err(raw, str(key), str(e))
            continue
        if not isinstance(entry, LineMap):
            c.err(raw, str(key), "expected {hostname: ..., profile: ..., ip: ...}")
            continue
        machine = _machine(c, entry, where, mac, iqn_prefix, profiles, default_profile)
        if machine is None:
            continue
        if mac in machines:
            c.err(raw, str(key), f"{mac} is listed twice")
        if machine.hostname in hostnames:
            c.err(entry, f"{where}.hostname", f"{machine.hostname} is used by two machines")
        hostnames.add(machine.hostname)
        machines[mac] = machine
    return machines


def _machine(c: Checker, m: LineMap, where: str, mac: str, iqn_prefix: str, profiles: set[str],
             default_profile: str | None) -> Machine | None:
    c.unknown(m, MACHINE_KEYS, f"{where}.")
    hostname = str(m.get("hostname", "")).lower()
    if not _HOSTNAME.match(hostname):
        c.err(m, f"{where}.hostname", f"{hostname!r} is not a host name (letters, digits, '-')")
        return None
    profile = m.get("profile", default_profile)
    if profile is None:
        c.err(m, f"{where}.profile", "no profile and no default_profile")
    elif profile not in profiles:
        c.err(m, f"{where}.profile", f"no profile {profile!r} (have: {', '.join(sorted(profiles)) or 'none'})")
    ip = None
    if m.get("ip") is not None:
        try:
            ip = ipaddress.IPv4Address(str(m["ip"]))
        except ValueError:
            c.err(m, f"{where}.ip", f"{m['ip']!r} is not an IPv4 address")
    iqns: dict[str, Any] = {"initiator": f"{iqn_prefix}:{hostname}", "target": f"{iqn_prefix}:boot.{hostname}"}
    for key in iqns:
        iqns[key] = str(m.get(key, iqns[key]))
        try:
            check_iscsi_name(iqns[key])
        except TargetConfigError as e:
            c.err(m, f"{where}.{key}", str(e))
    chap, mutual_chap = parse_chap(c, m, "chap", where), parse_chap(c, m, "mutual_chap", where)
    check_pair(c, m, where, chap, mutual_chap)
    return Machine(mac=mac, hostname=hostname, profile=str(profile), initiator_iqn=iqns["initiator"],
                   target_iqn=iqns["target"], ip=ip, chap=chap, mutual_chap=mutual_chap)
