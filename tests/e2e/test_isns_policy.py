"""isns.policy against open-isns: the everyday isnsadm operations (OPS,
the table in docs/security.md) run against Debian's isnsd (its default
policy: Security = 0, DefaultDiscoveryDomain = 1), bootsvc's iSNS server
under ``policy: strict`` and under ``policy: open``. Every operation that
succeeds on isnsd succeeds on open with the same visible result; strict
refuses those that change another source's entity or a DD; and
``bootsvc serve`` takes the policy from its config."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from isns.policy import Policy
from isns.registry import Registry
from isns.server import IsnsServer
from tests.e2e.conftest import need
from tests.e2e.peers import LOOPBACK, bootsvc_serve, free_port, isnsadm, isnsd, stop
from tests.loop_thread import serving

pytestmark = pytest.mark.e2e
P = "iqn.2026-11.test"
HOST, OTHER, ADMIN, CONSOLE = f"{P}:host1", f"{P}:host2", f"{P}:isnsadm", f"{P}:console"
T1, T2 = f"{P}:disk1", f"{P}:disk2"


@dataclass(frozen=True)
class Op:
    """One isnsadm call: who asks (its SourceName), the arguments ({dd}:
    the DD the last --dd-register made, {tmp}: the test's directory), and
    whether bootsvc's strict policy lets it succeed."""

    source: str
    args: tuple[str, ...]
    strict: bool = True

    def text(self) -> str:
        return f"{self.source.rsplit(':', 1)[1]}: isnsadm {' '.join(self.args)}"


def op(source: str, *args: str, strict: bool = True) -> Op:
    return Op(source, args, strict)


# The everyday operations; isnsadm names a registration's source after its first node
# (target=disk1 registers as disk1), else after SourceName.
OPS = (
    op(HOST, "--register", "entity=E1", f"initiator={HOST}"),  # 1 a new entity
    op(HOST, "--register", "entity=E1", "portal=127.0.0.1:860"),  # 2 its own entity, one call at a time
    op(ADMIN, "--register", "entity=E2", f"target={T1}"),  # 3 a new entity for a target
    op(ADMIN, "--register", "entity=E2", "portal=127.0.0.1:3260", strict=False),  # 4 add to another's entity
    op(ADMIN, "--register", "entity=E2", f"target={T2},alias=disk2", strict=False),  # 5 add a node to it
    op(ADMIN, "--register", "--replace", "entity=E2", f"target={T1}", f"target={T2}",
       "portal=127.0.0.1:3260"),  # 6 replace an entity (by its own node)
    op(HOST, "--register", f"initiator={HOST},alias=host one", strict=False),  # 7 update, no entity named
    op(ADMIN, "--query", f"iscsi-name={T1}"),  # 8
    op(HOST, "--query", f"iscsi-name={T1}"),  # 9
    op(ADMIN, "--list", "nodes"),  # 10
    op(ADMIN, "--list", "entities"),  # 11
    op(ADMIN, "--list", "portals"),  # 12
    op(HOST, "--dd-register", "dd-name=dd1", f"member-name={HOST}", f"member-name={T1}", strict=False),  # 13
    op(ADMIN, "--list", "dds"),  # 14
    op(HOST, "--dd-register", "dd-id={dd}", f"member-name={T2}", strict=False),  # 15 add a member
    op(HOST, "--list", "nodes"),  # 16 through the DD
    op(HOST, "--list", "dds"),  # 17
    op(HOST, "--dd-deregister", "{dd}", f"member-name={T2}", strict=False),  # 18 remove a member
    op(HOST, "--dd-deregister", "{dd}", f"member-name={HOST}", strict=False),  # 19 leave it (see OPS_NOTE)
    op(ADMIN, "--deregister", f"iscsi-name={T2}", strict=False),  # 20 another's node
    op(ADMIN, "--deregister", "portal=127.0.0.1:3260", strict=False),  # 21 another's portal
    op(HOST, "--dd-deregister", "{dd}", strict=False),  # 22 remove the DD
    op(ADMIN, "--deregister", "eid=E2", strict=False),  # 23 another's entity
    op(HOST, "--deregister", f"iscsi-name={HOST}"),  # 24 its own node (its entity goes with it)
    op(OTHER, "--register", f"initiator={OTHER}"),  # 25 a server-named entity
    op(OTHER, "--register", "portal=127.0.0.1:861"),  # 26 joins the source's entity on isnsd and open
    op(OTHER, "--list", "entities"),  # 27
    op(OTHER, "--list", "portals"),  # 28
    op(OTHER, "--dd-register", "dd-name=dd2", f"member-name={OTHER}", f"member-name={T1}", strict=False),  # 29
    op(CONSOLE, "--register", f"control={CONSOLE}"),  # 30 a self-declared control node
    op(CONSOLE, "--list", "nodes"),  # 31 sees the DD's nodes on isnsd and open
    op(ADMIN, "--list", "nodes"),  # 32
    op(ADMIN, "--enroll", OTHER, "--keyfile={tmp}/host2.key"),  # 33 a client's policy (see OPS_NOTE)
)

# what isnsadm prints of an object that both servers must agree on (indexes and times differ)
FIELD = re.compile(r"(iSCSI name|iSCSI alias|iSCSI node type|Entity identifier|Portal IP address|"
                   r"Portal TCP/UDP port|DD ID|DD name|DD member iSCSI name|Portal group name|"
                   r"Portal group tag) = (.*)")
OBJECT = re.compile(r"^\s*(?:Object \d+:|object\[\d+\] = .*|Registered DD:)\s*$", re.M)
NAMED_BY_US = {"E1", "E2"}


@dataclass(frozen=True)
class Outcome:
    rc: int
    objects: frozenset[frozenset[tuple[str, str]]]  # what the output shows, as comparable values
    output: str


def visible(output: str) -> frozenset[frozenset[tuple[str, str]]]:
    """The objects isnsadm printed, each as its fields: server-chosen EIDs
    as one value; isnsd's synthetic default DD (ID 0, listed to a source
    in no DD) left out, as bootsvc lists only registered DDs."""
    objects = []
    for chunk in OBJECT.split(output)[1:]:
        fields = {(k, '"(server-named)"' if k == "Entity identifier" and v.strip('"') not in NAMED_BY_US else v)
                  for k, v in FIELD.findall(chunk)}
        if ("DD ID", "0") in fields:
            continue
        objects.append(frozenset((k, v) for k, v in fields if k != "DD ID"))
    return frozenset(o for o in objects if o)


def run_ops(port: int, work: Path) -> list[Outcome]:
    outcomes = []
    dd = "0"
    for o in OPS:
        args = [a.replace("{dd}", dd).replace("{tmp}", str(work)) for a in o.args]
        rc, out = isnsadm(work, port, o.source, *args)
        made = re.search(r"DD ID = (\d+)", out)
        if args[0] == "--dd-register" and rc == 0 and made:
            dd = made.group(1)
        outcomes.append(Outcome(rc, visible(out), out))
    return outcomes


def on_bootsvc(policy: Policy, work: Path) -> list[Outcome]:
    """OPS against bootsvc's iSNS server (no control nodes, nodes in no DD
    see each other as on isnsd's DefaultDiscoveryDomain = 1)."""
    registry = Registry(default_dd_visible=True, policy=policy)
    srv = IsnsServer(registry, LOOPBACK, free_port())
    with serving(srv.start, srv.stop):
        return run_ops(srv.port, work)


def on_isnsd(work: Path) -> list[Outcome]:
    with isnsd(work, ADMIN, default_dd=True) as port:
        return run_ops(port, work)


def in_dir(work: Path, run: Callable[[Path], list[Outcome]]) -> list[Outcome]:
    """``run`` with its own directory as the working one: isnsadm --enroll
    writes a key file there whatever --keyfile says."""
    work.mkdir()
    here = os.getcwd()
    os.chdir(work)
    try:
        return run(work)
    finally:
        os.chdir(here)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[Outcome]]]:
    need("isnsadm", "isnsd")
    base = tmp_path_factory.mktemp("isns-policy")
    yield {"isnsd": in_dir(base / "isnsd", on_isnsd),
           "strict": in_dir(base / "strict", lambda w: on_bootsvc(Policy.STRICT, w)),
           "open": in_dir(base / "open", lambda w: on_bootsvc(Policy.OPEN, w))}


def test_open_does_what_isnsd_does(outcomes: dict[str, list[Outcome]]) -> None:
    """Every operation isnsd takes, open takes, and shows the same objects
    (a query: at least isnsd's, as bootsvc answers a node's query with its
    entity's other nodes too)."""
    for n, (o, ref, got) in enumerate(zip(OPS, outcomes["isnsd"], outcomes["open"], strict=True), 1):
        assert ref.rc == 0, f"{n} {o.text()} fails on isnsd:\n{ref.output}"
        assert got.rc == 0, f"{n} {o.text()} fails on bootsvc open:\n{got.output}"
        if o.args[0] == "--query":
            assert ref.objects <= got.objects, f"{n} {o.text()}:\nisnsd:\n{ref.output}\nopen:\n{got.output}"
        else:
            assert ref.objects == got.objects, f"{n} {o.text()}:\nisnsd:\n{ref.output}\nopen:\n{got.output}"
    # the self-declared control node sees host2, which is in a DD it is not in
    seen = re.findall(r'iSCSI name = "([^"]+)"', outcomes["open"][30].output)
    assert sorted(seen) == sorted([CONSOLE, OTHER]), outcomes["open"][30].output


def test_strict_refuses_changes_to_what_is_not_the_sources(outcomes: dict[str, list[Outcome]]) -> None:
    for n, (o, got) in enumerate(zip(OPS, outcomes["strict"], strict=True), 1):
        assert (got.rc == 0) == o.strict, f"{n} {o.text()} on bootsvc strict:\n{got.output}"
    refused = {n: got.output for n, (o, got) in enumerate(zip(OPS, outcomes["strict"]), 1) if not o.strict}
    assert "unauthorized" in refused[4].lower() and "unauthorized" in refused[13].lower(), refused


def test_serve_takes_the_policy_from_its_config(tmp_path: Path) -> None:
    """``isns.policy: open`` in bootsvc.yaml: a source adds a portal to an
    entity it is no node of, which strict refuses (OPS 4)."""
    need("isnsadm")
    port = free_port()
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\niqn_prefix: {P}\nlisten:\n  isns: {LOOPBACK}:{port}\n"
                   "isns:\n  policy: open\n  default_dd: visible\n")
    proc = bootsvc_serve(cfg, tmp_path / "serve.log", "ready:")
    try:
        rc, out = isnsadm(tmp_path, port, ADMIN, "--register", "entity=E2", f"target={T1}")
        assert rc == 0, out
        rc, out = isnsadm(tmp_path, port, ADMIN, "--register", "entity=E2", "portal=127.0.0.1:3260")
        assert rc == 0, out
        rc, out = isnsadm(tmp_path, port, ADMIN, "--query", f"iscsi-name={T1}")
        assert rc == 0 and "3260/tcp" in out, out
    finally:
        stop(proc)
