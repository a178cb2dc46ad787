#!/usr/bin/env bash
# Makes Debian's Ceph bindings (python3-rados, python3-rbd: built for
# Debian's /usr/bin/python3 only, not on PyPI) importable from a venv, for
# the ceph storage backend: links just those two extension modules into the
# venv's site-packages. Any CPython 3.11 venv takes them (Debian's 3.11.2 or
# another 3.11.x build: one ABI, the same EXT_SUFFIX), without the rest of
# /usr/lib/python3/dist-packages that --system-site-packages would bring in.
# Does nothing when python3-rbd is not installed; docs/scale-out.md.
set -euo pipefail
venv=${1:?usage: link-ceph-bindings.sh VENV}
dist=/usr/lib/python3/dist-packages
suffix=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("platlib"))')
[ -e "$dist/rbd$suffix" ] || [ -e "$dist/rados$suffix" ] || exit 0
for mod in rados rbd; do
    if [ ! -e "$dist/$mod$suffix" ]; then
        echo "link-ceph-bindings: no $dist/$mod$suffix for this venv's Python (apt install python3-$mod;" \
             "the venv must be CPython of Debian's python3 version)" >&2
        exit 1
    fi
    ln -sfn "$dist/$mod$suffix" "$site/$mod$suffix"
done
"$venv/bin/python" -c 'import rados, rbd' || { echo "link-ceph-bindings: $venv cannot import rados, rbd" >&2; exit 1; }
