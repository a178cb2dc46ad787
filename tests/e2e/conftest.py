"""Fixtures for tests that start real peers. Each skips with the reason when
the peer's program is missing, which CI (make test) never lets happen."""

from __future__ import annotations

import pytest

from tests.e2e.peers import have


def need(*commands: str) -> None:
    if not have(*commands):
        pytest.skip(f"needs {' and '.join(commands)} (installed by scripts/install-deps.sh)")
