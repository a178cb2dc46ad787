"""What the demo-image boot tests check after a VM booted, wherever its
disk lives (a qcow2 overlay, an RBD clone): the record file the demo's
init wrote into the root partition, read with tools that are not bootsvc's
(qemu-img, debugfs), and the boot's timeline."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bootsvc import config
from bootsvc.demo import RECORD
from bootsvc.demo.disk import Layout
from bootsvc.vm.timeline import ORDER, Timeline


def record(image: Path | str, work: Path, prefix: Sequence[str] = ()) -> str:
    """The demo's record file in ``image``'s root partition ('' if absent):
    ``image`` is a file or anything qemu-img opens (``rbd:POOL/IMAGE:conf=…``
    through QEMU's rbd driver; ``prefix`` runs qemu-img where that is
    reachable, e.g. ``ip netns exec NS``), converted to raw, read by debugfs."""
    raw = work / "record-check.raw"
    subprocess.run([*prefix, "qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True, timeout=120)
    try:
        r = subprocess.run(["debugfs", "-R", f"cat {RECORD}", f"{raw}?offset={Layout().root.start}"],
                           capture_output=True, text=True, timeout=60)
    finally:
        raw.unlink()
    return "" if "not found" in r.stderr else r.stdout


def recorded(cfg: config.Config, host: str) -> list[dict[str, object]]:
    """``bootsvc timeline HOST --json``: the machine's latest boot as the flight recorder kept it."""
    r = subprocess.run([sys.executable, "-m", "bootsvc", "timeline", "-c", str(cfg.path), host, "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def check_booted(t: Timeline) -> None:
    steps = [t.at[s] for s in ORDER if s in t.at]
    assert t.booted and len(steps) == len(ORDER), f"{t.machine.hostname}: {t.failure} (reached {t.at})"
    assert steps == sorted(steps), f"{t.machine.hostname}: steps out of order: {t.at}"
    assert t.isns_dd is not None and set(t.isns_dd) == {t.machine.initiator_iqn, t.machine.target_iqn}
    assert t.isns_target
