"""`bootsvc check` catches every config mistake of issue 19 (an operator's
forty wrong configs), each as ``file:line: key: message`` in plain words,
and `serve`, loading the same config, refuses them too."""

from __future__ import annotations

import re
import time
import tracemalloc
from pathlib import Path

import pytest

from bootsvc import cli
from bootsvc.config import ConfigError, load

DHCP = """\
default_profile: demo-linux
listen:
  dhcp: {interface: lo, address: 10.77.0.1}
  tftp: 10.77.0.1:69
dhcp:
  subnet: 10.77.0.0/24
  range: [10.77.0.100, 10.77.0.200]
  router: 10.77.0.1
"""

# Python's words where an operator's belong: reprs, enum and type names
REPR = re.compile(r"None|NoneType|<|Enum|Mode\.|Policy\.|\['|'\]|\bint\b|\bstr\b|\bdict\b|True|False")


def line(text: str, needle: str, nth: int = 1) -> int:
    """The line (1-based) of the nth line of ``text`` holding ``needle``."""
    found = [i for i, one in enumerate(text.splitlines(), 1) if needle in one and not one.startswith("state_dir: /")]
    return found[nth - 1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bootsvc.yaml"
    p.write_text(("" if "state_dir:" in text else f"state_dir: {tmp_path / 'state'}\n") + text)
    return p


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, Path, str]:
    """Exit code, config path and stderr of `bootsvc check -c FILE FLAGS`."""
    p = write(tmp_path, text)
    rc = cli.main(["check", "-c", str(p), *flags])
    return rc, p, capsys.readouterr().err


def problems(tmp_path: Path, text: str) -> tuple[Path, str, list[str]]:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load(p)
    return p, (tmp_path / "bootsvc.yaml").read_text(), e.value.problems


def machines(*entries: str) -> str:
    return "machines:\n" + "".join(f"  {e}\n" for e in entries)


# (name, config text, the key, a needle on the line the problem is at, words the message has)
CASES = [
    ("duplicate MAC", machines("52:54:00:77:00:01: {hostname: a}", "52:54:00:77:00:01: {hostname: b}"),
     "machines.52:54:00:77:00:01", "hostname: b", "given twice (first at line 3)"),
    ("duplicate listen", "listen:\n  http: 127.0.0.1:8080\nlisten:  # again\n  tftp: 127.0.0.1:69\n",
     "listen", "again", "given twice (first at line 2)"),
    ("duplicate nested key", "dhcp:\n  mode: proxy\n  mode: authoritative\n",
     "dhcp.mode", "authoritative", "given twice"),
    ("same fixed ip", DHCP + machines("52:54:00:77:00:01: {hostname: a, ip: 10.77.0.11}",
                                      "52:54:00:77:00:02: {hostname: b, ip: 10.77.0.11}"),
     "machines.52:54:00:77:00:02.ip", "hostname: b", "used by two machines (also by machines.52:54:00:77:00:01"),
    ("same initiator", machines("52:54:00:77:00:01: {hostname: a, profile: demo-linux, initiator: iqn.2026-11.x:y}",
                                "52:54:00:77:00:02: {hostname: b, profile: demo-linux, initiator: iqn.2026-11.x:y}"),
     "machines.52:54:00:77:00:02.initiator", "hostname: b", "used by two machines"),
    ("ip outside subnets", DHCP + machines("52:54:00:77:00:01: {hostname: a, ip: 10.99.0.5}"),
     "machines.52:54:00:77:00:01.ip", "hostname: a", "in none of the dhcp subnets (10.77.0.0/24)"),
    ("ip is the server's", DHCP + machines("52:54:00:77:00:01: {hostname: a, ip: 10.77.0.1}"),
     "machines.52:54:00:77:00:01.ip", "hostname: a", "the DHCP server's own address"),
    ("ip is the network", DHCP + machines("52:54:00:77:00:01: {hostname: a, ip: 10.77.0.0}"),
     "machines.52:54:00:77:00:01.ip", "hostname: a", "network address of 10.77.0.0/24"),
    ("ip is the broadcast", DHCP + machines("52:54:00:77:00:01: {hostname: a, ip: 10.77.0.255}"),
     "machines.52:54:00:77:00:01.ip", "hostname: a", "broadcast address of 10.77.0.0/24"),
    ("broadcast MAC", machines("ff:ff:ff:ff:ff:ff: {hostname: a, profile: demo-linux}"),
     "machines.ff:ff:ff:ff:ff:ff", "hostname: a", "the broadcast address, not a machine's"),
    ("multicast MAC", machines("01:00:5e:00:00:01: {hostname: a, profile: demo-linux}"),
     "machines.01:00:5e:00:00:01", "hostname: a", "multicast address"),
    ("alias of a value", "x-root: &r /usr/lib/ipxe\nlisten: {tftp: 127.0.0.1:69}\ntftp:\n  roots: [*r]\n",
     "tftp.roots[0]", "roots", "*r repeats a single value"),
    ("alias of a list", "x-dirs: &r [/usr/lib/ipxe]\nlisten: {tftp: 127.0.0.1:69}\ntftp:\n  roots: *r\n",
     "tftp.roots", "roots", "*r repeats a list"),
    ("router outside", DHCP.replace("router: 10.77.0.1", "router: 10.78.0.1"),
     "dhcp.router", "router", "10.78.0.1 is outside the subnet 10.77.0.0/24"),
    ("bad domain", "domain: 'bad domain!'\n", "domain", "domain", "bad domain! is not a domain"),
    ("bad subnet domain", DHCP + "  domain: -lab\n", "dhcp.domain", "-lab", "-lab is not a domain"),
    ("bad hostname", machines("52:54:00:77:00:01: {hostname: node_01, profile: demo-linux}"),
     "machines.52:54:00:77:00:01.hostname", "node_01", "node_01 is not a host name"),
    ("hostname ends in -", machines("52:54:00:77:00:01: {hostname: node-, profile: demo-linux}"),
     "machines.52:54:00:77:00:01.hostname", "node-", "not a host name"),
    ("missing hostname", machines("52:54:00:77:00:01: {profile: demo-linux}"),
     "machines.52:54:00:77:00:01.hostname", "profile", "missing"),
    ("float count", "iscsi: {queue_depth: 1.5}\n", "iscsi.queue_depth", "queue_depth", "got 1.5"),
    ("bool count", "iscsi: {portal_group_tag: true}\n", "iscsi.portal_group_tag", "portal", "got true"),
    ("string count", "recorder: {history: many}\n", "recorder.history", "history", "got many"),
    ("float ttl", "dns: {ttl: 2.5}\n", "dns.ttl", "ttl", "whole number"),
    ("float lun", "targets:\n  - {iqn: iqn.2026-11.x:t, auth: none, luns: [{path: /dev/null, lun: true}]}\n",
     "targets[0].luns[0].lun", "luns", "not true"),
    ("float block size", "targets:\n  - {iqn: iqn.2026-11.x:t, auth: none, luns: [{path: /dev/null, block_size: 512.0}]}\n",
     "targets[0].luns[0].block_size", "luns", "not 512.0"),
    ("roots not directories", "listen: {tftp: 127.0.0.1:69}\ntftp:\n  roots: [{a: 1}]\n", "tftp.roots", "roots",
     "expected a directory or a list of directories"),
    ("target not a mapping", "targets:\n  - 5\n", "targets[0]", "targets", "expected a mapping"),
    ("empty state_dir", "domain: lab\nstate_dir:\n", "state_dir", "state_dir:", "expected text, got nothing"),
    ("empty domain", "domain:\n", "domain", "domain", "expected text, got nothing"),
    ("portal a mapping", "listen:\n  iscsi: [{a: 1}]\n", "listen.iscsi", "iscsi", "expected HOST:PORT, got a mapping"),
    ("portal tag not a number", "listen:\n  iscsi: ['127.0.0.1:3260,x']\n", "listen.iscsi", "iscsi",
     "127.0.0.1:3260,x: the portal group tag after ',' must be a whole number 1 ... 65535"),
    ("portal tag 0", "listen:\n  iscsi: ['127.0.0.1:3260,0']\n", "listen.iscsi", "iscsi", "whole number 1 ... 65535"),
    ("portal tags mixed", "listen:\n  iscsi: ['127.0.0.1:3260,1', 127.0.0.2:3260]\n", "listen.iscsi", "iscsi",
     "give every portal its group tag (HOST:PORT,TAG) or none of them"),
    ("portal twice", "listen:\n  iscsi: [127.0.0.1:3260, 127.0.0.1]\n", "listen.iscsi", "iscsi",
     "127.0.0.1: listed twice"),
    ("portal group tag 0", "iscsi: {portal_group_tag: 0}\n", "iscsi.portal_group_tag", "portal",
     "must be 1 or more"),
    ("default_profile a list", "default_profile: [x]\n", "default_profile", "default_profile",
     "expected a profile name, got a list"),
    ("iqn_prefix a number", "iqn_prefix: 5\n", "iqn_prefix", "iqn_prefix", "5 is not an iSCSI name"),
    ("port too big", "listen:\n  http: 127.0.0.1:99999\n", "listen.http", "99999", "99999 is not a port (1-65535)"),
    ("dhcp port float", DHCP.replace("address: 10.77.0.1}", "address: 10.77.0.1, port: 1.5}"),
     "listen.dhcp.port", "port: 1.5", "1.5 is not a port (1-65535)"),
    ("unknown_machines typo", DHCP + "  unknown_machines: discovr\n", "dhcp.unknown_machines", "discovr",
     "expected ignore or default or discover, got discovr"),
    ("mode typo", DHCP + "  mode: proxxy\n", "dhcp.mode", "proxxy", "expected authoritative or proxy, got proxxy"),
    ("misspelled key", DHCP + "  unknown_machine: default\n", "dhcp.unknown_machine", "unknown_machine",
     "unknown key"),
    ("mapping for a section", "recorder: ~\ndns: 5\n", "dns", "dns", "expected a mapping, got 5"),
]


@pytest.mark.parametrize(("config", "key", "needle", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_names_file_line_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str, key: str,
                                       needle: str, words: str) -> None:
    rc, p, err = check(tmp_path, config, capsys, "--elsewhere")
    assert rc == 1
    expected = f"{p}:{line(p.read_text(), needle)}: {key}: "
    assert any(one.startswith(expected) and words in one for one in err.splitlines()), (expected, words, err)
    assert not REPR.search(err.replace(str(p), "FILE")), err


def test_serve_refuses_what_check_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, machines("52:54:00:77:00:01: {hostname: a, profile: demo-linux}",
                                 "52:54:00:77:00:01: {hostname: b, profile: demo-linux}"))
    assert cli.main(["serve", "-c", str(p)]) == 1
    err = capsys.readouterr().err
    assert f"{p}:4: machines.52:54:00:77:00:01: given twice (first at line 3)" in err
    assert "bootsvc serve: 1 problem(s)" in err


def test_every_problem_of_a_config_at_once(tmp_path: Path) -> None:
    """Duplicate keys are found wherever they are, all in one run, in line order."""
    p, text, found = problems(tmp_path, "a: 1\nb: {c: 1, c: 2}\na: 3\nd:\n  - {e: 1, e: 1}\n")
    assert found == [f"{p}:3: b.c: given twice (first at line 3); only one may stay",
                     f"{p}:4: a: given twice (first at line 2); only one may stay",
                     f"{p}:6: d[0].e: given twice (first at line 6); only one may stay"]


def test_a_merged_mapping_is_still_fine(tmp_path: Path) -> None:
    p = write(tmp_path, "x-node: &node {profile: demo-linux}\nmachines:\n"
                        "  52:54:00:77:00:11: {<<: *node, hostname: a}\n"
                        "  52:54:00:77:00:12: {<<: *node, hostname: b}\n")
    with pytest.raises(ConfigError) as e:
        load(p)
    assert [one.split(": ")[1] for one in e.value.problems] == ["x-node"]  # only the unknown key


def test_alias_bomb_in_tftp_roots_stays_small_and_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A long string repeated by aliases of aliases (10**9 copies): once ran check to 2.9 GB."""
    lines = [f"x0: &a0 {'A' * (1 << 14)}"]
    lines += [f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    p = write(tmp_path, "\n".join(lines) + "\nlisten: {tftp: 127.0.0.1:69}\ntftp:\n  roots: [" +
              ", ".join(["*a8"] * 10) + "]\n")
    tracemalloc.start()
    start = time.monotonic()
    try:
        rc = cli.main(["check", "-c", str(p), "--elsewhere"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert rc == 1 and elapsed < 5 and peak < 64 << 20, (elapsed, peak)
    assert f"{p}:{len(lines) + 4}: tftp.roots[0]: *a8 repeats a list" in err
    assert len(err) < 100_000


def test_a_mapping_repeating_a_long_string_counts_its_length(tmp_path: Path) -> None:
    lines = [f"x0: &a0 {{s: {'A' * 100_000}}}"]
    lines += [f"x{i}: &a{i} {{{', '.join(f'k{k}: *a{i - 1}' for k in range(10))}}}" for i in range(1, 4)]
    p, _, found = problems(tmp_path, "\n".join(lines) + "\n")
    assert found == [f"{p}:1: YAML: aliases expand to more than 100000 values"]


def test_proxy_with_a_range_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, p, err = check(tmp_path, DHCP + "  mode: proxy\n", capsys, "--elsewhere")
    assert rc == 0
    assert f"{p}:{line(p.read_text(), 'range')}: warning: dhcp.range: proxy mode never hands out addresses" in err


def test_a_missing_base_is_warned_once_per_base(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    many = [f"52:54:00:77:{i >> 8:02x}:{i & 255:02x}: {{hostname: n{i}}}" for i in range(50)]
    rc, p, err = check(tmp_path, "default_profile: demo-linux\n" + machines(*many), capsys, "--elsewhere")
    assert rc == 0
    [warning] = [one for one in err.splitlines() if "warning" in one]
    assert warning == (f"{p}: warning: base image {tmp_path / 'state' / 'images' / 'demo-linux.qcow2'} does not "
                       "exist yet: 50 machine(s) use it (profile demo-linux); make it with `bootsvc image import "
                       "FILE demo-linux.qcow2` (its OS must log in to its root disk from the iBFT: docs/images.md), "
                       "build-debian or build-demo")


def test_state_dir_is_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    p = tmp_path / "etc" / "bootsvc.yaml"
    p.write_text("state_dir: state\n")
    monkeypatch.chdir("/")
    assert load(p).state_dir == tmp_path / "etc" / "state"


def test_host_checks_on_this_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = ("listen:\n  dhcp: {interface: bsvnosuch0, address: 192.0.2.77}\n  http: 192.0.2.78:8080\n"
              "  iscsi: [127.0.0.1:3260, '[::]:3260']\n"
              "dhcp:\n  subnet: 192.0.2.0/24\n  range: [192.0.2.100, 192.0.2.200]\n")
    rc, p, err = check(tmp_path, config, capsys)
    assert rc == 1
    assert f"{p}:3: listen.dhcp.interface: bsvnosuch0: no such network interface on this host (it has: " in err
    assert f"{p}:3: listen.dhcp.address: 192.0.2.77 is not an address of this host" in err
    assert f"{p}:4: listen.http: 192.0.2.78 is not an address of this host" in err
    assert "listen.iscsi" not in err  # loopback and the wildcard are ours
    assert "bootsvc check --elsewhere" in err
    rc, p, err = check(tmp_path, config, capsys, "--elsewhere")
    assert rc == 0, err
    rc, p, err = check(tmp_path, config.replace("bsvnosuch0", "lo").replace("192.0.2.78", "127.0.0.1")
                       .replace("192.0.2.77", "127.0.0.1").replace("192.0.2.", "127.0.0."), capsys)
    assert rc == 0, err


def test_serve_checks_the_host_always(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, "listen:\n  http: 192.0.2.78:8080\n")
    assert cli.main(["serve", "-c", str(p)]) == 1
    assert f"{p}:3: listen.http: 192.0.2.78 is not an address of this host" in capsys.readouterr().err


def test_help_names_elsewhere(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["check", "--help"])
    assert "--elsewhere" in capsys.readouterr().out


def test_five_thousand_machines_check_in_seconds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    many = [f"52:54:00:{i >> 16:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}: "
            f"{{hostname: n{i}, ip: 10.{(i >> 8) + 64}.{i & 255}.{2 + i % 200}}}" for i in range(5000)]
    config = DHCP.replace("10.77.0.0/24", "10.64.0.0/10").replace("10.77.0.1", "10.64.0.1") + machines(*many)
    config = config.replace("10.77.0.100", "10.64.0.100").replace("10.77.0.200", "10.64.0.200")
    start = time.process_time()
    rc, p, err = check(tmp_path, config, capsys, "--elsewhere")
    elapsed = time.process_time() - start
    assert rc == 0, err[:2000]
    # about 1.5 s of CPU here (PyYAML's scanner is most of it): CPU time, not
    # the wall clock, which a machine busy with other tests stretches
    assert elapsed < 10, elapsed
    assert len(err.splitlines()) == 1  # the one missing base, not 5,000 lines


def test_host_network_reads_this_host() -> None:
    import ipaddress

    from bootsvc.host import HostNetwork

    here = HostNetwork.here()
    assert "lo" in here.interfaces
    assert here.owns(ipaddress.ip_address("127.0.0.1")) and here.owns(ipaddress.ip_address("127.9.9.9"))
    assert here.owns(ipaddress.ip_address("::1"))
    assert not here.owns(ipaddress.ip_address("192.0.2.250"))
    many = HostNetwork(frozenset(f"tap{i}" for i in range(100)), frozenset())
    assert many.some_interfaces().endswith(", ...") and many.some_interfaces().count(",") == 8
    assert many.some_addresses() == "none but loopback"
