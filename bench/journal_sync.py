#!/usr/bin/env python3
"""The lease journal's cost per group: one write of a group's bytes and
one fdatasync, the way the journal did it before (an append, which
changes the file's size) against writes in place into a preallocated file
(blocks preallocated by writing zeros, or by ``posix_fallocate``; the
data synced by an fdatasync, or by the write itself with RWF_DSYNC), and this
tree's ``Journal.append`` itself (bootsvc/dhcp/journal.py). Also the cost
of preallocating one chunk each way.

The modes run in turn, A B C D E then E D C B A for each round, in one
directory on the filesystem measured (the state directory's: the default
is under /var/tmp), so the machine's load falls on all of them alike
(ENVIRONMENT.md: ±40 % between runs).

    python3 bench/journal_sync.py [--groups 2000] [--rounds 2] [--leases 1] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bootsvc.dhcp.journal import CHUNK, Journal  # noqa: E402
from bootsvc.dhcp.leases import PUT  # noqa: E402

Sample = list[float]  # seconds per group


def group_bytes(journal: Journal, leases: int) -> bytes:
    """A group as the DHCP service writes it: ``leases`` bound leases."""
    return journal.encode([(PUT.name, (f"10.77.{n >> 8}.{n & 255}", f"52:54:00:77:{n >> 8:02x}:{n & 255:02x}",
                                       "bound", 1_765_000_000.0 + n, "")) for n in range(leases)])


def timed(groups: int, write: Callable[[int], None]) -> Sample:
    times = []
    for i in range(groups):
        t = time.perf_counter()
        write(i)
        times.append(time.perf_counter() - t)
    return times


def appended(path: Path, data: bytes, groups: int) -> Sample:
    """The journal before: O_APPEND, one write and one fdatasync a group."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    try:
        def write(_: int) -> None:
            os.write(fd, data)
            os.fdatasync(fd)
        return timed(groups, write)
    finally:
        os.close(fd)


def in_place(path: Path, data: bytes, groups: int, prealloc: Callable[[int, int], None], dsync: bool = False) -> Sample:
    """pwrite + fdatasync (or one pwritev with RWF_DSYNC) into a file
    preallocated (and fsynced) beforehand, outside the timing."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        prealloc(fd, -(-groups * len(data) // CHUNK) * CHUNK)
        os.fsync(fd)

        def write(i: int) -> None:
            os.pwrite(fd, data, i * len(data))
            os.fdatasync(fd)

        def write_dsync(i: int) -> None:
            os.pwritev(fd, [data], i * len(data), os.RWF_DSYNC)
        return timed(groups, write_dsync if dsync else write)
    finally:
        os.close(fd)


def zeros(fd: int, size: int) -> None:
    for offset in range(0, size, CHUNK):
        os.pwrite(fd, bytes(CHUNK), offset)


def fallocate(fd: int, size: int) -> None:
    os.posix_fallocate(fd, 0, size)


def journal(path: Path, leases: int, groups: int) -> Sample:
    """This tree's Journal: pwrite + fdatasync, the next chunk asked for ahead by its thread."""
    path.unlink(missing_ok=True)
    j = Journal(path)
    try:
        data = group_bytes(j, leases)
        return timed(groups, lambda _: j.append(data))
    finally:
        j.close()


def chunk_cost(path: Path, prealloc: Callable[[int, int], None]) -> float:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t = time.perf_counter()
        prealloc(fd, CHUNK)
        os.fsync(fd)
        return time.perf_counter() - t
    finally:
        os.close(fd)


def summary(times: Sample) -> str:
    times = sorted(times)
    n = len(times)
    return (f"median {statistics.median(times) * 1e6:6.0f}  mean {statistics.mean(times) * 1e6:6.0f}  "
            f"p90 {times[n * 9 // 10] * 1e6:6.0f}  p99 {times[n * 99 // 100] * 1e6:6.0f}  "
            f"max {times[-1] * 1e6:6.0f} µs")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=2000, help="groups per mode and round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of A B C D E E D C B A")
    ap.add_argument("--leases", type=int, default=1, help="leases per group")
    ap.add_argument("--dir", default="/var/tmp", help="where the files go (the filesystem measured)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="journal-sync-") as tmp:
        where = Path(tmp)
        probe = Journal(where / "probe")
        data = group_bytes(probe, args.leases)
        probe.close()
        modes: dict[str, Callable[[], Sample]] = {
            "append + fdatasync (before)": lambda: appended(where / "a", data, args.groups),
            "pwrite into zeros + fdatasync": lambda: in_place(where / "z", data, args.groups, zeros),
            "pwrite into fallocate + fdatasync": lambda: in_place(where / "f", data, args.groups, fallocate),
            "pwritev RWF_DSYNC into zeros": lambda: in_place(where / "d", data, args.groups, zeros, dsync=True),
            "Journal.append (this tree)": lambda: journal(where / "j", args.leases, args.groups),
        }
        results: dict[str, Sample] = {name: [] for name in modes}
        chunks: dict[str, list[float]] = {"zeros": [], "fallocate": []}
        order = list(modes)
        for _ in range(args.rounds):
            for name in order + order[::-1]:
                results[name] += modes[name]()
            chunks["zeros"].append(chunk_cost(where / "cz", zeros))
            chunks["fallocate"].append(chunk_cost(where / "cf", fallocate))
        print(f"{len(data)} bytes a group ({args.leases} lease(s)), {args.groups} groups x {2 * args.rounds} "
              f"runs per mode, in {args.dir}, load {os.getloadavg()[0]:.2f}")
        for name, times in results.items():
            print(f"  {name:36s} {summary(times)}")
        before = statistics.median(results[order[0]])
        after = statistics.median(results[order[-1]])
        print(f"  this tree / before (medians): {after / before:.2f}")
        for name, costs in chunks.items():
            print(f"  one {CHUNK >> 20} MiB chunk, {name} + fsync: median "
                  f"{statistics.median(costs) * 1e6:.0f} µs of {len(costs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
