"""The service runner's process-wide parts: the loop's handler for
descriptor exhaustion says it in one line at most once a second."""

from __future__ import annotations

import asyncio
import errno

from bootsvc.service import QuietExhaustion


def test_descriptor_exhaustion_is_said_once_a_second() -> None:
    said: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handler = QuietExhaustion(said.append, interval=0.2)
        error = OSError(errno.EMFILE, "Too many open files")
        for _ in range(50):
            handler(loop, {"message": "socket.accept() out of system resource", "exception": error})
        await asyncio.sleep(0.25)
        handler(loop, {"message": "socket.accept() out of system resource", "exception": error})

    asyncio.run(main())
    assert len(said) == 2 and "Too many open files" in said[0] and "(49 more since)" in said[1]
