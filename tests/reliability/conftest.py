"""The reliability suite's collection rule.

Tests marked ``reliability`` are the full (slow) matrices: they run only when
``EQLISCSI_FULL=1`` is set (``EQLISCSI_FULL=1 .venv/bin/python -m pytest -q
tests/reliability``); the plain ``pytest -q`` of CI deselects them and runs the rest of
this directory, a representative subset.  See RELIABILITY.md.
"""

from __future__ import annotations

import os
from typing import List

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    if os.environ.get("EQLISCSI_FULL") == "1":
        return
    keep: List[pytest.Item] = []
    dropped: List[pytest.Item] = []
    for item in items:
        (dropped if item.get_closest_marker("reliability") else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
