#!/usr/bin/env bash
# Installs every Debian package and Python package that bootsvc and its
# tests use, on a fresh Debian 12 machine, as root. Idempotent: packages
# already present are not fetched again.
set -euo pipefail
venv=${1:-.venv}
debs=(
    python3 python3-venv python3-pip
    libiscsi-bin        # iscsi-test-cu, iscsi-perf, iscsi-ls
    qemu-utils          # qemu-img (check, compare)
    qemu-block-extra    # qemu-img's iscsi:// driver (libiscsi), not pulled in without recommends
    qemu-system-x86     # QEMU for iPXE sanboot and diskless boots
    ipxe-qemu ipxe      # iPXE NIC ROMs and binaries
    tgt                 # reference iSCSI target
    open-isns-utils     # isnsadm (iSNS peer in the tests)
    open-isns-server    # isnsd (bench/isns.py reference)
    open-iscsi          # iscsiadm (iSNS discovery peer); iscsistart in the demo image
    syslinux syslinux-common mtools dosfstools e2fsprogs  # build the demo image without mounting
    debootstrap         # `bootsvc image build-debian`: the Debian 12 base image
    ovmf systemd-boot-efi  # UEFI firmware for `bootsvc vm --uefi`; the demo image's UEFI loader
    nasm                # assembles the sanboot test's boot sector
    busybox-static      # udhcpc, a real DHCP client for the DHCP tests
    tftp-hpa            # a real TFTP client
    tftpd-hpa           # reference TFTP server for bench/tftp.py
    dnsmasq-base        # reference DHCP server for bench/dhcp.py (no system service)
    kea-admin           # perfdhcp, DHCP load generator
    nftables            # nft: tests/e2e/test_diagnosis.py firewalls a VM's TFTP inside its namespace
    isc-dhcp-client     # dhclient, a real DHCP client
    ndisc6              # rdisc6, a real IPv6 host soliciting routers
    bind9-dnsutils      # dig, a real DNS client
    curl                # a real HTTP client
    chromium chromium-driver  # headless browser for the web page's test (selenium drives it)
    vagrant vagrant-libvirt  # `vagrant validate` of vagrant/Vagrantfile (tests/test_vagrant.py)
    iproute2 procps
    systemd             # systemd-analyze (verify and security of systemd/bootsvc.service), systemd-sysusers
)
missing=()
for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e ".[test]"
