"""Counters, gauges and histograms written in the Prometheus text exposition
format, version 0.0.4 (what every Prometheus scrapes): the few metric types
``/metrics`` uses, under the names and signatures of prometheus_client,
which bootsvc cannot require (Apache-2.0 only, and bootsvc is GPL-2.0-only:
docs/licensing.md). The tests parse this output with prometheus_client's
own parser.

Format: per family ``# HELP name text`` and ``# TYPE name type``, then one
``name{label="value",...} number`` line per sample; a counter's samples end
in ``_total``, a histogram's are ``_bucket{le=...}`` (cumulative, up to
``+Inf``), ``_count`` and ``_sum``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence


class CollectorRegistry:
    """The metrics of one ``/metrics`` page, in the order they were made."""

    def __init__(self) -> None:
        self.families: list[_Family] = []


class _Family:
    """A metric and its children, one per label value tuple. Increments can
    come from threads off the event loop (fleet work): one lock guards it."""

    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.lock = threading.Lock()
        self.children: dict[tuple[str, ...], _Family] = {}
        self.value = 0.0
        if registry is not None:
            registry.families.append(self)

    def labels(self, *values: object) -> _Family:
        """The child of these label values (made at first use, as
        prometheus_client does; callers keep label sets bounded)."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {', '.join(self.labelnames)}")
        key = tuple(str(v) for v in values)
        with self.lock:
            child = self.children.get(key)
            if child is None:
                child = self.children[key] = self._child()
        return child

    def _child(self) -> _Family:
        return type(self)(self.name, self.documentation)

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter only goes up")
        with self.lock:
            self.value += amount

    def _own(self) -> Iterator[tuple[str, tuple[tuple[str, str], ...], float]]:
        yield self.name, (), self.value

    def samples(self) -> Iterator[tuple[str, tuple[tuple[str, str], ...], float]]:
        """(sample name, labels, value) of the family, children in the order made."""
        if not self.labelnames:
            yield from self._own()
            return
        with self.lock:
            children = list(self.children.items())
        for values, child in children:
            for name, labels, value in child._own():
                yield name, tuple(zip(self.labelnames, values)) + labels, value


class Counter(_Family):
    kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        super().__init__(name if name.endswith("_total") else f"{name}_total", documentation, labelnames, registry)


class Gauge(_Family):
    kind = "gauge"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        super().__init__(name, documentation, labelnames, registry)
        self.function: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        with self.lock:
            self.value = float(value)

    def set_function(self, function: Callable[[], float]) -> None:
        """Asked for its value when scraped."""
        self.function = function

    def _own(self) -> Iterator[tuple[str, tuple[tuple[str, str], ...], float]]:
        yield self.name, (), self.function() if self.function is not None else self.value


class Histogram(_Family):
    kind = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None, buckets: Iterable[float] = (1, 10, 100)) -> None:
        super().__init__(name, documentation, labelnames, registry)
        self.buckets = tuple(sorted(float(b) for b in buckets if b != math.inf)) + (math.inf,)
        self.counts = [0] * len(self.buckets)  # per bucket, not cumulative
        self.sum = 0.0

    def _child(self) -> _Family:
        return Histogram(self.name, self.documentation, buckets=self.buckets)

    def observe(self, value: float) -> None:
        with self.lock:
            self.counts[next((i for i, b in enumerate(self.buckets) if value <= b), -1)] += 1
            self.sum += value

    def _own(self) -> Iterator[tuple[str, tuple[tuple[str, str], ...], float]]:
        with self.lock:
            counts, total = list(self.counts), self.sum
        cumulative = 0
        for bound, count in zip(self.buckets, counts):
            cumulative += count
            yield f"{self.name}_bucket", (("le", _number(bound)),), cumulative
        yield f"{self.name}_count", (), cumulative
        yield f"{self.name}_sum", (), total


def _number(value: float) -> str:
    """Go's float text, as Prometheus parses it: +Inf, -Inf, NaN, else Python's."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return "NaN" if math.isnan(value) else repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def generate_latest(registry: CollectorRegistry) -> bytes:
    """The page: every family of ``registry`` in the text format."""
    lines = []
    for family in registry.families:
        help_text = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        lines += [f"# HELP {family.name} {help_text}", f"# TYPE {family.name} {family.kind}"]
        for name, labels, value in family.samples():
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels)
            lines.append(f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}")
    return ("\n".join(lines) + "\n").encode()
