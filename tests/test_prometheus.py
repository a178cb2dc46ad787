"""bootsvc/prometheus.py writes the Prometheus text format that
prometheus_client's own parser (a test-only dependency) reads back
exactly: counters with and without labels, a gauge asked when scraped,
a histogram's cumulative buckets, and label values and help text that need
escaping."""

from __future__ import annotations

import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bootsvc.prometheus import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


def parsed(registry: CollectorRegistry) -> dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]]:
    return {f.name: (f.type, f.documentation, {(s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples})
            for f in text_string_to_metric_families(generate_latest(registry).decode())}


def test_every_type_reads_back() -> None:
    r = CollectorRegistry()
    plain = Counter("t_plain", "a counter without labels", registry=r)
    by = Counter("t_requests_total", 'help with \\ and "quotes"\nand a newline', ["status", "path"], registry=r)
    Counter("t_unused", "no sample yet", ["x"], registry=r)
    sessions = Gauge("t_sessions", "asked when scraped", registry=r)
    sessions.set_function(lambda: 7)
    h = Histogram("t_seconds", "durations", buckets=(1, 5), registry=r)
    plain.inc()
    plain.inc(2.5)
    by.labels(200, "/a").inc()
    by.labels("404", 'odd "path"\\\n').inc(3)
    for v in (0.5, 1, 3, 100):
        h.observe(v)
    got = parsed(r)
    assert got["t_plain"] == ("counter", "a counter without labels", {("t_plain_total", ()): 3.5})
    kind, doc, samples = got["t_requests"]
    assert kind == "counter" and doc == 'help with \\ and "quotes"\nand a newline'
    assert samples == {("t_requests_total", (("path", "/a"), ("status", "200"))): 1,
                       ("t_requests_total", (("path", 'odd "path"\\\n'), ("status", "404"))): 3}
    assert got["t_unused"] == ("counter", "no sample yet", {})
    assert got["t_sessions"] == ("gauge", "asked when scraped", {("t_sessions", ()): 7})
    assert got["t_seconds"] == ("histogram", "durations", {
        ("t_seconds_bucket", (("le", "1.0"),)): 2, ("t_seconds_bucket", (("le", "5.0"),)): 3,
        ("t_seconds_bucket", (("le", "+Inf"),)): 4, ("t_seconds_count", ()): 4, ("t_seconds_sum", ()): 104.5})


def test_misuse_is_refused() -> None:
    c = Counter("t_c", "c", ["a"], registry=CollectorRegistry())
    with pytest.raises(ValueError):
        c.labels("x", "y")
    with pytest.raises(ValueError):
        c.labels("x").inc(-1)


def test_increments_from_threads_are_not_lost() -> None:
    r = CollectorRegistry()
    c = Counter("t_c", "c", ["a"], registry=r)

    def work() -> None:
        for _ in range(20000):
            c.labels("x").inc()
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert parsed(r)["t_c"][2] == {("t_c_total", (("a", "x"),)): 80000}
