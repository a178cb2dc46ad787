"""HTTP: per-machine iPXE scripts, boot files and health (bootsvc/http/service.py)."""
