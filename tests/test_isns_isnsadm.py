"""bootsvc's iSNS server against open-isns's isnsadm (Debian
open-isns-utils): registration of entities, nodes and portals, queries and
listings, deregistration, discovery domains, and what each initiator may
see through its DDs. Plus malformed PDUs on the wire."""

from __future__ import annotations

import re
import shutil
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from isns.registry import Registry
from isns.server import IsnsServer
from tests.e2e.peers import LOOPBACK, free_port, isnsadm
from tests.e2e.peers import isns_names as names
from tests.loop_thread import serving

pytestmark = pytest.mark.skipif(not shutil.which("isnsadm"), reason="needs isnsadm (open-isns-utils)")
ADMIN = "iqn.2026-11.test:isnsadm"
TARGET1, TARGET2 = "iqn.2026-11.test:boot.node01", "iqn.2026-11.test:boot.node02"
NODE1, NODE2 = "iqn.2026-11.test:node01", "iqn.2026-11.test:node02"


@pytest.fixture
def server() -> Iterator[tuple[Registry, int]]:
    registry = Registry(control_nodes={ADMIN})
    srv = IsnsServer(registry, LOOPBACK, free_port())
    with serving(srv.start, srv.stop):
        yield registry, srv.port


def test_register_query_list_dd_and_deregister(server: tuple[Registry, int], tmp_path: Path) -> None:
    registry, port = server

    def admin(*args: str) -> str:
        rc, out = isnsadm(tmp_path, port, ADMIN, *args)
        assert rc == 0, out
        return out

    admin("--register", "entity=bootsvc", f"target={TARGET1},alias=node01 disk", f"target={TARGET2}",
          "portal=127.0.0.1:3260")
    rc, out = isnsadm(tmp_path, port, NODE1, "--register", f"initiator={NODE1}")
    assert rc == 0, out
    rc, out = isnsadm(tmp_path, port, NODE2, "--register", f"initiator={NODE2}")
    assert rc == 0, out
    assert sorted(names(admin("--list", "nodes"))) == sorted([TARGET1, TARGET2, NODE1, NODE2])
    entities = admin("--list", "entities")
    assert 'Entity identifier = "bootsvc"' in entities and entities.count("Entity identifier") == 3
    portals = admin("--list", "portals")
    assert "Portal IP address = 127.0.0.1" in portals and "3260/tcp" in portals
    q = admin("--query", f"iscsi-name={TARGET1}")
    assert 'iSCSI alias = "node01 disk"' in q and "Portal IP address = 127.0.0.1" in q

    out = admin("--dd-register", "dd-name=boot-node01", f"member-name={TARGET1}", f"member-name={NODE1}")
    dd_id = re.search(r"DD ID = (\d+)", out)
    assert dd_id is not None, out
    assert 'DD name = "boot-node01"' in admin("--list", "dds")

    # node01 sees its own DD only; node02 (in no DD) sees the nodes in no DD: the default DD
    rc, out = isnsadm(tmp_path, port, NODE1, "--list", "nodes")
    assert rc == 0 and sorted(names(out)) == sorted([TARGET1, NODE1]), out
    rc, out = isnsadm(tmp_path, port, NODE1, "--query", f"iscsi-name={TARGET2}")
    assert rc == 0 and TARGET2 not in out, out
    rc, out = isnsadm(tmp_path, port, NODE2, "--list", "nodes")
    assert rc == 0 and sorted(names(out)) == sorted([TARGET2, NODE2]), out
    registry.default_dd_visible = False
    rc, out = isnsadm(tmp_path, port, NODE2, "--list", "nodes")
    assert rc == 0 and names(out) == [NODE2], out

    # only control nodes change DDs
    rc, out = isnsadm(tmp_path, port, NODE2, "--dd-register", "dd-name=mine", f"member-name={TARGET1}")
    assert rc != 0 and "unauthorized" in out.lower(), out

    admin("--dd-deregister", dd_id.group(1), f"member-name={NODE1}")
    assert NODE1 not in admin("--list", "dds")
    admin("--dd-deregister", dd_id.group(1))
    assert "DD name" not in admin("--list", "dds")

    # a node may not deregister another entity's node; a control node may
    rc, out = isnsadm(tmp_path, port, NODE2, "--deregister", f"iscsi-name={NODE1}")
    assert rc != 0, out
    admin("--deregister", f"iscsi-name={NODE1}")
    assert NODE1 not in names(admin("--list", "nodes"))
    assert NODE1 not in registry.nodes and len(registry.entities) == 2  # its entity went with it
    admin("--deregister", "entity-id=bootsvc")
    assert sorted(names(admin("--list", "nodes"))) == [NODE2]


def test_malformed_pdus_get_an_error_or_a_close(server: tuple[Registry, int], tmp_path: Path) -> None:
    _, port = server
    bad = [
        struct.pack("!HHHHHH", 1, 2, 6, 0x8C00, 9, 0) + b"\0" * 6,  # length not a multiple of 4
        struct.pack("!HHHHHH", 7, 2, 0, 0x8C00, 9, 0),  # iSNSP version 7
        struct.pack("!HHHHHH", 1, 2, 8, 0x8C00, 9, 0) + struct.pack("!II", 32, 4000),  # attribute past the end
        struct.pack("!HHHHHH", 1, 2, 4, 0x8C00, 9, 3) + b"\0" * 4,  # sequence 3 first
    ]
    for pdu in bad:
        with socket.create_connection((LOOPBACK, port), timeout=5) as s:
            s.sendall(pdu)
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        if reply:  # a response to function 2 with status 2 (message format error), then the close
            assert struct.unpack("!HH", reply[2:4] + reply[12:14])[0] == 0x8002, reply.hex()
            assert struct.unpack("!I", reply[12:16])[0] == 2, reply.hex()
    # a request without a source is answered, not dropped
    with socket.create_connection((LOOPBACK, port), timeout=5) as s:
        s.sendall(struct.pack("!HHHHHH", 1, 2, 8, 0x8C00, 10, 0) + struct.pack("!II", 0, 0))
        reply = s.recv(4096)
        assert struct.unpack("!I", reply[12:16])[0] == 7  # source absent
    rc, out = isnsadm(tmp_path, port, ADMIN, "--list", "nodes")
    assert rc == 0, out  # still serving
