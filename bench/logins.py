#!/usr/bin/env python3
"""iSCSI logins per second, with CHAP and without: bootsvc against tgt, in one run.

A login here is what an initiator does to reach a disk and leave it: TCP
connect, the whole login (security stage with CHAP when asked: AuthMethod,
CHAP_A, CHAP_N/CHAP_R; operational stage; step into Full Feature Phase),
Logout, close. The client is tests/iscsi_client.py's Client, offering one
CHAP algorithm (CHAP_A=5 MD5 or 7 SHA-256). Several client processes log in
at once, each with its own ISID per login, so the server is the bottleneck,
not one Python client.

Five cases, each a server of its own that stays up for the whole run:

    bootsvc-none    bootsvc export --auth none
    bootsvc-md5     bootsvc export --chap-file (CHAP_A=5)
    bootsvc-sha256  the same server, CHAP_A=7
    tgt-none        tgtd, target 1 (no account bound)
    tgt-md5         the same tgtd, target 2 with an account bound (tgt
                    knows MD5 only)

Rounds run the cases in one order, then in the reverse (A B B A ...: the
machine is noisy); medians and ratios bootsvc/tgt are printed, with the
server's CPU time per login (utime+stime from /proc/PID/stat, all threads)
and its RSS (VmRSS sampled from /proc/PID/status during the run). Every
loop is bounded by a count and a time; everything is on 127.0.0.1.

    python3 bench/logins.py [--rounds 3] [--seconds 4] [--procs 4] [--inq 2]

``--inq S`` adds a cross-check with libiscsi's iscsi-inq (a process per
login: login, INQUIRY, logout) for S seconds per case, without SHA-256.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from target.chap import ChapAlgorithm  # noqa: E402
from target.pdu import LogoutResponsePdu, Stage  # noqa: E402
from tests.e2e.peers import LOOPBACK, bootsvc_export, end_tgtd, free_port, wait_for_port  # noqa: E402
from tests.iscsi_client import Client  # noqa: E402

USER = "benchuser"
SECRET = b"bench-secret-0123456"  # 20 bytes: bootsvc wants 12 to 255
IMAGE_SIZE = 1 << 20
MAX_LOGINS_PER_PROC = 200_000  # the count bound beside the time bound


@dataclass(frozen=True)
class Case:
    name: str
    server: str  # "bootsvc" or "tgt"
    port: int
    iqn: str
    lun: int
    pid: int
    chap: ChapAlgorithm | None


# ---------------------------------------------------------------- the client

def one_login(port: int, iqn: str, chap: ChapAlgorithm | None, isid: bytes) -> None:
    """Connect, log in to Full Feature Phase, log out, close; raise if any step fails."""
    c = Client(LOOPBACK, port, isid=isid)
    try:
        r = c.login(iqn, chap=(USER, SECRET) if chap else None, algorithm=chap or ChapAlgorithm.MD5)
        if r.status_class or not (r.transit and r.nsg == Stage.FULL_FEATURE):
            raise RuntimeError(f"login refused: status {r.status_class:#x}/{r.status_detail:#x}")
        c.logout()
        r2 = c.recv()
        if not isinstance(r2, LogoutResponsePdu) or r2.response:
            raise RuntimeError(f"logout answered with {r2!r}")
    finally:
        c.close()


def worker(job: tuple[int, int, str, int | None, float, float, int]) -> dict[str, object]:
    """One client process: log in again and again from ``start`` (a wall
    clock time shared by all workers) until ``start + seconds`` or ``limit``
    logins, whichever comes first."""
    index, port, iqn, chap_a, start, seconds, limit = job
    chap = ChapAlgorithm(chap_a) if chap_a else None
    while time.time() < start:
        time.sleep(min(0.01, max(0.0, start - time.time())))
    t0 = time.monotonic()
    deadline = t0 + seconds
    cpu0 = os.times()
    done = errors = 0
    first_error = ""
    while done + errors < limit and time.monotonic() < deadline:
        # a new ISID per login (type 0x40 random, qualifier = worker, count):
        # no login reinstates a session another one left behind
        isid = bytes([0x40, 0xB0, 0x5C]) + struct.pack(">BH", index, (done + errors) & 0xFFFF)
        try:
            one_login(port, iqn, chap, isid)
            done += 1
        except Exception as e:  # noqa: BLE001 - counted and reported, the run goes on
            errors += 1
            first_error = first_error or f"{type(e).__name__}: {e}"
            if errors > 20 and errors > done:
                break
    elapsed = time.monotonic() - t0
    cpu1 = os.times()
    return {"logins": done, "errors": errors, "first_error": first_error, "elapsed": elapsed,
            "cpu": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)}


# ---------------------------------------------------------- /proc sampling

def proc_cpu(pid: int) -> tuple[float, float]:
    """(utime, stime) of the process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def proc_rss(pid: int) -> int:
    """VmRSS in KiB (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """The peak VmRSS of one process while the block runs (every 50 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, proc_rss(pid), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, proc_rss(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.peak = max(self.peak, proc_rss(self.pid))


# ------------------------------------------------------------------ servers

@contextlib.contextmanager
def bootsvc_servers(image: Path, work: Path) -> Iterator[list[Case]]:
    """Two ``bootsvc export`` processes: one without authentication, one with CHAP."""
    chap_file = work / "chap.yaml"
    chap_file.write_text(f"chap: {{user: {USER}, secret: {SECRET.decode()}}}\n")
    chap_file.chmod(0o600)
    with bootsvc_export(image, "iqn.2026-11.bench.bootsvc:none", log=work / "bootsvc-none.log") as none, \
         bootsvc_export(image, "iqn.2026-11.bench.bootsvc:chap", "--chap-file", str(chap_file),
                        log=work / "bootsvc-chap.log") as chap:
        yield [Case("bootsvc-none", "bootsvc", none.port, none.iqn, 0, none.pid, None),
               Case("bootsvc-md5", "bootsvc", chap.port, chap.iqn, 0, chap.pid, ChapAlgorithm.MD5),
               Case("bootsvc-sha256", "bootsvc", chap.port, chap.iqn, 0, chap.pid, ChapAlgorithm.SHA256)]


@contextlib.contextmanager
def tgt_servers(image: Path) -> Iterator[list[Case]]:
    """One tgtd, two targets: tid 1 open, tid 2 with a CHAP account bound.
    Stopped through its control port (it ignores SIGTERM while targets
    exist), then by PID (tests/e2e/peers.py does the same)."""
    port = free_port()
    control = 1000 + port % 30000  # tgtd's control socket is /var/run/tgtd/socket.<N>, N < 32768
    os.makedirs("/var/run/tgtd", exist_ok=True)
    proc = subprocess.Popen(["tgtd", "-f", "-C", str(control), "--iscsi", f"portal={LOOPBACK}:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def adm(*args: str) -> None:
        subprocess.run(["tgtadm", "-C", str(control), "--lld", "iscsi", *args], check=True,
                       capture_output=True, timeout=30)

    iqns = {1: "iqn.2026-11.bench.tgt:none", 2: "iqn.2026-11.bench.tgt:chap"}
    try:
        wait_for_port(port, proc)
        for tid, iqn in iqns.items():
            adm("--op", "new", "--mode", "target", "--tid", str(tid), "-T", iqn)
            adm("--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", "1", "-b", str(image))
            adm("--op", "bind", "--mode", "target", "--tid", str(tid), "-I", "ALL")
        adm("--op", "new", "--mode", "account", "--user", USER, "--password", SECRET.decode())
        adm("--op", "bind", "--mode", "account", "--tid", "2", "--user", USER)
        yield [Case("tgt-none", "tgt", port, iqns[1], 1, proc.pid, None),
               Case("tgt-md5", "tgt", port, iqns[2], 1, proc.pid, ChapAlgorithm.MD5)]
    finally:
        end_tgtd(proc, control, iqns)


# -------------------------------------------------------------------- runs

def run_case(pool: multiprocessing.pool.Pool, case: Case, procs: int, seconds: float,
             limit: int = MAX_LOGINS_PER_PROC) -> dict[str, object]:
    """All workers log in to ``case`` for ``seconds``; the figures of the run."""
    start = time.time() + 0.2  # every worker is forked and waiting by then
    jobs = [(i, case.port, case.iqn, int(case.chap) if case.chap else None, start, seconds, limit)
            for i in range(procs)]
    cpu0 = proc_cpu(case.pid)
    with RssSampler(case.pid) as rss:
        results = pool.map_async(worker, jobs).get(timeout=seconds + 60)
    cpu1 = proc_cpu(case.pid)
    user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    logins = sum(int(r["logins"]) for r in results)  # type: ignore[call-overload]
    errors = sum(int(r["errors"]) for r in results)  # type: ignore[call-overload]
    wall = max(float(r["elapsed"]) for r in results)  # type: ignore[arg-type]
    client_cpu = sum(float(r["cpu"]) for r in results)  # type: ignore[arg-type]
    return {"logins": logins, "errors": errors, "wall": wall, "rate": logins / wall if wall else 0.0,
            "server_cpu_us": 1e6 * (user + system) / logins if logins else float("nan"),
            "server_sys_us": 1e6 * system / logins if logins else float("nan"),
            "client_cpu_us": 1e6 * client_cpu / logins if logins else float("nan"),
            "rss_peak_kib": rss.peak, "rss_after_kib": proc_rss(case.pid),
            "first_error": next((r["first_error"] for r in results if r["first_error"]), "")}


def inq_rate(case: Case, threads: int, seconds: float) -> float:
    """Logins/s with libiscsi's iscsi-inq (a fork + exec per login), ``threads`` at once."""
    auth = f"{USER}%{SECRET.decode()}@" if case.chap else ""
    url = f"iscsi://{auth}{LOOPBACK}:{case.port}/{case.iqn}/{case.lun}"
    counts = [0] * threads
    failed: list[str] = []
    deadline = time.monotonic() + seconds

    def loop(i: int) -> None:
        while time.monotonic() < deadline and counts[i] < 100_000:
            r = subprocess.run(["iscsi-inq", "-i", f"iqn.2026-11.bench:inq{i}", url],
                               capture_output=True, text=True, timeout=30)
            if r.returncode:
                failed.append(r.stderr.strip()[:200])
                return
            counts[i] += 1

    t0 = time.monotonic()
    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + 60)
    if failed:
        print(f"  iscsi-inq {case.name}: {failed[0]}", file=sys.stderr)
    return sum(counts) / (time.monotonic() - t0)


def run_rounds(pool: multiprocessing.pool.Pool, cases: list[Case],
               args: argparse.Namespace) -> dict[str, list[dict[str, object]]]:
    """A warm-up of every case (dropped), then the rounds, every other one in reverse."""
    for case in cases:  # every code path once before anything is measured
        w = run_case(pool, case, args.procs, 0.5, limit=50)
        if w["errors"]:
            raise SystemExit(f"{case.name}: warm-up logins failed: {w['first_error']}")
    if args.hold:
        print("PIDs: " + ", ".join(f"{c.name}={c.pid}" for c in cases), file=sys.stderr, flush=True)
        time.sleep(args.hold)
    runs: dict[str, list[dict[str, object]]] = {c.name: [] for c in cases}
    for r in range(args.rounds):
        for case in cases if r % 2 == 0 else cases[::-1]:
            res = run_case(pool, case, args.procs, args.seconds)
            runs[case.name].append(res)
            print(f"round {r} {case.name:15} {res['rate']:8.0f} logins/s  server {res['server_cpu_us']:6.0f} µs/login"
                  f" ({res['server_sys_us']:.0f} system)  client {res['client_cpu_us']:6.0f} µs/login"
                  f"  RSS peak {res['rss_peak_kib']} KiB  errors {res['errors']} {res['first_error']}",
                  file=sys.stderr, flush=True)
    return runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each runs every case, odd rounds in reverse")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of one case's run")
    ap.add_argument("--procs", type=int, default=4, help="client processes logging in at once")
    ap.add_argument("--only", help="comma-separated case names (default: all five)")
    ap.add_argument("--inq", type=float, default=0.0, metavar="S",
                    help="also S seconds of iscsi-inq per case (none and MD5), once, as a cross-check")
    ap.add_argument("--json", type=Path, help="write the raw figures here")
    ap.add_argument("--hold", type=float, default=0.0, metavar="S",
                    help="before the rounds, print the server PIDs and wait S seconds (to attach py-spy)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, contextlib.ExitStack() as stack:
        work = Path(d)
        image = work / "bench.img"
        image.write_bytes(bytes(IMAGE_SIZE))
        cases = [*stack.enter_context(bootsvc_servers(image, work)), *stack.enter_context(tgt_servers(image))]
        # bootsvc and tgt alternate, so a slow stretch of the machine hits both
        order = ["bootsvc-none", "tgt-none", "bootsvc-md5", "tgt-md5", "bootsvc-sha256"]
        if args.only:
            order = [n for n in order if n in args.only.split(",")]
        by_name = {c.name: c for c in cases}
        pool = stack.enter_context(multiprocessing.get_context("fork").Pool(args.procs))
        runs = run_rounds(pool, [by_name[n] for n in order], args)
        inq = {}
        if args.inq:
            for name in order:
                if by_name[name].chap is not ChapAlgorithm.SHA256:
                    inq[name] = inq_rate(by_name[name], args.procs, args.inq)
    summary = report(runs, inq)
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": runs, "inq": inq,
                                         "procs": args.procs, "seconds": args.seconds}, indent=1))
    return 1 if any(int(x["errors"]) for v in runs.values() for x in v) else 0  # type: ignore[call-overload]


def report(runs: dict[str, list[dict[str, object]]], inq: dict[str, float]) -> dict[str, dict[str, float]]:
    def med(name: str, key: str) -> float:
        return statistics.median(float(x[key]) for x in runs[name])  # type: ignore[arg-type]

    keys = ("rate", "server_cpu_us", "server_sys_us", "client_cpu_us")
    summary = {n: {**{k: med(n, k) for k in keys},
                   "rss_peak_kib": max(float(x["rss_peak_kib"]) for x in runs[n])}  # type: ignore[arg-type]
               for n in runs if runs[n]}
    print(f"{'case':15} {'logins/s':>9} {'server µs/login':>16} {'(system)':>9} {'client µs/login':>16}"
          f" {'RSS peak':>10}"
          + (f" {'iscsi-inq/s':>11}" if inq else ""))
    for n, s in summary.items():
        print(f"{n:15} {s['rate']:9.0f} {s['server_cpu_us']:16.0f} {s['server_sys_us']:9.0f}"
              f" {s['client_cpu_us']:16.0f}"
              f" {s['rss_peak_kib'] / 1024:7.1f} MiB" + (f" {inq[n]:11.1f}" if n in inq else
                                                           (f" {'-':>11}" if inq else "")))
    pairs = [("bootsvc-none", "tgt-none"), ("bootsvc-md5", "tgt-md5"), ("bootsvc-sha256", "tgt-md5")]
    for b, t in pairs:
        if b in summary and t in summary:
            ratio = summary[b]["rate"] / summary[t]["rate"]
            cost = summary[b]["server_cpu_us"] / summary[t]["server_cpu_us"]
            summary[b][f"ratio_vs_{t}"] = ratio
            print(f"ratio {b}/{t}: logins/s {ratio:.2f}, server CPU per login {cost:.2f}")
    return summary


if __name__ == "__main__":
    sys.exit(main())
