"""`bootsvc serve` as a network's DNS server, never an open resolver: in
a namespace of its own with dnsmasq as its upstream, asked by dig from a
second namespace with two addresses, one in ``dns.allow`` and one not.
The allowed one has names outside the domain forwarded; the other is
REFUSED them but still gets the domain; with the upstream gone, SERVFAIL
comes at once (no hang), and the log says each once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.conftest import need
from tests.e2e.netns import can_make_namespaces, namespaces, veth
from tests.e2e.peers import bootsvc_serve, dnsmasq_dns, stop

pytestmark = pytest.mark.e2e

SERVER, ALLOWED, STRANGER = "10.250.0.1", "10.250.0.2", "10.250.0.3"


def test_serve_forwards_for_allowed_clients_only(tmp_path: Path) -> None:
    need("dig", "dnsmasq")
    if (why := can_make_namespaces()) is not None:
        pytest.skip(why)
    with namespaces("dns-srv", "dns-cli") as (srv, cli):
        _, client = veth(srv, "dns0", cli, "dns1", a_addr=f"{SERVER}/24")
        for address in (ALLOWED, STRANGER):
            client.run("ip", "addr", "add", f"{address}/24", "dev", "dns1", check=True, timeout=30)

        def dig(source: str, *args: str) -> str:
            return client.run("dig", f"@{SERVER}", "-b", source, "+time=5", "+tries=1", *args, timeout=30).stdout

        with dnsmasq_dns(tmp_path, ns=srv) as upstream:
            cfg = tmp_path / "bootsvc.yaml"
            cfg.write_text(f"state_dir: {tmp_path / 'state'}\ndomain: lab\nlisten:\n  dns: {SERVER}:53\n"
                           f"dns:\n  forward: [127.0.0.1:{upstream}]\n  allow: [{ALLOWED}/32]\n")
            log = tmp_path / "serve.log"
            proc = bootsvc_serve(cfg, log, "dns serving", netns=srv)
            try:
                out = dig(ALLOWED, "www.example.test", "A")
                assert "status: NOERROR" in out and "192.0.2.7" in out and " ra" in out, out
                out = dig(STRANGER, "www.example.test", "A")
                assert "status: REFUSED" in out, out
                out = dig(STRANGER, "+tcp", "other.example.test", "A")
                assert "status: REFUSED" in out, out
                out = dig(STRANGER, "lab", "SOA")  # the domain itself stays answered for everyone
                assert "status: NOERROR" in out and "flags: qr aa rd;" in out, out
                queried = (tmp_path / "dnsmasq-dns.log").read_text()
                assert "www.example.test" in queried and "other.example.test" not in queried
            except BaseException:
                stop(proc)
                raise
        try:
            started = time.monotonic()  # the upstream is gone: ICMP says so, SERVFAIL without waiting
            out = dig(ALLOWED, "gone.example.test", "A")
            assert "status: SERVFAIL" in out and time.monotonic() - started < 3, out
        finally:
            stop(proc)
        text = log.read_text()
        assert "forwarding to 127.0.0.1" in text and f"for loopback, {ALLOWED}/32" in text, text
        assert f"event=dns.refused peer={STRANGER}" in text and "event=dns.upstream_failed" in text, text
