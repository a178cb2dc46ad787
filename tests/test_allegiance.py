"""What one connection of a session keeps at ErrorRecoveryLevel 2
(target/allegiance.py): responses until ExpStatSN acknowledges them (RFC
7143 §4.2.2.2), never more than the limit, nothing once it failed below
ERL 2."""

from __future__ import annotations

from typing import Any, cast

from target.allegiance import ConnectionState, Retained
from target.limits import MAX_RETAINED
from target.scsi import ScsiResult, ScsiStatus
from target.session import Link


def kept(statsn: int | None) -> Retained:
    return Retained(cast(Any, None), ScsiResult(ScsiStatus.GOOD), None, statsn)


def test_expstatsn_releases_what_it_acknowledges_across_the_wrap() -> None:
    c = ConnectionState(Link(1, "p", ("", 0)), statsn=2)  # StatSN 0xFFFFFFFE ... 1 sent
    for itt, sn in enumerate((0xFFFFFFFE, 0xFFFFFFFF, 0, 1)):
        c.keep(itt, kept(sn))
    c.acknowledged(0)  # the initiator has everything before StatSN 0
    assert list(c.retained) == [2, 3]
    c.acknowledged(0)
    assert list(c.retained) == [2, 3]
    c.acknowledged(3)  # beyond what was sent: not believed
    assert list(c.retained) == [2, 3]
    c.acknowledged(2)
    assert not c.retained


def test_one_expstatsn_releases_the_erl1_stores_too() -> None:
    """ExpStatSN is acknowledged once per connection, for what ERL 2 keeps
    for TASK REASSIGN and what ERL 1 keeps for SNACKs alike."""
    from target.pdu import ScsiCommand, ScsiResponse
    from target.recovery import ReadRecord, Recovery
    c = ConnectionState(Link(1, "p", ("", 0)), statsn=7, recovery=Recovery(5))
    c.keep(9, kept(5))
    c.keep(10, kept(6))
    assert c.recovery is not None
    c.recovery.statuses.keep(ScsiResponse(itt=9, statsn=5), 5)
    c.recovery.statuses.keep(ScsiResponse(itt=10, statsn=6), 6)
    c.recovery.reads.keep(ReadRecord(ScsiCommand(read=True, itt=10), 512, 512, 1, 8192, 65536, 6))
    c.acknowledged(6)
    assert list(c.retained) == [10] and list(c.recovery.statuses.kept) == [6] and len(c.recovery.reads) == 1
    c.acknowledged(9)  # beyond StatSN 7: not believed by either
    assert list(c.retained) == [10] and len(c.recovery.statuses) == 1
    c.acknowledged(7)
    assert not c.retained and not c.recovery.statuses and not c.recovery.reads
    c.fail(retain_until=30.0)
    assert c.recovery is None  # no SNACK reaches a failed connection


def test_an_initiator_that_never_acknowledges_costs_a_bounded_amount() -> None:
    c = ConnectionState(Link(1, "p", ("", 0)))
    for itt in range(MAX_RETAINED + 100):
        c.keep(itt, kept(itt))
    assert len(c.retained) == MAX_RETAINED and next(iter(c.retained)) == 100


def test_a_failed_connection_keeps_only_at_erl2() -> None:
    c = ConnectionState(Link(1, "p", ("", 0)))
    c.keep(5, kept(0))
    c.fail(retain_until=30.0)
    assert not c.alive and c.retained and c.retain_until == 30.0
    d = ConnectionState(Link(2, "p", ("", 0)))
    d.keep(5, kept(0))
    d.fail(retain_until=None)
    assert not d.retained
