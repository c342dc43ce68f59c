"""The datastore fault matrix: every DS action, every Group CLI command it sends, every
fault the simulator can inject at that command.

``Scenario`` describes one action (its set-up, its action XML and the volumes the group
holds before and after a successful run).  ``FaultMatrix`` runs the action once cleanly,
records the commands it sent (from the simulator's command log) and then, for each command
position and each ``FAULTS`` entry, resets the group to the set-up, injects the fault at
exactly that command (``match`` = the whole command line, ``nth`` = its position in the
connection), runs the action, checks the outcome (``check``), clears the faults, runs the
action again and checks that it succeeds and leaves exactly the clean run's state.

A bystander volume (``keep.9``, with a host's access record and a snapshot) is on the
group in every case: no fault may touch it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Tuple

from eqliscsi.ds_actions import delete_with_snapshots, image_description, snapshot_name
from tests.ds_harness import FRONTEND, MIB, DsHarness, DsRun, ds_xml, write_random

BYSTANDER = "keep.9"
HOST = "iqn.2024-01.org.example:host1"
COMMAND_TIMEOUT = 5  # EQL_COMMAND_TIMEOUT in the matrix' conf
SLOW = COMMAND_TIMEOUT + 3  # the "slow group" delay: past the command timeout
_GROUP_SNAPSHOT = re.compile(r"-\d{4}-\d\d-\d\d-\d\d:\d\d:\d\d\.\d+")
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

GroupView = Dict[str, Tuple[str, Tuple[str, ...], Tuple[str, ...], str]]


def group_view(ds: DsHarness) -> GroupView:
    """Volume -> (status, access initiators, snapshot names, description)."""
    return {v.name: (v.status, tuple(sorted(r.initiator for r in v.access)),
                     tuple(sorted(s.name for s in v.snapshots)), v.description)
            for v in ds.sim.load_state().volumes.values()}


@dataclass
class Scenario:
    action: str
    object_id: int
    setup: Callable[[DsHarness, Path], None]
    xml: Callable[[Path], str]
    # False: running it again after it succeeded must fail cleanly (flatten removed the
    # snapshot it was asked for), not succeed
    idempotent: bool = True


def _bystander(ds: DsHarness) -> None:
    with ds.group() as group:
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
    known: str = ""  # an open finding (RELIABILITY.md), shown in the table, not a failure

    @property
    def row(self) -> str:
        status = ("OK" if not self.problems and not self.known else
                  f"KNOWN: {self.known}" if not self.problems else
                  "PROBLEM: " + "; ".join(self.problems))
        return (f"| {self.action} | {self.position} | `{self.command}` | {self.fault} | "
                f"{self.outcome} | {status} |")


class FaultMatrix:
    """Runs one scenario's matrix against one harness (group with real iSCSI)."""

    def __init__(self, ds: DsHarness, scenario: Scenario, work: Path) -> None:
        self.ds = ds
        self.scenario = scenario
        self.work = work
        work.mkdir(exist_ok=True)
        ds.write_conf(EQL_COMMAND_TIMEOUT=str(COMMAND_TIMEOUT))
        self.before: GroupView = {}
        self.after: GroupView = {}
        self.commands: List[Tuple[int, str]] = []  # (nth in its connection, command)
        self.fault, self.known, self.last_reason = "", "", ""  # of the current case

    # --- group state ---------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the set-up: only the bystander and the scenario's own volumes."""
        self.ds.sim.clear_faults()
        self.ds.sim.wait_sessions(0, timeout=15)
        with self.ds.group() as group:
            for summary in group.list_volumes():
                if summary.name != BYSTANDER:
                    delete_with_snapshots(group, summary.name)
        if BYSTANDER not in self.ds.volume_names():
            _bystander(self.ds)
        self.scenario.setup(self.ds, self.work)

    def run(self) -> Tuple[DsRun, List[Dict[str, object]]]:
        """Run the action; its log entries (those of connections the action opened)."""
        mark = len(self.ds.sim.commands())
        run = self.ds.run(self.scenario.action, self.scenario.xml(self.work),
                          object_id=self.scenario.object_id)
        return run, self.ds.sim.commands()[mark:]

    # --- the clean run -------------------------------------------------------------------

    def record(self) -> None:
        self.reset()
        self.before = group_view(self.ds)
        run, entries = self.run()
        run.ok()
        self.after = group_view(self.ds)
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
        self.ds.sim.set_faults([entry])
        started = time.monotonic()
        run, _ = self.run()
        elapsed = time.monotonic() - started
        problems: List[str] = []
        self.fault, self.known = fault, ""
        self.last_reason = run.stderr.splitlines()[-1] if run.returncode and run.stderr else ""
        left = json.loads((self.ds.sim.state_dir / "faults.json").read_text())
        if left and left[0].get("times") != 0:
            problems.append("the fault was never triggered (commands differ from the clean run)")
        if run.returncode == 0:
            outcome = "succeeded"
            if "ERROR" in run.stderr:
                problems.append("ERROR line on a successful run")
        else:
            outcome = "failed"
            problems += self._failure_contract(run)
        problems += self._state_problems(run.returncode == 0)
        self.ds.sim.clear_faults()
        try:
            self.ds.sim.wait_sessions(0, timeout=10)
        except TimeoutError:
            problems.append("a CLI session stayed open after the action ended")
        if elapsed > 60:
            problems.append(f"took {elapsed:.0f} s")
        again, _ = self.run()
        completed = group_view(self.ds) == self.after
        if again.returncode != 0 and (self.scenario.idempotent or not completed):
            problems.append(f"re-run failed: {again.stderr.splitlines()[-1:]}")
        elif again.returncode != 0:
            problems += self._failure_contract(again)
        elif group_view(self.ds) != self.after:
            problems.append(f"re-run left {group_view(self.ds)}, clean run {self.after}")
        if problems and self._automatic_snapshot_left(command, problems):
            problems, self.known = [], ("the group's automatic pre-restore snapshot is left "
                                        "(open finding F2)")
        reason = run.stderr.splitlines()[-1] if run.returncode else ""
        return CaseResult(self.scenario.action, position + 1, command, fault,
                          f"failed: {reason}" if reason else outcome, problems, self.known)

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

    def _automatic_snapshot_left(self, command: str, problems: List[str]) -> bool:
        """The fault hit the deletion of the group's own pre-restore snapshot and the only
        harm is that snapshot, left (open finding F2 in RELIABILITY.md)."""
        if not _GROUP_SNAPSHOT.search(command) or not all(
                problem.startswith(("snapshot(s) [", "re-run left")) for problem in problems):
            return False
        view = group_view(self.ds)
        if set(view) != set(self.after):
            return False
        for name, (status, access, snapshots, description) in view.items():
            expected = self.after[name]
            extra = set(snapshots) - set(expected[2])
            if ((status, access, description) != (expected[0], expected[1], expected[3])
                    or set(expected[2]) - set(snapshots)
                    or not all(_GROUP_SNAPSHOT.search(snap) for snap in extra)):
                return False
        return True

    def _completed_late(self, made: Set[str]) -> bool:
        """The "slow" fault on the change that makes a volume: the group completed it
        after the driver gave up waiting (open finding F1 in RELIABILITY.md)."""
        return (self.fault == "slow" and self.last_reason.startswith("no answer to `volume ")
                and made <= set(self.after))

    def _state_problems(self, succeeded: bool) -> List[str]:
        view = group_view(self.ds)
        problems = []
        if view.get(BYSTANDER) != self.before[BYSTANDER]:
            problems.append(f"bystander changed: {view.get(BYSTANDER)}")
        for name, (_, access, _, _) in view.items():
            if FRONTEND in access:
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
                known = set(self.before.get(name, ("", (), (), ""))[2]) | set(
                    self.after.get(name, ("", (), (), ""))[2])
                if set(snapshots) - known:
                    problems.append(f"snapshot(s) {sorted(set(snapshots) - known)} left "
                                    f"on {name}")
            made = set(view) - set(self.before)
            if made and not self._completed_late(made):
                problems.append(f"volume(s) {sorted(made)} left by the failed action")
            elif made:
                self.known = (f"{sorted(made)} created by the group after the command "
                              "timed out; replaced by the re-run (open finding F1)")
        elif view != self.after:
            problems.append(f"succeeded but left {view}, clean run {self.after}")
        return problems


def table(results: List[CaseResult]) -> str:
    head = ("| action | # | command | fault | outcome | checks |\n"
            "|---|---|---|---|---|---|\n")
    return head + "\n".join(result.row for result in results) + "\n"


def write_report(results: List[CaseResult], path: Optional[Path]) -> None:
    if path is not None:
        with open(path, "a") as stream:
            stream.write(table(results))
