"""Read-only TFTP for iPXE binaries and per-machine scripts (RFC 1350, with
the option extension RFC 2347: blksize RFC 2348, tsize RFC 2349, windowsize
RFC 7440), tftpy's packet classes as the codec inside asyncio."""

# tftp.busy_poll_us's default: how long a lone transfer polls for each ACK
# before it sleeps (service._Solo). Here, not in service.py, so the config
# reads it without loading the service and tftpy.
BUSY_POLL_US = 1000
