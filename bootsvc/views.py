"""What the HTTP service's operator view asks (bootsvc/http/api.py's
BootViews), answered from the fleet, the leases and the flight recorder.
Built by the wiring (bootsvc/server.py) and handed to the service: the
service asks, nothing here calls it.

The machine rows are ``bootsvc machines --json``'s (machines_cli), with
the recorder's live boots instead of the store's, so the page and the
command agree."""

from __future__ import annotations

from typing import Any

from .dhcp.leases import LeaseStore
from .fleet import Fleet
from .http.api import Listener
from .machines_cli import find_mac, machine_rows
from .recorder import Boot, Recorder


class FleetViews:
    def __init__(self, fleet: Fleet, leases: LeaseStore | None, recorder: Recorder) -> None:
        self.fleet = fleet
        self.leases = leases
        self.recorder = recorder
        self._watching: dict[Listener, Any] = {}

    def machines(self, now: float) -> list[dict[str, Any]]:
        return machine_rows(self.fleet.cfg, self.leases, self.recorder.latest(), now)

    def boots(self, who: str, limit: int, now: float) -> list[dict[str, Any]] | None:
        store = self.recorder.store
        mac = find_mac(self.fleet.machines.values(), store, who)
        if mac is None:
            return None
        live = self.recorder.current.get(mac)
        # the store may hold the live boot as it was at the last flush: the live one replaces it
        boots = [*([live] if live is not None else []),
                 *(b for b in store.boots(mac, limit) if live is None or b.id != live.id)]
        return [b.timeline(now, self.recorder.stall) for b in boots[:limit]]

    def summary(self, mac: str, now: float) -> dict[str, Any] | None:
        boot = self.recorder.current.get(mac)
        return boot.summary(now, self.recorder.stall) if boot is not None else None

    def watch(self, listener: Listener) -> None:
        def told(boot: Boot) -> None:
            listener(boot.mac)

        self._watching[listener] = told
        self.recorder.listeners.append(told)

    def unwatch(self, listener: Listener) -> None:
        told = self._watching.pop(listener, None)
        if told is not None and told in self.recorder.listeners:
            self.recorder.listeners.remove(told)
