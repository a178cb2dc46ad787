"""`bootsvc vm`'s bookkeeping without QEMU: the timeline built from
bootsvc's events and the serial console, the diagnosis of a failed boot, and
the clear errors before anything starts."""

from __future__ import annotations

import io
from pathlib import Path

from bootsvc import config
from bootsvc.cli import main
from bootsvc.inventory import Machine
from bootsvc.events import Event, Kind, make, read_events
from bootsvc.vm.timeline import Recorder, Step, Timeline, diagnose

NODE = Machine(mac="52:54:00:77:00:11", hostname="node01", profile="demo-linux",
               initiator_iqn="iqn.2026-11.t:node01", target_iqn="iqn.2026-11.t:boot.node01")
T0 = 1_795_000_000.0
MAC, IQN = NODE.mac, NODE.initiator_iqn


def ev(at: float, kind: Kind, **values: object) -> Event:
    """An event as bootsvc serve writes it to its event file, read back."""
    [e] = read_events([make(kind, T0 + at, values).to_json()])
    return e


def test_events_and_console_lines_make_the_timeline() -> None:
    t = Timeline(NODE, T0)
    r = Recorder([t])
    assert r.event(ev(2.5, Kind.DHCP_OFFER, mac=MAC, ip="10.0.0.1", ipxe=False)) == (t, Step.DHCP_OFFER)
    assert r.event(ev(2.6, Kind.DHCP_ACK, mac=MAC, ipxe=False))
    assert r.event(ev(3.0, Kind.DHCP_ACK, mac=MAC, ipxe=True))  # iPXE's ACK counts
    assert r.event(ev(3.1, Kind.ISCSI_LOGIN, initiator=IQN, session_type="Discovery")) is None
    assert r.event(ev(3.2, Kind.ISCSI_LOGIN, initiator=IQN, session_type="Normal"))
    assert r.event(ev(3.3, Kind.ISCSI_FIRST_READ, initiator=IQN, lun=0))
    assert r.event(ev(3.4, Kind.ISCSI_FIRST_READ, initiator=IQN, lun=0)) is None  # once
    assert r.event(ev(3.5, Kind.DHCP_ACK, mac="52:54:00:99:99:99")) is None  # another machine
    assert r.console_line(t, "bootsvc-demo: initramfs t=2.1", T0 + 7) is Step.KERNEL
    assert r.console_line(t, "bootsvc-demo: iscsi-login t=4", T0 + 9) is Step.OS_LOGIN
    assert r.console_line(t, "bootsvc-demo: root-mounted dev=/dev/sda2 t=4.2", T0 + 9.5) is Step.ROOT
    assert not t.done
    assert r.console_line(t, "BOOTSVC-DEMO-OK initiator=x mac=y t=5", T0 + 10) is Step.BOOTED
    assert t.done and t.booted and diagnose(t) == "booted"
    assert (t.at[Step.DHCP_OFFER], t.at[Step.DHCP_ACK], t.at[Step.BOOTED]) == (2.5, 3.0, 10)


def test_debian_console_lines_make_the_timeline() -> None:
    """What Debian's kernel, open-iscsi's iscsistart and the marker unit of
    `bootsvc image build-debian` print, as seen on a real boot's console."""
    t = Timeline(NODE, T0)
    r = Recorder([t])
    assert r.console_line(t, "[    5.559881] Run /init as init process", T0 + 20) is Step.KERNEL
    assert r.console_line(t, "iscsistart: Connection1:0 to [target: iqn.2026-11.t:boot.node01, portal: "
                             "10.0.0.1,3260] through [iface: default] is operational now", T0 + 25) is Step.OS_LOGIN
    assert r.console_line(t, "[   15.920320] EXT4-fs (sda2): mounted filesystem with ordered data mode. "
                             "Quota mode: none.", T0 + 30) is Step.ROOT
    assert r.console_line(t, "[   26.250072] EXT4-fs (sda2): re-mounted. Quota mode: none.", T0 + 40) is None
    assert r.console_line(t, "node01 login: BOOTSVC-DEBIAN-OK host=node01 initiator=iqn.2026-11.t:node01",
                          T0 + 70) is Step.BOOTED
    assert t.booted and diagnose(t) == "booted"


def test_diagnosis_names_where_it_stopped() -> None:
    t = Timeline(NODE, T0)
    r = Recorder([t])
    assert diagnose(t).startswith("no DHCP offer")
    r.event(ev(1.0, Kind.DHCP_ACK, mac=MAC))
    r.event(ev(1.1, Kind.ISCSI_LOGIN_FAILED, initiator=IQN, why="not allowed"))
    assert "never logged in" in diagnose(t) and "iscsi.login_failed: not allowed" in diagnose(t)
    r.event(ev(1.2, Kind.ISCSI_LOGIN, initiator=IQN, session_type="Normal"))
    r.event(ev(1.3, Kind.ISCSI_FIRST_READ, initiator=IQN))
    assert "Linux never started" in diagnose(t)
    r.console_line(t, "bootsvc-demo: initramfs t=2", T0 + 5)
    r.console_line(t, "BOOTSVC-DEMO-FAIL step=login: iscsistart -b could not log in", T0 + 6)
    assert t.done and not t.booted
    assert "own iSCSI login failed" in diagnose(t) and "iscsistart -b" in diagnose(t)


def test_a_refused_boot_is_in_the_timeline() -> None:
    """boot.refused names the machine by MAC and host (the log-text
    timeline used to miss it: it was logged with host= only)."""
    t = Timeline(NODE, T0)
    r = Recorder([t])
    r.event(ev(1.0, Kind.DHCP_OFFER, mac=MAC))
    r.event(ev(1.5, Kind.BOOT_REFUSED, mac=MAC, hostname="node01", why="its disk is not served"))
    assert "boot.refused: its disk is not served" in diagnose(t)


def write(tmp_path: Path, dhcp: bool = True) -> Path:
    p = tmp_path / "bootsvc.yaml"
    listen = "listen:\n  dhcp: {interface: bsv-x0, address: 10.9.0.1}\n  iscsi: [10.9.0.1:3260]\n  http: 10.9.0.1:80\n" \
        "dhcp:\n  subnet: 10.9.0.0/24\n" if dhcp else ""
    p.write_text(f"state_dir: {tmp_path / 'state'}\n{listen}"
                 "machines:\n  52:54:00:77:00:11: {hostname: node01, profile: demo-linux}\n")
    config.load(p)
    return p


def test_clear_errors_before_anything_starts(tmp_path: Path, capsys: object) -> None:
    cfg = write(tmp_path)
    assert main(["vm", "-c", str(cfg), "--mac", "52:54:00:00:00:99"]) == 1
    assert main(["vm", "-c", str(cfg), "--uefi-mac", "zz"]) == 1
    assert main(["vm", "-c", str(cfg), "--count", "2"]) == 1
    assert main(["vm", "-c", str(cfg)]) == 1  # no base image yet
    assert main(["vm", "-c", str(cfg), "--firmware-pxe"]) == 1  # BIOS has no PXE of its own
    (tmp_path / "x").mkdir()
    assert main(["vm", "-c", str(write(tmp_path / "x", dhcp=False))]) == 1
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert "52:54:00:00:00:99 is not in the inventory" in err
    assert "zz is not a MAC address" in err
    assert "--count 2 but" in err and "has 1 machine(s)" in err
    assert "bootsvc image -c" in err and "build-demo" in err
    assert "--firmware-pxe needs --uefi or --uefi-mac" in err
    assert "has no listen.dhcp with an interface" in err


def test_one_run_mixes_bios_and_uefi(tmp_path: Path) -> None:
    """``--uefi-mac``: that machine boots on UEFI, the others per
    ``--uefi``, all in one run."""
    from bootsvc.vm import qemu
    from bootsvc.vm.run import Options, pick_machines
    path = tmp_path / "bootsvc.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nmachines:\n"
                    "  52:54:00:77:00:11: {hostname: node01, profile: demo-linux}\n"
                    "  52:54:00:77:00:12: {hostname: node02, profile: demo-linux}\n")
    cfg = config.load(path)
    opts = Options(macs=("52:54:00:77:00:11",), uefi_macs=("52-54-00-77-00-12", "52:54:00:77:00:11"))
    assert [m.hostname for m in pick_machines(cfg, opts)] == ["node01", "node02"]
    assert opts.firmware_of("52:54:00:77:00:12") is qemu.Firmware.UEFI
    assert opts.firmwares() == {qemu.Firmware.BIOS, qemu.Firmware.UEFI}
    assert Options().firmwares() == {qemu.Firmware.BIOS}
    assert Options(uefi_macs=("52:54:00:77:00:12",)).firmware_of("52:54:00:77:00:11") is qemu.Firmware.BIOS
    # --firmware-pxe takes the ROM off the UEFI machines' NICs only: SeaBIOS has no PXE of its own
    pxe = Options(uefi_macs=("52:54:00:77:00:12",), nic_rom=False)
    assert not pxe.nic_rom_of("52:54:00:77:00:12") and pxe.nic_rom_of("52:54:00:77:00:11")
    assert opts.nic_rom_of("52:54:00:77:00:12")


def test_a_diagnosis_named_to_end_on_ends_the_boot() -> None:
    """``--end-on RULE``: bootsvc's boot.failed with that rule ends the
    machine's boot here; with another rule, or none named (the default: a
    slow boot may stay quiet past the server's stall and still finish), the
    boot goes on."""
    failed = {"mac": MAC, "hostname": "node01", "rule": "login_refused",
              "diagnosis": "iSCSI login refused by CHAP: wrong CHAP response (secret)"}
    t = Timeline(NODE, T0)
    assert Recorder([t]).event(ev(30, Kind.BOOT_FAILED, **failed)) is None and not t.done
    assert Recorder([t], frozenset({"no_login"})).event(ev(31, Kind.BOOT_FAILED, **failed)) is None and not t.done
    r = Recorder([t], frozenset({"login_refused", "no_login"}))
    r.event(ev(1.0, Kind.DHCP_ACK, mac=MAC))
    assert r.event(ev(32, Kind.BOOT_FAILED, **failed)) is None
    assert t.done and not t.booted and "refused by CHAP" in str(t.failure)
    assert r.event(ev(33, Kind.BOOT_FAILED, **{**failed, "mac": "52:54:00:99:99:99"})) is None  # another machine


def test_end_on_a_diagnosis_there_is_not(tmp_path: Path, capsys: object) -> None:
    assert main(["vm", "-c", str(write(tmp_path)), "--end-on", "login_refused", "--end-on", "no_such_rule"]) == 1
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert "--end-on no_such_rule: no such diagnosis" in err and "login_refused" in err, err


def test_a_run_ends_when_its_serve_exits(tmp_path: Path) -> None:
    """No boot goes on without the bootsvc serve the run started: when it
    exits, the run ends at once instead of waiting out its timeout."""
    import subprocess
    import sys
    import time

    from bootsvc.vm import qemu
    from bootsvc.vm.run import FollowFile, _follow
    t = Timeline(NODE, time.time())
    vm = qemu.Machine("node01", MAC, "tap0", tmp_path / "node01.console")
    server = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    machine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a VM that hangs
    try:
        started = time.monotonic()
        _follow(Recorder([t]), [machine], FollowFile(tmp_path / "events.jsonl"), [vm], 30.0, io.StringIO(), server)
        assert time.monotonic() - started < 15
    finally:
        machine.kill()
        machine.wait(10)
    assert t.done and t.failure == "bootsvc serve exited (status 3)"
