"""The transfer-manager actions on one VM disk or VM directory (``docs/tm-actions.md``).

Arguments are exactly what oned writes (reference catalogue); they are all checked before
anything is fetched, sent to the group or run on a host.  A VM's attributes come from
``onevm show -x`` (``one_objects``), fetched only by the actions that need them.  Any
failure undoes what the action made: a clone or volatile volume made by this run is
deleted, access records added by this run are removed, and ``host_iscsi`` rolls back a
failed login on the host; a re-run then starts clean (an existing clone or volatile
volume that names this VM's disk is used again).
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import List, Optional, Tuple

from eqliscsi.action_xml import DiskInfo, ImageInfo
from eqliscsi.cli_output import field_value
from eqliscsi.config import DriverConfig, resolve_config
from eqliscsi.ds_actions import (
    action_config,
    delete_if_made_late,
    delete_on_failure,
    delete_with_snapshots,
    image_description,
    late_change_wait,
    new_volume,
    prepare_clone,
    replace_leftover,
    revert_to_snapshot,
    sigterm_fails,
    snapshot_name,
    undo_logged,
    write_volume,
)
from eqliscsi.group import GroupClient, VolumeInfo, poll
from eqliscsi.host_files import copy_vm_dir, remove_vm_dir, write_file
from eqliscsi.host_iscsi import HostError
from eqliscsi.image_copy import (
    FILESYSTEMS,
    MIB,
    ImageVerifier,
    build_filesystem,
    run_tool,
    staging_area,
)
from eqliscsi.naming import HostPath, clone_volume_name, parse_host_path, volume_from_tm_source
from eqliscsi.oned import Action, DriverError, InputError, failure_reason, log_info, log_warn
from eqliscsi.tm_common import (
    Kind,
    Placed,
    TmSession,
    VmDisk,
    arguments,
    attach,
    check_deletable,
    detach,
    disk_argument,
    find_volume,
    host,
    object_id,
    owned_by,
    placed,
    require_volume,
    revoke,
    shared_system_ds,
    source_volume,
    tm_session,
    vm_dir_argument,
    vm_disk,
    vm_disk_description,
    volatile_volume_name,
)

HOST_LOST_STATES = frozenset({60, 61})  # PROLOG_MIGRATE_UNKNOWN(_FAILURE): source host down
NO_IMAGE = -1  # the image id of volumes no image owns (volatile disks)
ISO_TOOLS = ("genisoimage", "mkisofs")
ISO_TIMEOUT = 300.0

_IMAGE_VOLUME = re.compile(r".+\.(\d{1,10})")
_DRIVER_SNAPSHOT = re.compile(r".+-snap\d{1,10}")  # ds_actions.snapshot_name's form


# --- clone, ln, mkimage, mkswap, context -------------------------------------------------

def tm_clone(action: Action) -> None:
    """``clone fe:SOURCE host:path/disk.N vmid dsid``: the VM's clone of the image's
    volume (extended to the disk's SIZE), logged in and linked on the host."""
    source_arg, dst_arg, vm_arg, ds_arg = arguments(
        action, (4,), "fe:SOURCE host:path/disk.N vmid dsid")
    image_volume = volume_from_tm_source(source_arg)
    dst, disk_id = disk_argument(dst_arg, vm_arg)
    vm_id, ds_id = object_id(vm_arg, "VM id"), object_id(ds_arg, "datastore id")
    with sigterm_fails(), tm_session(action) as tm:
        disk = tm.one.vm(vm_id).disk(disk_id)
        config = tm.config(ds_id, disk.image_id if disk.text("IMAGE_ID") else None)
        group = tm.group(config)
        name = clone_volume_name(image_volume, vm_id, disk_id)
        size_mb = disk.size_mb if disk.text("SIZE") else 0
        info, made = _vm_clone(group, config, image_volume, name, (vm_id, disk_id), size_mb)
        with delete_on_failure(group, name) if made else nullcontext():
            _link(tm, config, info, dst)


def _vm_clone(group: GroupClient, config: DriverConfig, image_volume: str, name: str,
              owner: Tuple[int, int], size_mb: int) -> Tuple[VolumeInfo, bool]:
    """The clone ``name`` of ``image_volume`` for (VM, disk) ``owner``, and whether this
    call made it (an earlier attempt's clone for the same disk is used again)."""
    existing = group.find_volume(name)
    if existing is not None:
        if not owned_by(existing.description, *owner):
            raise DriverError(f"volume {name} already exists and is not disk {owner[1]} of "
                              f"VM {owner[0]} (description {existing.description!r})")
        log_info(f"using volume {name}, made for this disk by an earlier attempt")
        if size_mb > existing.size_mb:
            group.extend_volume(name, size_mb)
        return group.show_volume(name), False
    log_info(f"cloning volume {image_volume} to {name}")
    description = vm_disk_description(*owner, f"clone of {image_volume}")
    with delete_if_made_late(group, name, description):
        group.clone_volume(image_volume, name, online=True, snap_reserve=config.snap_reserve,
                           description=description)
    with delete_on_failure(group, name):
        prepare_clone(group, config, name, size_mb)
        return group.show_volume(name), True


def _link(tm: TmSession, config: DriverConfig, info: VolumeInfo, dst: HostPath) -> None:
    """Log ``dst.host`` in to the volume and link it at ``dst.path`` (not on hosts
    without iSCSI)."""
    if not tm.uses_iscsi(dst.host, config):
        log_info(f"{dst.host} does not use iSCSI (NO_ISCSI or the front-end): "
                 f"{info.name} is not logged in there")
        return
    attach(tm, dst.host, [placed(tm, config, info, dst.path)], [posixpath.dirname(dst.path)])


def tm_ln(action: Action) -> None:
    """``ln fe:SOURCE host:path/disk.N vmid dsid``: the image's own volume (persistent
    image or CD-ROM) logged in and linked on the host; nothing else changes on the group."""
    source_arg, dst_arg, vm_arg, ds_arg = arguments(
        action, (4,), "fe:SOURCE host:path/disk.N vmid dsid")
    image_volume = volume_from_tm_source(source_arg)
    dst, _ = disk_argument(dst_arg, vm_arg)
    object_id(vm_arg, "VM id")
    ds_id = object_id(ds_arg, "datastore id")
    with tm_session(action) as tm:
        config = tm.config(ds_id)
        _link(tm, config, tm.group(config).show_volume(image_volume), dst)


def tm_mkimage(action: Action) -> None:
    """``mkimage size format host:path/disk.N vmid dsid``: a volatile disk volume,
    formatted with the disk's FS when it has one (``format`` ``swap``: swap)."""
    size_arg, format_arg, dst_arg, vm_arg, ds_arg = arguments(
        action, (5,), "size format host:path/disk.N vmid dsid")
    image_format = format_arg.strip().lower()
    if image_format not in ("raw", "swap"):
        raise InputError(f"volatile disk FORMAT {format_arg[:40]!r} is not supported: "
                         "eqliscsi volumes are raw")
    _volatile(action, size_arg, dst_arg, vm_arg, ds_arg, "swap" if image_format == "swap"
              else None)


def tm_mkswap(action: Action) -> None:
    """``mkswap size host:path/disk.N vmid dsid``: a volatile swap volume."""
    size_arg, dst_arg, vm_arg, ds_arg = arguments(
        action, (4,), "size host:path/disk.N vmid dsid")
    _volatile(action, size_arg, dst_arg, vm_arg, ds_arg, "swap")


def _volatile(action: Action, size_arg: str, dst_arg: str, vm_arg: str, ds_arg: str,
              fs: Optional[str]) -> None:
    """Make (or take over from an earlier attempt) volume ``vm<vm>-disk<N>`` in the
    system datastore's pool and link it; ``fs`` None: the disk's FS attribute."""
    size_mb = object_id(size_arg, "size in MB", minimum=1)
    dst, disk_id = disk_argument(dst_arg, vm_arg)
    vm_id, ds_id = object_id(vm_arg, "VM id"), object_id(ds_arg, "datastore id")
    with sigterm_fails(), tm_session(action) as tm:
        if fs is None:
            fs = _volatile_fs(tm.one.vm(vm_id).disk(disk_id))
        config = tm.config(ds_id)
        group = tm.group(config)
        name = volatile_volume_name(vm_id, disk_id)
        info = _volatile_leftover(group, name, vm_id, disk_id)
        if info is None:
            description = vm_disk_description(vm_id, disk_id, f"volatile {fs or 'raw'}")
            if fs is None:
                new_volume(group, config, name, size_mb, description, NO_IMAGE)
            else:
                with staging_area(config.staging_dir) as stage:
                    source = build_filesystem(fs, stage / "filesystem", size_mb * MIB)
                    with ImageVerifier(source, config.verify, stage) as verifier:
                        iqn = new_volume(group, config, name, size_mb, description, NO_IMAGE)
                        write_volume(group, config, name, iqn, source, verifier, stage)
            with delete_on_failure(group, name):
                _link(tm, config, group.show_volume(name), dst)
        else:
            _link(tm, config, info, dst)


def _volatile_fs(disk: DiskInfo) -> Optional[str]:
    """The filesystem a volatile ``TYPE=fs`` disk asks for (FS), None for none."""
    fs = disk.text("FS").strip().lower()
    if fs in ("", "raw"):
        return None
    if fs not in FILESYSTEMS:
        raise InputError(f"unsupported filesystem {fs!r} (FS of disk {disk.text('DISK_ID')}): "
                         f"use one of {', '.join(sorted(FILESYSTEMS))}")
    return fs


def _volatile_leftover(group: GroupClient, name: str, vm_id: int,
                       disk_id: int) -> Optional[VolumeInfo]:
    """An earlier attempt's volume of this disk: used again while a host is logged in to
    it (that attempt got as far as the login), else deleted; None when there is none.
    A volume of that name that does not name this disk is refused."""
    existing = group.find_volume(name)
    if existing is None:
        return None
    if not owned_by(existing.description, vm_id, disk_id):
        raise DriverError(f"volume {name} already exists and is not disk {disk_id} of VM "
                          f"{vm_id} (description {existing.description!r})")
    if existing.connections:
        log_info(f"using volume {name}, made for this disk by an earlier attempt")
        return existing
    log_info(f"deleting volume {name} left by an earlier attempt for this disk")
    delete_with_snapshots(group, name)
    return None


def tm_context(action: Action) -> None:
    """``context <files...> host:path/disk.N vmid dsid``: the context ISO (volume label
    CONTEXT, Joliet and Rock Ridge, like OpenNebula's tm/common/context) built on the
    front-end and written to the disk path on the host.  No group work."""
    if len(action.args) < 4:
        raise InputError("context: expected the arguments context.sh [file...] "
                         f"host:path/disk.N vmid dsid, got {len(action.args)}")
    *files, dst_arg, vm_arg, ds_arg = action.args
    dst, _ = disk_argument(dst_arg, vm_arg)
    object_id(vm_arg, "VM id")
    object_id(ds_arg, "datastore id")
    entries = [_context_entry(item) for item in files]
    config = resolve_config(action.conf)
    with staging_area(config.staging_dir) as stage:
        content = stage / "iso"
        content.mkdir()
        for path, name in entries:
            _copy_into(path, content / name)
        iso = stage / "context.iso"
        tool = next((found for found in map(shutil.which, ISO_TOOLS) if found), None)
        if tool is None:
            raise DriverError("genisoimage (or mkisofs) is not installed on the front-end")
        run_tool([tool, "-o", str(iso), "-V", "CONTEXT", "-J", "-R", str(content)],
                 "building the context ISO", ISO_TIMEOUT)
        log_info(f"writing the context ISO ({iso.stat().st_size} bytes) to {dst_arg}")
        write_file(host(dst.host, config), dst.path, iso.read_bytes())


def _context_entry(item: str) -> Tuple[Path, str]:
    """A context source ``/path`` or ``/path:'name'`` -> (path, name in the ISO)."""
    if "://" in item:
        raise InputError(f"context file {item[:120]!r}: URLs are not supported "
                         "(register the file as an image of a file datastore)")
    path, colon, name = item.partition(":")
    name = name.strip("'\"") if colon else os.path.basename(path)
    name = re.sub(r"[/\s]", "_", name)
    if not path.startswith("/") or name in ("", ".", ".."):
        raise InputError(f"invalid context file {item[:120]!r}: expected /path[:name]")
    return Path(path), name


def _copy_into(source: Path, target: Path) -> None:
    """Copy a context file (or directory) into the ISO's content directory."""
    try:
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copyfile(source, target)
    except OSError as exc:
        raise DriverError(f"cannot copy context file {source}: {exc.strerror or exc}") from None


# --- mv, mvds, cpds, delete --------------------------------------------------------------

def tm_mv(action: Action) -> None:
    """``mv src:path dst:path vmid dsid``: a disk (log out on the source, log in on the
    destination) or, as the system datastore's TM, the VM directory (moved over ssh)."""
    src_arg, dst_arg, vm_arg, ds_arg = arguments(action, (4,), "src:path dst:path vmid dsid")
    src, dst = parse_host_path(src_arg), parse_host_path(dst_arg)
    vm_id, ds_id = object_id(vm_arg, "VM id"), object_id(ds_arg, "datastore id")
    if src.disk_id != dst.disk_id:
        raise InputError(f"mv: {src_arg[:120]!r} and {dst_arg[:120]!r} must be the same "
                         "disk, or both the VM directory")
    if src.disk_id is None:
        src, dst = vm_dir_argument(src_arg, vm_id), vm_dir_argument(dst_arg, vm_id)
    if src == dst:
        log_info(f"{src_arg} and {dst_arg} are the same: nothing to move")
        return
    with tm_session(action) as tm:
        if src.disk_id is None:
            system = tm.one.datastore(ds_id)
            if src.path == dst.path and shared_system_ds(system):
                log_info("the system datastore is shared: the VM directory stays in place")
                return
            config = action_config(action, system)
            log_info(f"moving {src_arg} to {dst_arg}")
            copy_vm_dir(host(src.host, config), src.path, host(dst.host, config), dst.path,
                        move=True)
            return
        vm = tm.one.vm(vm_id)
        disk = vm_disk(vm, vm_id, src.disk_id, ds_id)
        config = tm.config(disk.datastore_id)
        info = require_volume(tm.group(config), disk)
        if tm.uses_iscsi(src.host, config):
            source = placed(tm, config, info, src.path)
            try:
                detach(tm, src.host, [source], remove_links=True)
            except HostError as exc:
                if vm.lcm_state not in HOST_LOST_STATES:
                    raise
                log_warn(f"{src.host} is lost ({exc}); the VM is being recovered elsewhere")
                try:
                    revoke(tm, host(src.host, config), [source])
                except Exception as error:
                    log_warn(f"the access records of {src.host} on {info.name} stay: "
                             f"{failure_reason(error)}")
        _link(tm, config, info, dst)


def tm_mvds(action: Action) -> None:
    """``mvds host:path/disk.N SOURCE vmid dsid``: the end of a persistent disk (log out,
    remove the host's access); a SOURCE other than the disk's volume (a deferred
    save-as) gets a clone of the disk, and a VM's own volume is then deleted."""
    disk_arg, source_arg, vm_arg, ds_arg = arguments(
        action, (4,), "host:path/disk.N SOURCE vmid dsid")
    place, disk_id = disk_argument(disk_arg, vm_arg)
    target = source_volume(source_arg)
    vm_id, ds_id = object_id(vm_arg, "VM id"), object_id(ds_arg, "datastore id")
    with sigterm_fails(), tm_session(action) as tm:
        disk, config, group = _disk_and_group(tm, vm_id, disk_id, ds_id)
        info = require_volume(group, disk)
        if tm.uses_iscsi(place.host, config):
            detach(tm, place.host, [placed(tm, config, info, place.path)], remove_links=True)
        if info.name == target:
            log_info(f"disk {disk_id} is saved: {target} is the image's own volume")
            return
        if disk.kind is not Kind.IMAGE:
            check_deletable(disk, info, config.force_delete)
        image = tm.one.image(_image_id(target))
        _save_as(tm, group, config, info.name, None, target, image, ds_id)
        if disk.kind is not Kind.IMAGE:
            log_info(f"deleting volume {info.name}, {disk.kind.value}")
            delete_with_snapshots(group, info.name)


def tm_cpds(action: Action) -> None:
    """``cpds host:path/disk.N SOURCE [snap_id] vmid dsid`` (disk-saveas): a group clone
    of the disk's volume, or of its snapshot ``snap_id``, as the new image's volume
    SOURCE (whose name DS mkfs reserved).  Works while the VM runs (crash-consistent)."""
    args = arguments(action, (4, 5), "host:path/disk.N SOURCE [snap_id] vmid dsid")
    disk_arg, source_arg, vm_arg, ds_arg = args[:2] + args[-2:]
    snap_id = object_id(args[2], "snapshot id", minimum=-1) if len(args) == 5 else -1
    _, disk_id = disk_argument(disk_arg, vm_arg)
    target = source_volume(source_arg)
    image_id = _image_id(target)
    vm_id, ds_id = object_id(vm_arg, "VM id"), object_id(ds_arg, "datastore id")
    with sigterm_fails(), tm_session(action) as tm:
        disk, config, group = _disk_and_group(tm, vm_id, disk_id, ds_id)
        info = require_volume(group, disk)
        snapshot = snapshot_name(info.name, snap_id) if snap_id >= 0 else None
        if snapshot is not None and group.find_snapshot(info.name, snapshot) is None:
            raise DriverError(f"disk {disk_id} has no snapshot {snap_id} "
                              f"(no snapshot {snapshot} of volume {info.name})")
        image = tm.one.image(image_id)
        _save_as(tm, group, config, info.name, snapshot, target, image, ds_id)


def _disk_and_group(tm: TmSession, vm_id: int, disk_id: int,
                    ds_id: int) -> Tuple[VmDisk, DriverConfig, GroupClient]:
    """VM ``vm_id``'s disk ``disk_id`` as oned has it, its datastore's settings and its
    group."""
    disk = vm_disk(tm.one.vm(vm_id), vm_id, disk_id, ds_id)
    config = tm.config(disk.datastore_id)
    return disk, config, tm.group(config)


def _image_id(volume: str) -> int:
    """The image id in an image volume name (``<name>.<id>``)."""
    match = _IMAGE_VOLUME.fullmatch(volume)
    if match is None:
        raise InputError(f"{volume} is not an image volume name (<name>.<image id>)")
    return int(match.group(1))


def _save_as(tm: TmSession, group: GroupClient, disk_config: DriverConfig, source: str,
             snapshot: Optional[str], volume: str, image: ImageInfo, ds_id: int) -> None:
    """Clone ``source`` (or its ``snapshot``) as ``volume``, the volume of ``image`` in
    datastore ``ds_id``, set up like a DS clone (description, access, multihost, size)."""
    config = tm.config(ds_id, image.id)
    if config.group_settings() != disk_config.group_settings():
        raise DriverError(f"datastore {ds_id} uses another group than the disk's volume "
                          f"{source}: a volume cannot be cloned between groups")
    image_id = image.id
    replace_leftover(group, volume, image_id)
    description = image_description(image_id, image.name)
    log_info(f"cloning {f'snapshot {snapshot} of ' if snapshot else ''}volume {source} to "
             f"{volume} (image {image_id})")
    with delete_if_made_late(group, volume, description):
        if snapshot is None:
            group.clone_volume(source, volume, description=description, online=True,
                               snap_reserve=config.snap_reserve)
        else:
            group.clone_snapshot(source, snapshot, volume, description=description)
    with delete_on_failure(group, volume):
        prepare_clone(group, config, volume, image.size_mb if image.text("SIZE") else 0)


def tm_delete(action: Action) -> None:
    """``delete host:path vmid dsid``: a disk (log out, remove the host's access, delete a
    VM's own volume - never an image's) or the VM directory (log out of eqliscsi disks
    still linked in it, remove it)."""
    path_arg, vm_arg, ds_arg = arguments(action, (3,), "host:path vmid dsid")
    place = parse_host_path(path_arg)
    vm_id, ds_id = object_id(vm_arg, "VM id"), object_id(ds_arg, "datastore id")
    if place.disk_id is None:
        _delete_vm_dir(action, vm_dir_argument(path_arg, vm_id), vm_id, ds_id)
        return
    place, disk_id = disk_argument(path_arg, vm_arg)
    with tm_session(action) as tm:
        disk, config, group = _disk_and_group(tm, vm_id, disk_id, ds_id)
        info = find_volume(group, disk)
        if tm.uses_iscsi(place.host, config):
            if info is not None:
                detach(tm, place.host, [placed(tm, config, info, place.path)],
                       remove_links=True)
            else:
                host(place.host, config).detach([], [place.path])
        if disk.kind is Kind.IMAGE:
            log_info(f"keeping volume {disk.names[0]}: it is the image's own volume")
        elif info is None:
            log_info(f"volume {' or '.join(disk.names)} does not exist (already deleted)")
        else:
            check_deletable(disk, info, config.force_delete)
            log_info(f"deleting volume {info.name} ({disk.kind.value}) and its snapshots")
            delete_with_snapshots(group, info.name)


def _delete_vm_dir(action: Action, place: HostPath, vm_id: int, ds_id: int) -> None:
    """Remove the VM directory; eqliscsi disks still linked in it are logged out first."""
    with tm_session(action) as tm:
        system = tm.config(ds_id)
        vm_host = host(place.host, system)
        ours = {disk.disk_id: disk for disk in
                tm.our_disks(tm.one.vm(vm_id), vm_id, ds_id, with_volatile=True)}
        linked = remove_vm_dir(vm_host, place.path, sorted(ours))
        if not linked:
            log_info(f"removed {place.host}:{place.path}")
            return
        log_warn(f"disks {', '.join(map(str, linked))} of VM {vm_id} are still linked in "
                 f"{place.path} on {place.host}: logging out")
        volumes: List[Placed] = []
        for disk_id in linked:
            disk = ours[disk_id]
            config = tm.config(disk.datastore_id)
            info = find_volume(tm.group(config), disk)
            if info is not None:
                volumes.append(placed(tm, config, info, f"{place.path}/{disk.path_name}"))
        vm_host.detach([v.target for v in volumes],
                       [f"{place.path}/disk.{disk_id}" for disk_id in linked])
        revoke(tm, vm_host, volumes)
        remove_vm_dir(vm_host, place.path)
        log_info(f"removed {place.host}:{place.path}")


# --- resize and snapshots ----------------------------------------------------------------

def tm_resize(action: Action) -> None:
    """``resize host:path/disk.N size vmid dsid``: grow the volume (no-snap), then
    rescan on the host so the guest can see the new size."""
    disk_arg, size_arg, vm_arg, ds_arg = arguments(
        action, (4,), "host:path/disk.N size vmid dsid")
    place, disk_id = disk_argument(disk_arg, vm_arg)
    size_mb = object_id(size_arg, "size in MB", minimum=1)
    vm_id, ds_id = object_id(vm_arg, "VM id"), object_id(ds_arg, "datastore id")
    with tm_session(action) as tm:
        disk, config, group = _disk_and_group(tm, vm_id, disk_id, ds_id)
        info = require_volume(group, disk)
        log_info(f"extending volume {info.name} to {size_mb} MB (no-snap)")
        group.extend_volume(info.name, size_mb)
        if tm.uses_iscsi(place.host, config):
            seen = host(place.host, config).rescan(tm.target(config, info))
            if seen < size_mb * MIB:
                raise DriverError(f"{place.host} sees {seen // MIB} MB of {info.name} after "
                                  f"the rescan, expected {size_mb} MB")
            log_info(f"{place.host} sees {seen // MIB} MB of {info.name}")


def _snapshot_disk(action: Action) -> Tuple[HostPath, int, int, int, int]:
    """The arguments ``host:path/disk.N snap_id vmid dsid``."""
    disk_arg, snap_arg, vm_arg, ds_arg = arguments(
        action, (4,), "host:path/disk.N snap_id vmid dsid")
    place, disk_id = disk_argument(disk_arg, vm_arg)
    return (place, disk_id, object_id(snap_arg, "snapshot id"), object_id(vm_arg, "VM id"),
            object_id(ds_arg, "datastore id"))


def tm_snap_create(action: Action) -> None:
    """``snap_create`` (and ``snap_create_live``): group snapshot ``<volume>-snap<id>``
    of the disk's volume (crash-consistent while the VM runs; no guest freeze)."""
    _, disk_id, snap_id, vm_id, ds_id = _snapshot_disk(action)
    with tm_session(action) as tm:
        disk, _, group = _disk_and_group(tm, vm_id, disk_id, ds_id)
        volume = require_volume(group, disk).name
        name = snapshot_name(volume, snap_id)
        description = vm_disk_description(vm_id, disk_id, f"snapshot {snap_id}")
        _drop_snapshot_attempts(group, volume, name, description)
        log_info(f"creating snapshot {name} of volume {volume}")
        try:
            group.create_snapshot(volume, name, description=description)
        except BaseException as exc:
            wait = late_change_wait(exc, group.settings.command_timeout) or 0.0
            undo_logged(f"delete what the attempt at snapshot {name} left", lambda: (
                _drop_snapshot_attempts(group, volume, name, description, wait)))
            raise


def _drop_snapshot_attempts(group: GroupClient, volume: str, name: str,
                            description: str, wait: float = 0.0) -> None:
    """Delete what an attempt at snapshot ``name`` left: that snapshot, or the
    group-named one ``create-now`` made with ``description`` when its answer or the
    rename was lost (only the description tells it from the group's scheduled ones).
    With ``wait`` (a command whose outcome is unknown), look again on a new session with
    back-off for up to that many seconds until there is one: the group may make it late."""
    def attempts() -> Optional[List[str]]:
        return [s.name for s in group.list_snapshots(volume)
                if s.name == name or (not _DRIVER_SNAPSHOT.fullmatch(s.name) and field_value(
                    group.show_snapshot(volume, s.name).fields, "Description") == description)
                ] or None

    if wait:
        group.close()  # the failed command may have left its session mid-answer
    for snapshot in poll(attempts, wait) or []:
        log_warn(f"deleting snapshot {snapshot} of {volume}, left by an attempt at "
                 f"snapshot {name}")
        group.delete_snapshot(volume, snapshot)


def tm_snap_delete(action: Action) -> None:
    """``snap_delete``: delete the group snapshot of disk snapshot ``snap_id``."""
    _, disk_id, snap_id, vm_id, ds_id = _snapshot_disk(action)
    with tm_session(action) as tm:
        disk, _, group = _disk_and_group(tm, vm_id, disk_id, ds_id)
        volume = require_volume(group, disk).name
        name = snapshot_name(volume, snap_id)
        if group.delete_snapshot(volume, name):
            log_info(f"deleted snapshot {name} of volume {volume}")
        else:
            log_info(f"snapshot {name} of volume {volume} does not exist (already deleted)")


def tm_snap_revert(action: Action) -> None:
    """``snap_revert`` (VM powered off): log the host out (its link and access record
    removed), restore the volume from the snapshot (offline, restore, drop the group's
    automatic snapshot, online), log in and link again; the host is logged in again when
    the restore fails too.  When only that last login fails, the host is left without
    session, link and record (a re-run logs it in)."""
    place, disk_id, snap_id, vm_id, ds_id = _snapshot_disk(action)
    with sigterm_fails(), tm_session(action) as tm:
        disk, config, group = _disk_and_group(tm, vm_id, disk_id, ds_id)
        info = require_volume(group, disk)
        logged_in = tm.uses_iscsi(place.host, config)
        if logged_in:
            log_info(f"logging out of {info.name} on {place.host} for the revert")
            detach(tm, place.host, [placed(tm, config, info, place.path)], remove_links=True)
        try:
            revert_to_snapshot(group, info.name, snap_id)
        except BaseException:
            if logged_in:
                undo_logged(f"log {place.host} in to {info.name} again",
                         lambda: _link(tm, config, info, place))
            raise
        if logged_in:
            try:
                _link(tm, config, info, place)
            except BaseException:
                log_warn(f"{info.name} is reverted to snapshot {snap_id}, but {place.host} "
                         "could not log in to it again: run the revert again once it can")
                raise
