"""The benchmark's world: a simulated group (real tgtd targets or files only), test
hosts, and the tests' DS/TM harnesses around them, with counting ``ssh`` wrappers."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Optional

from tests.conftest import SIM_PASSWORD, RunningSim
from tests.ds_harness import DsHarness
from tests.eqlsim.iscsi import TgtBackend, pick_free_group_ip
from tests.eqlsim.server import GroupSimulator
from tests.hosts.world import HostWorld
from tests.tm_harness import TmHarness

COUNTING_SSH = """#!/bin/sh
# the test hosts' ssh wrapper, logging each call's microseconds and arguments
start=$(date +%s%N)
/usr/bin/ssh -F '{config}' "$@"
rc=$?
end=$(date +%s%N)
printf '%s %s\\n' "$(( (end - start) / 1000 ))" "$*" >> '{log}'
exit $rc
"""


def start_sim(state_dir: Path, *, iscsi: bool, max_sessions: int = 7,
              **options: Any) -> RunningSim:
    """A running simulated group (grpadmin / the tests' password) on 127.0.0.1."""
    if iscsi:
        options["group_ip"] = pick_free_group_ip()
        options["backend"] = TgtBackend(state_dir, options["group_ip"])
    simulator = GroupSimulator(state_dir, ("127.0.0.1", 0), accounts={"grpadmin": SIM_PASSWORD},
                               group_name="group-0", max_sessions=max_sessions, **options)
    simulator.start()
    host, port = simulator.address
    return RunningSim(host, port, "grpadmin", SIM_PASSWORD, "group-0", state_dir, simulator)


class World:
    """Everything a section needs; ``close()`` stops it (hosts first, then the group)."""

    def __init__(self, base: Path, sim: RunningSim, hosts: Optional[HostWorld]) -> None:
        self.base = base
        self.sim = sim
        self.hosts = hosts
        self.ssh_log = base / "ssh-calls.log"
        if hosts is not None:
            wrapper = hosts.bin_dir / "ssh"
            wrapper.write_text(COUNTING_SSH.format(log=self.ssh_log, config=hosts.ssh_config))
            wrapper.chmod(0o755)
        self._tm: List[TmHarness] = []
        self._ds: Optional[DsHarness] = None

    def ds(self) -> DsHarness:
        if self._ds is None:
            self._ds = DsHarness(self.sim, self.base / "ds")
        return self._ds

    def tm(self) -> TmHarness:
        harness = TmHarness(self.sim, self.hosts, self.base / f"tm{len(self._tm) + 1}", False)
        self._tm.append(harness)
        return harness

    def ssh_calls(self) -> List[str]:
        """Every host ssh call made through the wrapper so far: microseconds, arguments."""
        return self.ssh_log.read_text().splitlines() if self.ssh_log.exists() else []

    def close(self) -> None:
        if self.hosts is not None:
            self.hosts.stop()
        self.sim.stop()


@contextmanager
def world(*, hosts: int = 2, iscsi: bool = True, max_sessions: int = 7,
          keep: bool = False, in_memory: bool = False) -> Iterator[World]:
    """A fresh world in a private temporary directory (removed afterwards); with
    ``in_memory`` on tmpfs (``/dev/shm``), so that the simulated array's volumes and the
    front-end's files do not share one disk and its write-back."""
    memory = Path("/dev/shm")  # noqa: S108 (mkdtemp makes a private 0700 directory in it)
    base = Path(tempfile.mkdtemp(prefix="eqlbench-",
                                 dir=str(memory) if in_memory and memory.is_dir() else None))
    sim = start_sim(base / "group", iscsi=iscsi, max_sessions=max_sessions)
    host_world: Optional[HostWorld] = None
    try:
        if hosts:
            host_world = HostWorld(base / "hosts", hosts)
            host_world.start()
        made = World(base, sim, host_world)
    except BaseException:
        if host_world is not None:
            host_world.stop()
        sim.stop()
        raise
    try:
        yield made
    finally:
        made.close()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
