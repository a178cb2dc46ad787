#!/usr/bin/env bash
# Provisions the Vagrant lab's server VM (Debian 12), as root: installs
# bootsvc from the repo synced to /bootsvc, builds the demo base image and
# runs `bootsvc serve` as the systemd service of systemd/bootsvc.service
# with vagrant/bootsvc.yaml. Safe to run again (`vagrant provision server`).
set -euo pipefail
repo=${1:-/bootsvc}
server_ip=${2:-10.77.0.2}
venv=/opt/bootsvc
cfg=/etc/bootsvc/bootsvc.yaml
cd "$repo"

# bootsvc as `make install` installs it: its runtime Debian packages, the
# venv (out of the synced tree, which `vagrant rsync` would otherwise
# overwrite), /usr/local/bin/bootsvc, the unit and the user bootsvc.
bash scripts/install.sh "$venv"

# The config, with the real name of the private NIC (eth1 in the file).
iface=$(ip -o -4 addr show | awk -v ip="$server_ip" 'index($4, ip "/") == 1 { print $2; exit }')
if [ -z "$iface" ]; then
    echo "provision: no interface holds $server_ip (is the private network up?)" >&2
    ip -o -4 addr show >&2
    exit 1
fi
# The service's user reads the config through its group, so the file can
# hold CHAP secrets (root:bootsvc 0640).
install -d -o bootsvc -g bootsvc -m 0750 /var/lib/bootsvc
sed "s/interface: eth1,/interface: $iface,/" "$repo/vagrant/bootsvc.yaml" > "$cfg.new"
grep -q "interface: $iface," "$cfg.new"
chown root:bootsvc "$cfg.new"
chmod 0640 "$cfg.new"
mv "$cfg.new" "$cfg"
bootsvc check -c "$cfg"

# The demo base image (state_dir/images/demo-linux.qcow2); kept if built.
bootsvc image -c "$cfg" build-demo
chown -R bootsvc:bootsvc /var/lib/bootsvc  # built as root; the service writes its overlays beside it

systemctl daemon-reload
systemctl enable bootsvc
systemctl restart bootsvc
systemctl --no-pager --lines=20 status bootsvc
echo "provision: bootsvc serves DHCP on $iface ($server_ip); now: vagrant up node01 node02"
