"""Failed logins per source address: after a few, CHAP is refused for a while.

An attacker on the LAN may guess secrets one login at a time; the target
answers every wrong guess with 0201 but also remembers it, and a source
with ``limit`` failures inside ``window`` seconds gets no CHAP response
checked (not even a right one) until its oldest failure ages out. Sans
I/O: the caller passes the time. Bounded: at most ``max_sources`` sources
are remembered; past that the one that failed longest ago is forgotten.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class LoginThrottle:
    limit: int = 5
    window: float = 60.0
    max_sources: int = 4096
    failures: dict[str, deque[float]] = field(default_factory=dict)

    def refusal(self, source: str, now: float) -> str:
        """Why a login from ``source`` may not try a secret now ('' if it may)."""
        times = self._recent(source, now)
        if len(times) < self.limit:
            return ""
        wait = times[0] + self.window - now
        return f"{len(times)} failed logins from {source} in {self.window:g} s; CHAP refused for {wait:.0f} s"

    def failed(self, source: str, now: float) -> None:
        times = self._recent(source, now)
        times.append(now)
        self.failures.pop(source, None)
        self.failures[source] = times  # most recent last: the first key is the one to forget
        while len(self.failures) > self.max_sources:
            del self.failures[next(iter(self.failures))]

    def _recent(self, source: str, now: float) -> deque[float]:
        times = self.failures.get(source, deque(maxlen=self.limit))
        while times and times[0] <= now - self.window:
            times.popleft()
        return times
