"""Live migration: ``premigrate``, ``postmigrate`` and ``failmigrate``.

oned runs only the system datastore's TM; the stock system TMs forward the call to the
TM of each of the VM's disks with the caller's name appended.  So the arguments are
``src_host dst_host vm_dir vmid sys_ds_id`` plus, when forwarded, the calling TM's name,
with the VM (base64 ``<VM>`` XML) on stdin; OpenNebula 4.x passed the base64 XML as a
6th argument instead, which is accepted too.

Called directly, eqliscsi is the system datastore's TM: its disks are the eqliscsi
image disks and the volatile disks, and afterwards the call is forwarded to the TMs of
the VM's other disks (as OpenNebula's ``migrate_other`` does; their exit codes are
logged, not passed on).  Forwarded, only the eqliscsi image disks are handled and
nothing is forwarded.

Whether the VM directory is shared between hosts is the system datastore's SHARED
(``tm_common.shared_system_ds``).  On a shared one the disk links already point at the
same by-path names on every host (they name portal, target and LUN), so links are never
removed there.

* ``premigrate``: direct call on a non-shared system datastore: the VM directory is
  copied to the destination first.  Volumes with multihost access off get it on for
  the move (the VM runs on both hosts for a moment).  The destination gets access
  records and logs in to every volume and links it (one ssh call).  A failure undoes
  this on the destination (``host_iscsi`` rolls back the login, added records and a
  copied directory are removed).
* ``postmigrate``: the source logs out (and, not shared, its links are removed), its
  access records are deleted, multihost access goes back to EQL_MULTIHOST, and (direct
  call, not shared) the source's VM directory is removed.
* ``failmigrate``: the same on the destination (undoing premigrate).

post- and failmigrate go through every step even when one fails and then report the
first failure; only when the logout failed, multihost access stays on (both hosts may
still be logged in) until a re-run.
"""

from __future__ import annotations

import re
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator, List, Optional, Tuple

from eqliscsi.action_xml import VmInfo, parse_vm
from eqliscsi.config import DriverConfig
from eqliscsi.ds_actions import action_config, sigterm_fails, undo_logged
from eqliscsi.host_files import copy_vm_dir, remove_vm_dir
from eqliscsi.naming import parse_host_path
from eqliscsi.oned import Action, decode_base64, failure_reason, log_info, log_warn
from eqliscsi.tm_common import (
    TM_NAME,
    Placed,
    TmSession,
    arguments,
    attach,
    detach,
    host,
    object_id,
    placed,
    require_volume,
    shared_system_ds,
    tm_session,
    vm_dir_argument,
)

FORWARD_TIMEOUT = 1800.0
_TM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class Migration:
    """The arguments of one migrate action."""

    src: str
    dst: str
    vm_dir: str
    vm_id: int
    ds_id: int
    caller: Optional[str]  # the system TM that forwarded the call
    encoded_vm: str  # base64 <VM>, as received
    legacy: bool  # OpenNebula 4.x: the VM XML was the 6th argument

    @property
    def direct(self) -> bool:
        """Called by oned itself: eqliscsi is the system datastore's TM."""
        return self.caller is None


def parse_migration(action: Action) -> Migration:
    """The arguments and the VM of a migrate action (every form oned writes)."""
    args = arguments(action, (5, 6), "src_host dst_host vm_dir vmid sys_ds_id [caller]")
    src, dst, vm_dir, vm_arg, ds_arg = args[:5]
    vm_id = object_id(vm_arg, "VM id")
    path = vm_dir_argument(f"{src}:{vm_dir}", vm_id).path
    parse_host_path(f"{dst}:{path}")
    sixth = args[5] if len(args) == 6 else None
    if sixth is not None and not _TM_NAME.fullmatch(sixth):  # 4.x: the VM itself
        caller, encoded = None, sixth
    else:
        caller, encoded = sixth, action.stdin.read().decode("ascii", "replace")
    return Migration(src, dst, path, vm_id, object_id(ds_arg, "datastore id"), caller,
                     encoded.strip(), legacy=sixth is not None and caller is None)


def _vm(migration: Migration) -> VmInfo:
    return parse_vm(decode_base64(migration.encoded_vm, "VM XML"))


@dataclass(frozen=True)
class _Disk:
    """One of the VM's eqliscsi volumes, as the migration sees it."""

    placed: Placed
    multihost: bool


@contextmanager
def _migration(action: Action, forward_after_failure: bool
               ) -> Iterator[Tuple[Migration, TmSession, bool, List[_Disk]]]:
    """Parse, open the session, find the system datastore's SHARED and the VM's volumes;
    on a direct call forward the action to the other disks' TMs after the body (also
    after a failure of the body when ``forward_after_failure``)."""
    migration = parse_migration(action)
    vm = _vm(migration)
    forward = migration.direct and not migration.legacy
    try:
        with sigterm_fails(), tm_session(action) as tm:
            shared = shared_system_ds(tm.one.datastore(migration.ds_id))
            disks = []
            for disk in tm.our_disks(vm, migration.vm_id, migration.ds_id, migration.direct):
                config = tm.config(disk.datastore_id)
                info = require_volume(tm.group(config), disk)
                path = f"{migration.vm_dir}/{disk.path_name}"
                disks.append(_Disk(placed(tm, config, info, path), info.multihost))
            log_info(f"VM {migration.vm_id}: {len(disks)} eqliscsi disk(s), system datastore "
                     f"{migration.ds_id} {'shared' if shared else 'not shared'}"
                     + (f", called by tm/{migration.caller}" if migration.caller else ""))
            yield migration, tm, shared, disks
    except BaseException:
        if forward and forward_after_failure:
            _forward(action, migration, vm)
        raise
    if forward:
        _forward(action, migration, vm)


def _iscsi(tm: TmSession, name: str, disks: List[_Disk]) -> List[Placed]:
    """The volumes ``name`` logs in to (none when it uses no iSCSI)."""
    return [d.placed for d in disks if tm.uses_iscsi(name, d.placed.config)]


def tm_premigrate(action: Action) -> None:
    """Copy the VM directory if needed, let the destination log in to every volume."""
    with _migration(action, forward_after_failure=False) as (migration, tm, shared, disks):
        system = _system_config(tm, migration)
        copied = migration.direct and not shared
        if copied:
            log_info(f"copying {migration.vm_dir} from {migration.src} to {migration.dst}")
            copy_vm_dir(host(migration.src, system), migration.vm_dir,
                        host(migration.dst, system), migration.vm_dir, move=False)
        enabled: List[Placed] = []
        try:
            for disk in disks:
                if not disk.multihost:
                    log_info(f"enabling multihost access on {disk.placed.volume} for the move")
                    tm.group(disk.placed.config).set_multihost(disk.placed.volume, True)
                    enabled.append(disk.placed)
            attach(tm, migration.dst, _iscsi(tm, migration.dst, disks), [migration.vm_dir])
        except BaseException:
            for volume in enabled:
                undo_logged(f"restore multihost access on {volume.volume}",
                         partial(_restore_multihost, tm, volume))
            if copied:
                undo_logged(f"remove {migration.vm_dir} on {migration.dst}",
                         partial(remove_vm_dir, host(migration.dst, system), migration.vm_dir))
            raise


def tm_postmigrate(action: Action) -> None:
    """The source logs out; its access, multihost and (not shared) directory go."""
    with _migration(action, forward_after_failure=True) as (migration, tm, shared, disks):
        _release(tm, migration, migration.src, shared, disks)


def tm_failmigrate(action: Action) -> None:
    """Undo premigrate: the destination logs out; its access, directory copy go."""
    with _migration(action, forward_after_failure=True) as (migration, tm, shared, disks):
        _release(tm, migration, migration.dst, shared, disks)


def _release(tm: TmSession, migration: Migration, name: str, shared: bool,
             disks: List[_Disk]) -> None:
    """Log ``name`` out, restore multihost access (not while ``name`` may still be logged
    in: the logout failed), remove the directory copy there; every step is tried, the
    first failure is raised at the end."""
    failure: Optional[BaseException] = None
    try:
        detach(tm, name, _iscsi(tm, name, disks), remove_links=not shared)
    except Exception as exc:
        log_warn(f"could not log {name} out: {failure_reason(exc)}; multihost access "
                 "is left as it is")
        failure = exc
    steps: List[Tuple[str, Callable[[], object]]] = [] if failure else [
        (f"restore multihost access on {d.placed.volume}",
         partial(_restore_multihost, tm, d.placed)) for d in disks]
    if migration.direct and not shared:
        steps.append((f"remove {migration.vm_dir} on {name}",
                      partial(remove_vm_dir, host(name, _system_config(tm, migration)),
                              migration.vm_dir)))
    for what, step in steps:
        try:
            step()
        except Exception as exc:
            log_warn(f"could not {what}: {failure_reason(exc)}")
            failure = failure or exc
    if failure is not None:
        raise failure


def _restore_multihost(tm: TmSession, volume: Placed) -> None:
    """Multihost access back to EQL_MULTIHOST when that is ``disable``."""
    if not volume.config.multihost:
        log_info(f"disabling multihost access on {volume.volume} again (EQL_MULTIHOST)")
        tm.group(volume.config).set_multihost(volume.volume, False)


def _system_config(tm: TmSession, migration: Migration) -> DriverConfig:
    return action_config(tm.action, tm.one.datastore(migration.ds_id))


def _forward(action: Action, migration: Migration, vm: VmInfo) -> None:
    """Run ``tm/<tm>/<action> <args> eqliscsi`` for the TM of every other disk."""
    others = sorted({disk.tm_mad for disk in vm.disks} - {TM_NAME, ""})
    for name in others:
        script = action.remotes_dir / "tm" / name / action.name
        if not _TM_NAME.fullmatch(name) or not script.is_file():
            log_warn(f"not forwarding {action.name} to tm/{name}: no such action")
            continue
        log_info(f"forwarding {action.name} to tm/{name}")
        try:
            done = subprocess.run([str(script), *action.args[:5], TM_NAME],
                                  input=migration.encoded_vm.encode() + b"\n",
                                  capture_output=True, timeout=FORWARD_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log_warn(f"tm/{name}/{action.name} did not run: {exc}")
            continue
        if done.returncode != 0:
            lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
            log_warn(f"tm/{name}/{action.name} failed (exit {done.returncode}), ignored like "
                     f"OpenNebula does: {' / '.join(lines[-3:]) or 'no message'}")
