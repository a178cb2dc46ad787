"""`bootsvc serve` answering real DHCP clients (busybox udhcpc) in network
namespaces the test makes: a known machine gets its fixed address and host
name, an unknown one an address from the range, leases survive a restart,
and garbage on port 67 does not stop the service."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import need
from tests.e2e.netns import Link, can_make_namespaces, namespaces, veth
from tests.e2e.peers import bootsvc_serve, perfdhcp, stop

pytestmark = pytest.mark.e2e
KNOWN_MAC = "52:54:00:77:00:01"
UNKNOWN_MAC = "52:54:00:99:00:07"


def udhcpc(link: Link, tmp: Path, *extra: str) -> dict[str, str]:
    """What udhcpc was given ({} when no lease within its bounded tries)."""
    out = tmp / f"lease-{link.dev}"
    out.unlink(missing_ok=True)
    script = tmp / "udhcpc.sh"
    script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && env > {out}.$$ && mv {out}.$$ {out}\nexit 0\n')
    script.chmod(0o755)
    link.run("busybox", "udhcpc", "-i", link.dev, "-n", "-q", "-f", "-t", "4", "-T", "1", "-A", "1",
             "-s", str(script), "-x", "hostname:client", *extra, timeout=30)
    if not out.exists():
        return {}
    return dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)


def serve(srv_ns: str, cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    return bootsvc_serve(cfg, log, "dhcp (authoritative) serving", netns=srv_ns)


def test_udhcpc_known_unknown_restart_and_garbage(tmp_path: Path) -> None:
    need("busybox", "ip")
    reason = can_make_namespaces()
    if reason:
        pytest.skip(reason)
    cfg = tmp_path / "bootsvc.yaml"
    with namespaces("srv", "cli") as (srv, cli):
        c1 = veth(srv, "bsv-s1", cli, "bsv-c1", KNOWN_MAC, "10.213.0.1/24")[1]
        c2 = veth(srv, "bsv-s2", cli, "bsv-c2", UNKNOWN_MAC)[1]  # served later, on the same interface name
        cfg.write_text(f"""
state_dir: {tmp_path / 'state'}
domain: lab.test
listen:
  dhcp: {{interface: bsv-s1, address: 10.213.0.1}}
  http: 10.213.0.1:8080
dhcp:
  subnet: 10.213.0.0/24
  range: [10.213.0.100, 10.213.0.110]
  router: 10.213.0.1
  dns: [10.213.0.1]
  lease_time: 10m
  unknown_machines: discover
default_profile: demo-linux
machines:
  {KNOWN_MAC}: {{hostname: node01, ip: 10.213.0.11}}
""")
        proc = serve(srv, cfg, tmp_path / "serve.log")
        try:
            lease = udhcpc(c1, tmp_path)
            assert lease.get("ip") == "10.213.0.11", lease
            assert lease.get("hostname") == "node01" and lease.get("router") == "10.213.0.1"
            assert lease.get("domain") == "lab.test" and lease.get("lease") == "600"
            # garbage at the server port, then a real client still gets served
            c1.run(sys.executable, "-c", "import socket,os;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                   "s.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1);"
                   "[s.sendto(os.urandom(n),('255.255.255.255',67)) for n in (1,50,300,600)]", timeout=30)
            assert udhcpc(c1, tmp_path).get("ip") == "10.213.0.11"
            # udhcpc sends its own option 60 beside this one: two instances,
            # one option (RFC 3396), answered, not dropped as malformed
            vendor = "0x3c:" + b"PXEClient:Arch:00000".hex()
            assert udhcpc(c1, tmp_path, "-x", vendor).get("ip") == "10.213.0.11"
        finally:
            stop(proc)
        assert proc.returncode == 0
        # the unknown client's pair takes the served interface's name and address
        subprocess.run(["ip", "-n", srv, "link", "del", "bsv-s1"], check=True, timeout=30)
        subprocess.run(["ip", "-n", srv, "link", "set", "bsv-s2", "name", "bsv-s1"], check=True, timeout=30)
        subprocess.run(["ip", "-n", srv, "addr", "add", "10.213.0.1/24", "dev", "bsv-s1"], check=True, timeout=30)
        proc = serve(srv, cfg, tmp_path / "serve2.log")
        try:
            first = udhcpc(c2, tmp_path)
            assert first.get("ip") == "10.213.0.100" and "hostname" not in first, first
        finally:
            stop(proc)
        proc = serve(srv, cfg, tmp_path / "serve3.log")
        try:
            again = udhcpc(c2, tmp_path)  # the lease survived the restart: same address
            assert again.get("ip") == "10.213.0.100", again
        finally:
            stop(proc)
    # the stranger, recorded by the DHCP worker that saw it (not serve's fleet), is listed
    listing = subprocess.run([sys.executable, "-m", "bootsvc", "machines", "-c", str(cfg), "--json"],
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    rows = {r["mac"]: r for r in json.loads(listing.stdout)}
    assert not rows[UNKNOWN_MAC]["known"] and rows[UNKNOWN_MAC]["address"] == "10.213.0.100", rows


@pytest.mark.parametrize("cap", [100, 40])
def test_perfdhcp_relay_load(tmp_path: Path, cap: int) -> None:
    """kea's perfdhcp as a relay agent for 100 new clients at 20 exchanges/s:
    every DORA completes, bootsvc adopts each unknown MAC with the default
    profile up to dhcp.max_adopted (the rest get an address only), and
    `bootsvc machines` lists them."""
    need("perfdhcp", "ip")
    reason = can_make_namespaces()
    if reason:
        pytest.skip(reason)
    state = tmp_path / "state"
    (state / "images").mkdir(parents=True)
    (state / "images" / "base.raw").write_bytes(bytes(1 << 20))
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "lab.yaml").write_text("base: base.raw\noverlay: ephemeral\nauth: none\n")
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"""
state_dir: {state}
profiles_dir: profiles
default_profile: lab
listen:
  dhcp: {{interface: bsv-s0, address: 10.216.0.1}}
  iscsi: [10.216.0.1:3260]
dhcp:
  subnet: 10.216.0.0/16
  range: [10.216.1.0, 10.216.9.255]
  unknown_machines: default
  max_adopted: {cap}
""")
    with namespaces("psrv", "pcli") as (srv, cli):
        veth(srv, "bsv-s0", cli, "bsv-c0", None, "10.216.0.1/16")
        subprocess.run(["ip", "-n", cli, "addr", "add", "10.216.0.2/16", "dev", "bsv-c0"], check=True)
        proc = serve(srv, cfg, tmp_path / "serve.log")
        try:
            run = perfdhcp(cli, "10.216.0.2", "10.216.0.1", "-r", "20", "-R", "100", "-n", "100",
                           "-W", "2000000", timeout=120)
        finally:
            stop(proc)
    assert len(run.sent) == 2 and run.sent == run.received, run.output  # DISCOVER->OFFER, REQUEST->ACK
    listing = subprocess.run([sys.executable, "-m", "bootsvc", "machines", "-c", str(cfg)], capture_output=True,
                             text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count("booting profile lab as pxe-") == cap, listing.stdout[-2000:]
    assert len(list((state / "overlays").glob("pxe-*.qcow2"))) == cap


def dhclient(link: Link, tmp: Path) -> dict[str, str]:
    """ISC dhclient's first lease on ``link`` ({} when none within 20 s); the
    client is ended by its PID once it has one (it never daemonizes: -d)."""
    out = tmp / f"dhclient-{link.dev}"
    out.unlink(missing_ok=True)
    script = tmp / "dhclient.sh"
    script.write_text(f'#!/bin/sh\ncase "$reason" in BOUND) env > {out}.$$ && mv {out}.$$ {out};; esac\nexit 0\n')
    script.chmod(0o755)
    conf = tmp / "dhclient.conf"
    conf.write_text("timeout 20;\nretry 1;\nrequest subnet-mask, routers, domain-name, domain-name-servers, "
                    "host-name;\n")
    proc = subprocess.Popen(["ip", "netns", "exec", link.ns, "dhclient", "-d", "-1", "-cf", str(conf),
                             "-sf", str(script), "-lf", str(tmp / "dhclient.leases"),
                             "-pf", str(tmp / "dhclient.pid"), link.dev],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 25
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop(proc)
    if not out.exists():
        return {}
    return dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)


def test_several_interfaces_and_a_relayed_subnet(tmp_path: Path) -> None:
    """One `bootsvc serve` on two interfaces plus a subnet behind a relay:
    busybox udhcpc on the first gets its fixed address, ISC dhclient on the
    second an address of that subnet's range, and perfdhcp relaying from a
    third subnet gets addresses of that subnet with our address on the relay's
    side as server identifier."""
    need("busybox", "dhclient", "perfdhcp", "ip")
    reason = can_make_namespaces()
    if reason:
        pytest.skip(reason)
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"""
state_dir: {tmp_path / 'state'}
domain: lab.test
default_profile: demo-linux
listen:
  dhcp:
    - {{interface: bsv-a0, address: 10.217.0.1}}
    - {{interface: bsv-b0, address: 10.218.0.1}}
  http: 10.217.0.1:8080
dhcp:
  lease_time: 10m
  unknown_machines: discover
  subnets:
    - {{subnet: 10.217.0.0/24, range: [10.217.0.100, 10.217.0.110], router: 10.217.0.1}}
    - {{subnet: 10.218.0.0/24, range: [10.218.0.100, 10.218.0.110], router: 10.218.0.1, domain: b.test}}
    - {{subnet: 10.219.0.0/24, range: [10.219.0.100, 10.219.0.199], server: 10.218.0.1}}
machines:
  {KNOWN_MAC}: {{hostname: node01, ip: 10.217.0.11}}
""")
    with namespaces("msrv", "mc1", "mc2") as (srv, c1ns, c2ns):
        a = veth(srv, "bsv-a0", c1ns, "bsv-a1", KNOWN_MAC, "10.217.0.1/24")[1]
        b = veth(srv, "bsv-b0", c2ns, "bsv-b1", UNKNOWN_MAC, "10.218.0.1/24")[1]
        # (two DHCP sockets and, on each interface, the IPv6 router advertiser)
        proc = bootsvc_serve(cfg, tmp_path / "serve.log", "5 of 5 service(s) serving", netns=srv)
        try:
            first = udhcpc(a, tmp_path)
            assert (first.get("ip"), first.get("hostname"), first.get("router")) == (
                "10.217.0.11", "node01", "10.217.0.1"), first
            second = dhclient(b, tmp_path)
            assert second.get("new_ip_address", "").startswith("10.218.0.1"), second
            assert (second.get("new_routers"), second.get("new_domain_name"),
                    second.get("new_dhcp_server_identifier")) == ("10.218.0.1", "b.test", "10.218.0.1"), second
            # a relay agent at 10.219.0.1 on the second link, reached through it
            subprocess.run(["ip", "-n", c2ns, "addr", "add", "10.218.0.2/24", "dev", "bsv-b1"], check=True)
            subprocess.run(["ip", "-n", c2ns, "addr", "add", "10.219.0.1/24", "dev", "bsv-b1"], check=True)
            subprocess.run(["ip", "-n", srv, "route", "add", "10.219.0.0/24", "via", "10.218.0.2"], check=True)
            run = perfdhcp(c2ns, "10.219.0.1", "10.218.0.1", "-r", "10", "-R", "20", "-n", "20",
                           "-W", "2000000", timeout=120)
        finally:
            stop(proc)
    assert len(run.sent) == 2 and run.sent == run.received, run.output
    listing = subprocess.run([sys.executable, "-m", "bootsvc", "machines", "-c", str(cfg)], capture_output=True,
                             text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count(", 10.219.0.1") == 20, listing.stdout[-2000:]


def link_local_ready(ns: str, dev: str, timeout: float = 10.0) -> None:
    """Wait (bounded) until ``dev`` has a link-local address past duplicate
    address detection: before that nothing can be sent from it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["ip", "-n", ns, "-6", "addr", "show", "dev", dev], capture_output=True, text=True,
                             timeout=10).stdout
        if "scope link" in out and "tentative" not in out:
            return
        time.sleep(0.1)
    raise AssertionError(f"{dev} in {ns} has no usable link-local address: {out}")


def test_router_solicitation_answered_with_no_ipv6_here(tmp_path: Path) -> None:
    """ndisc6's rdisc6, a real IPv6 host, solicits a router on the boot
    network: bootsvc answers with router lifetime 0 and no flags or
    prefixes (what makes iPXE stop waiting ~16 s for IPv6); with
    ``dhcp.ipv6_ra: false`` it stays silent."""
    need("rdisc6", "ip")
    reason = can_make_namespaces()
    if reason:
        pytest.skip(reason)
    with namespaces("srv", "cli") as (srv, cli):
        client = veth(srv, "bsv-s1", cli, "bsv-c1", KNOWN_MAC, "10.213.0.1/24")[1]
        link_local_ready(srv, "bsv-s1")
        link_local_ready(cli, "bsv-c1")
        for ra in (True, False):
            cfg = tmp_path / f"bootsvc-{ra}.yaml"
            cfg.write_text(f"""
state_dir: {tmp_path / 'state'}
listen:
  dhcp: {{interface: bsv-s1, address: 10.213.0.1}}
  http: 10.213.0.1:8080
dhcp:
  subnet: 10.213.0.0/24
  ipv6_ra: {str(ra).lower()}
machines: {{}}
""")
            proc = serve(srv, cfg, tmp_path / f"serve-{ra}.log")
            try:
                r = client.run("rdisc6", "-1", "-r", "4", "-w", "1500", client.dev, timeout=30)
            finally:
                stop(proc)
            log = (tmp_path / f"serve-{ra}.log").read_text()
            if ra:
                assert r.returncode == 0, r.stdout + r.stderr + log
                said = {k.strip(): v.strip() for k, _, v in
                        (line.partition(":") for line in r.stdout.splitlines() if " : " in line)}
                assert said["Router lifetime"].startswith("0 ") and said["Hop limit"].startswith("undefined"), said
                assert said["Stateful address conf."] == "No" and said["Stateful other conf."] == "No", said
                assert "Prefix" not in r.stdout and "ipv6-ra bsv-s1 serving" in log
            else:
                assert r.returncode != 0 and "No response" in r.stdout + r.stderr, r.stdout + r.stderr
                assert "ipv6-ra" not in log
