#!/bin/sh
# The demo's /sbin/init on its iSCSI root: record this boot in a file on
# the root (so the machine's overlay holds it), make it durable, say so on
# the serial console with the initiator name, and power off.
export PATH=/sbin:/bin
initiator=$(cat /sys/firmware/ibft/initiator/initiator-name)
mac=$(cat /sys/firmware/ibft/ethernet0/mac)
mkdir -p /var/lib/bootsvc-demo
echo "initiator=$initiator mac=$mac uptime=$(cut -d' ' -f1 /proc/uptime)" >> /var/lib/bootsvc-demo/boots
sync
mount -o remount,ro / || { echo "BOOTSVC-DEMO-FAIL step=write: cannot remount the root read-only"; poweroff -f; }
echo "BOOTSVC-DEMO-OK initiator=$initiator mac=$mac t=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
