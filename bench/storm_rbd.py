#!/usr/bin/env python3
"""The boot storm's stacks on Ceph (bench/storm.py ``--storage ceph``):
every machine's disk an RBD clone of one protected base snapshot.

- ``bootsvc-rbd``: ``bootsvc serve`` with ``storage: {backend: ceph}``;
  it makes each machine's clone itself when it starts.
- ``tgt-rbd``: dnsmasq and tgtd with its rbd backing store (Debian's
  tgt-rbd), a target per machine on that machine's clone (made here), so
  both read the same base through librbd.

The one-node cluster (tests/ceph_cluster.py) runs in the servers'
namespace: its daemons bind to 127.0.0.1, which is the namespace's own.
Each round gets a fresh pool (base written, snapshot protected, outside
the timed part) that is deleted afterwards, so no round reads what another
copied up. The daemons' CPU is counted apart from the server's: it is part
of what booting from Ceph costs.

Run as a script (inside the namespace, with bootsvc's Python) it writes
the base into a pool and makes the clones::

    python bench/storm_rbd.py CONF POOL BASE_FILE [CLONE ...]
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bootsvc.ceph_images import RbdPool  # noqa: E402
from target.targets import LunSpec, open_backend  # noqa: E402
from tests.ceph_cluster import Cluster  # noqa: E402

BASE = "base"  # the image bootsvc clones for a profile whose base file is base.raw
STACKS = ("bootsvc-rbd", "tgt-rbd")


@contextlib.contextmanager
def pool_with_base(cluster: Cluster, name: str, raw: Path, clones: tuple[str, ...] = ()) -> Iterator[str]:
    """Pool ``name`` holding the base (``raw``'s contents, snapshot
    protected) and ``clones`` of it; removed with everything in it on exit."""
    cluster.create_pool(name)
    try:
        cluster.run_python(str(Path(__file__).resolve()), str(cluster.conf), name, str(raw), *clones)
        yield name
    finally:
        cluster.ceph("osd", "pool", "rm", name, name, "--yes-i-really-really-mean-it", timeout=60)


def storage_yaml(cluster: Cluster, pool: str) -> str:
    """bootsvc's storage section for ``pool``."""
    return f"storage: {{backend: ceph, pool: {pool}, conf: {cluster.conf}}}\n"


def tgt_backing(cluster: Cluster) -> tuple[str, ...]:
    """tgtadm's options for a LUN on tgt's rbd backing store (-b POOL/IMAGE)."""
    return ("--bstype", "rbd", "--bsopts", f"conf={cluster.conf}")


def main(argv: list[str]) -> int:
    conf, pool_name, raw, *clones = argv
    base = open_backend(LunSpec(raw, read_only=True))
    try:
        with RbdPool(pool_name, conf) as pool:
            pool.add_base(BASE, base.size, base.read_sync)
            for name in clones:
                pool.clone(BASE, name)
    finally:
        base.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
