"""Loaded by Python at start when this directory is on PYTHONPATH: starts
bench/stall_probe.py in ``bootsvc serve`` if BOOTSVC_STALL_PROBE names a file."""
import os
import sys

if os.environ.get("BOOTSVC_STALL_PROBE"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import stall_probe  # noqa: E402

    stall_probe.start(os.environ["BOOTSVC_STALL_PROBE"])

if os.environ.get("BOOTSVC_SWITCH_INTERVAL"):  # an experiment: the GIL's switch interval (seconds)
    sys.setswitchinterval(float(os.environ["BOOTSVC_SWITCH_INTERVAL"]))
