"""Fault matrix of the transfer-manager actions (see ``tm_faultmatrix``): generated from
the commands of a clean run, one case per (scenario, command position, fault).

The default run covers every scenario with one fault, the four faults taking turns over
the scenarios at positions spread over the action's own commands, plus the cases of the
findings fixed (``PINNED``); ``EQLISCSI_FULL=1`` runs every position with every fault
(``reliability`` marker).
``EQLISCSI_MATRIX_REPORT=<file>`` appends the result table to that file;
``EQLISCSI_MATRIX_FAULTS`` and ``EQLISCSI_MATRIX_COMMANDS`` narrow the cases
(``faultmatrix.selected``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Tuple

import pytest

from tests.reliability.faultmatrix import FAULTS, CaseResult, selected, write_report
from tests.reliability.tm_faultmatrix import DATA, DS, SCENARIOS, TmFaultMatrix
from tests.tm_harness import (
    TmHarness,
    disk_arg,
    iscsi,
)

pytestmark = iscsi

SESSION_SETUP = 6  # stty and cli-settings: the same in every action, covered by the DS matrix
# fixed findings, run by default too: scenario -> (part of the command, fault)
PINNED = {"snap_create": (" snapshot create-now ", "drop-after")}


def sample(name: str, commands: List[str]) -> List[Tuple[int, str]]:
    """One fault for the scenario (the faults take turns) at one of its own commands
    (after the CLI session set-up; the position moves from scenario to scenario), plus
    its ``PINNED`` case."""
    number = sorted(SCENARIOS).index(name)
    own = max(1, len(commands) - SESSION_SETUP)
    cases = [(min(len(commands) - 1, SESSION_SETUP + (number * 5 + 3) % own),
              list(FAULTS)[number % len(FAULTS)])]
    if name in PINNED:
        part, fault = PINNED[name]
        cases.append((next(i for i, line in enumerate(commands) if part in line), fault))
    return cases


def run_matrix(tm: TmHarness, name: str, work: Path, full: bool) -> List[CaseResult]:
    matrix = TmFaultMatrix(tm, name, work)
    matrix.record()
    commands = [command for _, command in matrix.commands]
    cases = ([(position, fault) for position in range(len(commands)) for fault in FAULTS]
             if full else sample(name, commands))
    results = [matrix.case(position, fault) for position, fault in selected(cases, commands)]
    matrix.clear()
    tm.allow(*tm.volume_names())
    report = os.environ.get("EQLISCSI_MATRIX_REPORT")
    write_report(results, Path(report) if report else None)
    return results


def assert_no_problems(results: List[CaseResult]) -> None:
    failed = [result.row for result in results if result.problems]
    assert not failed, "\n".join(failed)


def test_tm_fault_sample(tm_factory, tmp_path):
    """Every scenario with one fault, on one group and one set of hosts."""
    tm = tm_factory(hosts=3)
    assert_no_problems([result for name in sorted(SCENARIOS)
                        for result in run_matrix(tm, name, tmp_path / name, full=False)])


@pytest.mark.reliability
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_tm_fault_matrix_full(tm_factory, tmp_path, name):
    assert_no_problems(run_matrix(tm_factory(hosts=3), name, tmp_path / "work", full=True))


def test_tm_checks_see_what_a_failed_attach_leaves(tm_factory, tmp_path):
    """The host and access checks are not vacuous: a disk left logged in and linked on
    host2 after a "failure" is reported."""
    tm = tm_factory(hosts=3)
    matrix = TmFaultMatrix(tm, "clone", tmp_path / "work")
    matrix.record()
    matrix.reset()
    tm.run("ln", f"one:{DATA}", disk_arg("host2", 1), "17", DS).ok()
    problems = " ".join(matrix.extra_problems(succeeded=False))
    for expected in ("session(s) left on host2", "node record(s) left on host2",
                     "VM directory entries left on host2", "access record(s) left"):
        assert expected in problems, problems
    matrix.clear()
    tm.allow(*tm.volume_names())
