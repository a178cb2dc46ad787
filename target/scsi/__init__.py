"""SCSI for block devices: SPC-4 and SBC-3 commands on a backend."""

from .lun import Lun, ScsiResult, no_such_lun, report_luns, report_supported_opcodes, target_port_groups
from .sense import ScsiError, ScsiStatus, SenseKey

__all__ = ["Lun", "ScsiResult", "ScsiStatus", "ScsiError", "SenseKey", "no_such_lun", "report_luns",
           "report_supported_opcodes", "target_port_groups"]
