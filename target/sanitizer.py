"""Running a SANITIZE (SBC-3 §5.30) on a backend: the I/O side of
:mod:`target.scsi.sanitize`, which decodes the command and keeps the
logical unit's state without an event loop.

The operation is a task of its own: the command that started it may be
cancelled (its connection dropped) or aborted, and the operation goes on
(SBC-3 §4.11.1). An overwrite is paced to at most ``rate`` bytes a second
and holds one chunk of pattern in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from .backend import Backend
from .scsi.sanitize import CHUNK, RATE, Overwrite, pattern_block


async def overwrite(backend: Backend, size: int, job: Overwrite, block_size: int, rate: int = RATE) -> None:
    """Every block of ``backend`` overwritten ``job.passes`` times, at most
    ``rate`` bytes a second, :data:`CHUNK` bytes in memory."""
    loop = asyncio.get_running_loop()
    start, written = loop.time(), 0
    for n in range(job.passes):
        chunk = memoryview(pattern_block(job.pattern, block_size, job.invert and n % 2 == 1) * (CHUNK // block_size))
        for pos in range(0, size, len(chunk)):
            step = min(len(chunk), size - pos)
            await backend.write(pos, chunk[:step])
            written += step
            ahead = start + written / rate - loop.time()
            if ahead > 0:
                await asyncio.sleep(ahead)
    await backend.flush()


async def erase(backend: Backend, size: int) -> None:
    """BLOCK ERASE / CRYPTOGRAPHIC ERASE: the whole medium deallocated."""
    await backend.discard(0, size)
    await backend.flush()


def start(work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """The operation as a task of its own."""
    return asyncio.get_running_loop().create_task(work)


async def wait(task: asyncio.Task[None]) -> None:
    """Wait for the operation; a cancelled wait does not cancel it."""
    await asyncio.shield(task)


__all__ = ["erase", "overwrite", "start", "wait"]
