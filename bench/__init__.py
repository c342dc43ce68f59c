"""Benchmarks of the eqliscsi driver against the simulated group and the test hosts.

Run ``.venv/bin/python -m bench [--quick] [--only SECTION] [--write BENCHMARKS.md]`` as
root from the repository root (see BENCHMARKS.md).  Not part of the test suite.
"""
