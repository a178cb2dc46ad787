"""A Ceph cluster that stops answering (issue 22): with Ceph's defaults
librbd waits for ever, so `bootsvc serve` says so itself: ``disk.stalled``
once a read through the machine's LUN has waited ``storage.stall_after``
seconds, ``disk.unstalled`` once it is done. The cluster's one OSD is
frozen (SIGSTOP: an OSD that stops answering, as docs/scale-out.md
measured) and thawed. Not ``ceph osd pause``: a client holds its requests
only once it has the OSD map with the pause flags, which librados fetches
lazily, so the first read after the pause was served (measured)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bootsvc.events import EVENT_FILE
from tests.ceph_cluster import Cluster
from tests.e2e.conftest import need
from tests.e2e.peers import LOOPBACK, free_port, stop, wait_for_port
from tests.e2e.test_ceph_fleet import PREFIX, _base, _config, _qemu_io

pytestmark = pytest.mark.e2e


def _events(state: Path, kind: str, seconds: float) -> list[dict[str, object]]:
    """The server's events of ``kind``, once there is one (at most ``seconds``)."""
    deadline = time.monotonic() + seconds
    while True:
        path = state / EVENT_FILE
        lines = path.read_text().splitlines() if path.exists() else []
        found = [e for e in map(json.loads, lines) if e["kind"] == kind]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_read_waiting_on_a_frozen_osd_is_said_and_so_is_its_end(ceph_cluster: Cluster,
                                                                        tmp_path: Path) -> None:
    need("qemu-io")
    base = _base(ceph_cluster)
    host = f"stall-{uuid.uuid4().hex[:6]}"
    port = free_port()
    cfg = _config(tmp_path, ceph_cluster, base, {host: "open"}, port,
                  storage=", stall_after: 1, release_after: 600")
    proc = subprocess.Popen([sys.executable, "-m", "bootsvc", "serve", "-c", str(cfg)], stderr=subprocess.DEVNULL)
    reader = None
    paused = False
    try:
        wait_for_port(port, proc)
        first = _qemu_io(port, host, "read 0 4k")  # the login claims the disk while the cluster answers
        assert first.returncode == 0, first.stdout + first.stderr
        osd = ceph_cluster.pids[-1]  # started last: mon, mgr, osd
        os.kill(osd, signal.SIGSTOP)
        paused = True
        opts = (f"driver=iscsi,transport=tcp,portal={LOOPBACK}:{port},target={PREFIX}:boot.{host},lun=0,"
                f"initiator-name={PREFIX}:{host}")
        reader = subprocess.Popen(["qemu-io", "--image-opts", "-c", "read -P 0xee 8M 64k", opts],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        stalled = _events(tmp_path / "state", "disk.stalled", 20)
        assert stalled, "no disk.stalled within 20 s of the OSD's freeze"
        assert stalled[0]["hostname"] == host and stalled[0]["op"] == "read", stalled
        assert 1 <= float(str(stalled[0]["seconds"])) < 5, stalled
        assert reader.poll() is None  # still waiting: nothing failed it
        assert not _events(tmp_path / "state", "disk.unstalled", 0)
        os.kill(osd, signal.SIGCONT)
        paused = False
        out, _ = reader.communicate(timeout=60)
        assert reader.returncode == 0 and "read 65536/65536" in out and "verification" not in out, out
        unstalled = _events(tmp_path / "state", "disk.unstalled", 10)
        assert unstalled and unstalled[0]["hostname"] == host and unstalled[0]["op"] == "read", unstalled
        assert float(str(unstalled[0]["seconds"])) >= float(str(stalled[0]["seconds"]))
        assert len(_events(tmp_path / "state", "disk.stalled", 0)) == 1  # said once
        # the flight recorder has both as steps of the machine's boot
        for _ in range(50):  # it writes about once a second
            timeline = subprocess.run([sys.executable, "-m", "bootsvc", "timeline", "-c", str(cfg), host],
                                      capture_output=True, text=True, timeout=60)
            if "disk-unstalled" in timeline.stdout:
                break
            time.sleep(0.2)
        assert "disk-stalled" in timeline.stdout and "disk-unstalled" in timeline.stdout, timeline.stdout
    finally:
        if paused:
            os.kill(osd, signal.SIGCONT)
        if reader is not None and reader.poll() is None:
            reader.kill()
            reader.wait(10)
        stop(proc)
