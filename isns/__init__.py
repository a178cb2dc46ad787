"""iSNS name server and client (RFC 4171). Importable without :mod:`bootsvc`."""
