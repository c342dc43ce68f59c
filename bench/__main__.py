"""``python -m bench``: run the benchmark sections, print the tables, optionally write
them with the machine description into a markdown file."""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from bench.measure import Table
from bench.sections import SECTIONS, Options

HEADER = """# Benchmarks

Produced by `.venv/bin/python -m bench{flags} --write BENCHMARKS.md` (as root, from the
repository root; `--quick`: 128 MiB image, fewer rounds and bursts; `--only SECTION`:
{sections}).  Everything runs against the simulated group (real tgtd iSCSI targets) and
the test hosts of `tests/hosts` on this one machine, measured and floor runs interleaved in
the same run so the ratios hold on a noisy machine.  Not part of the tests: no test
asserts a time.  Everything above the marker line near the end is rewritten by
`--write`; the notes below it are kept.

"""


MARKER = "<!-- end of the generated tables: what follows is kept by --write -->"


def _version(argv: Sequence[str], pattern: str = r"(\d+[\w.:+~-]*)") -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except OSError:
        return "absent"
    match = re.search(pattern, out)
    return match.group(1) if match else "unknown"


def machine() -> Table:
    """nproc, RAM, kernel, Python and tool versions."""
    with open("/proc/meminfo") as meminfo:
        total_kib = int(meminfo.readline().split()[1])
    rows = [["CPUs (nproc)", str(os.cpu_count())],
            ["RAM", f"{total_kib / 1024 / 1024:.1f} GiB"],
            ["kernel", platform.release()],
            ["Python", platform.python_version()],
            ["qemu-img", _version(["qemu-img", "--version"], r"version ([\d.]+)")],
            ["tgt", _version(["dpkg-query", "-W", "-f", "${Version}", "tgt"], r"(.+)")],
            ["OpenSSH", _version(["dpkg-query", "-W", "-f", "${Version}", "openssh-client"],
                                 r"(.+)")]]
    return Table("Machine", ["what", "value"], rows)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="128 MiB image, fewer rounds, bursts of 10 and 20")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append",
                        help="run only this section (repeatable)")
    parser.add_argument("--write", metavar="FILE", help="also write the tables to FILE")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: the group's volumes are real tgtd targets")
    signal.signal(signal.SIGTERM, _stop)  # clean up (hosts, tgtd, temp dirs) when stopped
    opts = Options(quick=args.quick)
    tables: List[Table] = [machine()]
    print(tables[0].render(), flush=True)
    started = time.monotonic()
    for name in args.only or list(SECTIONS):
        section_started = time.monotonic()
        for table in SECTIONS[name](opts):
            tables.append(table)
            print(table.render(), flush=True)
        print(f"({name}: {time.monotonic() - section_started:.0f} s)\n", flush=True)
    total = time.monotonic() - started
    print(f"total: {total:.0f} s")
    if args.write:
        flags = " --quick" if args.quick else ""
        text = HEADER.format(flags=flags, sections=", ".join(sorted(SECTIONS)))
        text += "\n".join(table.render() for table in tables)
        text += f"\nWall time of this run: {total:.0f} s.\n\n"
        target = Path(args.write)
        old = target.read_text() if target.exists() else ""
        kept = old[old.index(MARKER):] if MARKER in old else MARKER + "\n"
        target.write_text(text + kept)
    return 0


if __name__ == "__main__":
    sys.exit(main())
