"""Host faults of the TM actions (see ``hostfaults``): an unreachable host, iscsiadm
login, logout, rescan and node record failures, disks that never appear.

The default run takes a few faults of a few actions (an unreachable host, a real failed
login, a disk that does not appear, failed logouts, logins, rescans and node records);
``EQLISCSI_FULL=1`` runs every action with every fault that applies to it
(``reliability`` marker).  ``EQLISCSI_MATRIX_REPORT=<file>`` appends the result table to
that file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pytest

from tests.reliability.hostfaults import SCENARIOS, HostCase, HostFaultMatrix, table
from tests.tm_harness import iscsi

pytestmark = iscsi

SAMPLE: Dict[str, List[Tuple[str, str]]] = {  # action -> (fault, host) of the default run
    "clone": [("unreachable", "host1"), ("portal-closed", "host1"), ("no-device", "host1")],
    "delete-clone": [("logout", "host1"), ("node-delete", "host1")],
    "mv-host-to-host": [("logout", "host1"), ("login-auth", "host2")],
    "resize": [("rescan", "host1")],
    "postmigrate": [("logout", "host1")],
}


def run_cases(tm_factory, action: str, cases: Sequence[Tuple[str, str]]) -> None:
    matrix = HostFaultMatrix(tm_factory(hosts=2), SCENARIOS[action])
    try:
        matrix.record()
        results: List[HostCase] = [matrix.case(fault, host) for fault, host in cases]
    finally:
        matrix.reset()
    report = os.environ.get("EQLISCSI_MATRIX_REPORT")
    if report:
        with open(Path(report), "a") as stream:
            stream.write(table(results))
    failed = [case.row for case in results if case.problems]
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("action", sorted(SAMPLE))
def test_host_fault_sample(tm_factory, action):
    run_cases(tm_factory, action, SAMPLE[action])


@pytest.mark.reliability
@pytest.mark.parametrize("action", sorted(SCENARIOS))
def test_host_fault_matrix_full(tm_factory, action):
    run_cases(tm_factory, action, SCENARIOS[action].faults)
