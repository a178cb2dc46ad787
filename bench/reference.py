"""The reference stack the boot benchmarks race: dnsmasq (DHCP only) and
tgtd with a target per machine, started in a network namespace.

dnsmasq gives iPXE the options bootsvc gives it (bootsvc/boot.py,
bootsvc/dhcp/responder.py): a fixed address and host name per MAC; for
iPXE (user class "iPXE") option 60 PXEClient, the root-path of the
machine's own target (LUN 1 on tgt), its initiator name (203) and
175.176 = 1. No router, no DNS, no ping before an offer (ENVIRONMENT.md).
tgtd serves each machine's disk as LUN 1 of its own target (tgt keeps LUN
0 for its controller), only its initiator name allowed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bootsvc.vm import run

ISCSI_PORT = 3260


@dataclass(frozen=True)
class RefMachine:
    """What the reference stack needs to know of one machine."""

    mac: str
    ip: str
    hostname: str
    target_iqn: str
    initiator_iqn: str
    disk: Path | str  # a raw image (tgt reads no qcow2), or what ``backing`` names (tgt-rbd: POOL/IMAGE)


def wait_for(what: str, ok: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path,
             timeout: float = 30.0) -> None:
    """Poll ``ok()`` until true; fail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not ok():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start; {log}:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)


def dnsmasq_args(interface: str, server: str, subnet: ipaddress.IPv4Network, domain: str,
                 machines: Sequence[RefMachine], rundir: Path) -> list[str]:
    """dnsmasq's command line: static leases on ``subnet`` (also for relayed
    requests whose giaddr is in it)."""
    args = ["dnsmasq", "--no-daemon", "--port=0", "--no-ping", "--user=root", "--bind-interfaces",
            f"--interface={interface}", "--no-resolv", "--no-hosts", "--log-facility=-",
            f"--dhcp-range={subnet[0]},static,{subnet.netmask},1h", f"--dhcp-leasefile={rundir / 'leases'}",
            f"--pid-file={rundir / 'dnsmasq.pid'}", f"--domain={domain}", "--dhcp-userclass=set:ipxe,iPXE",
            f"--dhcp-lease-max={max(1000, 2 * len(machines))}",
            "--dhcp-option=3", "--dhcp-option=tag:ipxe,60,PXEClient", "--dhcp-option=tag:ipxe,encap:175,176,1b"]
    for i, m in enumerate(machines):
        tag = f"m{i}"
        args += [f"--dhcp-host={m.mac},set:{tag},{m.ip},{m.hostname}",
                 f"--dhcp-option=tag:{tag},tag:ipxe,17,iscsi:{server}::{ISCSI_PORT}:1:{m.target_iqn}",
                 f"--dhcp-option=tag:{tag},tag:ipxe,203,{m.initiator_iqn}"]
    return args


@contextlib.contextmanager
def dnsmasq(prefix: Sequence[str], args: list[str], rundir: Path) -> Iterator[int]:
    """dnsmasq with ``args`` (dnsmasq_args, maybe more) under ``prefix``; its PID."""
    log = rundir / "dnsmasq.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([*prefix, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for("dnsmasq", lambda: "DHCP, static leases" in log.read_text(errors="replace"), proc, log)
        yield proc.pid
    finally:
        run.end_process(proc)


@contextlib.contextmanager
def tgtd(prefix: Sequence[str], portal: str, machines: Sequence[RefMachine], rundir: Path,
         backing: Sequence[str] = ()) -> Iterator[int]:
    """tgtd on ``portal`` (address:port) with a target per machine; its PID.
    ``backing``: tgtadm options for another backing store than files
    (``--bstype rbd ...``). Stopped through its control socket, as it
    ignores SIGTERM while targets exist (ENVIRONMENT.md)."""
    control = 20000 + os.getpid() % 10000  # its socket is /var/run/tgtd/socket.<control>
    os.makedirs("/var/run/tgtd", exist_ok=True)
    log = rundir / "tgtd.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([*prefix, "tgtd", "-f", "-C", str(control), "--iscsi", f"portal={portal}"],
                                stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT)

    def adm(*args: str, check: bool = True) -> bool:
        r = subprocess.run([*prefix, "tgtadm", "-C", str(control), "--lld", "iscsi", *args],
                           check=False, capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise RuntimeError(f"tgtadm {' '.join(args)}: {r.stderr.strip()}")
        return r.returncode == 0

    try:
        wait_for("tgtd", lambda: adm("--op", "show", "--mode", "system", check=False), proc, log)
        for tid, m in enumerate(machines, 1):
            adm("--op", "new", "--mode", "target", "--tid", str(tid), "-T", m.target_iqn)
            adm("--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", "1", "-b", str(m.disk),
                *backing)
            adm("--op", "bind", "--mode", "target", "--tid", str(tid), "-Q", m.initiator_iqn)
        yield proc.pid
    finally:
        for tid in range(1, len(machines) + 1):
            adm("--op", "delete", "--mode", "target", "--tid", str(tid), "--force", check=False)
        adm("--op", "delete", "--mode", "system", check=False)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            run.end_process(proc)
        for leftover in (f"/var/run/tgtd/socket.{control}", f"/var/run/tgtd/socket.{control}.lock"):
            with contextlib.suppress(OSError):
                os.unlink(leftover)  # tgtd leaves its control socket behind
