"""Fault injection: knobs in ``<state-dir>/faults.json``, read before and after each command.

The file holds a JSON list of entries, so a test in another process can change them at any
time. An entry::

    {"match": "<regex searched in the command line>",   # optional: any command
     "nth": 3,                 # optional: only the 3rd command of a connection (1-based)
     "when": "before",         # or "after" (the command has run)
     "action": "drop",         # drop | delay | error | hang
     "seconds": 2.5,           # delay/hang duration (hang defaults to an hour)
     "message": "% Error - ...",   # error text (a default is used when missing)
     "times": 1}               # uses left (default 1; -1 = forever); decremented in the file

The first entry that matches is used.  A ``delay`` before the command is the group being
slow: it still runs the command when the client has given up waiting, as a real group
would; ``hang`` and a ``delay`` after the command end when the client goes away.
"""

from __future__ import annotations

import fcntl
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ACTIONS = ("drop", "delay", "error", "hang")
WHEN = ("before", "after")
DEFAULT_HANG_SECONDS = 3600.0


@dataclass(frozen=True)
class Fault:
    action: str
    when: str = "before"
    seconds: float = 0.0
    message: Optional[str] = None


def _parse(entry: Dict[str, Any]) -> Fault:
    """Validate one entry; unknown keys and values are errors, not silently ignored."""
    known = {"match", "nth", "when", "action", "seconds", "message", "times"}
    if not isinstance(entry, dict) or set(entry) - known:
        raise ValueError(f"bad fault entry {entry!r}: allowed keys are {sorted(known)}")
    action, when = entry.get("action"), entry.get("when", "before")
    if action not in ACTIONS or when not in WHEN:
        raise ValueError(f"bad fault entry {entry!r}: action in {ACTIONS}, when in {WHEN}")
    re.compile(entry.get("match", ""))
    default_seconds = DEFAULT_HANG_SECONDS if action == "hang" else 0.0
    return Fault(action, when, float(entry.get("seconds", default_seconds)), entry.get("message"))


def _matches(entry: Dict[str, Any], command: str, index: int, when: str) -> bool:
    return (
        entry.get("when", "before") == when
        and entry.get("times", 1) != 0
        and entry.get("nth", index) == index
        and re.search(entry.get("match", ""), command) is not None
    )


class FaultBook:
    """The fault file of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "faults.json"
        self._lock_path = Path(state_dir) / "faults.lock"

    def write(self, entries: Sequence[Dict[str, Any]]) -> None:
        """Replace all faults (validated first)."""
        for entry in entries:
            _parse(entry)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.path.write_text(json.dumps(list(entries), indent=1))

    def take(self, command: str, index: int, when: str) -> Optional[Fault]:
        """The fault to apply to this command now, using up one of its ``times``."""
        if not self.path.exists():
            return None
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries: List[Dict[str, Any]] = json.loads(self.path.read_text() or "[]")
            for entry in entries:
                if _matches(entry, command, index, when):
                    fault = _parse(entry)
                    if entry.get("times", 1) > 0:
                        entry["times"] = entry.get("times", 1) - 1
                        self.path.write_text(json.dumps(entries, indent=1))
                    return fault
        return None
