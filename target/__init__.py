"""iSCSI target (RFC 7143) with SCSI block commands (SBC-3) over image backends.

Importable on its own: nothing here imports :mod:`bootsvc`.
"""
