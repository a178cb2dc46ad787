"""What `bootsvc image check` and the refusals on a Ceph pool decide from
what librbd says, without a cluster (bootsvc/ceph_images.py; the real pool:
tests/e2e/test_ceph_image_commands.py)."""

from __future__ import annotations

import pytest

from bootsvc.ceph_images import _LEFTOVER, CephImageError, Users, _stale
from target import CheckReport

A, B = "127.0.0.1:0/1", "127.0.0.1:0/2"


@pytest.mark.parametrize("users, busy, dead", [
    (Users((), ()), False, ()),
    (Users((A,), ()), True, ()),  # open in a server, not claimed
    (Users((A,), (A,), "bootsvc on h, pid 7"), True, ()),  # a live holder
    (Users((), (A,)), False, (A,)),  # its client died: the lock outlived it
    (Users((B,), (A,)), True, (A,)),  # another client has it open
])
def test_who_uses_a_disk(users: Users, busy: bool, dead: tuple[str, ...]) -> None:
    assert users.busy is busy and users.dead_holders == dead


def test_a_refusal_names_the_holder() -> None:
    assert Users((A,), (A,), "bootsvc on h, pid 7").who() == f"bootsvc on h, pid 7 holds its lock (client {A})"
    assert Users((A,), (A,)).who() == f"a server holds its lock (client {A})"
    assert Users((A, B), ()).who() == f"open in client {A}, {B}"


@pytest.mark.parametrize("name, host", [(".pc1.renewal", "pc1"), (".pc1.rebase", "pc1"), (".pc1.old.123", "pc1"),
                                        (".a.b.renewal", "a.b"), ("pc1", None), (".pc1.old.x", None),
                                        (".gold.commit", None), (".pc1.renewal.x", None)])
def test_leftovers_beside_a_disk(name: str, host: str | None) -> None:
    found = _LEFTOVER.fullmatch(name)
    assert (found["host"] if found else None) == host


def test_stale_items_are_counted_and_repaired() -> None:
    report = CheckReport("rbd:p/pc1", leak_kind="stale item(s)")
    _stale(report, "x left over", False, lambda: pytest.fail("no repair asked"))
    _stale(report, "y left over", True, lambda: None)

    def refused() -> None:
        raise CephImageError("cannot remove z: the image is open in another client (a server serving it)")
    _stale(report, "z left over", True, refused)
    assert (report.leaks, report.leaks_fixed, report.clean) == (3, 1, False)
    assert report.notes == ["x left over", "y left over: repaired",
                            "z left over: not repaired: cannot remove z: the image is open in another client "
                            "(a server serving it)"]
