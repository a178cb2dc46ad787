#!/usr/bin/env python3
"""What the flight recorder costs: a boot storm of simulated machines
through the event bus, with and without the recorder, in one run.

Each simulated machine boots as a real one does from the server's side
(the events of a demo boot, in order, with their fields: the boot ROM's
and iPXE's DHCP, the iPXE fetch, the script, iPXE's login and first read,
the OS's login, the replaced session with its bytes, the OS's first read)
and the machines' steps are interleaved as in a storm. The bus has the
subscribers ``bootsvc serve`` gives it (the fleet, the log writer at the
default level into a discarded stream, the event file), plus for run B the
recorder, whose store is written once a second of the storm as in serve
(here: every ``--flush`` events). CPU is the process's (all threads:
the event file's writer too), rounds alternate A B B A, medians.

    python3 bench/recorder_cost.py [--machines 100] [--rounds 5]

It prints CPU µs per boot with and without the recorder and the
difference; docs/benchmarks.md relates it to the server's CPU per boot
measured by bench/boot.py.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bootsvc.config import load  # noqa: E402
from bootsvc.events import Bus, EventFile, Kind, LogWriter  # noqa: E402
from bootsvc.fleet import Fleet  # noqa: E402
from bootsvc.recorder import BootStore, Recorder  # noqa: E402


def lab(work: Path, machines: int) -> Path:
    (work / "state" / "images").mkdir(parents=True)
    (work / "state" / "images" / "gold.raw").write_bytes(bytes(1 << 20))
    (work / "profiles").mkdir()
    (work / "profiles" / "p.yaml").write_text("base: gold.raw\nauth: none\n")
    rows = "".join(f"  52:54:00:10:{i >> 8:02x}:{i & 0xFF:02x}: {{hostname: sim{i:03}, ip: 10.9.{i >> 8}.{i & 0xFF}}}\n"
                   for i in range(1, machines + 1))
    cfg = work / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {work / 'state'}\nprofiles_dir: profiles\ndefault_profile: p\n"
                   f"iqn_prefix: iqn.2026-11.bench\nmachines:\n{rows}")
    return cfg


def boot_events(mac: str, ip: str, initiator: str, target: str) -> list[tuple[Kind, dict[str, object]]]:
    """One machine's boot as the server sees it (the fields serve's events carry)."""
    who = {"initiator": initiator, "target": target, "peer": f"{ip}:40000"}
    return [
        (Kind.DHCP_OFFER, {"mac": mac, "ip": ip, "ipxe": False, "arch": 0, "user_class": None, "proxy": False}),
        (Kind.DHCP_ACK, {"mac": mac, "ip": ip, "ipxe": False, "arch": 0, "proxy": False}),
        (Kind.TFTP_SENT, {"mac": mac, "peer": ip, "file": "undionly.kpxe", "bytes": 70720, "seconds": 0.05}),
        (Kind.DHCP_OFFER, {"mac": mac, "ip": ip, "ipxe": True, "arch": 0, "user_class": "iPXE", "proxy": False}),
        (Kind.DHCP_ACK, {"mac": mac, "ip": ip, "ipxe": True, "arch": 0, "user_class": "iPXE", "proxy": False}),
        (Kind.HTTP_REQUEST, {"mac": mac, "peer": ip, "method": "GET", "path": f"/boot/{mac.replace(':', '-')}.ipxe",
                             "status": 200, "bytes": 300, "seconds": 0.001, "failed": False}),
        (Kind.ISCSI_LOGIN, {**who, "session_type": "Normal", "tsih": 1, "auth": "chap-md5"}),
        (Kind.ISCSI_FIRST_READ, {**who, "lun": 0}),
        (Kind.ISCSI_LOGIN, {**who, "session_type": "Normal", "tsih": 2, "auth": "chap-sha3-256"}),
        (Kind.ISCSI_SESSION_REPLACED, {**who, "tsih": 1}),
        (Kind.ISCSI_SESSION_DROPPED, {**who, "reason": "replaced", "read_bytes": 30 << 20, "written_bytes": 4096,
                                      "io_errors": 0}),
        (Kind.ISCSI_FIRST_READ, {**who, "lun": 0}),
    ]


def storm(fleet: Fleet) -> list[tuple[Kind, dict[str, object]]]:
    """Every machine's boot, their steps interleaved (step 1 of all, step 2 of all, ...)."""
    boots = [boot_events(m.mac, str(m.ip), m.initiator_iqn, m.target_iqn) for m in fleet.machines.values()]
    return [boot[i] for i in range(len(boots[0])) for boot in boots]


def one_run(cfg_path: Path, work: Path, with_recorder: bool, flush_every: int) -> tuple[float, int]:
    """CPU seconds of one storm and the events it had."""
    cfg = load(cfg_path)
    bus = Bus()
    log = logging.getLogger("bootsvc")
    log.handlers[:] = [logging.StreamHandler(open("/dev/null", "w"))]  # noqa: SIM115 (lives for the run)
    log.setLevel(logging.INFO)
    log.propagate = False
    bus.subscribe(LogWriter())
    events_file = EventFile(work / f"events-{time.monotonic_ns()}.jsonl")
    bus.subscribe(events_file)
    fleet = Fleet(cfg, bus)
    fleet.open()
    recorder = None
    if with_recorder:
        recorder = Recorder(fleet, bus, BootStore(work / f"recorder-{time.monotonic_ns()}.db"))
        bus.subscribe(recorder.on_event)
    events = storm(fleet)
    start = time.process_time()
    for i, (kind, fields) in enumerate(events, 1):
        bus.emit(kind, **fields)  # type: ignore[arg-type]
        if recorder is not None and i % flush_every == 0:
            recorder.tick(time.time())
            recorder.flush(time.time())
    if recorder is not None:
        recorder.flush(time.time())
    events_file.close()  # its thread's last write is part of the cost
    cpu = time.process_time() - start
    booted = sum(1 for b in recorder.current.values() if b.diagnosis == "booted") if recorder else None
    if recorder is not None:
        assert booted == len(fleet.machines), f"{booted} of {len(fleet.machines)} recorded as booted"
        recorder.store.close()
    fleet.close()
    return cpu, len(events)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--machines", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of A B (odd rounds B A)")
    ap.add_argument("--flush", type=int, default=200, help="events between two writes of the store")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        cfg = lab(work, args.machines)
        runs: dict[bool, list[float]] = {False: [], True: []}
        count = 0
        for r in range(args.rounds):
            for with_recorder in ((False, True) if r % 2 == 0 else (True, False)):
                cpu, count = one_run(cfg, work, with_recorder, args.flush)
                runs[with_recorder].append(cpu)
                print(f"round {r} {'with' if with_recorder else 'without'} recorder: {cpu * 1e3:.1f} ms CPU "
                      f"for {args.machines} boots ({count} events)")
    without, with_ = statistics.median(runs[False]), statistics.median(runs[True])
    per_boot = (with_ - without) / args.machines
    print(f"\nmedians of {args.rounds}: without {without * 1e3:.1f} ms, with {with_ * 1e3:.1f} ms CPU for "
          f"{args.machines} boots ({count} events)")
    print(f"the recorder: {per_boot * 1e6:.0f} µs CPU per boot ({(with_ - without) / count * 1e6:.1f} µs per event)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
