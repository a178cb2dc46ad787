"""The flight recorder without a network: events joined into boots, a boot
ROM's offer starting a new one, ``boot.booted`` with the duration, a
stalled boot's diagnosis and ``boot.failed``, the store surviving a
restart and bounded per machine; and every diagnosis rule on the steps
that lead to it. tests/e2e/test_demo_boot.py records real boots."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootsvc.events import Bus, Event, Kind
from bootsvc.inventory import Machine
from bootsvc.recorder import Boot, BootStore, Recorder, Seen, Step, diagnose
from bootsvc.recorder.steps import step_of
from bootsvc.recorder.diagnosis import STALL

A = Machine("52:54:00:00:00:0a", "pc-a", "p", "iqn.2026-11.t:pc-a", "iqn.2026-11.t:boot.pc-a")
B = Machine("52:54:00:00:00:0b", "pc-b", "p", "iqn.2026-11.t:pc-b", "iqn.2026-11.t:boot.pc-b")


class Fleet:
    """The identities the recorder asks for, for two machines."""

    def __init__(self) -> None:
        self.by_mac = {m.mac: m for m in (A, B)}

    def mac_of(self, event: Event) -> str | None:
        if event.mac:
            return event.mac
        return next((m.mac for m in self.by_mac.values() if event.initiator == m.initiator_iqn), None)

    def machine(self, mac: str) -> Machine | None:
        return self.by_mac.get(mac)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Bus, Recorder, Clock, list[Event]]:
    clock = Clock()
    bus = Bus(clock=clock)
    seen: list[Event] = []
    bus.subscribe(seen.append)
    rec = Recorder(Fleet(), bus, BootStore(tmp_path / "recorder.db"), clock=clock)
    bus.subscribe(rec.on_event)
    return bus, rec, clock, seen


def boot_a(bus: Bus, clock: Clock, os_read: bool = True) -> None:
    """A's whole sanboot, one step a second (iPXE, then the OS from the iBFT)."""
    for kind, fields in [(Kind.DHCP_OFFER, {"mac": A.mac, "ipxe": False, "arch": 0}),
                         (Kind.DHCP_ACK, {"mac": A.mac, "ipxe": False}),
                         (Kind.TFTP_SENT, {"mac": A.mac, "file": "undionly.kpxe", "bytes": 70000}),
                         (Kind.DHCP_OFFER, {"mac": A.mac, "ipxe": True}),
                         (Kind.DHCP_ACK, {"mac": A.mac, "ipxe": True}),
                         (Kind.HTTP_REQUEST, {"mac": A.mac, "path": "/boot/52-54-00-00-00-0a.ipxe", "status": 200}),
                         (Kind.ISCSI_LOGIN, {"initiator": A.initiator_iqn, "auth": "chap-md5"}),
                         (Kind.ISCSI_FIRST_READ, {"initiator": A.initiator_iqn}),
                         (Kind.ISCSI_LOGIN, {"initiator": A.initiator_iqn, "auth": "chap-sha3-256"}),
                         (Kind.ISCSI_SESSION_REPLACED, {"initiator": A.initiator_iqn}),
                         (Kind.ISCSI_SESSION_DROPPED, {"initiator": A.initiator_iqn, "reason": "replaced",
                                                       "read_bytes": 9 << 20, "written_bytes": 0}),
                         *([(Kind.ISCSI_FIRST_READ, {"initiator": A.initiator_iqn})] if os_read else [])]:
        clock.now += 1
        bus.emit(kind, **fields)  # type: ignore[arg-type]


def test_a_boot_is_joined_and_says_it_booted(setup: tuple[Bus, Recorder, Clock, list[Event]]) -> None:
    bus, rec, clock, seen = setup
    boot_a(bus, clock)
    boot = rec.current[A.mac]
    assert [s.step for s in boot.steps] == [
        Step.ROM_OFFER, Step.ROM_ACK, Step.BOOTFILE, Step.IPXE_OFFER, Step.IPXE_ACK, Step.SCRIPT, Step.LOGIN,
        Step.FIRST_READ, Step.OS_LOGIN, Step.SESSION_END, Step.OS_READ]
    assert boot.duration == 11.0 and boot.moved() == (9 << 20, 0) and boot.hostname == "pc-a"
    booted = [e for e in seen if e.kind is Kind.BOOT_BOOTED]
    assert len(booted) == 1 and booted[0].fields["seconds"] == 11.0 and booted[0].hostname == "pc-a"
    summary = rec.machines(clock.now)[0]
    assert summary["state"] == "booted" and summary["diagnosis"] == "booted" and summary["read_bytes"] == 9 << 20


def test_a_boot_rom_offer_starts_a_new_boot(setup: tuple[Bus, Recorder, Clock, list[Event]]) -> None:
    bus, rec, clock, _ = setup
    boot_a(bus, clock)
    first = rec.current[A.mac].id
    clock.now += 1
    bus.emit(Kind.DHCP_OFFER, mac=A.mac, ipxe=False)
    bus.emit(Kind.DHCP_OFFER, mac=A.mac, ipxe=False)  # a ROM asking twice is still that one boot
    second = rec.current[A.mac]
    assert second.id == first + 1 and [s.step for s in second.steps] == [Step.ROM_OFFER, Step.ROM_OFFER]


def test_a_stalled_boot_fails_with_its_diagnosis(setup: tuple[Bus, Recorder, Clock, list[Event]]) -> None:
    bus, rec, clock, seen = setup
    boot_a(bus, clock, os_read=False)
    rec.tick(clock.now + 10)
    assert not [e for e in seen if e.kind is Kind.BOOT_FAILED]  # still running
    assert rec.machines(clock.now + 10)[0]["diagnosis"] == "running: session-end"
    rec.tick(clock.now + STALL + 1)
    (failed,) = [e for e in seen if e.kind is Kind.BOOT_FAILED]
    assert "the OS logged in but never read its disk" in str(failed.fields["diagnosis"])
    assert failed.fields["rule"] == "no_os_read"  # the short class /metrics counts by
    rec.tick(clock.now + STALL + 50)
    assert len([e for e in seen if e.kind is Kind.BOOT_FAILED]) == 1  # said once


def test_a_machine_retrying_a_refused_login_is_one_failed_boot(
        setup: tuple[Bus, Recorder, Clock, list[Event]]) -> None:
    bus, rec, clock, seen = setup
    bus.emit(Kind.DHCP_OFFER, mac=A.mac, ipxe=True)
    for _ in range(10):  # iPXE's script retries every 5 s
        clock.now += 5
        bus.emit(Kind.ISCSI_LOGIN_FAILED, initiator=A.initiator_iqn, status="AUTHENTICATION_FAILURE",
                 why="wrong CHAP response (secret)")
        rec.tick(clock.now)
    boot = rec.current[A.mac]
    assert boot.id == 1 and len(boot.steps) == 11
    (failed,) = [e for e in seen if e.kind is Kind.BOOT_FAILED]
    assert failed.fields["diagnosis"] == "iSCSI login refused by CHAP: wrong CHAP response (secret)"
    assert failed.fields["rule"] == "login_refused"
    clock.now += 5
    bus.emit(Kind.ISCSI_LOGIN, initiator=A.initiator_iqn)  # the secret fixed: a new boot
    assert rec.current[A.mac].id == 2


def test_the_store_survives_a_restart_and_keeps_a_bounded_history(tmp_path: Path) -> None:
    clock = Clock()
    bus = Bus(clock=clock)
    store = BootStore(tmp_path / "recorder.db", history=3)
    rec = Recorder(Fleet(), bus, store, clock=clock)
    bus.subscribe(rec.on_event)
    for _ in range(5):
        boot_a(bus, clock)
        rec.flush(clock.now)
    bus.emit(Kind.DHCP_DROPPED, mac=B.mac, why="no subnet for its fixed IP")
    rec.flush(clock.now)
    store.close()
    again = BootStore(tmp_path / "recorder.db", history=3)
    boots = again.boots(A.mac)
    assert len(boots) == 3 and boots[0].id == 5 and boots[0].duration == 11.0
    assert [b.hostname for b in again.latest()] == ["pc-a", "pc-b"]
    assert again.mac_of("pc-b") == B.mac and again.next_id() == 7
    timeline = boots[0].timeline(clock.now)
    assert timeline["steps"][0] == {"at": 0.0, "time": boots[0].started, "step": "rom-offer",
                                    "detail": {"arch": 0}}
    assert timeline["steps"][6]["detail"] == {"auth": "chap-md5"}


def test_steps_per_boot_are_bounded() -> None:
    boot = Boot(1, A.mac, "pc-a", 0.0)
    for i in range(1000):
        boot.add(Seen(float(i), Step.LOGIN_FAILED, {"why": "wrong CHAP response (secret)"}))
    assert len(boot.steps) == 200 and boot.dropped_steps == 800


def test_events_of_nobody_and_of_no_step_are_left_out(setup: tuple[Bus, Recorder, Clock, list[Event]]) -> None:
    bus, rec, _, _ = setup
    bus.emit(Kind.ISCSI_LOGIN, initiator="iqn.2026-11.x:stranger")
    bus.emit(Kind.HTTP_REQUEST, mac=A.mac, path="/healthz", status=200)
    bus.emit(Kind.ISNS_SYNCED, targets=3)
    assert rec.current == {}


# -- the rules, each on the steps that lead to it ---------------------------------------


def steps(*names: Step | tuple[Step, dict[str, object]]) -> list[Seen]:
    out = []
    for i, item in enumerate(names):
        step, detail = item if isinstance(item, tuple) else (item, {})
        out.append(Seen(float(i), step, detail))
    return out


S = Step
LATE = 10_000.0


@pytest.mark.parametrize(("history", "said"), [
    (steps(S.ROM_OFFER), "offered an address but never requested it: another DHCP server"),
    (steps(S.ROM_OFFER, S.ROM_ACK), "no TFTP fetch after the DHCP ACK: check next-server and the firewall"),
    (steps((S.ROM_OFFER, {"arch": 11}), S.ROM_ACK, (S.FILE_MISSING, {"file": "ipxe-arm64.efi"})),
     "bootfile not found: it asked for ipxe-arm64.efi (client architecture 11)"),
    (steps(S.ROM_OFFER, S.ROM_ACK, S.BOOTFILE, S.IPXE_ACK, S.BOOTFILE, S.IPXE_ACK, S.BOOTFILE),
     "an iPXE chainload loop: iPXE was fetched 3 times"),
    (steps(*[S.IPXE_OFFER, S.IPXE_ACK, S.SCRIPT, S.BOOTFILE] * 3),
     "an iPXE chainload loop: iPXE was fetched 3 times, again after each of its 3 scripts"),
    (steps(S.ROM_OFFER, S.ROM_ACK, S.BOOTFILE, S.IPXE_OFFER, S.IPXE_ACK),
     "iPXE got its DHCP answer but never logged in"),
    (steps(S.ROM_OFFER, S.ROM_ACK, S.BOOTFILE, S.IPXE_ACK, S.SCRIPT), "no iSCSI login after its script"),
    (steps(S.IPXE_ACK, (S.SCRIPT_REFUSED, {"peer": "10.0.0.99"})), "its iPXE script was refused to 10.0.0.99"),
    (steps(S.IPXE_ACK, S.SCRIPT, (S.LOGIN_FAILED, {"status": "AUTHENTICATION_FAILURE",
                                                   "why": "wrong CHAP response (secret)"})),
     "iSCSI login refused by CHAP: wrong CHAP response (secret)"),
    (steps(S.SCRIPT, (S.LOGIN_FAILED, {"status": "AUTHORIZATION_FAILURE", "why": "x may not log in"})),
     "iSCSI login refused by the target's ACL (initiator name): x may not log in"),
    (steps(S.SCRIPT, S.LOGIN), "logged in but never read its disk: the firmware's boot order"),
    (steps(S.SCRIPT, S.LOGIN, S.FIRST_READ, (S.IO_ERROR, {"sense_key": 3})), "READ errors on its disk (sense key 3)"),
    (steps(S.SCRIPT, S.LOGIN, S.FIRST_READ, (S.SESSION_END, {"reason": "protocol_error", "read_bytes": 4096})),
     "its session was dropped mid-boot (protocol_error) after 4096 bytes"),
    (steps(S.SCRIPT, S.LOGIN, S.FIRST_READ, (S.SESSION_END, {"reason": "nop_timeout", "read_bytes": 30 << 20})),
     "the kernel was loaded (30 MiB read) but the OS never logged in: its initramfs lacks iSCSI/iBFT"),
    (steps(S.LOGIN, S.FIRST_READ, S.OS_LOGIN), "the OS logged in but never read its disk"),
    (steps((S.DROPPED, {"why": "unknown MAC (unknown_machines: ignore)"})),
     "DHCP got no answer: unknown MAC (unknown_machines: ignore)"),
    (steps(S.ROM_OFFER, S.ROM_ACK, (S.BOOT_REFUSED, {"why": "its disk is not served"})),
     "bootsvc had nothing to hand it: its disk is not served"),
    (steps((S.DISK_FAILED, {"why": "will not boot: no base image"})), "its disk could not be made: will not boot"),
])
def test_each_rule(history: list[Seen], said: str) -> None:
    assert said in diagnose(history, LATE)


def test_a_login_after_a_refusal_is_not_a_refusal() -> None:
    history = steps(S.SCRIPT, (S.LOGIN_FAILED, {"status": "AUTHENTICATION_FAILURE"}), S.LOGIN, S.FIRST_READ,
                    S.OS_LOGIN, S.OS_READ)
    assert diagnose(history, LATE) == "booted"
    assert diagnose(steps(S.SCRIPT, S.LOGIN), 2.0) == "running: login"


def test_isns_registration_and_queries_are_steps(setup: tuple[Bus, Recorder, Clock, list[Event]]) -> None:
    bus, rec, clock, _ = setup

    class BySource(Fleet):
        def mac_of(self, event: Event) -> str | None:
            return A.mac if event.fields.get("source") == A.initiator_iqn else super().mac_of(event)

    rec.fleet = BySource()
    bus.emit(Kind.DHCP_OFFER, mac=A.mac, ipxe=False)
    bus.emit(Kind.ISNS_REGISTERED, source=A.initiator_iqn, entity="isns:entity:7", nodes=A.initiator_iqn)
    bus.emit(Kind.ISNS_QUERIED, source=A.initiator_iqn, status=0)
    assert [s.step for s in rec.current[A.mac].steps] == [Step.ROM_OFFER, Step.ISNS_REGISTERED, Step.ISNS_QUERY]


def test_a_chainload_loop_fails_at_once_and_stays_one_boot(
        setup: tuple[Bus, Recorder, Clock, list[Event]]) -> None:
    """A script that chains iPXE again never goes quiet: the loop is a
    failure as soon as it is seen, and its next rounds are the same boot."""
    bus, rec, clock, seen = setup
    for _ in range(6):
        for kind, fields in [(Kind.DHCP_OFFER, {"mac": A.mac, "ipxe": True}),
                             (Kind.DHCP_ACK, {"mac": A.mac, "ipxe": True}),
                             (Kind.HTTP_REQUEST, {"mac": A.mac, "path": "/boot/52-54-00-00-00-0a.ipxe",
                                                  "status": 200}),
                             (Kind.TFTP_SENT, {"mac": A.mac, "file": "undionly.kpxe", "bytes": 70000})]:
            clock.now += 1
            bus.emit(kind, **fields)  # type: ignore[arg-type]
        rec.tick(clock.now)
    boot = rec.current[A.mac]
    assert boot.id == 1 and len(boot.steps) == 24
    (failed,) = [e for e in seen if e.kind is Kind.BOOT_FAILED]
    assert "an iPXE chainload loop: iPXE was fetched 3 times" in str(failed.fields["diagnosis"])
    assert rec.machines(clock.now)[0]["state"] == "failed"


def replay(*events: tuple[Kind, dict[str, object]]) -> list[Seen]:
    """The steps the recorder makes of these events, in order."""
    out: list[Seen] = []
    for i, (kind, fields) in enumerate(events):
        step = step_of(Event(kind, float(i), fields=dict(fields)), out)
        if step is not None:
            out.append(Seen(float(i), step, dict(fields)))
    return out


LOGIN, READ, IO, END = Kind.ISCSI_LOGIN, Kind.ISCSI_FIRST_READ, Kind.ISCSI_IO_ERROR, Kind.ISCSI_SESSION_DROPPED


def test_ipxe_retrying_a_failed_sanboot_is_not_the_os() -> None:
    """bootsvc's script retries a failed sanboot every few seconds with a
    new login: after a READ error (or a LUN iPXE never read) that login is
    iPXE's again, not the OS's, and its READ is no root being read."""
    io = replay((LOGIN, {}), (READ, {}), (IO, {"sense_key": 3}), (END, {"reason": "connection_lost"}),
                (LOGIN, {}), (READ, {}), (IO, {"sense_key": 3}))
    assert [s.step for s in io] == [S.LOGIN, S.FIRST_READ, S.IO_ERROR, S.SESSION_END, S.LOGIN, S.FIRST_READ,
                                    S.IO_ERROR]
    assert "READ errors on its disk (sense key 3)" in diagnose(io, LATE)
    lun = replay((LOGIN, {}), (END, {"reason": "connection_lost"}), (LOGIN, {}), (END, {}), (LOGIN, {}))
    assert [s.step for s in lun] == [S.LOGIN, S.SESSION_END, S.LOGIN, S.SESSION_END, S.LOGIN]
    assert "logged in but never read its disk" in diagnose(lun, LATE)
    # the OS's login: iPXE read, then vanished (its session replaced or timed out later); a refusal between
    for between in ([], [(Kind.ISCSI_LOGIN_FAILED, {"status": "AUTHENTICATION_FAILURE"})]):
        ok = replay((LOGIN, {}), (READ, {}), *between, (LOGIN, {}), (END, {"reason": "replaced"}), (READ, {}))
        assert [s.step for s in ok if s.step is not S.LOGIN_FAILED] == [S.LOGIN, S.FIRST_READ, S.OS_LOGIN,
                                                                        S.SESSION_END, S.OS_READ]
        assert diagnose(ok, LATE) == "booted"


def test_ipxe_reconnecting_before_the_kernel_is_not_the_os() -> None:
    """A kernel profile: iPXE hooks the disk, fetches kernel and initrd,
    drops its connection and logs in again (its own ISID kind, 40002723...)
    to read the MBR before it boots; only open-iscsi's login (00023d...)
    is the OS's."""
    ipxe, os_ = {"isid": "400027230a1b"}, {"isid": "00023d000001"}
    kernel = (Kind.HTTP_REQUEST, {"path": "/files/demo-linux/vmlinuz", "status": 200})
    history = replay((LOGIN, ipxe), (READ, {}), kernel, (END, {"reason": "connection_lost"}),
                     (LOGIN, {"isid": "400027230c2d"}), (READ, {}), (END, {"reason": "nop_timeout"}))
    assert [s.step for s in history] == [S.LOGIN, S.FIRST_READ, S.KERNEL, S.SESSION_END, S.LOGIN, S.FIRST_READ,
                                         S.SESSION_END]
    said = diagnose(history, LATE)
    assert said.startswith("the kernel was loaded but the OS never logged in: its initramfs lacks"), said
    booted = replay((LOGIN, ipxe), (READ, {}), kernel, (END, {"reason": "connection_lost"}), (LOGIN, ipxe), (READ, {}),
                    (LOGIN, os_), (READ, {}))
    assert [s.step for s in booted][-2:] == [S.OS_LOGIN, S.OS_READ]


def test_a_sanboot_retried_on_read_errors_fails_at_once_and_stays_one_boot(
        setup: tuple[Bus, Recorder, Clock, list[Event]]) -> None:
    """bootsvc's script retries a sanboot every 5 s: with READ errors each
    time, the machine never goes quiet; the third error fails the boot, and
    the retries after it are more of that boot."""
    bus, rec, clock, seen = setup
    bus.emit(Kind.DHCP_OFFER, mac=A.mac, ipxe=True)
    for i in range(5):
        for kind, fields in [(LOGIN, {"isid": f"40002723000{i}"}), (READ, {}), (IO, {"sense_key": 3}),
                             (END, {"reason": "connection_lost", "io_errors": 11})]:
            clock.now += 1
            bus.emit(kind, initiator=A.initiator_iqn, **fields)  # type: ignore[arg-type]
        rec.tick(clock.now)
        clock.now += 5
    boot = rec.current[A.mac]
    assert boot.id == 1 and len(boot.steps) == 21 and not any(s.step is S.OS_LOGIN for s in boot.steps)
    (failed,) = [e for e in seen if e.kind is Kind.BOOT_FAILED]
    assert failed.fields["diagnosis"] == "READ errors on its disk (sense key 3): check the image (bootsvc image check)"


def test_a_step_added_while_a_save_runs_is_saved_by_the_next(tmp_path: Path) -> None:
    """The recorder saves from a worker thread while the loop adds steps:
    a step added during a save is written by the next save, not lost."""
    from bootsvc.recorder.store import Boot, BootStore
    from bootsvc.recorder.steps import Seen, Step
    store = BootStore(tmp_path / "r.db")
    boot = Boot(1, "52:54:00:00:00:01", "a", 100.0)
    boot.add(Seen(100.0, Step.ROM_OFFER, {}))

    class Growing(list):  # type: ignore[type-arg]
        """The step list gains a step while the save reads it (as the loop would)."""
        def __getitem__(self, key):  # type: ignore[no-untyped-def]
            got = super().__getitem__(key)
            if isinstance(key, slice) and len(self) == 1:
                self.append(Seen(101.0, Step.ROM_ACK, {}))
            return got

    boot.steps = Growing(boot.steps)
    store.save([boot], 102.0)
    store.save([boot], 103.0)
    assert [s.step for s in store.boots(boot.mac)[0].steps] == [Step.ROM_OFFER, Step.ROM_ACK]


def test_a_tick_looks_only_at_boots_that_changed_or_went_quiet(
        setup: tuple[Bus, Recorder, Clock, list[Event]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A storm's thousands of boots are not all walked every second on the
    loop: only those with a new step, and those whose last step has just
    grown older than the stall time."""
    bus, rec, clock, seen = setup
    for n in range(50):
        bus.emit(Kind.DHCP_OFFER, mac=f"52:54:00:00:01:{n:02x}", ipxe=False, firmware=True)
    looked: list[int] = []
    state = Boot.state
    monkeypatch.setattr(Boot, "state", lambda self, *a: (looked.append(self.id), state(self, *a))[1])
    rec.tick(clock.now + 1)
    assert len(looked) == 50  # each changed since the last tick
    looked.clear()
    rec.tick(clock.now + 2)
    assert looked == []  # nothing changed, nothing went quiet
    bus.emit(Kind.DHCP_OFFER, mac="52:54:00:00:01:00", ipxe=False, firmware=True)  # one asks again
    rec.tick(clock.now + 3)
    assert len(looked) == 1
    looked.clear()
    rec.tick(clock.now + STALL + 1)  # the 50 went quiet: each looked at, each fails once
    assert len(looked) >= 49
    assert len([e for e in seen if e.kind is Kind.BOOT_FAILED]) == 50


def test_a_save_makes_its_rows_on_the_loop_a_slice_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python work of a save (a storm's thousand boots a second) is done
    on the loop in slices, the loop turning between them; the worker thread
    only runs SQLite (Python in it held the GIL the loop needed: 20-40 ms
    DHCP stalls, docs/benchmarks.md)."""
    import asyncio
    import threading

    from bootsvc.recorder import recorder as recorder_module

    monkeypatch.setattr(recorder_module, "ROWS_AT_ONCE", 2)
    store = BootStore(tmp_path / "r.db")
    rec = Recorder(Fleet(), Bus(), store)  # type: ignore[arg-type]
    boots = [Boot(i, f"52:54:00:00:01:{i:02x}", f"h{i}", 100.0) for i in range(1, 6)]
    for b in boots:
        b.add(Seen(100.0, Step.ROM_OFFER, {}))
    made_on = []
    real_add = recorder_module.Rows.add

    def add(self, some, now):  # type: ignore[no-untyped-def]
        made_on.append((threading.current_thread() is threading.main_thread(), len(list(some))))
        return real_add(self, some, now)

    monkeypatch.setattr(recorder_module.Rows, "add", add)
    turned: list[int] = []

    async def save() -> None:
        asyncio.get_running_loop().call_soon(lambda: turned.append(len(made_on)))
        rows = await rec._rows(boots, 101.0)
        assert made_on == [(True, 2), (True, 2), (True, 1)] and turned == [1]  # the loop ran between slices
        await asyncio.to_thread(store.write, rows)

    asyncio.run(save())
    assert [b.saved for b in boots] == [1] * 5
    assert {b.mac for b in store.latest()} == {b.mac for b in boots}
