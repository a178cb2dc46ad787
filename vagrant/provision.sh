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

# Debian and Python packages, the same as `make deps` (with the venv out of
# the synced tree, which `vagrant rsync` would otherwise overwrite).
bash scripts/install-deps.sh "$venv"
ln -sf "$venv/bin/bootsvc" /usr/local/bin/bootsvc

# install-deps.sh also brings the reference servers the tests compare
# against; as services they would hold bootsvc's ports (3260, 69, 3205).
for unit in tgt tftpd-hpa isnsd; do
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
done

# The config, with the real name of the private NIC (eth1 in the file).
iface=$(ip -o -4 addr show | awk -v ip="$server_ip" 'index($4, ip "/") == 1 { print $2; exit }')
if [ -z "$iface" ]; then
    echo "provision: no interface holds $server_ip (is the private network up?)" >&2
    ip -o -4 addr show >&2
    exit 1
fi
install -d /etc/bootsvc /var/lib/bootsvc
sed "s/interface: eth1,/interface: $iface,/" "$repo/vagrant/bootsvc.yaml" > "$cfg.new"
grep -q "interface: $iface," "$cfg.new"
mv "$cfg.new" "$cfg"
bootsvc check -c "$cfg"

# The demo base image (state_dir/images/demo-linux.qcow2); kept if built.
bootsvc image -c "$cfg" build-demo

install -m 0644 "$repo/systemd/bootsvc.service" /etc/systemd/system/bootsvc.service
systemctl daemon-reload
systemctl enable bootsvc
systemctl restart bootsvc
systemctl --no-pager --lines=20 status bootsvc
echo "provision: bootsvc serves DHCP on $iface ($server_ip); now: vagrant up node01 node02"
