"""DHCP and proxyDHCP for network boot (RFC 2131, 2132, 4578 PXE options):
scapy's BOOTP/DHCP layers as the codec (message.py), a lease store in
SQLite (leases.py), the decisions (responder.py), asyncio UDP (service.py)."""
