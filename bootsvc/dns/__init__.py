"""Authoritative DNS for the machines\x27 names (bootsvc/dns/zone.py)."""
