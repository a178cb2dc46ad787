#!/usr/bin/env bash
# Installs the Debian packages bootsvc itself uses when it runs (serve, image,
# build-demo), on Debian 12, as root, with the packages given as arguments in
# the same apt run (scripts/install-deps.sh gives the test peers). Idempotent:
# packages already present are not fetched again; the host's apt sources
# decide where they come from. `make install` (scripts/install.sh) runs it.
set -euo pipefail
runtime=(
    python3 python3-venv python3-pip  # the venv bootsvc runs from
    ipxe                # iPXE binaries TFTP serves (undionly.kpxe, ipxe.efi, snponly.efi in /usr/lib/ipxe)
    qemu-utils          # qemu-img: make, convert and inspect base images
    systemd             # systemd-sysusers: the service's user (systemd/bootsvc.sysusers)
    # `bootsvc image build-demo`, the demo base image (make demo, vagrant/provision.sh):
    syslinux syslinux-common mtools dosfstools e2fsprogs  # its disk, built without mounting
    systemd-boot-efi    # its UEFI loader
    busybox-static      # its initramfs (and udhcpc, a real DHCP client for the DHCP tests)
    open-iscsi          # iscsistart in its initramfs (and iscsiadm, the tests' iSNS discovery peer)
    debootstrap         # `bootsvc image build-debian`: the Debian 12 base image
    openssl             # build-debian --root-password-file: `openssl passwd -6` hashes root's password
)
missing=()
for p in "${runtime[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi
