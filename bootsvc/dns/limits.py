"""Bounds on what DNS clients may ask of bootsvc, without sockets or a
clock (``now`` is given): a query rate per source address over UDP, whose
source can be forged, and forwards in flight, per source and in all.

A source over its rate is dropped, not answered: an answer is what a
reflection attack wants. Over the in-flight caps the client gets SERVFAIL
(a stub then asks its next server), never an unbounded queue.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

RATE = 100.0  # queries a second a source may keep up over UDP
BURST = 200  # and at once (a machine's boot asks a handful; a resolver's retries a few more)
MAX_SOURCES = 8192  # sources whose rate is remembered; the least recently heard is forgotten first
MAX_IN_FLIGHT = 256  # forwards waiting for an upstream, in all
MAX_IN_FLIGHT_PER_SOURCE = 32


class Verdict(Enum):
    ADMIT = "admit"
    RATE = "rate"  # over its rate: dropped
    BUSY = "busy"  # too many forwards in flight: SERVFAIL


@dataclass
class _Bucket:
    tokens: float
    last: float


@dataclass
class Limits:
    rate: float = RATE
    burst: int = BURST
    max_sources: int = MAX_SOURCES
    max_in_flight: int = MAX_IN_FLIGHT
    max_in_flight_per_source: int = MAX_IN_FLIGHT_PER_SOURCE
    buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)
    in_flight: dict[str, int] = field(default_factory=dict)
    forwarding: int = 0  # the sum of in_flight

    def query(self, source: str, now: float) -> Verdict:
        """One UDP query from ``source``: a token bucket per source."""
        bucket = self.buckets.pop(source, None)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
            while len(self.buckets) >= self.max_sources:
                self.buckets.popitem(last=False)
        self.buckets[source] = bucket  # the most recently heard last
        bucket.tokens = min(float(self.burst), bucket.tokens + max(0.0, now - bucket.last) * self.rate)
        bucket.last = now
        if bucket.tokens < 1.0:
            return Verdict.RATE
        bucket.tokens -= 1.0
        return Verdict.ADMIT

    def begin_forward(self, source: str) -> Verdict:
        """A forward for ``source`` may start (then ``end_forward`` it), or BUSY."""
        mine = self.in_flight.get(source, 0)
        if mine >= self.max_in_flight_per_source or self.forwarding >= self.max_in_flight:
            return Verdict.BUSY
        self.in_flight[source] = mine + 1
        self.forwarding += 1
        return Verdict.ADMIT

    def end_forward(self, source: str) -> None:
        if source not in self.in_flight:
            return
        self.forwarding -= 1
        left = self.in_flight.get(source, 0) - 1
        if left > 0:
            self.in_flight[source] = left
        else:
            self.in_flight.pop(source, None)
