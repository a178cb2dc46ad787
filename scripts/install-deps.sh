#!/usr/bin/env bash
# Installs every Debian package and Python package that bootsvc and its
# tests use, on a fresh Debian 12 machine, as root (`make deps`, `make test`,
# CI): bootsvc's own runtime packages (scripts/install-runtime.sh) and the
# test peers below, then the development venv with bootsvc editable and its
# test extras. Idempotent: packages already present are not fetched again.
set -euo pipefail
venv=${1:-.venv}
# The test peers and tools (and what `bootsvc vm`, the demo lab, runs): the
# one list to add a test's Debian package to. What bootsvc itself needs when
# it runs goes in scripts/install-runtime.sh instead.
debs=(
    libiscsi-bin        # iscsi-test-cu, iscsi-perf, iscsi-ls
    sg3-utils           # sg_vpd: an independent decoder of our VPD pages (tests/test_scsi_xcopy.py)
    qemu-block-extra    # qemu-img's iscsi:// driver (libiscsi), not pulled in without recommends
    qemu-system-x86     # QEMU for iPXE sanboot and diskless boots
    ipxe-qemu           # iPXE NIC ROMs (`bootsvc vm`)
    tgt                 # reference iSCSI target
    open-isns-utils     # isnsadm (iSNS peer in the tests)
    open-isns-server    # isnsd (bench/isns.py reference)
    ovmf                # UEFI firmware for `bootsvc vm --uefi`
    qemu-system-arm qemu-efi-aarch64  # an ARM64 UEFI VM (AAVMF) PXE-booting (tests/e2e/test_http_boot.py)
    nasm                # assembles the sanboot test's boot sector
    tftp-hpa            # a real TFTP client
    tftpd-hpa           # reference TFTP server for bench/tftp.py
    dnsmasq-base        # reference DHCP server for bench/dhcp.py; upstream resolver in the DNS tests (no system service)
    kea-admin           # perfdhcp, DHCP load generator
    kea-dhcp4-server    # kea-dhcp4, second reference DHCP server for bench/dhcp.py (its service masked below)
    nftables            # nft: tests/e2e/test_diagnosis.py firewalls a VM's TFTP inside its namespace
    isc-dhcp-client     # dhclient, a real DHCP client
    ndisc6              # rdisc6, a real IPv6 host soliciting routers
    bind9-dnsutils      # dig, a real DNS client
    curl                # a real HTTP client
    chromium chromium-driver  # headless browser for the web page's test (selenium drives it)
    vagrant vagrant-libvirt  # `vagrant validate` of vagrant/Vagrantfile (tests/test_vagrant.py)
    iproute2 procps
    systemd             # systemd-analyze (verify and security of systemd/bootsvc.service), systemd-sysusers
    ceph-mon ceph-mgr ceph-osd ceph-common  # the tests' throw-away Ceph cluster (tests/ceph_cluster.py)
    python3-rados python3-rbd  # librbd from Python: the ceph storage backend (linked into the venv below)
    tgt-rbd             # tgt's rbd backing store, the reference for the RBD-backed LUN
)
# bench/dhcp.py starts kea-dhcp4 itself inside a network namespace: the
# package's system service is masked before the install (what `systemctl
# mask` does, also without a running systemd), so it never starts or takes
# port 67 on the host.
if [ ! -e /etc/systemd/system/kea-dhcp4-server.service ]; then
    mkdir -p /etc/systemd/system
    ln -s /dev/null /etc/systemd/system/kea-dhcp4-server.service
fi
bash "$(dirname "$0")/install-runtime.sh" "${debs[@]}"
# The Ceph packages enable units for a host cluster; the tests start their own
# daemons, so none of those may run or start at boot here.
# (no systemd, e.g. in a container: systemctl fails and there is nothing to disable)
ceph_units=$(systemctl list-unit-files 'ceph*' 'rbdmap*' --state=enabled --no-legend --no-pager 2>/dev/null \
             | awk '{print $1}' || true)
if [ -n "$ceph_units" ]; then
    if [ -d /run/systemd/system ]; then
        systemctl disable --now $ceph_units
    else
        systemctl disable $ceph_units
    fi
fi
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e ".[test]"
bash "$(dirname "$0")/link-ceph-bindings.sh" "$venv"
