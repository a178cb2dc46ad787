"""Read-only TFTP for iPXE binaries and per-machine scripts (RFC 1350, with
the option extension RFC 2347: blksize RFC 2348, tsize RFC 2349, windowsize
RFC 7440), tftpy's packet classes as the codec inside asyncio."""
