"""The fuzzing machinery shared by tests/test_fuzz.py (a few thousand cases
per target in CI) and bench/fuzz.py (100,000 and more): a mutator that
turns seed messages into damaged ones, and a runner that feeds them to a
target with a time bound per case and collects what escaped.

Mutation, not random bytes: a random datagram is refused by the first
check of nearly every codec (op code, magic cookie, version), so almost
all of the time would go to that one check. A valid message with a bit
flipped, a length field set to 0 or 0xFFFF, a tail cut off or a piece of
another message spliced in gets past the first checks and into the code
behind them, where the bugs are.
"""

from __future__ import annotations

import random
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LEN = 1 << 16  # a mutated case is cut to this: the codecs' limits are far below, hangs are not about size
CASE_BOUND = 1.0  # seconds one case may take; more is a hang (a failure)
# values a length or count field most often mishandles: zero, one, the
# signed and unsigned edges of one, two and four bytes
INTERESTING = (0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


class CaseTimeout(BaseException):
    """A case ran past its bound. A BaseException so that a codec's broad
    ``except Exception`` cannot swallow it and hide the hang."""


class Mutator:
    """Mutates seeds (bytes) with stacked edits; ``tokens`` are words of
    the format (YAML punctuation, HTTP header names) inserted or written
    over, as AFL's dictionaries do for text formats."""

    def __init__(self, seeds: Sequence[bytes], rnd: random.Random, tokens: Sequence[bytes] = ()) -> None:
        self.seeds = list(seeds) or [b""]
        self.rnd = rnd
        self.tokens = list(tokens)
        self.edits: list[Callable[[bytearray], None]] = [
            self._flip_bits, self._interesting_byte, self._length_field, self._truncate, self._delete,
            self._duplicate, self._insert_random, self._splice, self._append_seed]
        if self.tokens:
            self.edits += [self._insert_token, self._overwrite_token]

    def case(self) -> bytes:
        """One case: a seed as it is (1 in 50), random bytes (1 in 50), or a
        seed under one to four edits."""
        rnd = self.rnd
        roll = rnd.random()
        if roll < 0.02:
            return rnd.choice(self.seeds)
        if roll < 0.04:
            return rnd.randbytes(rnd.choice((1, 4, 12, 48, 300, 600)))
        data = bytearray(rnd.choice(self.seeds))
        for _ in range(rnd.choice((1, 1, 2, 2, 3, 4))):
            rnd.choice(self.edits)(data)
        return bytes(data[:MAX_LEN])

    def _pos(self, data: bytearray, room: int = 1) -> int:
        return self.rnd.randrange(max(1, len(data) - room + 1))

    def _flip_bits(self, data: bytearray) -> None:
        for _ in range(self.rnd.choice((1, 1, 2, 8))):
            if data:
                data[self._pos(data)] ^= 1 << self.rnd.randrange(8)

    def _interesting_byte(self, data: bytearray) -> None:
        if data:
            data[self._pos(data)] = self.rnd.choice((0, 1, 0x7F, 0x80, 0xFF))

    def _length_field(self, data: bytearray) -> None:
        """A 1-, 2- or 4-byte field set to an edge value or to the length of
        the message near it, big- or little-endian: length-field edits."""
        width = self.rnd.choice((1, 2, 2, 4, 4))
        if len(data) < width:
            return
        value = self.rnd.choice((*INTERESTING, len(data), len(data) + 1, len(data) - 1, len(data) + 4))
        pos = self._pos(data, width)
        order = "big" if self.rnd.random() < 0.8 else "little"
        data[pos:pos + width] = (value & ((1 << 8 * width) - 1)).to_bytes(width, order)  # type: ignore[arg-type]

    def _truncate(self, data: bytearray) -> None:
        del data[self.rnd.randrange(len(data) + 1):]

    def _delete(self, data: bytearray) -> None:
        start = self._pos(data)
        del data[start:start + self.rnd.choice((1, 2, 4, 16, 64))]

    def _duplicate(self, data: bytearray) -> None:
        start = self._pos(data)
        chunk = data[start:start + self.rnd.choice((1, 4, 16, 48, 256))]
        data[start:start] = chunk * self.rnd.choice((1, 2, 8))

    def _insert_random(self, data: bytearray) -> None:
        pos = self._pos(data)
        data[pos:pos] = self.rnd.randbytes(self.rnd.choice((1, 2, 4, 16)))

    def _splice(self, data: bytearray) -> None:
        """This message's head and another seed's tail."""
        other = self.rnd.choice(self.seeds)
        cut = self._pos(data)
        data[cut:] = other[self.rnd.randrange(len(other) + 1):]

    def _append_seed(self, data: bytearray) -> None:
        """Another whole message after this one: streams of several PDUs."""
        data += self.rnd.choice(self.seeds)

    def _insert_token(self, data: bytearray) -> None:
        """A token, now and then repeated many times: "[" a thousand times
        is how a recursive parser is found out."""
        pos = self._pos(data)
        data[pos:pos] = self.rnd.choice(self.tokens) * self.rnd.choice((1, 1, 1, 1, 2, 16, 1000))

    def _overwrite_token(self, data: bytearray) -> None:
        token = self.rnd.choice(self.tokens)
        pos = self._pos(data)
        data[pos:pos + len(token)] = token


@dataclass
class Failure:
    """One kind of escape: its exception and where it was raised, the
    number of cases that raised it and the first of them."""

    kind: str
    where: str
    sample: bytes
    count: int = 1
    trace: str = ""


@dataclass
class Outcome:
    name: str
    cases: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    failures: dict[tuple[str, str], Failure] = field(default_factory=dict)

    @property
    def failed_cases(self) -> int:
        return sum(f.count for f in self.failures.values())

    @property
    def rate(self) -> float:
        return self.cases / self.seconds if self.seconds else 0.0


def _where(e: BaseException) -> str:
    """The innermost frame in the project's own code (else the innermost)."""
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if str(ROOT) in f.filename and "/tests/fuzz" not in f.filename
            and ".venv" not in f.filename] or frames
    last = ours[-1] if ours else None
    return f"{Path(last.filename).name}:{last.lineno} {last.name}" if last else "?"


def _on_alarm(signum: int, frame: object) -> None:
    raise CaseTimeout(f"case ran past {CASE_BOUND} s of CPU")


def run(name: str, target: Callable[[bytes], None], cases: Callable[[], bytes], count: int,
        bound: float = CASE_BOUND) -> Outcome:
    """``count`` cases through ``target``. A case fails when anything
    escapes it (targets catch their codec's documented errors themselves)
    or when it takes longer than ``bound``: the CPU timer (SIGPROF, not
    pytest-timeout's SIGALRM) interrupts a spinning case at ``bound``, and
    a case that took longer than ``bound`` on the wall clock is a failure
    even when it finished."""
    outcome = Outcome(name)
    previous = signal.signal(signal.SIGPROF, _on_alarm)
    start = time.perf_counter()
    try:
        for _ in range(count):
            data = cases()
            began = time.perf_counter()
            try:
                signal.setitimer(signal.ITIMER_PROF, bound)
                try:
                    target(data)
                finally:
                    signal.setitimer(signal.ITIMER_PROF, 0)
                took = time.perf_counter() - began
                if took > bound:
                    raise CaseTimeout(f"case took {took:.2f} s (bound {bound} s)")
            except (Exception, CaseTimeout) as e:
                _record(outcome, e, data)
            outcome.slowest = max(outcome.slowest, time.perf_counter() - began)
            outcome.cases += 1
    finally:
        signal.signal(signal.SIGPROF, previous)
        outcome.seconds = time.perf_counter() - start
    return outcome


def _record(outcome: Outcome, e: BaseException, data: bytes) -> None:
    key = (type(e).__name__, _where(e))
    known = outcome.failures.get(key)
    if known is not None:
        known.count += 1
        if len(data) < len(known.sample):
            known.sample = data  # the shortest case is the easiest to read
        return
    outcome.failures[key] = Failure(key[0], key[1], data,
                                    trace="".join(traceback.format_exception(e, limit=-6)))
