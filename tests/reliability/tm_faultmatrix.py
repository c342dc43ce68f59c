"""The transfer-manager fault matrix: every TM action of a VM's life, every Group CLI
command it sends, every fault of ``faultmatrix.FAULTS`` at that command.

The machinery is ``faultmatrix.CommandFaultMatrix`` (record a clean run, then per command
position and fault: reset, inject, run, check, run again without the fault).  A
``TmScenario`` says which volumes the set-up makes (straight on the group), which disks
of VM 17 are logged in and linked on which host before the action (by the driver's own
``ln``, or ``premigrate`` for post/failmigrate), and the action's arguments.  Three test
hosts: host1 and host2 use iSCSI, host3 stands in for the front-end (NO_ISCSI: undeploy
moves a disk there).

Beyond the DS matrix' checks (``CommandFaultMatrix``), after every case:

* a failed action leaves no iSCSI session, node record or entry of the VM directory on
  any host that the set-up did not have (a failed attach is rolled back on the host), and
  no access record of a host or of the front-end that the set-up did not have;
* a success leaves the hosts (sessions, node records, links), the volumes' sizes and
  multihost settings exactly as the clean run did;
* an image's volume is never lost (the persistent disk survives every ``delete``), and a
  VM's volume that is left keeps the description that makes it the VM's (so a re-run of
  a failed ``delete`` deletes it, which the re-run check proves).
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Set, Tuple, cast

from eqliscsi.ds_actions import image_description, snapshot_name
from eqliscsi.tm_common import vm_disk_description
from tests.ds_harness import DsRun
from tests.oned_xml import action_xml, b64, datastore_xml, image_xml
from tests.reliability.faultmatrix import COMMAND_TIMEOUT, CommandFaultMatrix, GroupView, group_view
from tests.tm_harness import (
    IMAGE_DS,
    SYSTEM_DS,
    TESTER,
    TmHarness,
    disk_arg,
    image_disk,
    vm,
    vm_path,
    volatile_disk,
)

VM_ID = 17
DS, SYS = str(IMAGE_DS), str(SYSTEM_DS)
IMAGE, DATA = "ubuntu.42", "data.43"  # a non-persistent and a persistent image
CLONE, VOLATILE = f"{IMAGE}-v{VM_ID}-d0", f"vm{VM_ID}-disk2"
SAVED = "copy.44"  # the image volume cpds makes
FRONTEND_HOST = "host3"  # NO_ISCSI: stands in for the front-end (undeploy, resume)
HOSTS = ("host1", "host2", FRONTEND_HOST)

# VM 17's disks: 0 a clone of image 42 (24 MB: extended), 1 persistent image 43,
# 2 volatile (ext4 for mkimage)
DISK_XML = {0: image_disk(0, IMAGE, 42, 24), 1: image_disk(1, DATA, 43, 16, persistent=True),
            2: volatile_disk(2, 8, "ext4")}
DISK_VOLUME = {0: CLONE, 1: DATA, 2: VOLATILE}
VOLUMES: Dict[str, Tuple[int, str]] = {  # name -> (MB, description)
    IMAGE: (16, image_description(42, "ubuntu")),
    DATA: (16, image_description(43, "data")),
    CLONE: (24, vm_disk_description(VM_ID, 0, f"clone of {IMAGE}")),
    VOLATILE: (8, vm_disk_description(VM_ID, 2, "volatile raw")),
}
IMAGE_VOLUMES = (IMAGE, DATA)


def _datastore(disk_id: int) -> str:
    """The datastore argument oned gives for a disk (volatile disks: the system one)."""
    return SYS if disk_id == 2 else DS


@dataclass(frozen=True)
class TmScenario:
    action: str
    args: Tuple[str, ...]
    disks: Tuple[int, ...] = (0,)  # VM 17's disks
    volumes: Tuple[str, ...] = ()  # made by the set-up (images are always made)
    linked: Tuple[Tuple[str, int], ...] = ()  # (host, disk) logged in by the set-up
    hosts: Tuple[str, ...] = ("host1",)  # the VM's history, the last one current
    snapshot: bool = False  # the clone has disk snapshot 0
    migrating: bool = False  # the set-up ran premigrate host1 -> host2
    vm_on_stdin: bool = False  # pre/post/failmigrate: the VM's XML on stdin


_MIGRATE = ("host1", "host2", vm_path(VM_ID), str(VM_ID), SYS)


def _clone_on_host1(action: str, *args: str, snapshot: bool = False,
                    hosts: Tuple[str, ...] = ("host1",)) -> TmScenario:
    """The clone (disk 0) exists and host1 is logged in to it."""
    return TmScenario(action, args, volumes=(CLONE,), linked=(("host1", 0),),
                      snapshot=snapshot, hosts=hosts)


def _data_on_host1(action: str, *args: str, migrating: bool = False) -> TmScenario:
    """host1 is logged in to the persistent disk 1 (live migration: to host2)."""
    migration = action.endswith("migrate")
    return TmScenario(action, args, disks=(1,), linked=(("host1", 1),),
                      hosts=("host1", "host2") if migration else ("host1",),
                      migrating=migrating, vm_on_stdin=migration)


SCENARIOS: Dict[str, TmScenario] = {
    "clone": TmScenario("clone", (f"one:{IMAGE}", disk_arg("host1", 0), "17", DS)),
    "ln": TmScenario("ln", (f"one:{DATA}", disk_arg("host1", 1), "17", DS), disks=(1,)),
    "mkimage": TmScenario("mkimage", ("8", "raw", disk_arg("host1", 2), "17", SYS), disks=(2,)),
    "mkswap": TmScenario("mkswap", ("8", disk_arg("host1", 2), "17", SYS), disks=(2,)),
    "mvds": _data_on_host1("mvds", disk_arg("host1", 1), DATA, "17", DS),
    "cpds": TmScenario("cpds", (disk_arg("host1", 0), SAVED, "-1", "17", DS), volumes=(CLONE,)),
    "resize": _clone_on_host1("resize", disk_arg("host1", 0), "32", "17", DS),
    "snap_create": TmScenario("snap_create", (disk_arg("host1", 0), "0", "17", DS),
                              volumes=(CLONE,)),
    "snap_delete": TmScenario("snap_delete", (disk_arg("host1", 0), "0", "17", DS),
                              volumes=(CLONE,), snapshot=True),
    "snap_revert": _clone_on_host1("snap_revert", disk_arg("host1", 0), "0", "17", DS,
                                   snapshot=True),
    "delete_clone": _clone_on_host1("delete", disk_arg("host1", 0), "17", DS),
    "delete_persistent": _data_on_host1("delete", disk_arg("host1", 1), "17", DS),
    "delete_volatile": TmScenario("delete", (disk_arg("host1", 2), "17", SYS), disks=(2,),
                                  volumes=(VOLATILE,), linked=(("host1", 2),)),
    "mv_undeploy": _clone_on_host1("mv", disk_arg("host1", 0), disk_arg(FRONTEND_HOST, 0), "17", DS,
                                   hosts=("host1", FRONTEND_HOST)),
    "mv_resume": TmScenario("mv", (disk_arg(FRONTEND_HOST, 0), disk_arg("host1", 0), "17", DS),
                            volumes=(CLONE,), hosts=("host1", FRONTEND_HOST, "host1")),
    "premigrate": _data_on_host1("premigrate", *_MIGRATE),
    "postmigrate": _data_on_host1("postmigrate", *_MIGRATE, migrating=True),
    "failmigrate": _data_on_host1("failmigrate", *_MIGRATE, migrating=True),
    "monitor": TmScenario("monitor", (SYS,), volumes=(CLONE,)),
}

# host -> (logged-in volumes, node record targets, VM directory entry -> link or "file")
HostView = Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...], Tuple[Tuple[str, str], ...]]]


def _monitor_message() -> bytes:
    system = datastore_xml(ID=SYS, NAME="system", TYPE="1",
                           template={"EQL_HOST": None, "SHARED": "NO", "TYPE": "SYSTEM_DS"})
    return b64(action_xml("", system, "<MONITOR_VM_DISKS>1</MONITOR_VM_DISKS>")).encode()


def _access_pairs(view: GroupView) -> Set[Tuple[str, str]]:
    """(volume, initiator) of every access record."""
    return {(name, initiator) for name, (_, access, _, _) in view.items()
            for initiator in access}


class TmFaultMatrix(CommandFaultMatrix):
    """One TM scenario's matrix against a harness with the three test hosts."""

    frontend = TESTER  # the front-end's initiator (mkimage writes the filesystem with it)

    def __init__(self, tm: TmHarness, name: str, work: Path) -> None:
        super().__init__(tm, name, work)
        tm.write_conf(EQL_COMMAND_TIMEOUT=str(COMMAND_TIMEOUT), NO_ISCSI=FRONTEND_HOST)
        self.tm = tm
        self.scenario = SCENARIOS[name]

    # --- set-up and run ------------------------------------------------------------------

    def clear(self) -> None:
        """Every host logged out of everything, node records and VM directory gone."""
        for name in HOSTS:
            done = self.tm.host(name).root(["sh", "-c", (
                "iscsiadm -m node -u >/dev/null 2>&1; iscsiadm -m node -o delete "
                f">/dev/null 2>&1; rm -rf -- '{vm_path(VM_ID)}'")])
            assert not self.tm.host(name).sessions(), (name, done.stderr)

    def setup(self) -> None:
        scenario, tm = self.scenario, self.tm
        tm.put_vm(VM_ID, vm(VM_ID, [DISK_XML[d] for d in scenario.disks], list(scenario.hosts)))
        tm.put_image(42, image_xml(ID="42", NAME="ubuntu", SOURCE=IMAGE, SIZE="16",
                                   PERSISTENT="0", DATASTORE_ID=DS))
        tm.put_image(43, image_xml(ID="43", NAME="data", SOURCE=DATA, SIZE="16",
                                   PERSISTENT="1", DATASTORE_ID=DS))
        tm.put_image(44, image_xml(ID="44", NAME="copy", SIZE="24", FORMAT="save_as",
                                   SOURCE="", DATASTORE_ID=DS))
        with tm.group() as group:
            for name in (*IMAGE_VOLUMES, *scenario.volumes):
                size_mb, description = VOLUMES[name]
                group.create_volume(name, size_mb, description=description)
            if scenario.snapshot:
                group.create_snapshot(CLONE, snapshot_name(CLONE, 0),
                                      description=vm_disk_description(VM_ID, 0, "snapshot 0"))
        for host, disk_id in scenario.linked:
            tm.run("ln", f"one:{DISK_VOLUME[disk_id]}", disk_arg(host, disk_id), str(VM_ID),
                   _datastore(disk_id)).ok()
        if scenario.migrating:
            tm.run("premigrate", *_MIGRATE, stdin=self._vm_message()).ok()

    def _vm_message(self) -> bytes:
        return base64.b64encode((self.tm.one_dir / f"vm-{VM_ID}.xml").read_bytes())

    def run_action(self) -> DsRun:
        stdin = (self._vm_message() if self.scenario.vm_on_stdin else
                 _monitor_message() if self.scenario.action == "monitor" else b"")
        return self.tm.run(self.scenario.action, *self.scenario.args, stdin=stdin)

    # --- hosts and volumes ---------------------------------------------------------------

    def host_view(self) -> HostView:
        """Per host: sessions, node records, VM directory (IQNs shown as volume names)."""
        names = {v.iqn: v.name for v in self.tm.sim.load_state().volumes.values()}
        iqns = re.compile("|".join(map(re.escape, names)) or "^$")

        def named(text: str) -> str:
            return iqns.sub(lambda match: f"<{names[match.group(0)]}>", text)

        view: HostView = {}
        for name in HOSTS:
            host = self.tm.host(name)
            nodes = host.state_dir / "etc-iscsi" / "nodes"
            targets = tuple(sorted(named(p.name) for p in nodes.iterdir())
                            ) if nodes.is_dir() else ()
            directory = host.path(vm_path(VM_ID))
            entries = tuple(sorted(
                (entry.name, named(os.readlink(entry)) if entry.is_symlink() else "file")
                for entry in directory.iterdir())) if directory.is_dir() else ()
            view[name] = (tuple(self.tm.logged_in(name)), targets, entries)
        return view

    def extra_view(self) -> Dict[str, object]:
        """The hosts, and every volume's size and multihost setting."""
        volumes = {f"{v.name} size, multihost": (v.size_mb, v.multihost)
                   for v in self.tm.sim.load_state().volumes.values()}
        return {**self.host_view(), **volumes}

    def extra_problems(self, succeeded: bool) -> List[str]:
        view = group_view(self.tm)
        problems = [f"image volume {name} lost" for name in IMAGE_VOLUMES if name not in view]
        for name, (_, _, _, description) in view.items():
            if name in self.before and self.before[name][3] != description:
                problems.append(f"{name}'s description changed to {description!r}")
        if succeeded:
            return problems
        hosts_before = cast(HostView, {name: self.extra_before[name] for name in HOSTS})
        for name, (sessions, nodes, entries) in self.host_view().items():
            old_sessions, old_nodes, old_entries = hosts_before[name]
            for what, now, then in (("session(s)", set(sessions), set(old_sessions)),
                                    ("node record(s)", set(nodes), set(old_nodes)),
                                    ("VM directory entries", set(entries), set(old_entries))):
                new = sorted(map(str, now - then))
                if new:
                    problems.append(f"{what} left on {name}: {new}")
        added = sorted(_access_pairs(view) - _access_pairs(self.before))
        if added:
            problems.append(f"access record(s) left: {added}")
        return problems
