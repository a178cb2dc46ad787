"""The boot flight recorder: every machine's boots as timelines with a
diagnosis, kept in state_dir/recorder.db (bootsvc/recorder/recorder.py,
store.py; the steps in steps.py, the rules in diagnosis.py)."""

from .diagnosis import STALL, State, diagnose, diagnose_rule
from .recorder import Recorder
from .steps import Seen, Step
from .store import Boot, BootStore

__all__ = ["STALL", "Boot", "BootStore", "Recorder", "Seen", "State", "Step", "diagnose", "diagnose_rule"]
