"""MODE SENSE / MODE SELECT pages of a disk (SPC-4 §7.5, SBC-3 §6.4)."""

from __future__ import annotations

CACHING = 0x08
CONTROL = 0x0A
INFORMATIONAL_EXCEPTIONS = 0x1C
ALL_PAGES = 0x3F

PC_CURRENT, PC_CHANGEABLE, PC_DEFAULT, PC_SAVED = 0, 1, 2, 3


def caching_page(pc: int) -> bytes:
    """SBC-3 §6.4.5: write-back cache on (WCE): writes are acknowledged
    from the page cache and made durable by SYNCHRONIZE CACHE or FUA."""
    body = bytearray(0x12)
    if pc != PC_CHANGEABLE:
        body[0] = 0x04  # WCE
    return bytes([CACHING, len(body)]) + body


def control_page(pc: int) -> bytes:
    """SPC-4 §7.5.8: fixed-format sense, no software write protect."""
    body = bytearray(0x0A)
    if pc != PC_CHANGEABLE:
        body[0] = 0x02  # TST 000, GLTSD 1 (no log saving)
        body[1] = 0x10  # queue algorithm modifier 1: unrestricted reordering
        body[6:8] = (0xFFFF).to_bytes(2, "big")  # busy timeout period: unlimited
    return bytes([CONTROL, len(body)]) + body


def informational_exceptions_page(pc: int) -> bytes:
    """SPC-4 §7.5.11: no exception reporting."""
    return bytes([INFORMATIONAL_EXCEPTIONS, 0x0A]) + bytes(0x0A)


PAGES = {
    CACHING: caching_page,
    CONTROL: control_page,
    INFORMATIONAL_EXCEPTIONS: informational_exceptions_page,
}


def pages(code: int, pc: int) -> bytes | None:
    """The page(s) for ``code`` (0x3F: all), or None if unsupported."""
    if code == ALL_PAGES:
        return b"".join(PAGES[c](pc) for c in sorted(PAGES))
    make = PAGES.get(code)
    return make(pc) if make else None


def block_descriptor(blocks: int, block_size: int) -> bytes:
    """Short mode parameter block descriptor (SBC-3 §6.4.2)."""
    return min(blocks, 0xFFFFFFFF).to_bytes(4, "big") + b"\0" + block_size.to_bytes(3, "big")
