"""What a reload changes (DESIGN.md "Config is frozen once loaded"): the
running config and a re-read one compared, machine by machine, target by
target, profile by profile and section by section, and which changes take
effect at once and which need a restart."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from .config import Config
from .inventory import Machine

V = TypeVar("V")


@dataclass(frozen=True)
class Changes:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def text(self, what: str, name: Mapping[str, str] | None = None) -> str:
        def names(keys: tuple[str, ...]) -> str:
            return ", ".join(name.get(k, k) if name else k for k in keys)
        parts = [f"{len(keys)} {verb} ({names(keys)})" for verb, keys in
                 (("added", self.added), ("removed", self.removed), ("changed", self.changed)) if keys]
        return f"{what}: {'; '.join(parts)}"


def compare(old: Mapping[str, V], new: Mapping[str, V]) -> Changes:
    return Changes(tuple(sorted(k for k in new if k not in old)), tuple(sorted(k for k in old if k not in new)),
                   tuple(sorted(k for k in new if k in old and new[k] != old[k])))


@dataclass(frozen=True)
class ConfigDiff:
    machines: Changes  # by MAC
    targets: Changes  # the config's own targets, by IQN
    profiles: Changes  # by name
    live: tuple[str, ...]  # settings that changed and take effect now
    restart: tuple[str, ...]  # settings that changed and need a restart
    hostnames: Mapping[str, str]  # MAC -> host name, to show machines by name
    kept: tuple[str, ...] = ()  # machines and targets changed but logged in: unchanged for now

    def with_kept(self, kept: list[str]) -> ConfigDiff:
        return replace(self, kept=tuple(kept))

    def lines(self) -> list[str]:
        """The diff for the operator, a line per kind of change."""
        out = []
        if self.machines:
            out.append(self.machines.text("machines", self.hostnames))
        if self.targets:
            out.append(self.targets.text("targets"))
        if self.profiles:
            out.append(self.profiles.text("profiles"))
        if self.live:
            out.append(f"settings applied: {', '.join(SHOWN.get(k, k) for k in self.live)}")
        if self.restart:
            out.append("settings changed that take effect at the next restart: "
                       f"{', '.join(SHOWN.get(k, k) for k in self.restart)}")
        if self.kept:
            out.append(f"logged in, so kept as they were until they log out and bootsvc is reloaded: "
                       f"{', '.join(self.kept)}")
        return out

    def summary(self) -> str:
        return "; ".join(self.lines()) or "nothing changed"


# Sections a reload applies at once (the wiring retunes its services);
# every other changed section needs a restart.
SETTINGS = ("state_dir", "iqn_prefix", "domain", "default_profile", "iscsi", "dhcp", "tftp", "http", "dns",
            "dns_ttl", "dns_forward", "isns", "recorder", "storage")
# how the operator's config names them, where the attribute's name differs
SHOWN = {"iscsi": "listen.iscsi/iscsi", "http": "listen.http", "dns": "listen.dns", "dns_ttl": "dns.ttl",
         "dns_forward": "dns.forward/dns.allow", "isns": "isns/listen.isns"}


def diff_configs(old: Config, new: Config, old_machines: Mapping[str, Machine],
                 new_machines: Mapping[str, Machine]) -> ConfigDiff:
    """``old_machines``/``new_machines``: the fleet's machines before and
    after (the config's and the adopted ones). A machine whose profile
    changed counts as changed."""
    def with_profile(cfg: Config, machines: Mapping[str, Machine]) -> dict[str, object]:
        return {mac: (m, cfg.profiles.get(m.profile)) for mac, m in machines.items()}

    machines = compare(with_profile(old, old_machines), with_profile(new, new_machines))
    live, restart = [], []
    for key in SETTINGS:
        if getattr(old, key) != getattr(new, key):
            (live if applies_live(key, old, new) else restart).append(key)
    hostnames = {mac: m.hostname for mac, m in {**old_machines, **new_machines}.items()}
    return ConfigDiff(machines, compare({t.iqn: t for t in old.targets}, {t.iqn: t for t in new.targets}),
                      compare(old.profiles, new.profiles), tuple(live), tuple(restart), hostnames)


def applies_live(key: str, old: Config, new: Config) -> bool:
    """Whether a changed section takes effect without a restart: the
    default profile; DHCP subnets and the unknown-machine policy (not its
    sockets or mode); TFTP roots and busy polling (not its address); DNS
    forwarding (upstreams, allowed networks)."""
    if key in ("default_profile", "storage"):  # storage: the fleet moves the disks, or the reload is refused
        return True
    if key == "dns_forward":  # handed to the DNS service, if it runs
        return old.dns is not None and old.dns == new.dns
    if key == "dhcp":
        return old.dhcp is not None and new.dhcp is not None and \
            (old.dhcp.listeners, old.dhcp.mode, old.dhcp.ipv6_ra, old.dhcp.process) == \
            (new.dhcp.listeners, new.dhcp.mode, new.dhcp.ipv6_ra, new.dhcp.process)
    if key == "tftp":
        return old.tftp is not None and new.tftp is not None and \
            (old.tftp.host, old.tftp.port) == (new.tftp.host, new.tftp.port)
    return False
