"""The machine inventory: every machine bootsvc boots, keyed by MAC
(DESIGN.md "Naming and identities")."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from target import ChapSecret, TargetConfigError, check_iscsi_name

from .credentials import check_pair, parse_chap
from .names import hostname_problem
from .yamlfile import Checker, LineMap, plain

MACHINE_KEYS = {"hostname", "ip", "profile", "initiator", "target", "chap", "mutual_chap"}
_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")


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
    # where the config names it and each of its keys, for errors about it
    line: int = field(default=0, compare=False)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def line_of(self, key: str) -> int:
        return self.lines.get(key, self.line)


def normalize_mac(text: str) -> str:
    mac = text.strip().lower().replace("-", ":")
    if not _MAC.match(mac):
        raise ValueError(f"{plain(text)} is not a MAC address (like 52:54:00:12:34:56)")
    return mac


def machine_mac(text: str) -> str:
    """A machine's MAC: one network card's own address (IEEE 802 §8.2: the
    first octet's lowest bit marks a group address, which no card sends from)."""
    mac = normalize_mac(text)
    if mac == "ff:ff:ff:ff:ff:ff":
        raise ValueError(f"{mac} is the broadcast address, not a machine's")
    if int(mac[:2], 16) & 1:
        raise ValueError(f"{mac} is a multicast address (first byte odd), not a machine's")
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
    for key, entry in raw.items():
        where = f"machines.{key}"
        line = raw.lines.get(str(key), raw.line)
        try:
            mac = machine_mac(str(key))
        except ValueError as e:
            c.at(line, where, str(e))
            continue
        if not isinstance(entry, LineMap):
            c.at(line, where, "expected {hostname: ..., profile: ..., ip: ...}")
            continue
        machine = _machine(c, entry, where, mac, iqn_prefix, profiles, default_profile)
        if machine is None:
            continue
        if mac in machines:
            c.at(line, where, f"{mac} is listed twice (first at line {machines[mac].line})")
            continue
        machines[mac] = replace(machine, line=line, lines=entry.lines)
    _check_unique(c, machines.values())
    return machines


def _check_unique(c: Checker, machines: Iterable[Machine]) -> None:
    """No two machines share a host name, a fixed address (both would
    answer ARP for it) or an initiator name (each could log in to the
    other's disk: the target's ACL is the initiator name)."""
    first: dict[tuple[str, str], Machine] = {}
    for m in machines:
        for what, value in (("hostname", m.hostname), ("ip", m.ip), ("initiator", m.initiator_iqn)):
            if value is None:
                continue
            other = first.setdefault((what, str(value)), m)
            if other is not m:
                c.at(m.line_of(what), f"machines.{m.mac}.{what}",
                     f"{value} is used by two machines (also by machines.{other.mac}, line {other.line})")
                break  # a second host name makes a second initiator name: one problem, said once


def _machine(c: Checker, m: LineMap, where: str, mac: str, iqn_prefix: str, profiles: set[str],
             default_profile: str | None) -> Machine | None:
    c.unknown(m, MACHINE_KEYS, f"{where}.")
    hostname = str(m.get("hostname") or "").lower()
    if (problem := hostname_problem(hostname)) is not None:
        c.err(m, f"{where}.hostname", problem)
        return None
    profile = m.get("profile", default_profile)
    if profile is None:
        c.err(m, f"{where}.profile", "no profile and no default_profile")
    elif profile not in profiles:
        c.err(m, f"{where}.profile", f"no profile {plain(profile)} (have: {', '.join(sorted(profiles)) or 'none'})")
    ip = None
    if m.get("ip") is not None:
        try:
            ip = ipaddress.IPv4Address(str(m["ip"]))
        except ValueError:
            c.err(m, f"{where}.ip", f"{plain(m['ip'])} is not an IPv4 address")
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
