"""MODE SENSE / MODE SELECT pages of a disk (SPC-4 §7.5, SBC-3 §6.4)."""

from __future__ import annotations

from .sense import PARAMETER_LIST_LENGTH_ERROR, ScsiError

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


SWP = 0x08  # byte 4 of the control page: software write protect (SPC-4 §7.5.8)


def control_page(pc: int, swp: bool = False) -> bytes:
    """SPC-4 §7.5.8: fixed-format sense; SWP the one changeable field
    (MODE SELECT sets it: the LU refuses writes, WRITE PROTECTED)."""
    body = bytearray(0x0A)
    if pc == PC_CHANGEABLE:
        body[2] = SWP
    else:
        body[0] = 0x02  # TST 000, GLTSD 1 (no log saving)
        body[1] = 0x10  # queue algorithm modifier 1: unrestricted reordering
        body[2] = SWP if swp and pc == PC_CURRENT else 0
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


def pages(code: int, pc: int, swp: bool = False) -> bytes | None:
    """The page(s) for ``code`` (0x3F: all), or None if unsupported."""
    def page(c: int) -> bytes:
        return control_page(pc, swp) if c == CONTROL else PAGES[c](pc)
    if code == ALL_PAGES:
        return b"".join(page(c) for c in sorted(PAGES))
    return page(code) if code in PAGES else None


def selected_swp(data: bytes, ten: bool) -> bool | None:
    """The SWP bit a MODE SELECT (6)/(10) parameter list sets (SPC-4
    §6.9, §7.5.5), or None if it carries no control page. The header and
    block descriptors are skipped, and so are the other pages (none of
    their fields is changeable; restating them is no error); a page that
    runs past the list is a length error."""
    header = 8 if ten else 4
    if len(data) < header:
        return None if not data else _too_short()
    pos = header + (int.from_bytes(data[6:8], "big") if ten else data[3])
    swp = None
    while pos < len(data):
        if pos + 2 > len(data):
            _too_short()
        code, subpage = data[pos] & 0x3F, bool(data[pos] & 0x40)
        length = (4 + int.from_bytes(data[pos + 2:pos + 4], "big")) if subpage else 2 + data[pos + 1]
        if pos + length > len(data):
            _too_short()
        if code == CONTROL and not subpage and length >= 5:
            swp = bool(data[pos + 4] & SWP)
        pos += length
    return swp


def _too_short() -> None:
    raise ScsiError(PARAMETER_LIST_LENGTH_ERROR)


def block_descriptor(blocks: int, block_size: int) -> bytes:
    """Short mode parameter block descriptor (SBC-3 §6.4.2)."""
    return min(blocks, 0xFFFFFFFF).to_bytes(4, "big") + b"\0" + block_size.to_bytes(3, "big")
