"""The cross-process session limiter: never more holders than slots, killed holders free
their slot, and waiting is bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eqliscsi.errors import InvalidValue, SlotTimeout
from eqliscsi.session_slots import SessionSlots

HOLDER = """
import json, sys, time
from eqliscsi.session_slots import SessionSlots
directory, count, hold, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
lease = SessionSlots(directory, count).acquire(timeout=60)
start = time.monotonic()
print("held", flush=True)
if hold < 0:
    time.sleep(600)
time.sleep(hold)
end = time.monotonic()
lease.release()
with open(out, "w") as f:
    json.dump([start, end], f)
"""


def spawn_holder(directory: Path, count: int, hold: float, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory), str(count), str(hold), str(out)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])


def test_many_processes_never_exceed_the_slots(tmp_path):
    slots = tmp_path / "slots"
    procs = [spawn_holder(slots, 3, 0.05, tmp_path / f"interval-{n}.json") for n in range(20)]
    try:
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    intervals = [json.loads((tmp_path / f"interval-{n}.json").read_text()) for n in range(20)]
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda event: (event[0], event[1]))
    holders = peak = 0
    for _, change in events:
        holders += change
        peak = max(peak, holders)
    assert peak <= 3
    assert peak >= 2  # the processes really ran concurrently
    assert sorted(p.name for p in slots.iterdir()) == ["slot-0", "slot-1", "slot-2"]


def test_sigkill_releases_slots(tmp_path):
    slots = tmp_path / "slots"
    holders = [spawn_holder(slots, 3, -1, tmp_path / f"never-{n}") for n in range(3)]
    try:
        for proc in holders:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(SlotTimeout, match="3 CLI session slots"):
            SessionSlots(str(slots), 3).acquire(timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 5
        for proc in holders:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    finally:
        for proc in holders:
            proc.kill()
            proc.wait()
    leases = [SessionSlots(str(slots), 3).acquire(timeout=2) for _ in range(3)]
    assert len({lease.path for lease in leases}) == 3
    for lease in leases:
        lease.release()


def test_timeout_is_bounded_and_release_frees(tmp_path):
    slots = SessionSlots(str(tmp_path / "s"), 2)
    first, second = slots.acquire(timeout=1), slots.acquire(timeout=1)
    assert first.path != second.path
    for wait in (0.0, 0.2):
        started = time.monotonic()
        with pytest.raises(SlotTimeout):
            slots.acquire(timeout=wait)
        assert wait <= time.monotonic() - started < wait + 5
    first.release()
    first.release()
    assert not first.held
    with slots.acquire(timeout=1) as third:
        assert third.path == first.path
        assert Path(third.path).read_text() == f"{os.getpid()}\n"
    assert not third.held
    second.release()


def test_slot_not_inherited_by_child_processes(tmp_path):
    slots = SessionSlots(str(tmp_path / "s"), 1)
    lease = slots.acquire(timeout=1)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lease.release()
        slots.acquire(timeout=0.5).release()
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("count", [0, -1, True, "3"])
def test_invalid_slot_count(tmp_path, count):
    with pytest.raises(InvalidValue):
        SessionSlots(str(tmp_path), count)
