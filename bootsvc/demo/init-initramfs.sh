#!/bin/sh
# bootsvc demo initramfs: log in to the boot disk that iPXE described in the
# iBFT (open-iscsi's iscsistart, as Debian's initramfs does for a diskless
# root), mount the root partition from it and switch to it. Progress lines
# start with "bootsvc-demo:" so `bootsvc vm` can time each step.
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
step() { echo "bootsvc-demo: $* t=$(cut -d' ' -f1 /proc/uptime)"; }
fail() {
    echo "BOOTSVC-DEMO-FAIL step=$1: $2"
    sleep 2
    poweroff -f
}
step "initramfs"
while read -r m; do
    insmod "/lib/modules/$m" || fail modules "insmod $m"
done < /etc/modules.order
[ -r /sys/firmware/ibft/initiator/initiator-name ] ||
    fail ibft "no iBFT: this machine was not booted by iPXE sanboot/sanhook"
initiator=$(cat /sys/firmware/ibft/initiator/initiator-name)
step "ibft initiator=$initiator"
iscsistart -N || fail network "iscsistart -N could not bring up the NIC the iBFT names"
# the strongest CHAP hash first (open-iscsi offers only MD5 unless told; iPXE knows only MD5)
iscsistart -b -P node.session.auth.chap_algs=SHA3-256,SHA256,SHA1,MD5 ||
    fail login "iscsistart -b could not log in to the target the iBFT names"
step "iscsi-login"
root=
for _ in $(seq 1 100); do
    root=$(findfs LABEL=bootsvc-root 2>/dev/null) && break
    sleep 0.2
done
[ -n "$root" ] || fail root "no partition labelled bootsvc-root appeared on the iSCSI disk"
mount -t ext4 "$root" /root || fail root "cannot mount $root"
[ -x /root/sbin/init ] || fail root "$root has no /sbin/init"
step "root-mounted dev=$root"
for d in proc sys dev; do mount --move "/$d" "/root/$d"; done
exec switch_root /root /sbin/init
