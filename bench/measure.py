"""Timing helpers, child-process resource use, and markdown tables."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence


@dataclass(frozen=True)
class Timed:
    """One finished subprocess: exit status, wall seconds, peak RSS (KiB), output."""

    returncode: int
    seconds: float
    maxrss_kib: int
    stdout: bytes
    stderr: bytes


def run_timed(argv: Sequence[str], *, stdin: bytes = b"",
              env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
              timeout: float = 600.0) -> Timed:
    """Run ``argv`` to the end (killed after ``timeout``); the child is reaped with a
    blocking ``wait4`` so its own peak RSS is known and this process stays asleep while it
    runs (a polling wait woke it 1,000 times a second, CPU taken from what is measured).
    Output goes through temporary files."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryFile() as inp:
        inp.write(stdin)
        inp.seek(0)
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdin=inp, stdout=out, stderr=err,
                                env=None if env is None else dict(env), cwd=cwd)
        # once reaped here, proc.kill() finds no child (ECHILD) and sends nothing
        killer = threading.Timer(timeout, proc.kill)
        killer.daemon = True
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Timed(proc.returncode, seconds, int(usage.ru_maxrss), out.read(), err.read())


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Samples:
    """Named lists of seconds, collected over interleaved rounds."""

    values: Dict[str, List[float]] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.values.setdefault(name, []).append(seconds)

    def median(self, name: str) -> float:
        return median(self.values.get(name, []))


@dataclass
class Table:
    """A titled markdown table with an optional note under it."""

    title: str
    header: List[str]
    rows: List[List[str]] = field(default_factory=list)
    note: str = ""

    def render(self) -> str:
        widths = [max(len(str(cell)) for cell in column)
                  for column in zip(self.header, *self.rows)]
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
        text = [f"### {self.title}", "", line(self.header),
                "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        text += [line(row) for row in self.rows]
        if self.note:
            text += ["", self.note]
        return "\n".join(text) + "\n"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def ratio(value: float, floor: float) -> str:
    return f"{value / floor:.2f}" if floor > 0 else "-"
