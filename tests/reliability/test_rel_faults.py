"""Fault matrix of the datastore actions (see ``faultmatrix``): generated from the
commands of a clean run, one case per (action, command position, fault).

The default run covers every action with every fault once, the four faults at
positions spread over the action (the last command included); ``EQLISCSI_FULL=1`` runs
every position (``reliability`` marker).  ``EQLISCSI_MATRIX_REPORT=<file>`` appends the
result table to that file; ``EQLISCSI_MATRIX_FAULTS`` and ``EQLISCSI_MATRIX_COMMANDS``
narrow the cases (``faultmatrix.selected``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import pytest

from tests.ds_harness import DsHarness, iscsi
from tests.reliability.faultmatrix import (
    FAULTS,
    SCENARIOS,
    CaseResult,
    FaultMatrix,
    selected,
    table,
)

pytestmark = iscsi


def _report_path() -> Optional[Path]:
    value = os.environ.get("EQLISCSI_MATRIX_REPORT")
    return Path(value) if value else None


def run_matrix(ds: DsHarness, action: str, tmp_path: Path, full: bool) -> None:
    matrix = FaultMatrix(ds, SCENARIOS[action], tmp_path / "work")
    matrix.record()
    count = len(matrix.commands)
    if full:
        cases = [(position, fault) for position in range(count) for fault in FAULTS]
    else:  # each fault once, at positions spread over the action (last one included)
        cases = [(min(count - 1, (number + 1) * count // len(FAULTS)), fault)
                 for number, fault in enumerate(FAULTS)]
    results: List[CaseResult] = [matrix.case(position, fault) for position, fault
                                 in selected(cases, [command for _, command in matrix.commands])]
    report = _report_path()
    if report is not None:
        with open(report, "a") as stream:
            stream.write(table(results))
    failed = [result.row for result in results if result.problems]
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("action", sorted(SCENARIOS))
def test_fault_sample(ds, tmp_path, action):
    run_matrix(ds, action, tmp_path, full=False)


@pytest.mark.reliability
@pytest.mark.parametrize("action", sorted(SCENARIOS))
def test_fault_matrix_full(ds, tmp_path, action):
    run_matrix(ds, action, tmp_path, full=True)
