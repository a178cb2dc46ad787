#!/usr/bin/env bash
# A throw-away one-node Ceph cluster on 127.0.0.1 (1 mon, 1 mgr, 1 memstore
# OSD, no auth) under a temporary directory, for trying bootsvc's ceph
# storage backend: prints CEPH_CONF=<its ceph.conf>, runs until Ctrl-C, then
# stops its own daemons and removes the directory. Needs ceph-mon ceph-mgr
# ceph-osd ceph-common. Options: --pool NAME (an RBD pool, repeatable),
# --dir DIR, --stdin (also stop at end of input). See tests/ceph_cluster.py.
set -euo pipefail
python=/usr/bin/python3
[ -x "$python" ] || python=python3
exec "$python" "$(dirname "$0")/../tests/ceph_cluster.py" "$@"
