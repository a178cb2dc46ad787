"""Consistency check and leak repair of a qcow2 image, the same judgement
``qemu-img check`` makes: count every reference the metadata holds to each
host cluster and compare with the stored refcounts.

- stored < referenced: corruption (a cluster could be handed out twice); not
  repaired here, the message says to use ``qemu-img check -r all``;
- stored > referenced: a leak (space lost, data safe), what a crash at the
  wrong moment leaves behind; ``repair`` lowers the counts.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from .qcow2 import EXT_BITMAPS, L1_OFFSET_MASK, L2_OFFSET_MASK, Kind, Qcow2Backend, Qcow2Error
from .qcow2_refcount import Refcounts


@dataclass
class CheckReport:
    image: str
    corruptions: list[str] = field(default_factory=list)
    leaks: int = 0
    leaks_fixed: int = 0
    clusters_used: int = 0
    cluster_size: int = 0
    # how a leak is counted in the report, and what else was found (a
    # disk in a Ceph pool: stale items, each described; bootsvc/ceph_images.py)
    leak_kind: str = "leaked cluster(s)"
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.corruptions and self.leaks == self.leaks_fixed


def check(img: Qcow2Backend, repair: bool = False) -> CheckReport:
    """Check ``img``; with ``repair`` (image open for writing) fix leaks."""
    h = img.header
    if h.nb_snapshots or EXT_BITMAPS in h.extensions:
        raise Qcow2Error(f"{img.path}: images with internal snapshots or bitmaps are checked by qemu-img check")
    if repair and img.refs is None:
        raise Qcow2Error(f"{img.path}: open the image for writing to repair it")
    refs = img.refcounts()
    report = CheckReport(img.path, cluster_size=img.cluster_size)
    expected = _references(img, refs, report)
    stored = {c for c in range(refs.end) if refs.get(c)}
    for cluster in sorted(stored | set(expected)):
        have, want = refs.get(cluster), expected[cluster]
        if have < want:
            report.corruptions.append(f"cluster {cluster}: refcount {have}, referenced {want} times")
        elif have > want:
            report.leaks += 1
            if repair:
                refs.set(cluster, want)
                report.leaks_fixed += 1
    if report.leaks_fixed:
        refs.write_blocks()
        img.sync()
        refs.rescan()
    report.clusters_used = refs.used
    return report


def _references(img: Qcow2Backend, refs: Refcounts, report: CheckReport) -> Counter[int]:
    """How many times the metadata refers to each host cluster; references
    that cannot be right are reported as corruptions."""
    h = img.header
    cb, cs = img.cluster_bits, img.cluster_size
    file_clusters = -(-os.fstat(img.fd).st_size // cs)
    expected: Counter[int] = Counter()

    def refer(offset: int, length: int, what: str) -> bool:
        if offset % cs and what != "compressed cluster":
            report.corruptions.append(f"{what} at {offset:#x} is not cluster aligned")
            return False
        first, last = offset >> cb, (offset + length - 1) >> cb
        if last >= file_clusters:
            report.corruptions.append(f"{what} at {offset:#x} lies beyond the end of the file")
            return False
        expected.update(range(first, last + 1))
        return True

    refer(0, cs, "header")
    refer(h.l1_table_offset, 8 * h.l1_size, "L1 table")
    refer(h.refcount_table_offset, h.refcount_table_clusters * cs, "refcount table")
    for offset in refs.table:
        if offset:
            refer(offset, cs, "refcount block")
    for l1_entry in img.l1:
        l2_offset = l1_entry & L1_OFFSET_MASK
        if not l2_offset or not refer(l2_offset, cs, "L2 table"):
            continue
        for entry in img.l2_table(l2_offset):
            kind = img.kind_of(entry)
            if kind is Kind.COMPRESSED:
                host = img.host_clusters(entry)
                refer(host.start << cb, len(host) << cb, "compressed cluster")
            elif kind in (Kind.DATA, Kind.ZERO) and entry & L2_OFFSET_MASK:
                refer(entry & L2_OFFSET_MASK, cs, "data cluster")
    return expected
