"""dns.forward and dns.allow (bootsvc/dns/settings.py): the default from
/etc/resolv.conf, never forwarding to ourselves, who may forward, errors
with file:line, what ``bootsvc check`` says, and a reload applying them."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from bootsvc.address import HostPort
from bootsvc.config import ConfigError, load
from bootsvc.dns import settings
from bootsvc.fleet_diff import applies_live

DHCP = """  dhcp: {interface: br0, address: 10.77.0.1}
dhcp:
  subnet: 10.77.0.0/24
  dns: [10.77.0.1]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bootsvc.yaml"
    p.write_text(text)
    return p


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load(path)
    return e.value.problems


@pytest.fixture
def resolv_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The host's resolv.conf as the tests write it."""
    p = tmp_path / "resolv.conf"
    monkeypatch.setattr(settings, "RESOLV_CONF", p)
    return p


def test_default_is_resolv_conf_less_ourselves(tmp_path: Path, resolv_conf: Path) -> None:
    resolv_conf.write_text("# a comment\nsearch lab\nnameserver 10.77.0.1\nnameserver 192.0.2.53\n"
                           "nameserver fe80::1%eth0\nnameserver bogus\noptions edns0\n")
    cfg = load(write(tmp_path, "listen:\n  dns: 10.77.0.1:53\n" + DHCP))
    f = cfg.dns_forward
    assert f.upstreams == (HostPort("192.0.2.53", 53), HostPort("fe80::1%eth0", 53)) and f.origin == str(resolv_conf)
    assert f.allows("10.77.0.50") and f.allows("127.0.0.1") and not f.allows("192.0.2.1")
    # bootsvc on every address: loopback resolvers (systemd-resolved's 127.0.0.53) would be ourselves too
    resolv_conf.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.53\n")
    cfg = load(write(tmp_path, "listen:\n  dns: 0.0.0.0:53\n"))
    assert cfg.dns_forward.upstreams == (HostPort("192.0.2.53", 53),)
    # on another port, the host's own resolver is no loop
    cfg = load(write(tmp_path, "listen:\n  dns: 0.0.0.0:5353\n"))
    assert cfg.dns_forward.upstreams == (HostPort("127.0.0.53", 53), HostPort("192.0.2.53", 53))


def test_no_resolv_conf_or_only_ourselves_is_no_forwarding(tmp_path: Path, resolv_conf: Path) -> None:
    cfg = load(write(tmp_path, "listen:\n  dns: 127.0.0.1:53\n"))  # the file does not exist
    assert cfg.dns_forward.upstreams == ()
    resolv_conf.write_text("nameserver 127.0.0.1\n")
    cfg = load(write(tmp_path, "listen:\n  dns: 127.0.0.1:53\n"))
    assert cfg.dns_forward.upstreams == () and "refused (no upstream)" in cfg.dns_forward.describe()


@pytest.mark.parametrize("value", ["[]", "false"])
def test_forward_off(tmp_path: Path, resolv_conf: Path, value: str) -> None:
    resolv_conf.write_text("nameserver 192.0.2.53\n")
    cfg = load(write(tmp_path, f"listen:\n  dns: 127.0.0.1:53\ndns: {{forward: {value}}}\n"))
    assert cfg.dns_forward.upstreams == ()


def test_forward_and_allow_given(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "listen:\n  dns: 10.77.0.1:53\n" + DHCP +
                     'dns:\n  forward: [192.0.2.53, "192.0.2.54:5353", "[2001:db8::53]:53"]\n'
                     "  allow: [10.99.0.0/16, 192.0.2.7]\n"))
    f = cfg.dns_forward
    assert [str(u) for u in f.upstreams] == ["192.0.2.53:53", "192.0.2.54:5353", "[2001:db8::53]:53"]
    assert f.allowed == (*settings.LOOPBACK, ipaddress.ip_network("10.77.0.0/24"),
                         ipaddress.ip_network("10.99.0.0/16"), ipaddress.ip_network("192.0.2.7/32"))
    assert f.allows("10.99.3.4") and f.allows("192.0.2.7") and not f.allows("192.0.2.8")
    assert f.local == (ipaddress.ip_network("10.77.0.0/24"),)  # whose reverse names are never forwarded
    assert f.is_local(ipaddress.IPv4Address("10.77.0.99")) and not f.is_local(ipaddress.IPv4Address("10.99.0.1"))


def test_forwarding_is_off_without_listen_dns(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "dns: {forward: [192.0.2.53]}\n"))
    assert cfg.dns_forward.upstreams == ()


def test_problems_name_file_line_and_key(tmp_path: Path) -> None:
    p = write(tmp_path, """listen:
  dns: 127.0.0.1:5353
dns:
  forward: [resolver.example, 192.0.2.53:99999, 127.0.0.1:5353, 192.0.2.53]
  allow: [10.0.0.0/33, everyone]
  recurse: yes
""")
    assert problems(p) == [
        f"{p}:6: dns.recurse: unknown key (expected one of: allow, forward, ttl)",
        f"{p}:4: dns.forward: resolver.example is not an IP address (a name would need DNS to find)",
        f"{p}:4: dns.forward: 192.0.2.53:99999: 99999 is not a port (1-65535)",
        f"{p}:4: dns.forward: 127.0.0.1:5353 is bootsvc's own listen.dns: it would forward to itself",
        f"{p}:5: dns.allow: 10.0.0.0/33 is not an address or network like 10.0.0.0/8",
        f"{p}:5: dns.allow: everyone is not an address or network like 10.0.0.0/8",
    ]


def test_check_says_where_names_go(tmp_path: Path, resolv_conf: Path) -> None:
    def notes(text: str) -> list[str]:
        cfg = load(write(tmp_path, text))
        return settings.notes(cfg.dns_forward, cfg.dns, cfg.dhcp.subnets if cfg.dhcp else ())

    on = notes("listen:\n  dns: 10.77.0.1:53\n" + DHCP + "dns: {forward: [192.0.2.53]}\n")
    assert on == ["dns: forwarding to 192.0.2.53:53 (dns.forward) for loopback, 10.77.0.0/24"]
    off = notes("listen:\n  dns: 10.77.0.1:53\n" + DHCP + "dns: {forward: false}\n")
    assert off[0] == "dns: names outside the domain refused (no upstream)"
    assert "hands bootsvc out as the machines' resolver, but it forwards nothing" in off[1]
    assert notes("dns: {forward: false}\n") == []  # no DNS service: nothing to say


def test_bootsvc_check_prints_it(tmp_path: Path) -> None:
    p = write(tmp_path, "listen:\n  dns: 127.0.0.1:5353\ndns: {forward: [192.0.2.53], allow: [10.9.0.0/16]}\n")
    r = subprocess.run([sys.executable, "-m", "bootsvc", "check", "-c", str(p)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"{p}: dns: forwarding to 192.0.2.53:53 (dns.forward) for loopback, 10.9.0.0/16" in r.stderr


def test_a_reload_applies_forwarding(tmp_path: Path) -> None:
    old = load(write(tmp_path, "listen:\n  dns: 127.0.0.1:5353\ndns: {forward: [192.0.2.53]}\n"))
    new = load(write(tmp_path, "listen:\n  dns: 127.0.0.1:5353\ndns: {forward: [192.0.2.54]}\n"))
    moved = load(write(tmp_path, "listen:\n  dns: 127.0.0.1:5354\ndns: {forward: [192.0.2.54]}\n"))
    assert applies_live("dns_forward", old, new) and not applies_live("dns_forward", old, moved)
