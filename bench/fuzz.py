#!/usr/bin/env python3
"""Fuzz every codec (tests/fuzz_targets.py) with mutated valid messages.

Runs each target ``--cases`` cases (default 100,000), each bounded to
``--bound`` seconds (a longer case is a hang), and prints per target:
cases, seconds, cases/s, failed cases and distinct failures. A failure is
anything a target lets escape besides its codec's documented errors, or
a case past the bound; one input of each is written to ``--out`` (replay
it with ``--replay FILE --target NAME``). Exit status 1 if anything failed.

    python bench/fuzz.py [--cases 100000] [--target dhcp --target dns] [--seed 1] [--out fuzz-failures]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's packages and tests/

from tests.fuzz_targets import TARGETS  # noqa: E402
from tests.fuzzing import CASE_BOUND, Mutator, Outcome, run  # noqa: E402


def fuzz(name: str, cases: int, seed: int, bound: float) -> Outcome:
    target = TARGETS[name]
    # one stream of cases per (seed, target): a target run alone gets the cases it gets in a full run
    rnd = random.Random(f"{seed}:{name}")
    mutator = Mutator(target.seeds(), rnd, target.tokens)
    return run(name, target.run, mutator.case, cases, bound)


def report(outcome: Outcome, out: Path | None) -> None:
    print(f"{outcome.name:12} {outcome.cases:>9} {outcome.seconds:9.1f} {outcome.rate:9.0f} "
          f"{outcome.slowest * 1000:9.1f} {outcome.failed_cases:>8} {len(outcome.failures):>8}", flush=True)
    for failure in outcome.failures.values():
        print(f"    {failure.kind} at {failure.where}: {failure.count} cases, e.g. {failure.sample[:80]!r}")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256(failure.sample).hexdigest()[:12]
            (out / f"{outcome.name}-{failure.kind}-{digest}.bin").write_bytes(failure.sample)
            (out / f"{outcome.name}-{failure.kind}-{digest}.txt").write_text(failure.trace)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=100_000, help="cases per target (default 100000)")
    ap.add_argument("--target", action="append", choices=sorted(TARGETS), help="only these targets (repeatable)")
    ap.add_argument("--seed", type=int, default=1, help="the mutator's seed (default 1)")
    ap.add_argument("--bound", type=float, default=CASE_BOUND, help="seconds a case may take (default 1)")
    ap.add_argument("--out", type=Path, default=None, help="write one input and trace per failure here")
    ap.add_argument("--replay", type=Path, help="run one saved input through --target and show what escapes")
    args = ap.parse_args()
    names = args.target or list(TARGETS)
    logging.disable(logging.CRITICAL)  # tftpy logs every odd packet it parses: millions of lines
    if args.replay:
        TARGETS[names[0]].run(args.replay.read_bytes())
        print("no failure")
        return 0
    print(f"{'target':12} {'cases':>9} {'seconds':>9} {'cases/s':>9} {'max ms':>9} {'failures':>8} {'distinct':>8}")
    failed = 0
    total_cases, total_seconds = 0, 0.0
    for name in names:
        outcome = fuzz(name, args.cases, args.seed, args.bound)
        report(outcome, args.out)
        failed += outcome.failed_cases
        total_cases += outcome.cases
        total_seconds += outcome.seconds
    print(f"{'total':12} {total_cases:>9} {total_seconds:9.1f} {total_cases / total_seconds:9.0f}"
          f" {'':>9} {failed:>8}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
