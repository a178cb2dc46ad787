"""bootsvc: network boot for diskless machines in one process."""

__version__ = "0.1.0"

# What bootsvc's disks report in SCSI INQUIRY (target/ has a neutral default):
# the name operators see in lsblk, Windows' disk manager and VMware.
SCSI_VENDOR = "BOOTSVC"
SCSI_PRODUCT = "bootsvc disk"
