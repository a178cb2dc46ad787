"""Every codec's fuzz target (tests/fuzz_targets.py) in CI: a few thousand
mutated valid messages each (a fixed seed: a failure here fails again on
the next run), then pure random bytes from Hypothesis. bench/fuzz.py runs
the same targets 100,000 cases each (docs/fuzzing.md)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz_targets import TARGETS
from tests.fuzzing import Mutator, run

CASES = 4000  # per target: about 8 s in all, most of it the config loader's


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_mutated_messages(name: str) -> None:
    target = TARGETS[name]
    mutator = Mutator(target.seeds(), random.Random(f"ci:{name}"), target.tokens)
    outcome = run(name, target.run, mutator.case, CASES)
    assert outcome.cases == CASES
    assert not outcome.failures, "\n\n".join(f"{f.kind} at {f.where} ({f.count} cases), e.g. {f.sample!r}\n{f.trace}"
                                             for f in outcome.failures.values())


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_run_clean(name: str) -> None:
    """The seeds themselves pass: a target that rejected its own seeds
    would fuzz nothing but its first check."""
    target = TARGETS[name]
    seeds = target.seeds()
    assert len(seeds) >= 3
    for seed in seeds:
        target.run(seed)


@pytest.mark.parametrize("name", sorted(TARGETS))
@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600))
def test_random_bytes(name: str, data: bytes) -> None:
    TARGETS[name].run(data)
