"""Pieces of the Debian image builder that need no download: the mirror
read from apt's configuration, the files written into the tree, and the
clear errors for bad input."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from bootsvc import config
from bootsvc.cli import main
from bootsvc.debian import DebianImageError, build_debian, build, login, mirror, tree
from bootsvc.debian.login import RootLogin

DEB822 = """\
Types: deb deb-src
# a comment inside the paragraph
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.invalid/debian-security
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://disabled.invalid/debian
Suites: bookworm
Components: main
"""


def test_deb822_sources() -> None:
    got = mirror.parse_deb822(DEB822, "x.sources")
    assert [s.uris for s in got] == [("http://mirror.invalid/debian",), ("http://security.invalid/debian-security",)]
    assert got[0].suites == ("bookworm", "bookworm-updates") and got[0].components == ("main", "contrib")
    assert got[0].where == "x.sources:1" and got[1].where == "x.sources:8"


def test_deb822_continuation_lines() -> None:
    got = mirror.parse_deb822("Types: deb\nURIs:\n http://a.invalid/debian\n http://b.invalid/debian\n"
                              "Suites: bookworm\nComponents: main\n", "y.sources")
    assert got[0].uris == ("http://a.invalid/debian", "http://b.invalid/debian")


def test_one_line_sources() -> None:
    text = ("# deb http://commented.invalid/debian bookworm main\n"
            "deb-src http://src.invalid/debian bookworm main\n"
            "deb [arch=amd64 signed-by=/k.gpg] http://one.invalid/debian bookworm main  # trailing\n"
            "deb\n")
    got = mirror.parse_one_line(text, "sources.list")
    assert len(got) == 1 and got[0].uris == ("http://one.invalid/debian",) and got[0].where == "sources.list:3"
    assert got[0].suites == ("bookworm",) and got[0].components == ("main",)


def test_host_sources_in_apt_order(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("deb http://first.invalid/debian bookworm main\n")
    (tmp_path / "sources.list.d" / "b.sources").write_text(DEB822)
    (tmp_path / "sources.list.d" / "a.list").write_text("deb http://second.invalid/debian bookworm main\n")
    (tmp_path / "sources.list.d" / "c.sources.disabled").write_text(DEB822.replace("mirror", "ignored"))
    got = mirror.host_sources(tmp_path)
    assert [s.uris[0] for s in got] == ["http://first.invalid/debian", "http://second.invalid/debian",
                                        "http://mirror.invalid/debian", "http://security.invalid/debian-security"]
    assert mirror.mirror_for(got, "bookworm") == "http://first.invalid/debian"


def test_no_mirror_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text("deb http://old.invalid/debian bullseye main\n")
    with pytest.raises(mirror.MirrorError, match=r"no apt source for Debian bookworm .*--mirror"):
        mirror.mirror_for(mirror.host_sources(tmp_path), "bookworm", tmp_path)


def test_image_sources_keep_the_suite_and_its_updates() -> None:
    text = mirror.image_sources(mirror.parse_deb822(DEB822, "x.sources"), "bookworm")
    paragraphs = mirror.parse_deb822(text, "image")
    assert [(p.uris, p.suites, p.components) for p in paragraphs] == [
        (("http://mirror.invalid/debian",), ("bookworm", "bookworm-updates"), ("main",)),
        (("http://security.invalid/debian-security",), ("bookworm-security",), ("main",))]


def _fake_tree(root: Path) -> None:
    for d in ("etc/ssh", "etc/network", "var/lib/dbus", "etc/iscsi"):
        (root / d).mkdir(parents=True)
    for f in ("etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub", "etc/hostname",
              "var/lib/dbus/machine-id", "etc/apt/sources.list"):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("from the build host\n")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "etc/iscsi/initiatorname.iscsi").write_text("InitiatorName=iqn.1993-08.org.debian:01:shared\n")
    (root / "etc/resolv.conf").symlink_to("/etc/passwd")  # must be replaced, never written through


def test_configure_writes_the_boot_settings(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _fake_tree(root)
    tree.configure(root, "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm\nComponents: main\n")
    assert (root / "etc/iscsi/iscsi.initramfs").read_text() == "ISCSI_AUTO=true\n"
    assert "BUSYBOX=y" in (root / "etc/initramfs-tools/conf.d/bootsvc").read_text()
    fstab = (root / "etc/fstab").read_text().split()
    assert fstab[:3] == ["LABEL=bootsvc-root", "/", "ext4"]
    assert "root=LABEL=bootsvc-root" in tree.KERNEL_ARGS and "console=ttyS0" in tree.KERNEL_ARGS
    interfaces = [line for line in (root / "etc/network/interfaces").read_text().splitlines()
                  if line and not line.startswith("#")]
    assert interfaces == ["auto lo", "iface lo inet loopback", "source /etc/network/interfaces.d/*"]
    assert not (root / "etc/apt/sources.list").exists()
    assert "mirror.invalid" in (root / "etc/apt/sources.list.d/debian.sources").read_text()
    for unit, text in tree.UNITS.items():
        assert (root / "etc/systemd/system" / unit).read_text() == text
    wants = root / "etc/systemd/system/multi-user.target.wants/bootsvc-debian-ok.service"
    assert wants.is_symlink() and str(wants.readlink()) == "/etc/systemd/system/bootsvc-debian-ok.service"
    assert (root / "etc/systemd/system/sysinit.target.wants/bootsvc-identity.service").is_symlink()
    assert (root / "etc/systemd/system/ssh.service.wants/bootsvc-ssh-keys.service").is_symlink()
    for name in tree.SCRIPTS:
        script = root / "usr/local/sbin" / name
        assert script.stat().st_mode & 0o111
        r = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    assert tree.MARKER_OK in (root / "usr/local/sbin/bootsvc-debian-ok").read_text()
    tree.configure(root, "")  # again: the same result, no error
    assert wants.is_symlink()


def test_forget_identity(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _fake_tree(root)
    tree.forget_identity(root)
    assert (root / "etc/machine-id").read_text() == ""
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    for f in ("etc/hostname", "etc/resolv.conf", "var/lib/dbus/machine-id"):
        assert not (root / f).exists() and not (root / f).is_symlink()
    assert (root / "etc/iscsi/initiatorname.iscsi").read_text() == "GenerateName=yes\n"
    assert Path("/etc/passwd").read_text() != "from the build host\n"
    tree.forget_identity(root)  # again: nothing left to remove, no error


def test_identity_script_takes_the_dhcp_hostname(tmp_path: Path) -> None:
    """The script's parsing, with its paths moved into tmp_path and a fake
    ``hostname`` command that records what it is given."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "net-eth0.conf").write_text("DEVICE='eth0'\nIPV4ADDR='10.0.0.5'\nHOSTNAME='node07'\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "hostname").write_text(f'#!/bin/sh\n[ -n "$1" ] && echo "$1" > {tmp_path}/set || echo localhost\n')
    (bin_dir / "hostname").chmod(0o755)
    script = tree.IDENTITY_SCRIPT.replace("/run/net-", f"{run}/net-").replace("ibft=/sys/firmware/ibft",
                                                                            f"ibft={tmp_path}/ibft")
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30,
                       env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "set").read_text() == "node07\n"


def _cfg(tmp_path: Path) -> config.Config:
    p = tmp_path / "bootsvc.yaml"
    p.write_text(f"state_dir: {tmp_path / 'state'}\n")
    return config.load(p)


def test_without_debootstrap_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    with pytest.raises(DebianImageError, match="apt install debootstrap"):
        build_debian(_cfg(tmp_path), say=lambda s: None)


def test_too_small_a_disk_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DebianImageError, match="too small .* --size 2G"):
        build_debian(_cfg(tmp_path), size=512 << 20, say=lambda s: None)


def test_cli_bad_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _cfg(tmp_path)
    with pytest.raises(SystemExit):
        main(["image", "-c", str(tmp_path / "bootsvc.yaml"), "build-debian", "--size", "lots"])
    assert "lots is not a size" in capsys.readouterr().err


def test_cli_error_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    _cfg(tmp_path)
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    assert main(["image", "-c", str(tmp_path / "bootsvc.yaml"), "build-debian", "mine.qcow2"]) == 1
    assert capsys.readouterr().err == ("bootsvc image build-debian: debootstrap is not installed: "
                                       "apt install debootstrap\n")


def test_a_step_that_hangs_is_ended(tmp_path: Path) -> None:
    said: list[str] = []
    with pytest.raises(DebianImageError, match="sh took more than 0 s"):
        build._stream(["sh", "-c", "echo started; sleep 30"], said.append, 0.5)
    assert said == ["  started"]


def test_a_failing_step_shows_its_last_lines() -> None:
    with pytest.raises(DebianImageError, match=r"(?s)status 3.*E: no such suite"):
        build._stream(["sh", "-c", "echo 'E: no such suite'; exit 3"], lambda s: None, 30)


def test_shipped_profiles_boot_the_built_image() -> None:
    """profiles/debian12*.yaml name what build-debian makes: its base, and
    for boot: kernel its kernel files and command line."""
    profiles = Path(__file__).resolve().parent.parent / "profiles"
    sanboot = yaml.safe_load((profiles / "debian12.yaml").read_text())
    kernel = yaml.safe_load((profiles / "debian12-kernel.yaml").read_text())
    assert sanboot["base"] == kernel["base"] == build.DEBIAN_BASE and sanboot["boot"] == "sanboot"
    assert (kernel["kernel"], kernel["initrd"]) == ("debian12/vmlinuz", "debian12/initrd.img")
    assert kernel["cmdline"] == tree.KERNEL_ARGS


SHADOW = "root:*:20792:0:99999:7:::\ndaemon:*:20792:0:99999:7:::\n"
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBn4Q2uE0k3v1rN7w8Jxk8Hc0vM1aC9t3bEo9nDqzYkS me@laptop"


def _login_tree(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc/shadow").write_text(SHADOW)
    (root / "etc/shadow").chmod(0o640)


def test_root_is_locked_by_default(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _login_tree(root)
    RootLogin.from_files().apply(root)
    assert (root / "etc/shadow").read_text() == SHADOW
    assert not (root / "root/.ssh/authorized_keys").exists()
    assert RootLogin().describe() == "root is locked (no password, no SSH key)"


def test_root_password_and_key_go_into_the_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    _login_tree(root)
    (tmp_path / "pw").write_text("s3cret pass\n")
    (tmp_path / "key.pub").write_text(f"# my laptop\n{PUBLIC_KEY}\n\n")
    argv: list[list[str]] = []
    real_run = login.subprocess.run

    def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        argv.append(cmd)
        return real_run(cmd, **kw)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(login.subprocess, "run", run)
    wanted = RootLogin.from_files(tmp_path / "pw", tmp_path / "key.pub")
    assert argv and not any("s3cret" in word for cmd in argv for word in cmd)  # stdin only, never argv
    wanted.apply(root)
    shadow = (root / "etc/shadow").read_text().splitlines()
    hashed = shadow[0].split(":")[1]
    assert hashed.startswith("$6$") and "s3cret" not in hashed and shadow[1] == SHADOW.splitlines()[1]
    assert (root / "etc/shadow").stat().st_mode & 0o777 == 0o640
    salt = hashed.split("$")[2]  # the same password and salt give the same hash: it is that password's
    again = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input="s3cret pass\n",
                           capture_output=True, text=True, timeout=30).stdout.strip()
    assert again == hashed
    keys = root / "root/.ssh/authorized_keys"
    assert keys.read_text() == PUBLIC_KEY + "\n" and keys.stat().st_mode & 0o777 == 0o600
    assert (root / "root/.ssh").stat().st_mode & 0o777 == 0o700
    assert wanted.describe() == "root logs in with: password on the serial console and SSH key"
    RootLogin().apply(root)  # a later build of the cached tree without them locks root again
    assert (root / "etc/shadow").read_text() == SHADOW and not keys.exists()


@pytest.mark.parametrize("password, key, why", [
    ("", None, "root password file .*pw is empty"),
    (None, "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n",
     r"key is a private key: give its public key \(.*key.pub\)"),
    (None, "hello world\n", r"key:1 is not an SSH public key"),
    (None, "# nothing\n", "holds no SSH public key"),
])
def test_bad_login_files(tmp_path: Path, password: str | None, key: str | None, why: str) -> None:
    if password is not None:
        (tmp_path / "pw").write_text(password)
    if key is not None:
        (tmp_path / "key").write_text(key)
    with pytest.raises(login.LoginError, match=why):
        RootLogin.from_files(tmp_path / "pw" if password is not None else None,
                             tmp_path / "key" if key is not None else None)


def test_cli_login_file_errors_come_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before the host's tools are even looked at (no minutes lost)."""
    _cfg(tmp_path)
    assert main(["image", "-c", str(tmp_path / "bootsvc.yaml"), "build-debian",
                 "--root-password-file", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err == (f"bootsvc image build-debian: root password file {tmp_path / 'missing'} "
                                       "does not exist\n")
