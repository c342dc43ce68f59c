"""The bad input corpus (``badinput.corpus``, 400+ cases) against every action, plus
property-based tests of names and sizes.

Each case: exit 1, nothing on stdout, the ``ERROR:`` line and ONE plain reason line, no
traceback; after all cases the group received no command at all, its state is unchanged,
oned's CLI stand-ins were never asked (TM) and no staging file is left.  The group is a
simulator without iSCSI (nothing here may get that far).  The corpus runs four actions at
a time.
"""

from __future__ import annotations

import base64
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eqliscsi.cli_commands import sanitize_description
from eqliscsi.ds_actions import image_description, snapshot_name
from eqliscsi.naming import image_volume_name
from tests.ds_harness import DsHarness
from tests.reliability.badinput import Case, corpus
from tests.reliability.faultmatrix import group_view
from tests.tm_harness import TmHarness

VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-]{0,63}$")


def run_case(ds: DsHarness, tm: TmHarness, case: Case) -> Optional[str]:
    """None when the case was refused as required, else what went wrong."""
    if case.kind == "tm":
        script = tm.remotes / "tm" / "eqliscsi" / case.action
        done = subprocess.run([str(script), *case.payload], capture_output=True,
                              env=tm.env(), timeout=60, check=False, cwd=tm.base)
    else:
        data = (case.payload[0] if case.kind == "raw"
                else base64.b64encode(case.payload[0].encode()).decode())
        script = ds.remotes / "datastore" / "eqliscsi" / case.action
        done = subprocess.run([str(script), "42"], input=data.encode(), capture_output=True,
                              env=ds.env(), timeout=60, check=False, cwd=ds.base)
    stdout, stderr = done.stdout.decode(), done.stderr.decode("utf-8", "replace")
    lines = stderr.splitlines()
    if done.returncode != 1 or stdout:
        return f"rc={done.returncode} stdout={stdout!r} stderr={lines[-2:]}"
    if len(lines) < 2 or not lines[-1].strip() or not lines[-2].startswith("ERROR: ") \
            or not lines[-2].endswith(f": {lines[-1]}"):
        return f"no one-line reason: {lines[-3:]}"
    if "Traceback" in stderr:
        return "traceback"
    return None


def make_volumes(ds: DsHarness) -> None:
    with ds.group() as group:
        for name, image in (("ubuntu.42", 42), ("golden.7", 7), ("keep.9", 9)):
            group.create_volume(name, 16, description=image_description(image, name))
            group.create_snapshot(name, snapshot_name(name, 0))


def check_corpus(sim, tmp_path: Path, cases: List[Case]) -> None:
    ds = DsHarness(sim, tmp_path / "ds")
    tm = TmHarness(sim, None, tmp_path / "tm", shared=False)
    make_volumes(ds)
    before, mark = group_view(ds), len(sim.commands())
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda case: (case, run_case(ds, tm, case)), cases))
    failures: List[str] = [f"{case.name}: {problem}" for case, problem in results if problem]
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures)
    sent = [entry["command"] for entry in sim.commands()[mark:]]
    assert sent == [], f"commands sent: {sent}"
    assert group_view(ds) == before
    assert tm.cli_calls() == []
    assert ds.staging_left() == [] and list(tm.staging.iterdir()) == []


def test_bad_input_corpus_half(sim, tmp_path: Path) -> None:
    """Every other case of the corpus (the default run)."""
    cases = corpus()[::2]
    assert len(cases) >= 200
    check_corpus(sim, tmp_path, cases)


@pytest.mark.reliability
def test_bad_input_corpus_full(sim, tmp_path: Path) -> None:
    check_corpus(sim, tmp_path, corpus())


# --- properties of names and sizes (in-process, no group) ---------------------------------

@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=400), image_id=st.integers(min_value=0, max_value=10**8 - 1))
def test_any_image_name_gives_a_safe_volume_name(name: str, image_id: int) -> None:
    volume = image_volume_name(name, image_id)
    assert VOLUME_NAME.match(volume), volume
    assert volume.endswith(f".{image_id}")


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=400), image_id=st.integers(min_value=0, max_value=10**8 - 1))
def test_any_image_name_gives_a_safe_description(name: str, image_id: int) -> None:
    description = sanitize_description(image_description(image_id, name))
    assert len(description) <= 127
    assert all(32 <= ord(c) < 127 and c not in '"\\#' for c in description), description
