"""`bootsvc vm`'s bookkeeping without QEMU: the timeline built from
bootsvc's log and the serial console, the diagnosis of a failed boot, and
the clear errors before anything starts."""

from __future__ import annotations

from pathlib import Path

from bootsvc import config
from bootsvc.cli import main
from bootsvc.inventory import Machine
from bootsvc.vm.timeline import Recorder, Step, Timeline, diagnose, server_time

NODE = Machine(mac="52:54:00:77:00:11", hostname="node01", profile="demo-linux",
               initiator_iqn="iqn.2026-11.t:node01", target_iqn="iqn.2026-11.t:boot.node01")
T0 = "2026-11-23 12:00:00,000"


def line(at: str, event: str) -> str:
    return f"2026-11-23 12:00:{at} INFO bootsvc.x event={event}"


def test_server_and_console_lines_make_the_timeline() -> None:
    t = Timeline(NODE, server_time(T0))
    r = Recorder([t])
    assert r.server_line(line("02,500", "dhcp.offer mac=52:54:00:77:00:11 ip=10.0.0.1 ipxe=False")) == (t, Step.DHCP_OFFER)
    assert r.server_line(line("02,600", "dhcp.ack mac=52:54:00:77:00:11 ipxe=False"))
    assert r.server_line(line("03,000", "dhcp.ack mac=52:54:00:77:00:11 ipxe=True"))  # iPXE's ACK counts
    assert r.server_line(line("03,100", "iscsi.login initiator=iqn.2026-11.t:node01 session_type=Discovery")) is None
    assert r.server_line(line("03,200", "iscsi.login initiator=iqn.2026-11.t:node01 session_type=Normal"))
    assert r.server_line(line("03,300", "iscsi.first_read initiator=iqn.2026-11.t:node01 lun=0"))
    assert r.server_line(line("03,400", "iscsi.first_read initiator=iqn.2026-11.t:node01 lun=0")) is None  # once
    assert r.server_line(line("03,500", "dhcp.ack mac=52:54:00:99:99:99")) is None  # another machine
    assert r.server_line("bootsvc: ready: 3 of 3 service(s) serving") is None
    start = server_time(T0)
    assert r.console_line(t, "bootsvc-demo: initramfs t=2.1", start + 7) is Step.KERNEL
    assert r.console_line(t, "bootsvc-demo: iscsi-login t=4", start + 9) is Step.OS_LOGIN
    assert r.console_line(t, "bootsvc-demo: root-mounted dev=/dev/sda2 t=4.2", start + 9.5) is Step.ROOT
    assert not t.done
    assert r.console_line(t, "BOOTSVC-DEMO-OK initiator=x mac=y t=5", start + 10) is Step.BOOTED
    assert t.done and t.booted and diagnose(t) == "booted"
    assert (t.at[Step.DHCP_OFFER], t.at[Step.DHCP_ACK], t.at[Step.BOOTED]) == (2.5, 3.0, 10)


def test_diagnosis_names_where_it_stopped() -> None:
    t = Timeline(NODE, server_time(T0))
    r = Recorder([t])
    assert diagnose(t).startswith("no DHCP offer")
    r.server_line(line("01,000", "dhcp.ack mac=52:54:00:77:00:11"))
    r.server_line(line("01,100", "iscsi.login_failed initiator=iqn.2026-11.t:node01 why=not-allowed"))
    assert "never logged in" in diagnose(t) and "iscsi.login_failed" in diagnose(t)
    r.server_line(line("01,200", "iscsi.login initiator=iqn.2026-11.t:node01 session_type=Normal"))
    r.server_line(line("01,300", "iscsi.first_read initiator=iqn.2026-11.t:node01"))
    assert "Linux never started" in diagnose(t)
    r.console_line(t, "bootsvc-demo: initramfs t=2", server_time(T0) + 5)
    r.console_line(t, "BOOTSVC-DEMO-FAIL step=login: iscsistart -b could not log in", server_time(T0) + 6)
    assert t.done and not t.booted
    assert "own iSCSI login failed" in diagnose(t) and "iscsistart -b" in diagnose(t)


def write(tmp_path: Path, dhcp: bool = True) -> Path:
    p = tmp_path / "bootsvc.yaml"
    listen = "listen:\n  dhcp: {interface: bsv-x0, address: 10.9.0.1}\n  iscsi: [10.9.0.1:3260]\n" \
        "dhcp:\n  subnet: 10.9.0.0/24\n" if dhcp else ""
    p.write_text(f"state_dir: {tmp_path / 'state'}\n{listen}"
                 "machines:\n  52:54:00:77:00:11: {hostname: node01, profile: demo-linux}\n")
    config.load(p)
    return p


def test_clear_errors_before_anything_starts(tmp_path: Path, capsys: object) -> None:
    cfg = write(tmp_path)
    assert main(["vm", "-c", str(cfg), "--mac", "52:54:00:00:00:99"]) == 1
    assert main(["vm", "-c", str(cfg), "--count", "2"]) == 1
    assert main(["vm", "-c", str(cfg)]) == 1  # no base image yet
    assert main(["vm", "-c", str(cfg), "--firmware-pxe"]) == 1  # BIOS has no PXE of its own
    (tmp_path / "x").mkdir()
    assert main(["vm", "-c", str(write(tmp_path / "x", dhcp=False))]) == 1
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert "52:54:00:00:00:99 is not in the inventory" in err
    assert "--count 2 but" in err and "has 1 machine(s)" in err
    assert "bootsvc image -c" in err and "build-demo" in err
    assert "--firmware-pxe needs --uefi" in err
    assert "has no listen.dhcp with an interface" in err
