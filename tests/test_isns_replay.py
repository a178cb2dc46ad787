"""The registry answers recorded random request sequences byte for byte as
the registry they were recorded from (tests/isns_replay.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_random_sequences_answer_as_recorded() -> None:
    # a process of its own: the recording needs a fixed string hash seed (see isns_replay)
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "isns_replay.py")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
