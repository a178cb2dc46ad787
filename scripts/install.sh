#!/usr/bin/env bash
# `make install`: bootsvc as the systemd service of systemd/bootsvc.service,
# on Debian 12, as root, from this checkout:
#   - the Debian packages it runs with (scripts/install-runtime.sh; no test peers),
#   - bootsvc and its Python libraries in the venv /opt/bootsvc (argument 1),
#     made from Debian's /usr/bin/python3 so the service's user can run it,
#   - /usr/local/bin/bootsvc, the unit's ExecStart, linked to the venv's,
#   - the unit in /etc/systemd/system, its user (systemd/bootsvc.sysusers as
#     /etc/sysusers.d/bootsvc.conf, created now), /etc/bootsvc for the config
#     (root:bootsvc 0750), README.md and LICENSE in /usr/share/doc/bootsvc.
# It starts nothing. Then: write /etc/bootsvc/bootsvc.yaml (root:bootsvc 0640),
# `bootsvc check -c /etc/bootsvc/bootsvc.yaml`, `systemctl enable --now bootsvc`.
# Run it again to upgrade: the venv's bootsvc is replaced, the config kept.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-/opt/bootsvc}
bin=/usr/local/bin/bootsvc
if ! grep -q "^ExecStart=$bin " "$src/systemd/bootsvc.service"; then
    echo "install: systemd/bootsvc.service does not run $bin: make them agree" >&2
    exit 1
fi

bash "$src/scripts/install-runtime.sh"
if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "$src"
ln -sfn "$venv/bin/bootsvc" "$bin"

install -D -m 0644 "$src/systemd/bootsvc.sysusers" /etc/sysusers.d/bootsvc.conf
systemd-sysusers /etc/sysusers.d/bootsvc.conf
install -d -o root -g bootsvc -m 0750 /etc/bootsvc
install -D -m 0644 "$src/systemd/bootsvc.service" /etc/systemd/system/bootsvc.service
install -D -m 0644 -t /usr/share/doc/bootsvc "$src/README.md" "$src/LICENSE"
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
echo "install: $("$bin" --version) in $venv, $bin, the unit bootsvc.service and its user bootsvc."
echo "Next: write /etc/bootsvc/bootsvc.yaml (root:bootsvc 0640), then"
echo "      bootsvc check -c /etc/bootsvc/bootsvc.yaml && systemctl enable --now bootsvc"
