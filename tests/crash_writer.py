"""The victim of the crash loop (tests/test_qcow2_write.py): opens a qcow2
image for writing and runs random writes, zeroings and flushes until killed,
logging each step to a file that survives the kill:

    W <offset> <length> <seed>   before a write of Random(seed).randbytes(length)
    Z <offset> <length>          before a zeroing (UNMAP / WRITE SAME)
    F                            after a flush returned: all before it is durable

    python3 tests/crash_writer.py IMAGE LOG SEED OPS
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from target.qcow2 import open_image


def main() -> None:
    image, log_path, seed, ops = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    img = open_image(image, read_only=False)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    rnd = random.Random(seed)
    sectors = img.size // 512
    for _ in range(ops):
        op = rnd.random()
        offset = rnd.randrange(sectors) * 512
        length = min(rnd.choice((512, 4096, 12288, 65536, 131072 + 1024)), img.size - offset)
        if op < 0.75:
            data_seed = rnd.randrange(1 << 30)
            os.write(log, f"W {offset} {length} {data_seed}\n".encode())
            fua = rnd.random() < 0.05
            img.write_sync(offset, random.Random(data_seed).randbytes(length), fua=fua)
            if fua:  # FUA flushes everything before it too (qcow2.py flushes the tables)
                os.write(log, b"F\n")
        elif op < 0.9:
            os.write(log, f"Z {offset} {length}\n".encode())
            img.zero_sync(offset, length)
        else:
            img.flush_sync()
            os.write(log, b"F\n")
    img.close()
    os.write(log, b"F\n")


if __name__ == "__main__":
    main()
