"""The fleet as DHCP asks it, as data: what ``bootsvc serve`` sends its
DHCP worker process (docs/dhcp-scaling.md), so the worker's responder and
boot planner decide exactly as they would beside the fleet itself.

It answers the questions of the responder (``machine``, ``reserved_ips``:
bootsvc/dhcp/responder.py's Directory) and of the boot planner
(``cfg``, ``profile``, ``servable``, ``auth``: bootsvc/boot.py). No secret
is copied: the planner only asks whether a machine's disk wants CHAP,
and the script that carries the secrets is made by serve's own planner.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from .config import Config
from .inventory import Machine
from .profiles import Profile

IPv4 = ipaddress.IPv4Address


class ChapAsked:
    """What ``auth`` answers for a disk that asks CHAP: not the secrets."""


CHAP_ASKED = ChapAsked()


@dataclass
class FleetCopy:
    cfg: Config
    machines: Mapping[str, Machine]  # by MAC: the inventory and the machines adopted
    served: frozenset[str]  # MACs whose disk is served and who may log in to it
    chap: frozenset[str]  # MACs whose disk asks CHAP
    fixed: frozenset[IPv4]  # the machines' fixed addresses
    sessions: frozenset[IPv4] = frozenset()  # addresses a live session to a disk comes from (sent apart)
    reserved: frozenset[IPv4] = field(init=False)

    def __post_init__(self) -> None:
        self.reserved = self.fixed | self.sessions

    def logged_in(self, sessions: frozenset[IPv4]) -> None:
        self.sessions = sessions
        self.reserved = self.fixed | sessions

    def machine(self, mac: str) -> Machine | None:
        return self.machines.get(mac)

    def reserved_ips(self) -> frozenset[IPv4]:
        """As Fleet.reserved_ips: fixed addresses and those of machines logged in."""
        return self.reserved

    def profile(self, machine: Machine) -> Profile:
        return self.cfg.profiles[machine.profile]

    def servable(self, machine: Machine) -> bool:
        return machine.mac in self.served

    def auth(self, machine: Machine) -> ChapAsked | None:
        return CHAP_ASKED if machine.mac in self.chap else None
