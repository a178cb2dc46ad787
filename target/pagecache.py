"""Keep ``sendfile`` off the disk: make sure file data is in the page cache
before the event loop sends it.

``preadv2(RWF_NOWAIT)`` reads only what is cached and fails otherwise, so a
one-byte probe at the start and the end of an extent tells, in two cheap
system calls, whether the loop can send it without waiting. Sequential
readahead makes "both ends cached" a good proxy for "all cached"; a false
positive costs one short wait in sendfile, never wrong data. What is not
cached is read in the thread pool first.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from .backend import FileExtent, Segment

_PROBE = bytearray(1)
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_PAGE = 4096


def is_cached(fd: int, offset: int, length: int) -> bool:
    if not _NOWAIT:
        return False
    try:
        for pos in {offset, offset + length - 1}:
            if os.preadv(fd, [_PROBE], pos, _NOWAIT) != 1:
                return pos >= os.fstat(fd).st_size  # past EOF reads as zeros: nothing to wait for
    except BlockingIOError:
        return False
    except OSError:
        return False
    return True


def _populate(fd: int, offset: int, length: int) -> None:
    """Blocking: bring the extent into the page cache."""
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
    buf = bytearray(min(length, 1 << 20))
    end = offset + length
    pos = offset - offset % _PAGE
    while pos < end:
        n = os.preadv(fd, [buf], pos)
        if n <= 0:
            break
        pos += n


# Extents up to this size are read into memory rather than sent with
# sendfile: one read system call replaces the residency probe, and the
# bytes join the header in one sendmsg with other responses.
SMALL_EXTENT = 64 << 10


def resolve_cached(segments: Sequence[Segment]) -> list[Segment] | None:
    """``segments`` ready to send without touching the disk: small extents
    read from the page cache, large ones left for sendfile once known to be
    cached. None when something would have to wait for the disk."""
    out: list[Segment] = []
    for s in segments:
        if not isinstance(s, FileExtent):
            out.append(s)
        elif s.length <= SMALL_EXTENT and _NOWAIT:
            buf = bytearray(s.length)
            try:
                n = os.preadv(s.fd, [buf], s.offset, _NOWAIT)
            except OSError:
                return None
            if n < s.length:
                if n == 0 and s.offset >= os.fstat(s.fd).st_size:
                    n = s.length  # past the end of a short file: zeros
                else:
                    return None
            out.append(buf)
        elif is_cached(s.fd, s.offset, s.length):
            out.append(s)
        else:
            return None
    return out


async def warm(segments: Sequence[Segment]) -> None:
    """Return once every file extent in ``segments`` is (very likely) cached."""
    cold = [s for s in segments if isinstance(s, FileExtent) and not is_cached(s.fd, s.offset, s.length)]
    if not cold:
        return
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(None, _populate, s.fd, s.offset, s.length) for s in cold))
