"""bench/dhcp_worker.py, the DHCP-in-a-worker-process prototype, kept from
rotting: it serves perfdhcp for two seconds on bench/dhcp.py's network (two
namespaces the test makes and deletes), every exchange completes, and the
events the worker sent were published in the main process: the log and
the event file have them, the worker wrote the leases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import dhcp
from bench.dhcp_worker import worker_server
from bench.procstat import children
from tests.e2e.conftest import need
from tests.e2e.netns import can_make_namespaces

pytestmark = pytest.mark.e2e
RATE = 100  # DORA/s: the worker's plumbing, not its speed
SECONDS = 2


def test_worker_serves_and_main_process_publishes(tmp_path: Path) -> None:
    need("perfdhcp")
    reason = can_make_namespaces()
    if reason:
        pytest.skip(reason)
    with dhcp.network() as (srv, cli), worker_server(srv, tmp_path, "info") as pid:
        assert len(children(pid)) == 1, "the worker is the main process's one child"
        step = dhcp.dora("worker", pid, cli, RATE, SECONDS)
    assert step.started >= RATE * SECONDS // 2
    assert step.lost <= 0.01, step.line()
    log = (tmp_path / "worker-serve.log").read_text()
    assert log.count("event=dhcp.ack ") == step.done
    assert "event=dhcp.discovered " in log and "event=dhcp.offer " in log
    state = tmp_path / "state"
    kinds = [json.loads(line)["kind"] for line in (state / "events.jsonl").read_text().splitlines()]
    assert kinds.count("dhcp.ack") == step.done
    assert (state / "leases.db").exists()
