"""bench/dhcp_serve_cost.py keeps working as the pipe between serve and its
DHCP worker changes: the worker's code makes the frames, serve's wiring
takes them, and every ACK is in serve's event file and boot store. Run in a
process of its own, as the benchmark runs it (it sets up serve's logging)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import sqlite3, sys
from pathlib import Path
sys.path.insert(0, {root!r}); sys.path.insert(1, {bench!r})
import dhcp_serve_cost as c
frames = Path({frames!r})
c.make_frames(frames, 30, 3)
acks = c.acks_in(frames)
work = c.replayed(str(frames), len(acks))
lines = (work / "state" / "events.jsonl").read_text().splitlines()
boots = sqlite3.connect(work / "state" / "recorder.db").execute("SELECT COUNT(*) FROM boots").fetchone()[0]
print(sum(acks), sum('"dhcp.ack"' in line for line in lines), boots)
"""


def test_the_frames_made_by_the_worker_code_are_all_taken_by_serve(tmp_path: Path) -> None:
    code = SCRIPT.format(root=str(ROOT), bench=str(ROOT / "bench"), frames=str(tmp_path / "frames.bin"))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["30", "30", "30"], run.stdout
