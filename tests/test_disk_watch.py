"""The disk watch (bootsvc/disk_watch.py): a request to a machine's disk
that waits storage.stall_after seconds is ``disk.stalled``, and
``disk.unstalled`` once it is done; the flight recorder's diagnosis and
/metrics say it. Driven with a fake clock and a disk whose reads wait for
the test (tests/e2e/test_ceph_stall.py pauses a real Ceph cluster)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from bootsvc.config import ConfigError, load
from bootsvc.disk_watch import DiskWatch, period
from bootsvc.events import Bus, Event, Kind
from bootsvc.fleet import Fleet
from bootsvc.metrics import Metrics
from bootsvc.recorder.diagnosis import diagnose
from bootsvc.recorder.steps import Seen, Step
from target.backend import Backend, Segment
from target.scsi.cdb import READ_10, WRITE_SAME_16
from tests.test_fleet import A, lab, recorded
from tests.test_fleet_release import Wrapped

READ = bytes([READ_10, 0, 0, 0, 0, 0, 0, 0, 8, 0]) + bytes(6)  # 8 blocks at LBA 0


class Gate(Wrapped):
    """A disk whose reads wait until the test opens the gate."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()

    async def read(self, offset: int, length: int) -> Sequence[Segment]:
        await self.gate.wait()
        return await self.inner.read(offset, length)


def stalls(events: list[Event]) -> list[tuple[str, object, object, object]]:
    return [(e.name, e.hostname, e.fields.get("op"), e.fields.get("seconds")) for e in events
            if e.kind in (Kind.DISK_STALLED, Kind.DISK_UNSTALLED)]


def test_a_read_waiting_past_stall_after_is_said_once_and_its_end_too(tmp_path: Path) -> None:
    bus = Bus()
    events = recorded(bus)
    fleet = Fleet(load(lab(tmp_path, f"  {A}: {{hostname: a}}\n", extra="storage: {stall_after: 10}\n")), bus)
    fleet.open()
    disk = fleet.disk(A)
    assert disk is not None and fleet.cfg.storage.stall_after == 10
    lun = disk.target.luns[0]
    gate = lun.backend = Gate(lun.backend)
    watch = DiskWatch(fleet, bus, lambda: fleet.cfg.storage.stall_after)
    metrics = Metrics(fleet)
    bus.subscribe(metrics)

    async def main() -> None:
        watch.check(0.0)  # idle: nothing
        lun.running[0] = WRITE_SAME_16  # a zeroing of the whole disk, running long doing its work: not a stall
        read = asyncio.ensure_future(lun.execute(READ, None, "nexus", 4096))
        await asyncio.sleep(0)
        assert list(lun.running.items()) == [(0, WRITE_SAME_16), (1, READ_10)]
        for now in (1.0, 5.0, 10.0):  # first seen at 1.0: 9 s waited is not yet a stall
            watch.check(now)
        assert stalls(events) == []
        for now in (11.0, 13.0, 20.0):  # said once
            watch.check(now)
        assert stalls(events) == [("disk.stalled", "a", "read", 10.0)]
        gate.gate.set()
        result = await read
        assert result.status == 0 and list(lun.running) == [0]
        watch.check(22.5)
        watch.check(25.0)
        fleet.close()

    asyncio.run(main())
    assert stalls(events) == [("disk.stalled", "a", "read", 10.0), ("disk.unstalled", "a", "read", 21.5)]
    stalled = next(e for e in events if e.kind is Kind.DISK_STALLED)
    assert stalled.mac == A and stalled.target == disk.target.name and stalled.fields["lun"] == 0
    assert "waited 10 s for the storage" in str(stalled.fields["why"])
    assert 'bootsvc_disk_stalls_total{host="a"} 1.0' in metrics.exposition()[0].decode()


def test_the_watch_checks_a_few_times_per_stall_after() -> None:
    assert period(10) == 2.5 and period(1) == 0.25 and period(3600) == 5.0


def test_stall_after_in_the_config(tmp_path: Path) -> None:
    assert load(lab(tmp_path, f"  {A}: {{hostname: a}}\n")).storage.stall_after == 10
    for bad in ("0", "-1", "soon", "7200"):
        with pytest.raises(ConfigError) as e:
            load(lab(tmp_path, f"  {A}: {{hostname: a}}\n", extra=f"storage: {{stall_after: {bad}}}\n"))
        assert "storage.stall_after" in str(e.value.problems[0]) and "bootsvc.yaml:" in str(e.value.problems[0])


def test_a_boot_whose_disk_stopped_answering_is_diagnosed() -> None:
    steps = [Seen(0.0, Step.LOGIN, {}), Seen(1.0, Step.FIRST_READ, {}),
             Seen(12.0, Step.DISK_STALLED, {"op": "read", "seconds": 10.0})]
    assert diagnose(steps, 500.0) == ("its disk stopped answering: a read waited 10.0 s for the storage and "
                                      "more (Ceph: ceph -s, ceph health detail)")
    resumed = [*steps, Seen(40.0, Step.DISK_UNSTALLED, {"op": "read", "seconds": 38.0})]
    assert "stopped answering" not in diagnose(resumed, 500.0)
