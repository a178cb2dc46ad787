"""Start and stop the real peers the end-to-end tests talk to.

Every server listens on loopback only, on a port picked free at start, and
is ended by the PID this module started it with.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bootsvc.vm.run import end_process, start_serve

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {LOOPBACK}:{port} after {timeout} s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """End a process this module started: SIGTERM, then SIGKILL."""
    end_process(proc, timeout)


@dataclass(frozen=True)
class Portal:
    """Where a test reaches a target: ``iscsi://host:port/iqn/lun``."""

    port: int
    iqn: str
    lun: int
    pid: int = 0  # the serving process, for benchmarks that watch what it costs

    def url(self, lun: int | None = None, host: str = LOOPBACK) -> str:
        return f"iscsi://{host}:{self.port}/{self.iqn}/{self.lun if lun is None else lun}"


def bootsvc_command() -> list[str]:
    return [sys.executable, "-m", "bootsvc"]


def machine_secret(state_dir: Path, mac: str) -> str:
    """The CHAP secret bootsvc made for the machine with ``mac`` (state_dir/secrets)."""
    return str(json.loads((state_dir / "secrets" / "chap.json").read_text())[mac]["secret"])


def machine_chap(state_dir: Path, mac: str, initiator: str) -> str:
    """QEMU iSCSI driver options (``,user=...,password=...``) with the
    machine's CHAP secret."""
    return f",user={initiator},password={machine_secret(state_dir, mac)}"


@contextlib.contextmanager
def bootsvc_export(image: Path | str, iqn: str = "iqn.2026-11.test.bootsvc:disk", *extra: str,
                   log: Path | None = None) -> Iterator[Portal]:
    """``bootsvc export IMAGE`` on a free loopback port; the image is LUN 0.
    Without CHAP (``--auth none``) unless ``extra`` gives ``--chap-file``."""
    port = free_port()
    if "--chap-file" not in extra:
        extra = (*extra, "--auth", "none")
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [*bootsvc_command(), "export", str(image), "--iqn", iqn, "--listen", f"{LOOPBACK}:{port}", *extra],
        stdout=out, stderr=subprocess.STDOUT if log else None,
    )
    try:
        wait_for_port(port, proc)
        yield Portal(port, iqn, 0, proc.pid)
    finally:
        stop(proc)
        if log:
            out.close()  # type: ignore[union-attr]


def bootsvc_serve(cfg: Path, log: Path, ready: str, netns: str | None = None,
                  timeout: float = 30.0, argv: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """``bootsvc serve -c CFG`` (inside ``netns`` if given; or bootsvc with
    ``argv``), its stderr in ``log``, once ``ready`` shows there (`bootsvc
    vm`'s own starter). The caller stops it."""
    return start_serve(cfg, log, ("ip", "netns", "exec", netns) if netns else (), ready, timeout, argv)


@contextlib.contextmanager
def dnsmasq_dhcp(ns: str, interface: str, dhcp_range: str, work: Path, *extra: str) -> Iterator[Path]:
    """dnsmasq as a network's own DHCP server inside namespace ``ns``:
    addresses only, no DNS, no ping before an offer (ENVIRONMENT.md), fresh
    leases. Yields its log (work/dnsmasq.log)."""
    leases, log = work / "dnsmasq.leases", work / "dnsmasq.log"
    leases.unlink(missing_ok=True)
    with open(log, "wb") as err:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "dnsmasq", "--no-daemon", "--port=0", "--no-ping",
                                 "--user=root", "--bind-interfaces", f"--interface={interface}", "--no-resolv",
                                 f"--dhcp-range={dhcp_range}", f"--dhcp-leasefile={leases}",
                                 f"--pid-file={work / 'dnsmasq.pid'}", *extra],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        time.sleep(0.5)
        if proc.poll() is not None:
            raise AssertionError(f"dnsmasq exited:\n{log.read_text(errors='replace')}")
        yield log
    finally:
        stop(proc)


@dataclass(frozen=True)
class PerfdhcpRun:
    sent: list[int]  # per exchange: DISCOVER-OFFER, then REQUEST-ACK
    received: list[int]
    output: str


def perfdhcp(ns: str, local: str, server: str, *args: str, timeout: float) -> PerfdhcpRun:
    """kea's perfdhcp inside ``ns``, relaying from ``local`` (giaddr) to ``server``."""
    r = subprocess.run(["ip", "netns", "exec", ns, "perfdhcp", "-4", "-l", local, *args, server],
                       capture_output=True, text=True, timeout=timeout)
    return PerfdhcpRun([int(x) for x in re.findall(r"sent packets: (\d+)", r.stdout)],
                       [int(x) for x in re.findall(r"received packets: (\d+)", r.stdout)], r.stdout + r.stderr)


def have(*commands: str) -> bool:
    return all(shutil.which(c) for c in commands)


@contextlib.contextmanager
def tgt_export(image: Path | str, iqn: str = "iqn.2026-11.test.tgt:disk", more_hosts: Sequence[str] = (),
               backing: Sequence[str] = ()) -> Iterator[Portal]:
    """tgtd serving ``image`` as LUN 1 (tgt keeps LUN 0 for its controller);
    ``more_hosts``: other loopback addresses it listens on, the same port
    (tgt puts every portal in portal group 1); ``backing``: tgtadm options
    for another backing store, e.g. ``("--bstype", "rbd", "--bsopts",
    "conf=...")`` with ``image`` POOL/IMAGE (tgt-rbd).

    tgtd ignores SIGTERM while targets exist, so it is stopped through its
    own control port (ENVIRONMENT.md), then by PID if it lingers."""
    port = free_port()
    # tgtd takes control ports up to 32767 (its socket is /var/run/tgtd/socket.<N>)
    control = 1000 + port % 30000
    os.makedirs("/var/run/tgtd", exist_ok=True)
    proc = subprocess.Popen(
        ["tgtd", "-f", "-C", str(control), "--iscsi", f"portal={LOOPBACK}:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def adm(*args: str) -> None:
        subprocess.run(["tgtadm", "-C", str(control), "--lld", "iscsi", *args], check=True,
                       capture_output=True, timeout=30)

    try:
        wait_for_port(port, proc)
        for host in more_hosts:
            adm("--op", "new", "--mode", "portal", "--param", f"portal={host}:{port}")
        adm("--op", "new", "--mode", "target", "--tid", "1", "-T", iqn)
        adm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", str(image), *backing)
        adm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        yield Portal(port, iqn, 1, proc.pid)
    finally:
        end_tgtd(proc, control, (1,))


def end_tgtd(proc: subprocess.Popen[bytes], control: int, tids: Iterable[int]) -> None:
    """Stop a tgtd we started: it ignores SIGTERM while targets exist and
    refuses to delete the system before them (ENVIRONMENT.md)."""
    for tid in tids:
        subprocess.run(["tgtadm", "-C", str(control), "--lld", "iscsi", "--op", "delete", "--mode", "target",
                        "--tid", str(tid), "--force"], capture_output=True, timeout=30)
    subprocess.run(["tgtadm", "-C", str(control), "--op", "delete", "--mode", "system"],
                   capture_output=True, timeout=30)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        stop(proc)


def isnsadm(work: Path, port: int, source: str, *args: str) -> tuple[int, str]:
    """open-isns's isnsadm against the iSNS server on loopback PORT, asking
    as ``source`` (its own config file in ``work``, security off)."""
    conf = work / f"isnsadm-{source.rsplit(':', 1)[-1]}.conf"
    conf.write_text(f"SourceName = {source}\nServerAddress = {LOOPBACK}:{port}\nSecurity = 0\n")
    r = subprocess.run(["isnsadm", "-c", str(conf), *args], capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout + r.stderr


def isns_names(output: str) -> list[str]:
    """The iSCSI names in isnsadm's output."""
    return re.findall(r'iSCSI name = "([^"]+)"', output)


@contextlib.contextmanager
def isnsd(work: Path, source: str, default_dd: bool, database: Path | None = None) -> Iterator[int]:
    """open-isns's isnsd (the reference iSNS server) on a free loopback
    port, security off, no registration expiry, asking as ``source``;
    its database in ``database``, else in memory. Yields the port."""
    port = free_port()
    conf = work / "isnsd.conf"
    conf.write_text(f"BindAddress = {LOOPBACK}:{port}\nSourceName = {source}\nSecurity = 0\n"
                    f"PIDFile = {work / 'isnsd.pid'}\nControlSocket = {work / 'isnsd.control'}\n"
                    f"DefaultDiscoveryDomain = {int(default_dd)}\nSLPRegister = 0\nRegistrationPeriod = 0\n"
                    + ("" if database is None else f"Database = {database}\n"))
    with open(work / "isnsd.log", "wb") as log:
        proc = subprocess.Popen(["isnsd", "-f", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, timeout=10)
        yield port
    finally:
        stop(proc)


BIG_TXT = tuple(ch * 250 for ch in "abcd")  # dnsmasq_dns's big.<domain> TXT: 1 KiB, more than UDP's 512


@contextlib.contextmanager
def dnsmasq_dns(work: Path, domain: str = "example.test", address: str = "192.0.2.7",
                ns: str | None = None) -> Iterator[int]:
    """dnsmasq as an upstream resolver on a free loopback port (of namespace
    ``ns`` if given): every name under ``domain`` is ``address``,
    ``big.<domain>`` has TXT records of 1 KiB in all (a reply UDP must
    truncate), anything else REFUSED (no upstream of its own, no
    /etc/hosts). Yields the port; its log of queries is work/dnsmasq-dns.log."""
    port = free_port()
    txt = [f"--txt-record=big.{domain},{t}" for t in BIG_TXT]
    log = work / "dnsmasq-dns.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*(("ip", "netns", "exec", ns) if ns else ()), "dnsmasq", "--keep-in-foreground",
                                 "--conf-file=/dev/null", "--pid-file=", "--user=root", "--no-resolv", "--no-hosts",
                                 "--bind-interfaces", f"--listen-address={LOOPBACK}", f"--port={port}",
                                 f"--address=/{domain}/{address}", *txt, "--log-queries", "--log-facility=-"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while "started, version" not in log.read_text(errors="replace"):  # said once its sockets are bound
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        yield port
    finally:
        stop(proc)
