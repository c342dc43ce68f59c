"""The README's demo command runs as documented: every step OK, nothing left behind, also
when it is stopped half-way.  Under CI (root) it runs with the iSCSI data path and the
VM lifecycle on test hosts."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parent.parent
DEMO = [sys.executable, "-m", "eqliscsi", "demo"]
DEMO_TIMEOUT = 300


def processes_mentioning(text: str) -> List[int]:
    """Processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(
                    "utf-8", "replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def work_dir(output: str) -> Path:
    match = re.search(r"^eqliscsi demo: work directory (\S+)$", output, re.MULTILINE)
    assert match is not None, output
    return Path(match.group(1))


def test_demo():
    done = subprocess.run(DEMO, capture_output=True, text=True, timeout=DEMO_TIMEOUT,
                          cwd=REPO, check=False)
    output = done.stdout
    assert done.returncode == 0, output + done.stderr
    summary = output.splitlines()[-1]
    assert re.fullmatch(r"Summary: (\d+) steps, \1 OK, 0 failed.*; volumes left on the "
                        r"group: 0; host leftovers: 0; iSCSI data path: (on|off); .* s",
                        summary), summary
    assert not work_dir(output).exists()
    assert re.search(r"^\[ImM\] monitor 100 -> OK \"USED_MB=\d+ TOTAL_MB=204800 "
                     r"FREE_MB=\d+\" \(\d+\.\d\d s\)$", output, re.MULTILINE)
    if os.environ.get("CI") == "true":
        assert "iSCSI data path: on" in summary and "skipped" not in summary, output
        for step in ("[ImM] cp 0 -> OK", "[TrM] premigrate host1 host2 ",
                     "[TrM] mvds host1:", "[ImM] snap_revert 1 -> OK"):
            assert step in output


def test_demo_without_the_data_path():
    done = subprocess.run([*DEMO, "--no-iscsi"], capture_output=True, text=True,
                          timeout=DEMO_TIMEOUT, cwd=REPO, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the iSCSI data path is off (--no-iscsi)" in done.stdout
    assert "[skip] cp: writes the image over iSCSI" in done.stdout
    assert "[ImM] clone 2 -> OK \"copy.2 raw\"" in done.stdout
    assert "2 skipped (cp, VM lifecycle); volumes left on the group: 0" in done.stdout


def test_demo_cleans_up_when_stopped():
    demo = subprocess.Popen([*DEMO, "--no-iscsi"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO)
    assert demo.stdout is not None
    output = ""
    deadline = time.monotonic() + 60
    while "--- images" not in output and time.monotonic() < deadline:
        ready, _, _ = select.select([demo.stdout], [], [], 1)
        if ready:
            output += demo.stdout.readline()
    assert "--- images" in output, output
    work = work_dir(output)
    demo.send_signal(signal.SIGTERM)
    rest, _ = demo.communicate(timeout=60)
    assert demo.returncode == 130, output + rest
    assert "demo: interrupted, cleaning up" in rest
    assert not work.exists()
    assert processes_mentioning(str(work)) == []
