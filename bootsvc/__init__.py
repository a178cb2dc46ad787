"""bootsvc: network boot for diskless machines in one process."""

__version__ = "0.1.0"
