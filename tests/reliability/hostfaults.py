"""Host fault matrix of the TM actions: every action that works on a hypervisor host, with
every fault the test hosts can produce on it (``Host.set_faults`` and
``HostWorld.set_reachable`` of ``tests/hosts/world.py``).

A scenario is an action with the steps that bring the VM to where oned runs it (a clone
logged in before ``delete``, a premigrate before ``postmigrate`` ...).  A clean run records
the state the action leaves (``WorldView``: volumes with size, access and multihost;
per host its sessions, node records and the VM directory with its disk links).  Then, for
each fault, from a reset world: the set-up, the fault, the action, and the checks:

* it fails with exit 1, one ``ERROR:`` line and one reason line naming the host;
* the fault fired (its ``times`` used up);
* no volume made or deleted (a clone whose logout failed, a persistent image's volume
  stay); every host has access records exactly for the volumes it is logged in to (none
  left behind by a failed login, none removed while a session that failed to log out
  still uses it); every node record has its session and every session its record (a
  record iscsiadm failed to delete excepted); no disk link points at a device that is
  not there; no volume has sessions of two hosts without multihost access;
* run again without the fault, the action succeeds and leaves the clean run's state.
"""

from __future__ import annotations

import base64
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from eqliscsi.ds_actions import delete_with_snapshots
from tests.tm_harness import (
    IMAGE_DS,
    SYSTEM_DS,
    TmHarness,
    TmRun,
    disk_arg,
    image_disk,
    vm,
    vm_path,
    volatile_disk,
)

DS = str(IMAGE_DS)
SYS = str(SYSTEM_DS)
VM = 17
FRONTEND = socket.gethostname()
IMAGES = {"ubuntu.42": (42, 0x33, False), "data.43": (43, 0x44, True)}
UNREACHABLE = "unreachable"  # the host's ssh port is closed
PORTAL_CLOSED = "portal-closed"  # nothing listens at EQL_PORTAL: a real failed login
FAULTS: Dict[str, Dict[str, object]] = {  # the faults of the hosts' iscsiadm
    "login-auth": {"op": "login", "rc": 24},
    "login-timeout": {"op": "login", "rc": 8},
    "login-fatal": {"op": "login", "rc": 19},
    "no-device": {"op": "no-device"},
    "no-link": {"op": "no-link"},
    "node-new": {"op": "node-new"},
    "logout": {"op": "logout", "rc": 10},
    "logout-busy": {"op": "logout", "rc": 28},
    "node-delete": {"op": "node-delete"},
    "rescan": {"op": "rescan", "rc": 22},
    # one target of two: the second one logged in to, the first one logged out of
    "login-2nd": {"op": "login", "target": r"data\.43$"},
    "no-device-2nd": {"op": "no-device", "target": r"data\.43$"},
    "logout-1st": {"op": "logout", "target": r"ubuntu\.42-v17-d0$"},
    "node-delete-1st": {"op": "node-delete", "target": r"ubuntu\.42-v17-d0$"},
}
REASON_SHOWN = 160  # characters of the reason in the table
LOGIN_FAULTS = (UNREACHABLE, "login-auth", "login-timeout", "login-fatal", "no-device",
                "no-link", "node-new")
LOGOUT_FAULTS = (UNREACHABLE, "logout", "logout-busy", "node-delete")


@dataclass(frozen=True)
class Scenario:
    """One action: the VM's disks and hosts, the set-up actions, the action, and which
    faults apply on which host."""

    name: str
    disks: Tuple[str, ...]
    history: Tuple[str, ...]
    setup: Tuple[Tuple[str, ...], ...]
    argv: Tuple[str, ...]
    faults: Tuple[Tuple[str, str], ...]  # (fault, host)
    conf: Tuple[Tuple[str, str], ...] = ()  # conf file settings besides the harness'


CLONE = image_disk(0, "ubuntu.42", 42, 16)
PERSISTENT = image_disk(1, "data.43", 43, 16, persistent=True)
VOLATILE = volatile_disk(2, 8)
SWAP = volatile_disk(3, 8, kind="swap")
CLONE_ON_HOST1 = ("clone", "one:ubuntu.42", disk_arg("host1", 0), str(VM), DS)
LN_ON_HOST1 = ("ln", "one:data.43", disk_arg("host1", 1), str(VM), DS)
MIGRATE = ("host1", "host2", vm_path(VM), str(VM), SYS)
MIGRATE_ACTIONS = ("premigrate", "postmigrate", "failmigrate")
MULTIHOST_OFF = (("EQL_MULTIHOST", "disable"),)  # on only while a VM moves


def _on(host: str, faults: Sequence[str]) -> Tuple[Tuple[str, str], ...]:
    return tuple((fault, host) for fault in faults)


SCENARIOS: Dict[str, Scenario] = {s.name: s for s in (
    Scenario("clone", (CLONE,), ("host1",), (), CLONE_ON_HOST1,
             _on("host1", (*LOGIN_FAULTS, PORTAL_CLOSED))),
    Scenario("ln", (PERSISTENT,), ("host1",), (),
             LN_ON_HOST1, _on("host1", LOGIN_FAULTS)),
    Scenario("mkimage", (VOLATILE,), ("host1",), (),
             ("mkimage", "8", "raw", disk_arg("host1", 2), str(VM), SYS),
             _on("host1", ("unreachable", "login-auth", "no-device"))),
    Scenario("mkswap", (SWAP,), ("host1",), (),
             ("mkswap", "8", disk_arg("host1", 3), str(VM), SYS),
             _on("host1", ("unreachable", "login-auth", "no-device"))),
    Scenario("mv-host-to-host", (CLONE,), ("host1", "host2"), (CLONE_ON_HOST1,),
             ("mv", disk_arg("host1", 0), disk_arg("host2", 0), str(VM), DS),
             _on("host1", ("unreachable", "logout"))
             + _on("host2", ("unreachable", "login-auth", "no-device"))),
    Scenario("mv-to-frontend", (CLONE,), ("host1",), (CLONE_ON_HOST1,),
             ("mv", disk_arg("host1", 0), disk_arg(FRONTEND, 0), str(VM), DS),
             _on("host1", ("unreachable", "logout", "node-delete"))),
    Scenario("mv-from-frontend", (CLONE,), ("host1",),
             (("clone", "one:ubuntu.42", disk_arg(FRONTEND, 0), str(VM), DS),),
             ("mv", disk_arg(FRONTEND, 0), disk_arg("host1", 0), str(VM), DS),
             _on("host1", ("unreachable", "login-timeout", "no-device"))),
    Scenario("resize", (CLONE,), ("host1",), (CLONE_ON_HOST1,),
             ("resize", disk_arg("host1", 0), "24", str(VM), DS),
             _on("host1", ("unreachable", "rescan"))),
    Scenario("delete-clone", (CLONE,), ("host1",), (CLONE_ON_HOST1,),
             ("delete", disk_arg("host1", 0), str(VM), DS), _on("host1", LOGOUT_FAULTS)),
    Scenario("delete-persistent", (PERSISTENT,), ("host1",),
             (LN_ON_HOST1,),
             ("delete", disk_arg("host1", 1), str(VM), DS),
             _on("host1", ("unreachable", "logout"))),
    Scenario("delete-volatile", (VOLATILE,), ("host1",),
             (("mkimage", "8", "raw", disk_arg("host1", 2), str(VM), SYS),),
             ("delete", disk_arg("host1", 2), str(VM), SYS),
             _on("host1", ("unreachable", "logout"))),
    Scenario("mvds", (PERSISTENT,), ("host1",), (LN_ON_HOST1,),
             ("mvds", disk_arg("host1", 1), "data.43", str(VM), DS),
             _on("host1", ("unreachable", "logout"))),
    Scenario("delete-vm-dir", (CLONE,), ("host1",), (CLONE_ON_HOST1,),
             ("delete", f"host1:{vm_path(VM)}", str(VM), SYS),
             _on("host1", ("unreachable", "logout"))),
    Scenario("premigrate", (CLONE,), ("host1", "host2"), (CLONE_ON_HOST1,),
             ("premigrate", *MIGRATE), _on("host2", ("unreachable", "login-auth",
                                                      "no-device", "no-link")),
             MULTIHOST_OFF),
    Scenario("postmigrate", (CLONE,), ("host1", "host2"),
             (CLONE_ON_HOST1, ("premigrate", *MIGRATE)), ("postmigrate", *MIGRATE),
             _on("host1", ("unreachable", "logout", "node-delete")), MULTIHOST_OFF),
    Scenario("failmigrate", (CLONE,), ("host1", "host2"),
             (CLONE_ON_HOST1, ("premigrate", *MIGRATE)), ("failmigrate", *MIGRATE),
             _on("host2", ("unreachable", "logout")), MULTIHOST_OFF),
    Scenario("premigrate-2-disks", (CLONE, PERSISTENT), ("host1", "host2"),
             (CLONE_ON_HOST1, LN_ON_HOST1), ("premigrate", *MIGRATE),
             _on("host2", ("login-2nd", "no-device-2nd")), MULTIHOST_OFF),
    Scenario("postmigrate-2-disks", (CLONE, PERSISTENT), ("host1", "host2"),
             (CLONE_ON_HOST1, LN_ON_HOST1, ("premigrate", *MIGRATE)),
             ("postmigrate", *MIGRATE), _on("host1", ("logout-1st", "node-delete-1st")),
             MULTIHOST_OFF),
    Scenario("snap_revert", (CLONE,), ("host1",),
             (CLONE_ON_HOST1, ("snap_create", disk_arg("host1", 0), "0", str(VM), DS)),
             ("snap_revert", disk_arg("host1", 0), "0", str(VM), DS),
             _on("host1", ("unreachable", "logout", "login-auth"))),
    Scenario("context", (CLONE,), ("host1",), (),
             ("context", "@context.sh", disk_arg("host1", 4), str(VM), SYS),
             _on("host1", ("unreachable",))),
)}


# --- the state an action leaves ------------------------------------------------------------

HostView = Tuple[Tuple[str, ...], Tuple[str, ...], Optional[Tuple[str, ...]], Tuple[str, ...]]


@dataclass(frozen=True)
class WorldView:
    """Volumes: name -> (size MB, access initiators, multihost); hosts: name ->
    (sessions, node records, VM directory entries or None, dangling disk links)."""

    volumes: Dict[str, Tuple[int, Tuple[str, ...], bool]]
    hosts: Dict[str, HostView]


def world_view(tm: TmHarness) -> WorldView:
    state = tm.sim.load_state()
    names = {volume.iqn: volume.name for volume in state.volumes.values()}
    volumes = {v.name: (v.size_mb, tuple(sorted(r.initiator for r in v.access)),
                        bool(v.multihost)) for v in state.volumes.values()}
    hosts: Dict[str, HostView] = {}
    for host in tm.hosts.hosts:
        sessions = tuple(sorted(names.get(s["target"], s["target"]) for s in host.sessions()))
        db = host.state_dir / "etc-iscsi" / "nodes"
        records = tuple(sorted(names.get(p.name, p.name) for p in db.iterdir())
                        if db.is_dir() else ())
        directory = host.path(vm_path(VM))
        entries: Optional[Tuple[str, ...]] = None
        dangling: List[str] = []
        if directory.is_dir():
            by_path = host.by_path()
            listed = []
            for entry in sorted(directory.iterdir()):
                if not entry.is_symlink():
                    listed.append(entry.name)
                    continue
                target = Path(str(entry.readlink())).name
                iqn = target.partition("-iscsi-")[2].rpartition("-lun-")[0]
                listed.append(f"{entry.name} -> {names.get(iqn, target)}")
                if target not in by_path:
                    dangling.append(entry.name)
            entries = tuple(listed)
        hosts[host.name] = (sessions, records, entries, tuple(dangling))
    return WorldView(volumes, hosts)


def invariant_problems(tm: TmHarness, view: WorldView,
                       check_records: bool = True) -> List[str]:
    """What is wrong in any state: access without session (or the reverse), node records
    without session (or the reverse; unless not ``check_records``), disk links to
    devices that are not there, sessions of several hosts without multihost access."""
    problems = [f"{name}: sessions of {hosts} without multihost access"
                for name, hosts in _session_hosts(view).items()
                if len(hosts) > 1 and not view.volumes[name][2]]
    for host in tm.hosts.hosts:
        sessions, node_records, _, dangling = view.hosts[host.name]
        access = tuple(sorted(name for name, (_, initiators, _) in view.volumes.items()
                              if host.iqn in initiators))
        if access != sessions:
            problems.append(f"{host.name}: access to {list(access)}, sessions to "
                            f"{list(sessions)}")
        if check_records and node_records != sessions:
            problems.append(f"{host.name}: node records {list(node_records)}, sessions "
                            f"{list(sessions)}")
        if dangling:
            problems.append(f"{host.name}: disk links to missing devices {list(dangling)}")
    return problems


def _session_hosts(view: WorldView) -> Dict[str, List[str]]:
    """Volume -> the hosts logged in to it."""
    found: Dict[str, List[str]] = {}
    for name, (sessions, _, _, _) in view.hosts.items():
        for volume in sessions:
            found.setdefault(volume, []).append(name)
    return found


# --- running a scenario --------------------------------------------------------------------

@dataclass
class HostCase:
    """One (scenario, fault, host) case and what came of it."""

    action: str
    host: str
    fault: str
    outcome: str = ""
    problems: List[str] = field(default_factory=list)

    @property
    def row(self) -> str:
        status = "OK" if not self.problems else "PROBLEM: " + "; ".join(self.problems)
        return f"| {self.action} | {self.host} | {self.fault} | {self.outcome} | {status} |"


def table(cases: Sequence[HostCase]) -> str:
    head = "| action | host | fault | outcome | checks |\n|---|---|---|---|---|\n"
    return head + "\n".join(case.row for case in cases) + "\n"


class HostFaultMatrix:
    """Runs one scenario's cases on one harness (two test hosts, group with targets)."""

    def __init__(self, tm: TmHarness, scenario: Scenario) -> None:
        self.tm = tm
        self.scenario = scenario
        self.initial: Optional[WorldView] = None
        self.clean: Optional[WorldView] = None
        for volume, (image_id, fill, persistent) in IMAGES.items():
            if volume not in tm.volume_names():
                tm.make_image(image_id, volume.split(".")[0], 16, fill, persistent)
        (tm.base / "context.sh").write_text("ETH0_IP='10.0.0.7'\n")
        tm.put_vm(VM, vm(VM, list(scenario.disks), list(scenario.history)))

    def run(self, argv: Optional[Sequence[str]] = None) -> TmRun:
        """Run the action (or ``argv``) as oned does: ``@name`` is a file of the harness,
        the migrate actions get the VM's XML on stdin."""
        action, *args = argv or self.scenario.argv
        args = [str(self.tm.base / arg[1:]) if arg.startswith("@") else arg for arg in args]
        stdin = (base64.b64encode((self.tm.one_dir / f"vm-{VM}.xml").read_bytes())
                 if action in MIGRATE_ACTIONS else b"")
        return self.tm.run(action, *args, stdin=stdin)

    def reset(self) -> None:
        """Back to the images alone: every host logged out, no node record, no VM
        directory, no fault; only the image volumes, without access records."""
        tm = self.tm
        tm.write_conf(**dict(self.scenario.conf))
        for host in tm.hosts.hosts:
            host.set_faults([])
            tm.hosts.set_reachable(host.name, True)
            for argv in (["iscsiadm", "-m", "session", "-u"],
                         ["iscsiadm", "-m", "node", "-o", "delete"],
                         ["rm", "-rf", "--", vm_path(VM)]):
                done = host.root(argv)
                assert done.returncode in (0, 21), (argv, done.stderr)
        with tm.group() as group:
            for name in tm.volume_names():
                for record in group.list_access(name):
                    group.delete_access(name, record.id)
                if name in IMAGES:
                    group.set_multihost(name, False)
                else:
                    delete_with_snapshots(group, name)
        view = world_view(tm)
        if self.initial is None:
            self.initial = view
        assert view == self.initial, (view, self.initial)

    def set_up(self) -> WorldView:
        self.reset()
        for argv in self.scenario.setup:
            self.run(argv).ok()
        return world_view(self.tm)

    def record(self) -> None:
        """The clean run: the state the action leaves without a fault."""
        self.set_up()
        self.run().ok()
        self.clean = world_view(self.tm)
        assert not invariant_problems(self.tm, self.clean), invariant_problems(
            self.tm, self.clean)

    def inject(self, fault: str, host_name: str) -> None:
        if fault == UNREACHABLE:
            self.tm.hosts.set_reachable(host_name, False)
        elif fault == PORTAL_CLOSED:
            self.tm.write_conf(**dict(self.scenario.conf), EQL_PORTAL="127.0.0.1:3261")
        else:
            self.tm.host(host_name).set_faults([{**FAULTS[fault], "times": 1}])

    def clear(self, host_name: str) -> None:
        self.tm.host(host_name).set_faults([])
        self.tm.hosts.set_reachable(host_name, True)
        self.tm.write_conf(**dict(self.scenario.conf))

    def case(self, fault: str, host_name: str) -> HostCase:
        tm, result = self.tm, HostCase(self.scenario.name, host_name, fault)
        before = self.set_up()
        self.inject(fault, host_name)
        run = self.run()
        try:
            reason = run.reason
            result.outcome = f"failed: {reason[:REASON_SHOWN]}"
            if host_name not in reason:
                result.problems.append("the reason does not name the host")
        except AssertionError:
            result.outcome = f"exit {run.returncode}"
            result.problems.append(f"no clean failure: {run.stderr.strip()[-300:]!r}")
        if any(f.get("times") != 0 for f in tm.host(host_name).faults()):
            result.problems.append("the fault did not fire")
        self.clear(host_name)
        after = world_view(tm)
        if sorted(after.volumes) != sorted(before.volumes):
            result.problems.append(f"volumes {sorted(before.volumes)} became "
                                   f"{sorted(after.volumes)}")
        # a record iscsiadm cannot delete stays (its session is gone)
        result.problems += invariant_problems(
            tm, after, FAULTS.get(fault, {}).get("op") != "node-delete")
        rerun = self.run()
        if rerun.returncode != 0:
            result.problems.append(f"the re-run failed: {rerun.stderr.strip()[-300:]!r}")
        elif world_view(tm) != self.clean:
            result.problems.append(f"the re-run left {world_view(tm)}, not {self.clean}")
        return result
