"""The DHCP socket layer on loopback: the proxyDHCP port (4011) answers a
ProxyDHCPREQUEST at the address and port it came from, and garbage on the
socket is counted, not fatal."""

from __future__ import annotations

import socket

from scapy.layers.dhcp import BOOTP, DHCP

from bootsvc.dhcp.leases import LeaseStore
from bootsvc.dhcp.message import IPv4
from bootsvc.dhcp.responder import Machines, Mode, Responder
from bootsvc.dhcp.service import DhcpService
from tests.e2e.peers import LOOPBACK, free_port
from tests.loop_thread import serving
from tests.test_dhcp_responder import IPXE, NODE, SUBNET, planner


def test_proxy_port_answers_at_the_source() -> None:
    responder = Responder([SUBNET], Machines({NODE.mac: NODE}), LeaseStore(":memory:"), planner, Mode.PROXY)
    port = free_port()
    service = DhcpService(responder, SUBNET.server, None, port, reply_to_source=True)
    with serving(service.start, service.stop), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind((LOOPBACK, 0))
        client.settimeout(5)
        client.sendto(b"\x01garbage", (LOOPBACK, port))
        request = BOOTP(op=1, xid=9, ciaddr="10.77.0.50", chaddr=bytes.fromhex(NODE.mac.replace(":", "")) + bytes(10))
        request /= DHCP(options=[("message-type", "request"), ("server_id", str(SUBNET.server)), *IPXE, "end"])
        client.sendto(bytes(request), (LOOPBACK, port))
        reply = BOOTP(client.recv(2048))
    opts = {o[0]: o[1] for o in reply[DHCP].options if isinstance(o, tuple)}
    assert reply.xid == 9 and opts["message-type"] == 5 and reply.yiaddr == "0.0.0.0"  # an ACK, no address
    assert opts["root_disk_path"] == f"iscsi:{SUBNET.server}::3260::{NODE.target_iqn}".encode()
    assert responder.counters["dropped_malformed"] == 1 and IPv4(opts["server_id"]) == SUBNET.server
