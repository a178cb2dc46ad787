"""The files bootsvc writes into a debootstrapped Debian tree so that it
boots diskless from the iSCSI disk named in the iBFT, and so that every
machine gets its own identity on first boot. Pure file writes into a
directory: testable without debootstrap or root.

- initramfs: open-iscsi's initramfs-tools script logs in from the iBFT
  when /etc/iscsi/iscsi.initramfs says ``ISCSI_AUTO=true`` (README.Debian
  of open-iscsi); busybox in the initramfs lets it add the default route.
- the root is found by its file system label (kernel ``root=LABEL=``, fstab).
- the boot NIC keeps the address the initramfs gave it: ifupdown only
  touches interfaces listed in /etc/network/interfaces, which lists only
  ``lo``; the initramfs's /run/net-<nic>.conf stays the record of it.
- identity: an empty /etc/machine-id (systemd makes one on first boot,
  ``ConditionFirstBoot``), no SSH host keys (a unit makes them before sshd
  starts), no /etc/hostname (the hostname comes from DHCP through the
  initramfs, or the iBFT)."""

from __future__ import annotations

from pathlib import Path

from ..demo.disk import ROOT_LABEL

MARKER_OK = "BOOTSVC-DEBIAN-OK"
BOOT_LOG = "/var/lib/bootsvc/boots"  # one line per boot reaching multi-user: "<boot_id> <hostname>"
# console: the serial line is the machine's console and login;
# panic=-1: a failed boot ends the VM instead of hanging
KERNEL_ARGS = f"root=LABEL={ROOT_LABEL} console=ttyS0,115200 panic=-1"

ISCSI_INITRAMFS = "ISCSI_AUTO=true\n"
INITRAMFS_CONF = """\
# bootsvc: busybox lets open-iscsi's script add the iBFT's default route;
# netboot keeps the initramfs to the network, iSCSI and disk modules;
# FSTYPE: the root's type, which the fsck hook cannot look up in a chroot
# (root=LABEL= names no device there), so e2fsck checks it before mounting
BUSYBOX=y
MODULES=netboot
FSTYPE=ext4
"""
# netboot leaves SCSI disks out (it was made for NFS roots): the iSCSI
# LUN is one; listed here, initramfs-tools also loads it before local-top
INITRAMFS_MODULES = "# bootsvc: the iSCSI root disk is a SCSI disk\nsd_mod\n"
FSTAB = f"LABEL={ROOT_LABEL} / ext4 defaults,errors=remount-ro 0 1\n"
INTERFACES = """\
# bootsvc: only loopback here. The boot NIC carries the iSCSI root disk; its
# initramfs configured it from the iBFT (/run/net-<nic>.conf) and ifupdown
# leaves alone what is not listed, so the root disk is never cut off.
auto lo
iface lo inet loopback

source /etc/network/interfaces.d/*
"""

MARKER_SCRIPT = f"""\
#!/bin/sh
# bootsvc: one line on the console once multi-user.target is reached; what
# the first boot made (machine ID, SSH host keys) is on the disk before it.
# Each boot adds a line to BOOT_LOG: the overlay's own record of the boots it
# has seen (read from the host with debugfs; an ephemeral overlay holds one)
mkdir -p {BOOT_LOG.rsplit("/", 1)[0]}
echo "$(cat /proc/sys/kernel/random/boot_id) $(hostname)" >> {BOOT_LOG}
sync
initiator=$(cat /sys/class/iscsi_session/session*/initiatorname 2>/dev/null | head -n 1)
[ -n "$initiator" ] || initiator=$(cat /sys/firmware/ibft/initiator/initiator-name 2>/dev/null)
echo "{MARKER_OK} host=$(hostname) initiator=${{initiator:-none}}" > /dev/console
"""
MARKER_UNIT = """\
[Unit]
Description=bootsvc: say on the console that the machine reached multi-user.target
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/bootsvc-debian-ok

[Install]
WantedBy=multi-user.target
"""
IDENTITY_SCRIPT = """\
#!/bin/sh
# bootsvc: this machine's names from the boot network; the base names no host.
# The initiator name is the iBFT's, so open-iscsi's iscsid after boot is the
# initiator the target knows (the base's, made by open-iscsi's install, is
# shared by every machine).
ibft=/sys/firmware/ibft
if [ -r $ibft/initiator/initiator-name ]; then
    echo "InitiatorName=$(cat $ibft/initiator/initiator-name)" > /etc/iscsi/initiatorname.iscsi
fi
# the hostname DHCP gave the initramfs (/run/net-<nic>.conf), else the
# iBFT's, unless the kernel already has one
name=$(hostname)
case "$name" in ""|"(none)"|localhost) ;; *) exit 0 ;; esac
name=
for f in /run/net-*.conf; do
    [ -r "$f" ] && name=$(. "$f" && echo "$HOSTNAME") && [ -n "$name" ] && break
done
[ -n "$name" ] || name=$(cat $ibft/ethernet0/hostname 2>/dev/null)
[ -n "$name" ] && hostname "$name"
exit 0
"""
IDENTITY_UNIT = """\
[Unit]
Description=bootsvc: hostname and iSCSI initiator name from the boot network (DHCP, iBFT)
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target systemd-hostnamed.service iscsid.service open-iscsi.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/bootsvc-identity

[Install]
WantedBy=sysinit.target
"""
SSH_KEYS_UNIT = """\
[Unit]
Description=bootsvc: this machine's own SSH host keys, made on its first boot
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
# on the iSCSI disk now, not in 30 s: a machine reset before then would
# make new keys at its next boot
ExecStartPost=/bin/sync

[Install]
WantedBy=multi-user.target ssh.service
"""

UNITS = {"bootsvc-debian-ok.service": MARKER_UNIT, "bootsvc-identity.service": IDENTITY_UNIT,
         "bootsvc-ssh-keys.service": SSH_KEYS_UNIT}
SCRIPTS = {"bootsvc-debian-ok": MARKER_SCRIPT, "bootsvc-identity": IDENTITY_SCRIPT}


def _write(root: Path, path: str, text: str, mode: int = 0o644) -> None:
    f = root / path.lstrip("/")
    f.parent.mkdir(parents=True, exist_ok=True)
    f.unlink(missing_ok=True)  # a symlink (resolv.conf) is replaced, never followed out of the tree
    f.write_text(text)
    f.chmod(mode)


def _enable(root: Path, unit: str, text: str) -> None:
    """What ``systemctl enable`` does for the [Install] section's WantedBy,
    without running systemctl in the tree."""
    for line in text.splitlines():
        if line.startswith("WantedBy="):
            for target in line.removeprefix("WantedBy=").split():
                link = root / "etc/systemd/system" / f"{target}.wants" / unit
                link.parent.mkdir(parents=True, exist_ok=True)
                link.unlink(missing_ok=True)
                link.symlink_to(f"/etc/systemd/system/{unit}")


def configure(root: Path, apt_sources: str) -> None:
    """Everything above, written into the tree at ``root``; run before the
    initramfs is made again (it reads the iSCSI and initramfs settings)."""
    _write(root, "etc/iscsi/iscsi.initramfs", ISCSI_INITRAMFS)
    _write(root, "etc/initramfs-tools/conf.d/bootsvc", INITRAMFS_CONF)
    _write(root, "etc/initramfs-tools/modules", INITRAMFS_MODULES)
    _write(root, "etc/fstab", FSTAB)
    _write(root, "etc/network/interfaces", INTERFACES)
    if apt_sources:
        _write(root, "etc/apt/sources.list.d/debian.sources", apt_sources)
        (root / "etc/apt/sources.list").unlink(missing_ok=True)
    for name, text in SCRIPTS.items():
        _write(root, f"usr/local/sbin/{name}", text, 0o755)
    for unit, text in UNITS.items():
        _write(root, f"etc/systemd/system/{unit}", text)
        _enable(root, unit, text)


# -- riding out a restart of bootsvc (an upgrade) ---------------------------
# How long open-iscsi queues a machine's I/O while the target is away before
# failing it to the file system (open-iscsi's replacement_timeout, the
# kernel session's recovery_tmo). Debian's default, 120 s, would turn a slow
# upgrade into I/O errors on the root disk and a read-only root; a day rides
# out any restart and still ends, where a negative value would wait forever.
# iscsid.conf reaches the root session too: iscsistart made it in the
# initramfs with the built-in 120 s, and Debian's iscsid, taking it over
# after boot, logs in again with the settings of iscsid.conf (verified on a
# booted machine: recovery_tmo 86400 in sysfs).
REPLACEMENT_TIMEOUT = 86400
ISCSID_SETTINGS = {"node.session.timeo.replacement_timeout": str(REPLACEMENT_TIMEOUT)}


def set_iscsid_conf(root: Path, settings: dict[str, str] = ISCSID_SETTINGS) -> None:
    """Each ``key = value`` of ``settings`` in the tree's iscsid.conf, in
    place of every line that sets (or comments out) that key, else
    appended: the later of two lines wins in iscsid.conf, so none is left
    with another value."""
    conf = root / "etc/iscsi/iscsid.conf"
    lines = conf.read_text().splitlines() if conf.is_file() else []
    seen = set()
    for i, line in enumerate(lines):
        key = line.lstrip("# \t").split("=", 1)[0].strip()
        if "=" in line and key in settings:
            lines[i] = f"{key} = {settings[key]}"
            seen.add(key)
    lines += [f"{k} = {v}" for k, v in settings.items() if k not in seen]
    _write(root, "etc/iscsi/iscsid.conf", "\n".join(lines) + "\n", 0o600)


def configure_restart(root: Path) -> None:
    """The root disk rides out a restart of bootsvc: its session waits
    REPLACEMENT_TIMEOUT seconds for the target to come back, queueing I/O;
    and the test-only tick unit."""
    set_iscsid_conf(root)
    _write(root, "usr/local/sbin/bootsvc-tick", TICK_SCRIPT, 0o755)
    _write(root, "etc/systemd/system/bootsvc-tick.service", TICK_UNIT)
    _enable(root, "bootsvc-tick.service", TICK_UNIT)


# Tests only (kernel command line ``bootsvc.tick``): once multi-user.target
# is reached, append a counter to a file, fsync it and then say it on the
# console, every second, so a test sees when I/O pauses and which writes
# the machine knows reached its disk.
TICK_MARKER = "BOOTSVC-TICK"
TICK_FILE = "/var/lib/bootsvc-ticks"
TICK_SCRIPT = f"""\
#!/bin/sh
# bootsvc (tests): the root session's replacement timeout as the kernel has
# it, then a synced write a second and its number on the console
for s in /sys/class/iscsi_session/session*; do
    echo "BOOTSVC-ISCSI ${{s##*/}} recovery_tmo=$(cat "$s/recovery_tmo")" > /dev/console
done
n=0
while [ $n -lt 100000 ]; do
    n=$((n + 1))
    echo $n >> {TICK_FILE} && sync {TICK_FILE} && echo "{TICK_MARKER} $n" > /dev/console
    sleep 1
done
"""
TICK_UNIT = """\
[Unit]
Description=bootsvc (tests): a synced write every second, counted on the console
ConditionKernelCommandLine=bootsvc.tick
After=multi-user.target

[Service]
ExecStart=/usr/local/sbin/bootsvc-tick

[Install]
WantedBy=multi-user.target
"""


def forget_identity(root: Path) -> None:
    """What would make every machine of the base the same one: the
    machine ID, SSH host keys, hostname, the build host's resolv.conf and
    the initiator name open-iscsi's install made (``GenerateName=yes`` is
    open-iscsi's "make one at start"; bootsvc-identity writes the iBFT's
    first). Run last, after everything that may create them."""
    _write(root, "etc/machine-id", "", 0o444)
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    _write(root, "etc/iscsi/initiatorname.iscsi", "GenerateName=yes\n")
    for f in ("etc/hostname", "etc/resolv.conf"):
        (root / f).unlink(missing_ok=True)
