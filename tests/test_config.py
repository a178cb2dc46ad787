"""Config loading: good files load, every problem names file:line: key."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from bootsvc.config import ConfigError, load
from isns.policy import Policy


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "disk.img").write_bytes(bytes(1 << 20))
    p = tmp_path / "bootsvc.yaml"
    p.write_text(text)
    return p


TWO_INTERFACES = """listen:
  dhcp:
    - {interface: br0, address: 10.77.0.1}
    - {interface: br1, address: 10.78.0.1}
"""


def problems(path: Path) -> str:
    """What load says is wrong with the config at ``path``, one problem a line."""
    with pytest.raises(ConfigError) as e:
        load(path)
    return "\n".join(e.value.problems)


def test_good_config(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, """
state_dir: /tmp/state
iqn_prefix: iqn.2026-11.example.lab
listen:
  iscsi: [127.0.0.1:3260, "[::1]:3261"]
iscsi: {nop_interval: 5}
targets:
  - iqn: iqn.2026-11.example.lab:boot.node01
    alias: node01
    luns:
      - disk.img
      - {path: disk.img, read_only: true, block_size: 4096, lun: 5}
    initiators: [iqn.2026-11.example.lab:node01]
    chap: {user: node01, secret: forward-secret-1}
    mutual_chap: {user: bootsvc, secret: reverse-secret-2}
"""))
    assert [str(p) for p in cfg.iscsi.portals] == ["127.0.0.1:3260", "[::1]:3261"]
    assert [p.tpgt for p in cfg.iscsi.portals] == [1, 2]  # one portal group each
    auth = cfg.targets[0].auth
    assert auth is not None and auth.forward.secret == b"forward-secret-1" and auth.reverse is not None
    assert cfg.iscsi.nop_interval == 5
    t = cfg.targets[0]
    assert t.alias == "node01" and t.allowed_initiators == {"iqn.2026-11.example.lab:node01"}
    assert t.luns[0].path == str(tmp_path / "disk.img") and t.luns[1].read_only and t.luns[1].lun_id == 5


def test_every_problem_has_file_line_and_key(tmp_path: Path) -> None:
    p = write(tmp_path, """
listen:
  iscsi: [nonsense:port]
  gopher: 70
targets:
  - iqn: not-an-iqn
    luns:
      - {path: missing.img, block_size: 1000}
  - iqn: iqn.2026-11.example.lab:x
    luns: []
colour: blue
""")
    text = problems(p)
    assert f"{p}:3: listen.iscsi: nonsense:port is not a portal like HOST:PORT" in text
    assert f"{p}:4: listen.gopher: unknown key" in text
    assert f"{p}:6: targets[0].iqn:" in text
    assert f"{p}:8: targets[0].luns[0].path:" in text and "does not exist" in text
    assert "targets[0].luns[0].block_size: must be 512 or 4096" in text
    assert f"{p}:10: targets[1].luns: expected a non-empty list" in text
    assert f"{p}:11: colour: unknown key" in text


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    p = write(tmp_path, "listen:\n  iscsi: [1\n  bad: {\n")
    assert problems(p).startswith(f"{p}:")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "nope.yaml")


def test_machines_and_profiles(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "lab.yaml").write_text("base: lab.qcow2\noverlay: ephemeral\noverlay_limit: 20G\n")
    cfg = load(write(tmp_path, """
iqn_prefix: iqn.2026-11.example.lab
profiles_dir: profiles
default_profile: demo-linux
machines:
  52:54:00:77:00:01: {hostname: node01, ip: 10.77.0.11, profile: lab}
  52-54-00-77-00-AB: {hostname: Node02}
"""))
    m1, m2 = cfg.machines["52:54:00:77:00:01"], cfg.machines["52:54:00:77:00:ab"]
    assert (m1.hostname, m1.profile, str(m1.ip)) == ("node01", "lab", "10.77.0.11")
    assert m1.initiator_iqn == "iqn.2026-11.example.lab:node01"
    assert m1.target_iqn == "iqn.2026-11.example.lab:boot.node01"
    assert (m2.hostname, m2.profile) == ("node02", "demo-linux")
    assert cfg.profiles["lab"].overlay_limit == 20 << 30 and cfg.profiles["lab"].overlay.value == "ephemeral"


def test_machine_and_profile_errors_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    bad_profile = tmp_path / "profiles" / "bad.yaml"
    bad_profile.write_text("base: x.raw\noverlay: sometimes\noverlay_limit: lots\n")
    text = problems(write(tmp_path, """
profiles_dir: profiles
machines:
  52:54:00:77:00:01: {hostname: node01, profile: nope}
  52:54:00:77:00:02: {hostname: node01, profile: demo-linux, ip: 300.1.1.1}
  not-a-mac: {hostname: x}
"""))
    assert f"{bad_profile}:2: overlay: must be one of persistent, ephemeral" in text
    assert f"{bad_profile}:3: overlay_limit:" in text
    cfg_path = tmp_path / "bootsvc.yaml"
    assert f"{cfg_path}:4: machines.52:54:00:77:00:01.profile: no profile nope" in text
    assert f"{cfg_path}:5: machines.52:54:00:77:00:02.hostname: node01 is used by two machines" in text
    assert "300.1.1.1" in text and "machines.not-a-mac: not-a-mac is not a MAC address" in text


def test_dhcp_one_subnet_inline(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, """
domain: lab
listen:
  dhcp: {interface: br0, address: 10.77.0.1}
dhcp:
  subnet: 10.77.0.0/24
  range: [10.77.0.100, 10.77.0.200]
  router: 10.77.0.1
  lease_time: 30m
"""))
    assert cfg.dhcp is not None
    (s,) = cfg.dhcp.subnets
    assert (str(s.network), str(s.server), str(s.first), s.lease_time, s.domain) == (
        "10.77.0.0/24", "10.77.0.1", "10.77.0.100", 1800, "lab")
    assert [str(x) for x in cfg.dhcp.listeners] == ["br0:67"]
    assert cfg.dhcp.ipv6_ra  # our own network: tell firmware there is no IPv6 router


def test_dhcp_ipv6_ra_off_in_proxy_mode_and_checked(tmp_path: Path) -> None:
    text = """
listen:
  dhcp: {interface: br0, address: 10.77.0.1}
  tftp: 10.77.0.1:69
dhcp:
  subnet: 10.77.0.0/24
  mode: proxy
"""
    cfg = load(write(tmp_path, text))
    assert cfg.dhcp is not None and not cfg.dhcp.ipv6_ra  # someone else's network: silent unless asked
    assert load(write(tmp_path, text + "  ipv6_ra: true\n")).dhcp.ipv6_ra  # type: ignore[union-attr]
    p = write(tmp_path, text + "  ipv6_ra: sometimes\n")
    assert f"{p}:8: dhcp.ipv6_ra: expected true or false, got sometimes" in problems(p)


def test_dhcp_several_interfaces_and_a_relayed_subnet(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "\n" + TWO_INTERFACES + """dhcp:
  dns: [10.77.0.1]
  lease_time: 1h
  subnets:
    - {subnet: 10.77.0.0/24, range: [10.77.0.100, 10.77.0.200]}
    - {subnet: 10.78.0.0/24, range: [10.78.0.100, 10.78.0.200], lease_time: 2h}
    - {subnet: 10.79.0.0/24, range: [10.79.0.10, 10.79.0.20], router: 10.79.0.1, server: 10.78.0.1}
"""))
    assert cfg.dhcp is not None
    a, b, c = cfg.dhcp.subnets
    assert [str(s.server) for s in (a, b, c)] == ["10.77.0.1", "10.78.0.1", "10.78.0.1"]
    assert (a.lease_time, b.lease_time, [str(x) for x in c.dns]) == (3600, 7200, ["10.77.0.1"])
    assert str(c.router) == "10.79.0.1" and a.router is None
    assert str(cfg.dhcp.server_for(ipaddress.IPv4Address("10.79.0.15"))) == "10.78.0.1"


def test_dhcp_problems_name_the_line(tmp_path: Path) -> None:
    p = write(tmp_path, """
listen:
  dhcp:
    - {interface: br0, address: 10.77.0.1}
    - {address: 10.78.0.1, port: 70000}
dhcp:
  subnets:
    - {subnet: 10.77.0.0/24, range: [10.77.0.200, 10.77.0.100]}
    - {subnet: 10.77.0.128/25, server: 10.77.0.1}
    - {subnet: 10.79.0.0/24, colour: red}
    - {subnet: nonsense}
""")
    text = problems(p)
    assert f"{p}:5: listen.dhcp[1].port: 70000 is not a port (1-65535)" in text
    assert f"{p}:5: listen.dhcp: 10.78.0.1: with several listeners each names its interface" in text
    assert f"{p}:8: dhcp.subnets[0].range: 10.77.0.200..10.77.0.100 is not an ascending range" in text
    assert "10.77.0.0/24 and 10.77.0.128/25 overlap" in text
    assert f"{p}:10: dhcp.subnets[2].colour: unknown key" in text
    assert f"{p}:10: dhcp.subnets[2].server: 10.79.0.0/24 is relayed: name the address" in text
    assert f"{p}:11: dhcp.subnets[3].subnet: nonsense is not a subnet" in text
    assert "10.78.0.1 is in none of the dhcp subnets" in text


def test_tftp_busy_poll_and_default_roots(tmp_path: Path) -> None:
    """A tftp section without roots keeps the default roots; busy_poll_us
    (a lone transfer's poll for each ACK) is a bounded whole number."""
    cfg = load(write(tmp_path, f"""
state_dir: {tmp_path / 'state'}
listen: {{tftp: 127.0.0.1:6969}}
tftp: {{busy_poll_us: 0}}
"""))
    assert cfg.tftp is not None and cfg.tftp.busy_poll_us == 0
    assert tmp_path / "state" / "boot" in cfg.tftp.roots
    p = write(tmp_path, """
listen: {tftp: 127.0.0.1:6969, dns: 127.0.0.1:5353, isns: 127.0.0.1:3205}
tftp:
  busy_poll_us: lots
dns: {ttl: -1}
isns: {registration_period: true}
""")
    text = problems(p)
    assert f"{p}:4: tftp.busy_poll_us: expected a whole number (microseconds, 0: off, 0 ... 100000), got lots" in text
    assert f"{p}:5: dns.ttl: expected a whole number (seconds, 0 ... 2147483647), got -1" in text
    assert f"{p}:6: isns.registration_period: expected a whole number (seconds, 0: never expire" in text


def test_dhcp_key_problems_in_order(tmp_path: Path) -> None:
    """Each subnet key's problem, in the order of the keys' checks (the same
    list the operator got before the checks were split up)."""
    p = write(tmp_path, """
listen:
  dhcp: {interface: br0, address: 10.77.0.1}
dhcp:
  subnet: 10.77.0.0/24
  range: [10.77.0.250, nope]
  dns: [10.77.0.1, dns.example]
  lease_time: forever
  router: 10.77.0.300
  mode: sideways
""")
    assert problems(p).splitlines() == [
        f"{p}:6: dhcp.range: 10.77.0.250 and nope are not both IPv4 addresses",
        f"{p}:7: dhcp.dns: dns.example is not an IPv4 address",
        f"{p}:8: dhcp.lease_time: forever is not a duration (like 3600, 30m, 1h, 1d)",
        f"{p}:9: dhcp.router: 10.77.0.300 is not an IPv4 address",
        f"{p}:10: dhcp.mode: expected authoritative or proxy, got sideways",
    ]
    p = write(tmp_path, "\n" + TWO_INTERFACES + """dhcp:
  subnets:
    - {subnet: 10.77.0.0/24, range: 10.77.0.5}
    - {subnet: 10.79.0.0/24, server: 10.9.9.9, dns: nope, lease_time: 0}
    - {subnet: 10.80.0.0/24}
    - 7
""")
    assert problems(p).splitlines() == [
        f"{p}:8: dhcp.subnets[0].range: expected [first, last]",
        f"{p}:9: dhcp.subnets[1].dns: nope is not an IPv4 address",
        f"{p}:9: dhcp.subnets[1].lease_time: 0 is not a duration (like 3600, 30m, 1h, 1d)",
        f"{p}:9: dhcp.subnets[1].server: 10.9.9.9 is not a listen.dhcp address",
        f"{p}:10: dhcp.subnets[2].server: 10.80.0.0/24 is relayed: name the address of ours its relay sends to "
        "(10.77.0.1, 10.78.0.1)",
        f"{p}:7: dhcp.subnets[3]: expected a mapping, got 7",
        f"{p}:3: listen.dhcp: 10.78.0.1 is in none of the dhcp subnets",
    ]
    p = write(tmp_path, "listen:\n  dhcp: {interface: br0, address: 10.77.0.1}\n")
    assert problems(p) == f"{p}:1: dhcp: listen.dhcp is set: the dhcp section (subnet, range, ...) is needed"


@pytest.mark.parametrize(("target", "why"), [
    ("", "give chap: {user: ..., secret: ...}"),
    ("chap: {user: u, secret: short}", "12 to 255 bytes"),
    ("chap: {user: u, secret: same-secret-123}\n    mutual_chap: {user: t, secret: same-secret-123}",
     "must differ"),
    ("mutual_chap: {user: t, secret: reverse-secret-2}", "mutual_chap needs chap"),
    ("auth: none\n    chap: {user: u, secret: forward-secret-1}", "auth: none and chap: together"),
    ("auth: chap", "expected none"),
    ("chap: {user: u, secret_file: nowhere.txt}", "cannot read"),
])
def test_config_targets_need_chap_or_auth_none(tmp_path: Path, target: str, why: str) -> None:
    (tmp_path / "disk.img").write_bytes(bytes(1 << 20))
    p = write(tmp_path, f"targets:\n  - iqn: iqn.2026-11.t:d\n    luns: [disk.img]\n    {target}\n")
    assert why in problems(p)


def test_secret_from_a_file_and_auth_none(tmp_path: Path) -> None:
    (tmp_path / "disk.img").write_bytes(bytes(1 << 20))
    (tmp_path / "s.txt").write_text("file-secret-123\n")
    cfg = load(write(tmp_path, "targets:\n  - {iqn: iqn.2026-11.t:a, luns: [disk.img], chap: {user: u, secret_file: s.txt}}"
                               "\n  - {iqn: iqn.2026-11.t:b, luns: [disk.img], auth: none}\n"))
    a, b = cfg.targets
    assert a.auth is not None and a.auth.forward.secret == b"file-secret-123" and b.auth is None


def test_machine_credentials_in_the_config(tmp_path: Path) -> None:
    machines = """
default_profile: demo-linux
machines:
  "52:54:00:00:00:01": {hostname: pc1, chap: {user: pc1, secret: forward-secret-1}}
  "52:54:00:00:00:02": {hostname: pc2, chap: {user: pc2, secret: pc2-secret-123},
                        mutual_chap: {user: t, secret: %s}}
"""
    cfg = load(write(tmp_path, machines % "pc2-reverse-123"))
    pc1 = cfg.machines["52:54:00:00:00:01"]
    assert pc1.chap is not None and pc1.chap.user == "pc1" and pc1.mutual_chap is None
    assert "00:02.mutual_chap: the mutual CHAP secret must differ" in problems(write(tmp_path, machines % "pc2-secret-123"))


def test_isns_control_addresses(tmp_path: Path) -> None:
    """isns.control_addresses: where a control node's name is believed
    from besides loopback (docs/security.md); addresses and CIDRs."""
    cfg = load(write(tmp_path, f"""
state_dir: {tmp_path / 'state'}
listen: {{isns: 127.0.0.1:3205}}
isns: {{control_nodes: [iqn.2026-11.test:admin], control_addresses: [10.0.0.5, "fd00::/64", 192.168.1.0/24]}}
"""))
    assert cfg.isns.control_addresses == (ipaddress.ip_network("10.0.0.5/32"), ipaddress.ip_network("fd00::/64"),
                                          ipaddress.ip_network("192.168.1.0/24"))
    assert load(write(tmp_path, "listen: {isns: 127.0.0.1:3205}\n")).isns.control_addresses == ()
    p = write(tmp_path, "listen: {isns: 127.0.0.1:3205}\nisns:\n  control_addresses: [10.0.0.300]\n")
    assert f"{p}:3: isns.control_addresses: 10.0.0.300 is not an IP address or network" in problems(p)
    p = write(tmp_path, "listen: {isns: 127.0.0.1:3205}\nisns:\n  control_addresses: 10.0.0.1\n")
    assert "isns.control_addresses: expected a list of IP addresses or networks" in problems(p)


def test_iscsi_chap_algorithms_and_discovery_chap(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, """
iscsi:
  chap_algorithms: [sha256, SHA3-256]
  discovery_chap: {user: disco, secret: discovery-secret}
"""))
    assert [a.name for a in cfg.iscsi.chap_algorithms] == ["SHA256", "SHA3_256"]
    assert cfg.iscsi.discovery_auth is not None and cfg.iscsi.discovery_auth.forward.user == "disco"
    assert load(write(tmp_path, "iscsi: {nop_interval: 5}\n")).iscsi.discovery_auth is None
    text = problems(write(tmp_path, "iscsi:\n  chap_algorithms: [md4]\n  discovery_mutual_chap: "
                                    "{user: t, secret: reverse-secret-2}\n"))
    assert "iscsi.chap_algorithms: expected a list of sha3-256, sha256, sha1, md5" in text
    assert "iscsi.discovery_mutual_chap: needs iscsi.discovery_chap too" in text


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    # found by bench/fuzz.py: the bytes escaped load() as a UnicodeDecodeError
    p = tmp_path / "bootsvc.yaml"
    p.write_bytes(b"domain: lab\nmachines:\n  x: {hostname: caf\xe9}\n")
    assert problems(p) == f"{p}:3: not UTF-8 (byte 0xe9)"


@pytest.mark.parametrize("text", ["domain: !!int ''\n", "a: 1\nb: !!float machines\n", "c: !!timestamp 1\n",
                                  "!!float x: 1\n"])
def test_a_tag_yaml_cannot_read_is_a_config_error(tmp_path: Path, text: str) -> None:
    # found by bench/fuzz.py: PyYAML's constructors raised IndexError and ValueError through load()
    p = write(tmp_path, text)
    assert f"{p}:{text.count(chr(10))}: YAML: cannot read tag:yaml.org,2002:" in problems(p)


def test_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    # PyYAML's composer recursed past Python's limit: RecursionError escaped load()
    p = write(tmp_path, "domain: lab\nmachines:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 600)))
    assert problems(p).startswith(f"{p}:") and problems(p).endswith(": YAML: nested too deeply")


def test_deep_flow_nesting_is_refused_before_it_costs(tmp_path: Path) -> None:
    # found by bench/fuzz.py: 1,511 "[" took PyYAML's scanner over a second (quadratic);
    # 20,000 took minutes
    p = write(tmp_path, "domain: lab\nmachines: " + "[" * 20000 + "]" * 20000 + "\n")
    assert problems(p) == f"{p}:2: YAML: [ and {{ nested deeper than 64"
    ok = write(tmp_path, "domain: lab\nx: " + "[" * 64 + "]" * 64 + "\n")
    assert "nested" not in problems(ok)  # 64 deep is still read (x is then an unknown key)


def test_aliases_that_expand_without_end_are_a_config_error(tmp_path: Path) -> None:
    # "billion laughs": nine levels of ten aliases each is 10**9 values, whose
    # repr in an error message ("expected a number, got [...]") never ended
    # (aliases of lists are refused outright; mappings may be repeated)
    levels = ["l0: &l0 {a: x, b: x, c: x, d: x, e: x, f: x, g: x, h: x, i: x, j: x}"]
    levels += [f"l{i}: &l{i} {{{', '.join(f'k{k}: *l{i - 1}' for k in range(10))}}}" for i in range(1, 9)]
    p = write(tmp_path, "\n".join(levels) + "\niscsi: {nop_interval: *l8}\n")
    assert "YAML: aliases expand to more than 100000 values" in problems(p)


def test_aliases_within_bounds_still_work(tmp_path: Path) -> None:
    p = write(tmp_path, "x-node: &node {profile: demo-linux}\nmachines:\n"
                        "  52:54:00:77:00:11: {<<: *node, hostname: a}\n"
                        "  52:54:00:77:00:12: {<<: *node, hostname: b}\n")
    [problem] = problems(p).splitlines()  # the merged machines are fine: each has its profile
    assert problem.startswith(f"{p}:1: x-node: unknown key")


def test_a_control_character_is_a_config_error(tmp_path: Path) -> None:
    p = write(tmp_path, "iqn_prefix: iqn.2026-11.lab\ndomain: lab\x14\n")
    assert problems(p) == f"{p}:2: YAML: character #x0014 is not allowed"


@pytest.mark.parametrize("name", ["d" * 300, "disk\\0.img"])
def test_a_path_the_file_system_cannot_take_is_a_config_error(tmp_path: Path, name: str) -> None:
    # found by bench/fuzz.py: Path.exists()/is_dir() raised OSError (name too long) or
    # ValueError (NUL) out of load()
    p = write(tmp_path, f'profiles_dir: "{name}"\nlisten: {{tftp: 127.0.0.1:69}}\ntftp: {{roots: ["{name}"]}}\n'
                        f'targets:\n  - iqn: iqn.2026-11.lab:t\n    luns: ["{name}"]\n')
    text = problems(p)
    for key in ("profiles_dir", "tftp.roots", "targets[0].luns[0].path"):
        assert f": {key}: " in text, text


def test_chap_machines_need_a_way_to_get_their_script(tmp_path: Path) -> None:
    """With CHAP the secret travels in the machine's iPXE script: a config
    that hands out boot options (DHCP) but serves no script is caught."""
    base = """
listen:
  dhcp: {address: 10.9.0.1}
dhcp: {subnet: 10.9.0.0/24}
default_profile: demo-linux
machines:
  52:54:00:00:00:01: {hostname: pc1}
"""
    assert "get their secret in an iPXE script, served over listen.http or listen.tftp" in \
        problems(write(tmp_path, base))
    cfg = load(write(tmp_path, base.replace("  dhcp: {address: 10.9.0.1}", "  dhcp: {address: 10.9.0.1}\n  http: 10.9.0.1:8080")))
    assert cfg.http is not None


def test_isns_policy(tmp_path: Path) -> None:
    """isns.policy: strict (the default) or open (isns/policy.py)."""
    assert load(write(tmp_path, "listen: {isns: 127.0.0.1:3205}\n")).isns.policy is Policy.STRICT
    p = write(tmp_path, "listen: {isns: 127.0.0.1:3205}\nisns:\n  policy: open\n")
    assert load(p).isns.policy is Policy.OPEN
    p = write(tmp_path, "listen: {isns: 127.0.0.1:3205}\nisns:\n  default_dd: visible\n  policy: permissive\n")
    assert f"{p}:4: isns.policy: expected strict or open, got permissive" in problems(p)
    p = write(tmp_path, "listen: {isns: 127.0.0.1:3205}\nisns:\n  policy: [open]\n")
    assert f"{p}:3: isns.policy: expected strict or open\n" in problems(p) + "\n"


def test_portal_groups(tmp_path: Path) -> None:
    """listen.iscsi: tags written as SendTargets prints them put portals in
    groups; without them each portal is a group, numbered from
    iscsi.portal_group_tag."""
    cfg = load(write(tmp_path, """
listen:
  iscsi:
    - 127.0.0.1:3260,7
    - 127.0.0.2,7
    - "[::1]:3261,9"
"""))
    assert [(str(p), p.tpgt) for p in cfg.iscsi.portals] == [
        ("127.0.0.1:3260", 7), ("127.0.0.2:3260", 7), ("[::1]:3261", 9)]
    cfg = load(write(tmp_path, """
listen: {iscsi: [127.0.0.1, 127.0.0.2]}
iscsi: {portal_group_tag: 10}
"""))
    assert [p.tpgt for p in cfg.iscsi.portals] == [10, 11]


def test_iscsi_connections_and_error_recovery_bounds(tmp_path: Path) -> None:
    """iscsi.max_connections and iscsi.error_recovery_level bound what an
    initiator is granted (docs/iscsi-recovery.md)."""
    cfg = load(write(tmp_path, "iscsi: {max_connections: 2, error_recovery_level: 0}\n"))
    assert cfg.iscsi.key_preferences == {"MaxConnections": "2", "ErrorRecoveryLevel": "0"}
    assert load(write(tmp_path, "domain: lab\n")).iscsi.key_preferences == {
        "MaxConnections": "8", "ErrorRecoveryLevel": "2"}
    for bad, why in (("max_connections: 0", "at least one connection"), ("error_recovery_level: 3", "0 ... 2"),
                     ("max_connections: 1.5", "whole number")):
        with pytest.raises(ConfigError) as e:
            load(write(tmp_path, f"iscsi: {{{bad}}}\n"))
        assert why in str(e.value) and "iscsi." + bad.split(":")[0] in str(e.value)


def test_iscsi_error_recovery_level(tmp_path: Path) -> None:
    """iscsi.error_recovery_level: the most the target agrees to (2 unless told)."""
    cfg = load(write(tmp_path, "iscsi: {nop_interval: 5}\n"))
    assert cfg.iscsi.error_recovery_level == 2 and cfg.iscsi.key_preferences["ErrorRecoveryLevel"] == "2"
    for level in (0, 1):
        cfg = load(write(tmp_path, f"iscsi: {{error_recovery_level: {level}}}\n"))
        assert cfg.iscsi.error_recovery_level == level and cfg.iscsi.key_preferences["ErrorRecoveryLevel"] == str(level)
    text = problems(write(tmp_path, "iscsi:\n  error_recovery_level: 3\n"))
    assert "iscsi.error_recovery_level: expected a whole number (an ErrorRecoveryLevel, 0 ... 2), got 3" in text
    assert text.count("iscsi.error_recovery_level") == 1  # one key, checked once
