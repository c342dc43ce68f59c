"""The datastore fault matrix: every DS action, every Group CLI command it sends, every
fault the simulator can inject at that command.

``CommandFaultMatrix`` is the machinery (shared with the TM matrix, ``tm_faultmatrix``):
it runs the action once cleanly, records the commands it sent (from the simulator's
command log) and then, for each command position and each ``FAULTS`` entry, resets the
group to the set-up, injects the fault at exactly that command (``match`` = the whole
command line, ``nth`` = its position in the connection), runs the action, waits for the
simulator's sessions to end (a delayed command completes first, as on a busy group, so a
change the group makes late is seen), checks the outcome (``case``), runs the action
again without the fault and checks that it succeeds and leaves exactly the clean run's
state.  ``FaultMatrix`` is its DS form: a
``Scenario`` describes one DS action (its set-up and its action XML).

A bystander volume (``keep.9``, with a host's access record and a snapshot) is on the
group in every case: no fault may touch it.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Callable,
    ContextManager,
    Dict,
    List,
    Optional,
    Protocol,
    Set,
    Tuple,
    TypeVar,
)

from eqliscsi.ds_actions import delete_with_snapshots, image_description, snapshot_name
from eqliscsi.group import GroupClient
from tests.conftest import RunningSim
from tests.ds_harness import FRONTEND, MIB, DsHarness, DsRun, ds_xml, write_random

BYSTANDER = "keep.9"
HOST = "iqn.2024-01.org.example:host1"
COMMAND_TIMEOUT = 5  # EQL_COMMAND_TIMEOUT in the matrix' conf
SLOW = COMMAND_TIMEOUT + 3  # the "slow group" delay: past the command timeout
# the group names its own snapshots by time (``<volume>-2026-11-24-12:19:50.3``): in a
# fault's match that part may differ from the clean run
_TIMESTAMP = re.compile(r"\d{4}\\-\d\d\\-\d\d\\-\d\d:\d\d:\d\d\\\.\d+")

# name -> (fault entry without match/nth)
FAULTS: Dict[str, Dict[str, object]] = {
    "drop-before": {"when": "before", "action": "drop"},
    "drop-after": {"when": "after", "action": "drop"},
    "error": {"when": "before", "action": "error"},
    "slow": {"when": "before", "action": "delay", "seconds": SLOW},
}


def selected(cases: List[Tuple[int, str]], commands: List[str]) -> List[Tuple[int, str]]:
    """The (position, fault) cases that ``EQLISCSI_MATRIX_FAULTS`` (comma-separated fault
    names) and ``EQLISCSI_MATRIX_COMMANDS`` (a regular expression searched in the
    command) let through; all of them when these are unset."""
    faults = os.environ.get("EQLISCSI_MATRIX_FAULTS")
    wanted = set(faults.split(",")) if faults else set(FAULTS)
    pattern = re.compile(os.environ.get("EQLISCSI_MATRIX_COMMANDS", ""))
    return [(position, fault) for position, fault in cases
            if fault in wanted and pattern.search(commands[position])]


_V = TypeVar("_V")
GroupView = Dict[str, Tuple[str, Tuple[str, ...], Tuple[str, ...], str]]
_NO_VOLUME: Tuple[str, Tuple[str, ...], Tuple[str, ...], str] = ("", (), (), "")


class Harness(Protocol):
    """What the matrix needs of a test harness (``DsHarness``, ``TmHarness``)."""

    sim: RunningSim

    def group(self) -> ContextManager[GroupClient]: ...

    def volume_names(self) -> List[str]: ...

    def write_conf(self, **extra: str) -> None: ...


def group_view(harness: Harness) -> GroupView:
    """Volume -> (status, access initiators, snapshot names, description)."""
    return {v.name: (v.status, tuple(sorted(r.initiator for r in v.access)),
                     tuple(sorted(s.name for s in v.snapshots)), v.description)
            for v in harness.sim.load_state().volumes.values()}


@dataclass
class Scenario:
    action: str
    object_id: int
    setup: Callable[[DsHarness, Path], None]
    xml: Callable[[Path], str]
    # False: running it again after it succeeded must fail cleanly (flatten removed the
    # snapshot it was asked for), not succeed
    idempotent: bool = True


def _bystander(harness: Harness) -> None:
    with harness.group() as group:
        group.create_volume(BYSTANDER, 16, description=image_description(9, "Keep"))
        group.create_access(BYSTANDER, initiator=HOST)
        group.create_snapshot(BYSTANDER, snapshot_name(BYSTANDER, 0))


def _nothing(ds: DsHarness, work: Path) -> None:
    """No set-up beyond the bystander."""


def _image_file(ds: DsHarness, work: Path) -> None:
    image = work / "image.raw"
    if not image.exists():
        write_random(image, 2 * MIB)


def _golden(ds: DsHarness, work: Path) -> None:
    with ds.group() as group:
        group.create_volume("golden.7", 16, description=image_description(7, "Golden"))
        group.create_access("golden.7", initiator=HOST)


def _with_snapshots(ds: DsHarness, work: Path) -> None:
    with ds.group() as group:
        group.create_volume("ubuntu.42", 16, description=image_description(42, "Ubuntu"))
        group.create_access("ubuntu.42", initiator=HOST)
        group.create_snapshot("ubuntu.42", snapshot_name("ubuntu.42", 0))
        group.create_snapshot("ubuntu.42", snapshot_name("ubuntu.42", 1))


def _on_volume(**fields: str) -> Callable[[Path], str]:
    return lambda work: ds_xml({"SOURCE": "ubuntu.42", "PATH": "", **fields})


SCENARIOS: Dict[str, Scenario] = {
    "mkfs": Scenario("mkfs", 42, _nothing, lambda work: ds_xml(
        {"NAME": "Data", "TYPE": "2", "SIZE": "16", "PATH": "", "FORMAT": "raw", "FS": ""})),
    "cp": Scenario("cp", 42, _image_file, lambda work: ds_xml(
        {"NAME": "Img", "PATH": str(work / "image.raw"), "SIZE": "2"})),
    "clone": Scenario("clone", 43, _golden, lambda work: ds_xml(
        {"ID": "43", "NAME": "Copy", "PATH": "golden.7", "SIZE": "32", "CLONING_ID": "7",
         "SOURCE": ""})),
    "rm": Scenario("rm", 42, _with_snapshots, _on_volume()),
    "monitor": Scenario("monitor", 100, _nothing, lambda work: ds_xml(with_image=False)),
    "snap_delete": Scenario("snap_delete", 42, _with_snapshots,
                            _on_volume(TARGET_SNAPSHOT="1")),
    "snap_revert": Scenario("snap_revert", 42, _with_snapshots,
                            _on_volume(TARGET_SNAPSHOT="0")),
    "snap_flatten": Scenario("snap_flatten", 42, _with_snapshots,
                             _on_volume(TARGET_SNAPSHOT="0"), idempotent=False),
}


@dataclass
class CaseResult:
    action: str
    position: int
    command: str
    fault: str
    outcome: str  # "failed: <reason>" or "succeeded"
    problems: List[str] = field(default_factory=list)

    @property
    def row(self) -> str:
        status = "OK" if not self.problems else "PROBLEM: " + "; ".join(self.problems)
        return (f"| {self.action} | {self.position} | `{self.command}` | {self.fault} | "
                f"{self.outcome} | {status} |")


def _difference(now: Dict[str, _V], then: Dict[str, _V]) -> str:
    """The entries that differ: ``key: now (clean run: then)``; "" when none do."""
    return "".join(f"{key}: {now.get(key)} (clean run: {then.get(key)}); "
                   for key in sorted(set(now) | set(then)) if now.get(key) != then.get(key))


class CommandFaultMatrix:
    """The matrix of one action against one harness: ``record`` the clean run, then
    ``case`` by case.  Subclasses say how to set up and run the action and may add state
    beyond the group's volumes (``extra_view``) and checks (``extra_problems``)."""

    frontend = FRONTEND  # the front-end's initiator: none of its records may stay

    def __init__(self, harness: Harness, action: str, work: Path,
                 idempotent: bool = True) -> None:
        self.harness = harness
        self.action = action
        self.work = work
        # False: running it again after it succeeded must fail cleanly, not succeed
        self.idempotent = idempotent
        work.mkdir(exist_ok=True)
        harness.write_conf(EQL_COMMAND_TIMEOUT=str(COMMAND_TIMEOUT))
        self.before: GroupView = {}
        self.after: GroupView = {}
        self.extra_before: Dict[str, object] = {}
        self.extra_after: Dict[str, object] = {}
        self.commands: List[Tuple[int, str]] = []  # (nth in its connection, command)

    # --- what subclasses provide ---------------------------------------------------------

    def setup(self) -> None:
        """The action's own set-up, after the reset (the bystander is there)."""
        raise NotImplementedError

    def run_action(self) -> DsRun:
        raise NotImplementedError

    def clear(self) -> None:
        """Undo what the group reset cannot (before the volumes are deleted)."""

    def extra_view(self) -> Dict[str, object]:
        """State beyond the group view that a success must leave as the clean run did."""
        return {}

    def extra_problems(self, succeeded: bool) -> List[str]:
        return []

    # --- group state ---------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the set-up: only the bystander and the scenario's own volumes."""
        self.harness.sim.clear_faults()
        self.harness.sim.wait_sessions(0, timeout=15)
        self.clear()
        with self.harness.group() as group:
            for summary in group.list_volumes():
                if summary.name != BYSTANDER:
                    delete_with_snapshots(group, summary.name)
        if BYSTANDER not in self.harness.volume_names():
            _bystander(self.harness)
        self.setup()

    def run(self) -> Tuple[DsRun, List[Dict[str, object]]]:
        """Run the action; its log entries (those of connections the action opened)."""
        mark = len(self.harness.sim.commands())
        run = self.run_action()
        return run, self.harness.sim.commands()[mark:]

    def differs(self) -> str:
        """How the state differs from the clean run's result ("" if it does not)."""
        return _difference(group_view(self.harness), self.after) + _difference(
            self.extra_view(), self.extra_after)

    # --- the clean run -------------------------------------------------------------------

    def record(self) -> None:
        self.reset()
        self.before, self.extra_before = group_view(self.harness), self.extra_view()
        run, entries = self.run()
        run.ok()
        self.after, self.extra_after = group_view(self.harness), self.extra_view()
        per_conn: Dict[object, int] = {}
        for entry in entries:
            per_conn[entry["conn"]] = per_conn.get(entry["conn"], 0) + 1
            self.commands.append((per_conn[entry["conn"]], str(entry["command"])))

    # --- one case ------------------------------------------------------------------------

    def case(self, position: int, fault: str) -> CaseResult:
        nth, command = self.commands[position]
        self.reset()
        pattern = _TIMESTAMP.sub(lambda _: "[0-9:.-]+", re.escape(command))
        entry: Dict[str, object] = {"match": f"^{pattern}$", "nth": nth,
                                    "times": 1, **FAULTS[fault]}
        sim = self.harness.sim
        sim.set_faults([entry])
        started = time.monotonic()
        run, _ = self.run()
        elapsed = time.monotonic() - started
        problems: List[str] = []
        left = json.loads((sim.state_dir / "faults.json").read_text())
        if left and left[0].get("times") != 0:
            problems.append("the fault was never triggered (commands differ from the clean run)")
        if run.returncode == 0:
            outcome = "succeeded"
            if "ERROR" in run.stderr:
                problems.append("ERROR line on a successful run")
        else:
            outcome = "failed"
            problems += self._failure_contract(run)
        sim.clear_faults()
        try:  # a delayed command completes before its session ends: its change is seen
            sim.wait_sessions(0, timeout=SLOW + 10)
        except TimeoutError:
            problems.append("a CLI session stayed open after the action ended")
        problems += self._state_problems(run.returncode == 0)
        problems += self.extra_problems(run.returncode == 0)
        if elapsed > 60:
            problems.append(f"took {elapsed:.0f} s")
        again, _ = self.run()
        left_by_rerun = self.differs()
        if again.returncode != 0 and (self.idempotent or left_by_rerun):
            problems.append(f"re-run failed: {again.stderr.splitlines()[-1:]}")
        elif again.returncode != 0:
            problems += self._failure_contract(again)
        elif left_by_rerun:
            problems.append(f"re-run left {left_by_rerun}")
        reason = run.stderr.splitlines()[-1] if run.returncode else ""
        return CaseResult(self.action, position + 1, command, fault,
                          f"failed: {reason}" if reason else outcome, problems)

    def _failure_contract(self, run: DsRun) -> List[str]:
        lines = run.stderr.splitlines()
        if run.returncode != 1 or run.stdout or len(lines) < 2:
            return [f"bad failure contract rc={run.returncode} stdout={run.stdout!r}"]
        if (not lines[-2].startswith("ERROR: ") or not lines[-2].endswith(f": {lines[-1]}")
                or not lines[-1].strip()):
            return [f"no clear one-line reason: {lines[-2:]}"]
        if "Traceback" in run.stderr:
            return ["traceback on stderr"]
        return []

    def _state_problems(self, succeeded: bool) -> List[str]:
        view = group_view(self.harness)
        problems = []
        if view.get(BYSTANDER) != self.before[BYSTANDER]:
            problems.append(f"bystander changed: {view.get(BYSTANDER)}")
        for name, (_, access, _, _) in view.items():
            if self.frontend in access:
                problems.append(f"front-end access record left on {name}")
        allowed: Set[str] = set(self.before) | set(self.after)
        orphans = set(view) - allowed
        if orphans:
            problems.append(f"orphaned volumes {sorted(orphans)}")
        if not succeeded:
            # nothing the set-up made may be lost, except what the action deletes anyway
            lost = set(self.before) - set(view) - (set(self.before) - set(self.after))
            if lost:
                problems.append(f"volumes lost: {sorted(lost)}")
            for name, (_, _, snapshots, _) in view.items():
                known = set(self.before.get(name, _NO_VOLUME)[2]) | set(
                    self.after.get(name, _NO_VOLUME)[2])
                if set(snapshots) - known:
                    problems.append(f"snapshot(s) {sorted(set(snapshots) - known)} left "
                                    f"on {name}")
            made = set(view) - set(self.before)
            if made:
                problems.append(f"volume(s) {sorted(made)} left by the failed action")
        else:
            left = self.differs()
            if left:
                problems.append(f"succeeded but left {left}")
        return problems


class FaultMatrix(CommandFaultMatrix):
    """Runs one DS scenario's matrix against one harness (group with real iSCSI)."""

    def __init__(self, ds: DsHarness, scenario: Scenario, work: Path) -> None:
        super().__init__(ds, scenario.action, work, scenario.idempotent)
        self.ds = ds
        self.scenario = scenario

    def setup(self) -> None:
        self.scenario.setup(self.ds, self.work)

    def run_action(self) -> DsRun:
        return self.ds.run(self.scenario.action, self.scenario.xml(self.work),
                           object_id=self.scenario.object_id)


def table(results: List[CaseResult]) -> str:
    head = ("| action | # | command | fault | outcome | checks |\n"
            "|---|---|---|---|---|---|\n")
    return head + "\n".join(result.row for result in results) + "\n"


def write_report(results: List[CaseResult], path: Optional[Path]) -> None:
    if path is not None:
        with open(path, "a") as stream:
            stream.write(table(results))
