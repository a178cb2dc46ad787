"""How much a peer may make the target hold, and for how long.

A peer that has not logged in, or that sends nothing useful, must not cost
more than a bounded amount of memory, descriptors and time. The defaults
live here; :class:`~target.server.TargetServer` takes each as a parameter
(tests use short timeouts). Sans-I/O: :class:`LoginGate` counts, it never
touches a socket or a clock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# A PDU whose first bytes arrived must be complete this soon: a peer that
# trickles a data segment a byte at a time holds a connection and a buffer.
PDU_TIMEOUT = 30.0
# A Discovery session that asks nothing this long is ended: answering our
# NOP-In pings alone would otherwise keep it forever.
DISCOVERY_TIMEOUT = 60.0
# Connections that have not reached Full Feature Phase, in all and per
# source address: each costs a descriptor and a login state until the
# login timeout, so a flood of half-open logins is refused at accept.
MAX_UNLOGGED = 256
MAX_UNLOGGED_PER_SOURCE = 16
# Write data a session may have solicited and not yet written (R2Ts beyond
# it wait for earlier writes to finish): 32 writes of 1 MiB.
SESSION_WRITE_LIMIT = 32 << 20
# ERL 2 (target.allegiance): responses one connection keeps until the
# initiator's ExpStatSN acknowledges them, the oldest forgotten past it, so
# an initiator that never acknowledges cannot make the target keep without
# end; failed connections a session keeps for reassignment are bounded by
# its MaxConnections the same way.
MAX_RETAINED = 512
# ERL >= 1: a write whose Data-Out stop arriving short of what was asked
# (a lost last Data-Out shows no DataSN gap) gets a recovery R2T for the
# rest after one to two of these (RFC 7143 §11.8, target.recovery.DataOutWatch);
# asked at most DATA_OUT_ASKS times while nothing more arrives.
DATA_OUT_TIMEOUT = 5.0
DATA_OUT_ASKS = 3
# Refused connections are reported at most this often, as one event.
REPORT_INTERVAL = 1.0


@dataclass
class LoginGate:
    """Admits connections that have not logged in yet, up to ``total`` in
    all and ``per_source`` from one address; counts the ones it refused
    until :meth:`take_refused` collects them for a report."""

    total: int = MAX_UNLOGGED
    per_source: int = MAX_UNLOGGED_PER_SOURCE
    counts: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)

    @property
    def waiting(self) -> int:
        """Connections admitted and not yet logged in (or closed)."""
        return self.counts.total()

    def admit(self, host: str) -> tuple[bool, str | None]:
        """Whether a connection from ``host`` may wait to log in, and the
        source whose oldest waiting connection must make room for it. When
        all places are taken, a source with fewer waiting connections than
        the busiest one takes a place from it: a flood from many addresses
        then shares the places fairly instead of locking every newcomer out
        until the login timeout."""
        admitted, victim = self._decide(host)
        if not admitted:
            self.refused[host] += 1
            return False, None
        if victim is not None:
            self.release(victim)
            self.refused[victim] += 1
        self.counts[host] += 1
        return True, victim

    def crowded(self, host: str) -> bool:
        """Whether ``host``, with no connection waiting yet, finds every place
        taken by sources no busier than one connection each: many machines
        logging in at once (a boot storm), not a flood from a few places.
        The server then waits for a place instead of refusing: each of those
        connections logs in or times out soon."""
        return host not in self.counts and not self._decide(host)[0]

    def _decide(self, host: str) -> tuple[bool, str | None]:
        """(admitted, the source to take a place from), changing nothing."""
        if self.counts[host] >= self.per_source:
            return False, None
        if self.waiting < self.total:
            return True, None
        victim, most = self.counts.most_common(1)[0]
        if most <= self.counts[host] + 1:
            return False, None
        return True, victim

    def release(self, host: str) -> None:
        """A connection admitted from ``host`` logged in or closed."""
        self.counts[host] -= 1
        if self.counts[host] <= 0:
            del self.counts[host]

    def take_refused(self) -> Counter[str]:
        refused, self.refused = self.refused, Counter()
        return refused

# ErrorRecoveryLevel >= 1 (target/recovery.py): responses kept for a Status
# SNACK until the initiator's ExpStatSN acknowledges them, at most this many
# and this many bytes per connection (the oldest go first: a SNACK for one
# gets a Reject). A response is a header and at most a little data (sense,
# Text), so the count binds first; the bytes stop large Text answers piling up.
RETAINED_STATUSES = 1024
RETAINED_STATUS_BYTES = 1 << 20
# Reads whose Data-In a Data SNACK may ask again, per connection: no data is
# kept (it is read again from the LUN), only the command and its layout.
RETAINED_READS = 1024
