"""``bootsvc machines`` and ``bootsvc timeline``: what the operator asks
first when a machine does not boot. Both read the state directory (the
leases and the flight recorder's store), so they work with ``bootsvc
serve`` running or not, after a real boot or ``bootsvc vm``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .config import Config
from .dhcp.leases import LeaseStore
from .inventory import Machine, generated_machine, normalize_mac
from .recorder import Boot, BootStore


@contextmanager
def _stores(cfg: Config) -> Iterator[tuple[LeaseStore | None, BootStore | None]]:
    """The lease and boot stores, if serve ever made them (opening one
    creates nothing)."""
    leases_db, boots_db = cfg.state_dir / "leases.db", cfg.recorder_db
    leases = LeaseStore(leases_db) if leases_db.exists() else None
    boots = BootStore(boots_db) if boots_db.exists() else None
    try:
        yield leases, boots
    finally:
        if leases is not None:
            leases.close()
        if boots is not None:
            boots.close()


def machine_rows(cfg: Config, leases: LeaseStore | None, latest_boots: Mapping[str, Boot],
                 now: float) -> list[dict[str, Any]]:
    """One row per machine: the inventory's, then the MACs DHCP saw that
    are not in it; each with its address, lease and latest boot (by MAC:
    the store's, or in ``bootsvc serve`` the recorder's live ones; the
    rows of ``GET /api/machines`` too)."""
    latest = dict(latest_boots)
    rows = []
    for m in sorted(cfg.machines.values(), key=lambda m: m.hostname):
        lease = leases.for_mac(m.mac) if leases else None
        rows.append({"mac": m.mac, "hostname": m.hostname, "profile": m.profile, "known": True,
                     "address": str(m.ip or (lease.ip if lease else "")) or None,
                     "lease": "fixed" if m.ip else (lease.state.value if lease and lease.expires > now else None),
                     **_boot(latest.pop(m.mac, None), now, cfg)})
    for mac, policy, first, last, arch in leases.unknown_machines() if leases else []:
        if mac not in cfg.machines:
            rows.append({**_unknown(cfg, leases, mac, policy), "first_seen": first, "last_seen": last,
                         "arch": arch or None, **_boot(latest.pop(mac, None), now, cfg)})
    for boot in latest.values():  # recorded, but neither in the inventory nor seen by DHCP (proxy mode)
        rows.append({"mac": boot.mac, "hostname": boot.hostname, "profile": None, "known": False,
                     "address": None, "lease": None, **_boot(boot, now, cfg)})
    return rows


def _unknown(cfg: Config, leases: LeaseStore | None, mac: str, policy: str) -> dict[str, Any]:
    lease = leases.for_mac(mac) if leases else None
    adopted = policy in ("default", "adopted")
    return {"mac": mac, "hostname": generated_machine(mac, cfg.iqn_prefix, "").hostname if adopted else "",
            "profile": cfg.default_profile if adopted else None, "known": False, "policy": policy,
            "address": str(lease.ip) if lease else None, "lease": lease.state.value if lease else None}


def _boot(boot: Boot | None, now: float, cfg: Config) -> dict[str, Any]:
    if boot is None:
        return {"state": None, "last_boot": None, "duration": None, "diagnosis": None, "read_bytes": None,
                "written_bytes": None, "boot": None, "updated": None, "last_step": None}
    s = boot.summary(now, cfg.recorder.stall)
    return {"state": s["state"], "last_boot": s["started"], "duration": s["duration"], "diagnosis": s["diagnosis"],
            "read_bytes": s["read_bytes"], "written_bytes": s["written_bytes"], "boot": s["id"],
            "updated": s["updated"], "last_step": s["last_step"]}


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def print_machines(rows: list[dict[str, Any]]) -> None:
    print(f"{'MAC':17}  {'HOST':20} {'PROFILE':18} {'ADDRESS':15} {'STATE':8} {'LAST BOOT':19} {'TOOK':>7}  "
          "DIAGNOSIS")
    for r in rows:
        took = f"{r['duration']:.1f}s" if r["duration"] is not None else "-"
        profile = r["profile"] or ("(" + str(r.get("policy")) + ")" if not r["known"] else "-")
        print(f"{r['mac']:17}  {r['hostname'] or '-':20} {profile:18} {r['address'] or '-':15} "
              f"{r['state'] or '-':8} {_when(r['last_boot']):19} {took:>7}  {r['diagnosis'] or '-'}")
    unknown = [r for r in rows if not r["known"] and r.get("policy")]
    if unknown:
        print("\nnot in the inventory (add them under machines: to adopt them for good):")
        for r in unknown:
            what = {"default": f"booting profile {r['profile']} as {r['hostname']}",
                    "adopted": f"booting profile {r['profile']} as {r['hostname']} (not logged in yet: "
                               "forgotten after dhcp.adopted_expiry)"}.get(r["policy"], "address only")
            print(f"{r['mac']:17}  {what}; first seen {_when(r['first_seen'])}, last {_when(r['last_seen'])}"
                  f"{', arch ' + str(r['arch']) if r['arch'] else ''}{', ' + r['address'] if r['address'] else ''}")


def machines(cfg: Config, as_json: bool) -> int:
    now = time.time()
    with _stores(cfg) as (leases, boots):
        rows = machine_rows(cfg, leases, {b.mac: b for b in boots.latest()} if boots else {}, now)
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        print_machines(rows)
    return 0


def find_mac(machines: Iterable[Machine], boots: BootStore | None, who: str) -> str | None:
    """HOST or MAC -> MAC: the inventory's, else the store's."""
    try:
        return normalize_mac(who)
    except ValueError:
        pass
    for m in machines:
        if m.hostname == who.lower():
            return m.mac
    return boots.mac_of(who.lower()) if boots is not None else None


def timeline(cfg: Config, who: str, count: int, as_json: bool) -> int:
    """A machine's latest boots, each step with its time from the start."""
    now = time.time()
    with _stores(cfg) as (_, boots):
        mac = find_mac(cfg.machines.values(), boots, who)
        found = boots.boots(mac, count) if boots is not None and mac is not None else []
    if as_json:
        print(json.dumps([b.timeline(now, cfg.recorder.stall) for b in found], indent=1))
        return 0 if found else 1
    if not found:
        print(f"bootsvc timeline: no boot of {who} recorded in {cfg.recorder_db}")
        return 1
    for boot in found:
        t = boot.timeline(now, cfg.recorder.stall)
        took = f", {t['duration']:.1f} s" if t["duration"] is not None else ""
        print(f"{t['hostname'] or t['mac']} ({t['mac']}) boot #{t['id']} at {_when(t['started'])}: "
              f"{t['state']}{took}")
        for s in t["steps"]:
            detail = " ".join(f"{k}={v}" for k, v in s.get("detail", {}).items())
            print(f"  {s['at']:8.2f}s  {s['step']:15} {detail}".rstrip())
        if t["dropped_steps"]:
            print(f"  ... and {t['dropped_steps']} more steps not kept")
        print(f"  diagnosis: {t['diagnosis']}\n")
    return 0
