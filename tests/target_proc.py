"""The target alone in a process, for tests that measure what an attack
costs it (RSS, descriptors) without the test's own memory in the figure.

    python -m tests.target_proc IMAGE IQN PORT [JSON_KEYWORDS]

JSON_KEYWORDS go to TargetServer. Prints ``ready`` once listening; stops
when its stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys

from target.server import Portal, TargetServer
from target.targets import LunSpec, Target, TargetSpec


async def serve(image: str, iqn: str, port: int, keywords: dict[str, object]) -> None:
    target = Target.open(TargetSpec(iqn, (LunSpec(image),)))
    server = TargetServer([target], [Portal("127.0.0.1", port)], **keywords)  # type: ignore[arg-type]
    await server.start()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)
    await server.stop()


def main() -> None:
    image, iqn, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    keywords = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    asyncio.run(serve(image, iqn, port, keywords))


if __name__ == "__main__":
    main()
