"""What the transfer-manager actions share: arguments, VM disks and their volumes, the
session of one action (oned's objects, group clients, hosts), attaching and detaching.

VM disks and their volumes (``VmDisk``):

* persistent images and CD-ROMs (``CLONE=NO``): the image's own volume (its SOURCE);
* non-persistent images (``CLONE=YES``): the VM's clone ``naming.clone_volume_name``
  (``<image volume>-v<vm>-d<disk>``); a clone named the 2014 way (``<image volume>-<vm>``,
  VMs deployed by the old driver) is found and used as well;
* volatile disks (``TYPE=fs|swap``, made by ``mkimage``/``mkswap``): ``vm<vm>-disk<disk>``
  (``volatile_volume_name``), in the pool of the system datastore's settings.

Clones and volatile volumes carry the description ``OpenNebula VM <vm> disk <disk>
(<what>)``; the driver deletes such a volume only when the description names the VM
(and disk) whose volume it deletes (2014 clones: ``Clone <vm> of <volume>``), unless
EQL_FORCE_DELETE=YES.  Image volumes are never deleted by a TM action.

Settings of a disk: conf < the disk's datastore template < (for new volumes) the image
template, as ``config.resolve_config`` layers them; volatile disks use the system
datastore's template.

Hosts: a host takes part in iSCSI unless it is listed in NO_ISCSI or is the front-end
itself (its own host name; oned names the front-end in the arguments of stop, undeploy
and resume).  Access in EQL_ACCESS_MODE ``initiator``: before a host logs in, a record for
its initiator name (with the CHAP user when EQL_CHAP_USER is set) is ensured on the
volume; after it logged out its records are deleted.  In ``static`` mode the volume's
standing record is all there is and the driver never changes records.  Logging a host
in to all the volumes of an action, and out of them, is one ssh call each
(``host_iscsi.Host``).
"""

from __future__ import annotations

import posixpath
import re
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from eqliscsi import cli_commands
from eqliscsi.action_xml import DatastoreInfo, DiskInfo, VmInfo
from eqliscsi.config import DriverConfig
from eqliscsi.ds_actions import (
    action_config,
    description_owner,
    revoke_if_granted_late,
    undo_logged,
)
from eqliscsi.group import GroupClient, GroupSettings, VolumeInfo
from eqliscsi.host_iscsi import EXIT_NODE, Chap, DiskLink, Host, HostError, VolumeTarget
from eqliscsi.naming import (
    HostPath,
    check_volume_name,
    clone_volume_name,
    parse_host_path,
    volume_from_source,
    volume_from_tm_source,
)
from eqliscsi.one_objects import OneObjects
from eqliscsi.oned import (
    Action,
    DriverError,
    InputError,
    log_info,
    log_warn,
    parse_bool,
    record_cli_command,
)

TM_NAME = "eqliscsi"
LOCK_DIR_NAME = ".eqliscsi-locks"  # next to EQL_SLOT_DIR: /var/lib/one/.eqliscsi-locks
VOLATILE_TYPES = ("fs", "swap")

_ID = re.compile(r"\d{1,10}")
_VM_DESCRIPTION = re.compile(r"OpenNebula VM (\d{1,10}) disk (\d{1,10})(?: |$)")
_LEGACY_DESCRIPTION = re.compile(r"'?Clone (\d{1,10}) of ")  # 2014 kept literal quotes
_CLONE_NAME = re.compile(r".+-v(\d{1,10})-d(\d{1,4})")
_VOLATILE_NAME = re.compile(r"vm(\d{1,10})-disk(\d{1,4})")


# --- arguments ---------------------------------------------------------------------------

def arguments(action: Action, counts: Sequence[int], usage: str) -> Tuple[str, ...]:
    """The action's arguments, if there are as many as oned writes (InputError if not)."""
    if len(action.args) not in counts:
        raise InputError(f"{action.name}: expected the arguments {usage}, "
                         f"got {len(action.args)}")
    return action.args


def object_id(text: str, what: str, minimum: int = 0) -> int:
    """A VM, datastore, snapshot id or size argument (``minimum`` -1: -1 allowed)."""
    if not (_ID.fullmatch(text) or (minimum < 0 and text == "-1")):
        raise InputError(f"invalid {what} {text[:40]!r}: expected an integer")
    value = int(text)
    if value < minimum:
        raise InputError(f"invalid {what} {value}: must be at least {minimum}")
    return value


def disk_argument(text: str, vm_arg: str) -> Tuple[HostPath, int]:
    """A ``host:<system ds>/<vm>/disk.N`` argument and its N; the disk must be in the
    directory of VM ``vm_arg`` (checked before anything is fetched or sent)."""
    place = parse_host_path(text)
    if place.disk_id is None:
        raise InputError(f"invalid disk argument {text[:120]!r}: expected host:path/disk.N")
    vm_id = object_id(vm_arg, "VM id")
    directory = posixpath.dirname(place.path)
    if (not place.path.startswith("/") or posixpath.basename(directory) != str(vm_id)
            or directory.count("/") < 2):
        raise InputError(f"invalid disk argument {text[:120]!r}: expected "
                         f"host:<system datastore>/{vm_id}/disk.N")
    return place, place.disk_id


def vm_dir_argument(text: str, vm_id: int) -> HostPath:
    """A ``host:<system ds>/<vm>`` argument; it must end in the VM's id (the only
    directories the driver removes or moves are VM directories)."""
    place = parse_host_path(text)
    if posixpath.basename(place.path) != str(vm_id) or place.path.count("/") < 2:
        raise InputError(f"invalid VM directory {text[:120]!r}: expected "
                         f"host:<system datastore>/{vm_id}")
    return place


def source_volume(text: str) -> str:
    """The volume of a SOURCE argument: bare (MVDS/CPDS), ``fe:SOURCE`` or 2014 v0.1."""
    return volume_from_tm_source(text) if ":" in text else volume_from_source(text)


# --- VM volumes: names and descriptions --------------------------------------------------

def volatile_volume_name(vm_id: int, disk_id: int) -> str:
    """The volume of volatile disk ``disk_id`` of VM ``vm_id``: ``vm<vm>-disk<disk>``
    (at most 21 characters; no ``.``, so never an image volume or a clone)."""
    if not 0 <= vm_id < 10**10 or not 0 <= disk_id < 10**4:
        raise InputError(f"VM id {vm_id} or disk id {disk_id} out of range")
    return check_volume_name(f"vm{vm_id}-disk{disk_id}")


def legacy_clone_name(image_volume: str, vm_id: int) -> str:
    """The 2014 driver's clone of ``image_volume`` for VM ``vm_id``: ``<volume>-<vm>``."""
    return f"{image_volume}-{vm_id}"


def vm_disk_description(vm_id: int, disk_id: int, what: str) -> str:
    """``OpenNebula VM <vm> disk <disk> (<what>)``: the description of a VM's volume."""
    return cli_commands.sanitize_description(f"OpenNebula VM {vm_id} disk {disk_id} ({what})")


def volume_vm_disk(name: str) -> Optional[Tuple[int, int]]:
    """(VM id, disk id) of a clone or volatile volume name, None for other volumes."""
    match = _VOLATILE_NAME.fullmatch(name) or _CLONE_NAME.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def description_vm_disk(description: str) -> Optional[Tuple[int, Optional[int]]]:
    """(VM id, disk id) a VM volume's description names; the disk is None for the 2014
    driver's ``Clone <vm> of ...``; None for any other description."""
    match = _VM_DESCRIPTION.match(description)
    if match:
        return int(match.group(1)), int(match.group(2))
    legacy = _LEGACY_DESCRIPTION.match(description)
    return (int(legacy.group(1)), None) if legacy else None


def owned_by(description: str, vm_id: int, disk_id: int) -> bool:
    """Whether a volume description names this VM's disk (2014 clones: this VM)."""
    owner = description_vm_disk(description)
    return owner is not None and owner[0] == vm_id and owner[1] in (None, disk_id)


# --- VM disks ----------------------------------------------------------------------------

class Kind(Enum):
    """What a VM disk's volume is."""

    IMAGE = "the image's volume"
    CLONE = "the VM's clone"
    VOLATILE = "a volatile volume"


@dataclass(frozen=True)
class VmDisk:
    """One disk of a VM, as stored on the group."""

    vm_id: int
    disk_id: int
    kind: Kind
    datastore_id: int
    image_volume: Optional[str] = None
    image_id: Optional[int] = None
    size_mb: Optional[int] = None

    @property
    def names(self) -> Tuple[str, ...]:
        """The names its volume may have, preferred first."""
        if self.kind is Kind.VOLATILE:
            return (volatile_volume_name(self.vm_id, self.disk_id),)
        assert self.image_volume is not None
        if self.kind is Kind.IMAGE:
            return (self.image_volume,)
        return (clone_volume_name(self.image_volume, self.vm_id, self.disk_id),
                legacy_clone_name(self.image_volume, self.vm_id))

    @property
    def path_name(self) -> str:
        """``disk.N``, its link in the VM directory."""
        return f"disk.{self.disk_id}"


def is_volatile(disk: DiskInfo) -> bool:
    """A volatile disk (``TYPE=fs`` or ``swap``, no image): the system TM's."""
    return disk.type.strip().lower() in VOLATILE_TYPES and not disk.text("IMAGE_ID")


def vm_disk(vm: VmInfo, vm_id: int, disk_id: int, system_ds_id: int) -> VmDisk:
    """Disk ``disk_id`` of ``vm`` (volatile disks belong to ``system_ds_id``)."""
    disk = vm.disk(disk_id)
    size = disk.size_mb if disk.text("SIZE") else None
    if is_volatile(disk):
        return VmDisk(vm_id, disk_id, Kind.VOLATILE, system_ds_id, size_mb=size)
    clone = disk.clone if disk.text("CLONE") else not disk.persistent  # 2014: PERSISTENT
    return VmDisk(vm_id, disk_id, Kind.CLONE if clone else Kind.IMAGE,
                  disk.datastore_id if disk.text("DATASTORE_ID") else system_ds_id,
                  volume_from_source(disk.source),
                  disk.image_id if disk.text("IMAGE_ID") else None, size)


def find_volume(group: GroupClient, disk: VmDisk) -> Optional[VolumeInfo]:
    """The disk's volume on the group (the first of its names that exists), or None."""
    for name in disk.names:
        info = group.find_volume(name)
        if info is not None:
            return info
    return None


def require_volume(group: GroupClient, disk: VmDisk) -> VolumeInfo:
    """The disk's volume; DriverError naming what is missing."""
    info = find_volume(group, disk)
    if info is None:
        raise DriverError(f"disk {disk.disk_id} of VM {disk.vm_id}: {disk.kind.value} "
                          f"({' or '.join(disk.names)}) does not exist on the group")
    return info


def check_deletable(disk: VmDisk, info: VolumeInfo, force: bool) -> None:
    """Refuse to delete an image volume, or a volume whose description does not name
    this VM's disk (EQL_FORCE_DELETE=YES overrides the latter)."""
    if disk.kind is Kind.IMAGE or description_owner(info.description) is not None:
        raise DriverError(f"volume {info.name} belongs to an image: a VM never deletes it")
    if owned_by(info.description, disk.vm_id, disk.disk_id):
        return
    problem = (f"volume {info.name} does not name disk {disk.disk_id} of VM {disk.vm_id} "
               f"in its description ({info.description!r})")
    if not force:
        raise DriverError(f"{problem}: refusing to delete it (EQL_FORCE_DELETE=YES overrides)")
    log_warn(f"{problem}; deleting it anyway (EQL_FORCE_DELETE)")


# --- one action's session ----------------------------------------------------------------

class TmSession:
    """oned's objects, group clients (one per group) and hosts of one action."""

    def __init__(self, action: Action) -> None:
        self.action = action
        self.one = OneObjects()
        self._groups: Dict[GroupSettings, GroupClient] = {}
        self._portals: Dict[GroupSettings, str] = {}

    def config(self, datastore_id: int, image_id: Optional[int] = None) -> DriverConfig:
        """Settings: conf < the datastore's template < the image's (when ``image_id``)."""
        image = self.one.image(image_id) if image_id is not None else None
        return action_config(self.action, self.one.datastore(datastore_id), image)

    def group(self, config: DriverConfig) -> GroupClient:
        """The client of the group ``config`` names (one CLI session per group)."""
        settings = config.group_settings()
        if settings not in self._groups:
            self._groups[settings] = GroupClient(settings, command_log=record_cli_command)
        return self._groups[settings]

    def target(self, config: DriverConfig, volume: VolumeInfo) -> VolumeTarget:
        """How hosts log in to ``volume``: portal (EQL_PORTAL or the group IP), LUN, CHAP."""
        settings = config.group_settings()
        if settings not in self._portals:
            portal = config.portal
            self._portals[settings] = (str(portal) if portal is not None
                                       else f"{self.group(config).group_ip()}:3260")
        chap = (Chap(config.chap_user, config.chap_password)
                if config.chap_user and config.chap_password else None)
        return VolumeTarget(volume.iqn, self._portals[settings], config.lun, chap)

    def uses_iscsi(self, name: str, config: DriverConfig) -> bool:
        """False for hosts in NO_ISCSI and for the front-end itself."""
        return config.uses_iscsi_on(name) and not is_frontend(name)

    def tm_mad(self, disk: DiskInfo) -> str:
        """A disk's TM: DISK/TM_MAD, else its datastore's TM_MAD."""
        if disk.tm_mad or not disk.text("DATASTORE_ID"):
            return disk.tm_mad
        return self.one.datastore(disk.datastore_id).text("TM_MAD")

    def our_disks(self, vm: VmInfo, vm_id: int, system_ds_id: int,
                  with_volatile: bool) -> List[VmDisk]:
        """The VM's disks this driver handles: those of eqliscsi image datastores and,
        ``with_volatile`` (eqliscsi is the system datastore's TM), the volatile ones."""
        disks = []
        for disk in vm.disks:
            ours = with_volatile if is_volatile(disk) else self.tm_mad(disk) == TM_NAME
            if ours:
                disks.append(vm_disk(vm, vm_id, disk.disk_id, system_ds_id))
        return disks

    def close(self) -> None:
        """Close every group session."""
        for group in self._groups.values():
            group.close()
        self._groups.clear()


@contextmanager
def tm_session(action: Action) -> Iterator[TmSession]:
    """A ``TmSession`` whose group sessions are closed at the end."""
    session = TmSession(action)
    try:
        yield session
    finally:
        session.close()


def host(name: str, config: DriverConfig) -> Host:
    """Host ``name`` with ``config``'s host-side settings (EQL_IFACE, timeouts); its
    locks and initiator-name cache live next to EQL_SLOT_DIR (``.eqliscsi-locks``)."""
    return Host(name, config, lock_dir=str(config.slot_dir.parent / LOCK_DIR_NAME))


def is_frontend(name: str) -> bool:
    """Whether host ``name`` is this machine (full or short host name)."""
    own = socket.gethostname().lower()
    name = name.lower()
    return name == own or name.split(".")[0] == own.split(".")[0]


def shared_system_ds(datastore: DatastoreInfo) -> bool:
    """SHARED of a system datastore (oned copies TM_MAD_CONF's value into the template);
    without a readable value it counts as shared, so links are never removed from under
    another host."""
    value = parse_bool(datastore.template.get("SHARED", ""))
    return True if value is None else value


# --- volumes on hosts --------------------------------------------------------------------

@dataclass(frozen=True)
class Placed:
    """A volume as one host uses it: settings, name, target and the disk link path."""

    config: DriverConfig
    volume: str
    target: VolumeTarget
    path: str


def placed(session: TmSession, config: DriverConfig, info: VolumeInfo, path: str) -> Placed:
    """``info`` linked at ``path``."""
    return Placed(config, info.name, session.target(config, info), path)


def attach(session: TmSession, host_name: str, volumes: Sequence[Placed],
           make_dirs: Sequence[str] = ()) -> None:
    """Grant ``host_name`` access (initiator mode), log in and link, in one ssh call; the
    records this call added are removed again if it fails."""
    if not volumes:
        return
    target_host = host(host_name, volumes[0].config)
    added: List[Tuple[Placed, int]] = []

    def grant(initiator: str) -> None:
        for volume in volumes:
            if volume.config.access_mode == "initiator":
                record = _grant(session.group(volume.config), volume, initiator)
                if record is not None:
                    added.append((volume, record))

    needs_records = any(v.config.access_mode == "initiator" for v in volumes)
    log_info(f"logging in to {', '.join(v.volume for v in volumes)} on {host_name}")
    try:
        target_host.attach([DiskLink(v.target, v.path) for v in volumes], make_dirs,
                    ensure_access=grant if needs_records else None)
    except BaseException:
        for volume, record in added:
            undo_logged(f"remove the access record of {host_name} from {volume.volume}",
                     partial(session.group(volume.config).delete_access, volume.volume, record))
        raise


def _grant(group: GroupClient, volume: Placed, initiator: str) -> Optional[int]:
    """Ensure the initiator's record; its id if this call created it, else None."""
    chap_user = volume.config.chap_user
    with revoke_if_granted_late(group, volume.volume, initiator) as before:
        record = group.ensure_access(volume.volume, initiator=initiator, chap_user=chap_user,
                                     authmethod="chap" if chap_user else None)
    if record in before:
        return None
    log_info(f"added access record {record} for {initiator} to {volume.volume}")
    return record


def detach(session: TmSession, host_name: str, volumes: Sequence[Placed],
           remove_links: bool) -> None:
    """Log ``host_name`` out of the volumes (removing their links when ``remove_links``),
    then delete its access records (initiator mode); also when only node records could
    not be deleted (the host is logged out: the failure is raised after the records)."""
    if not volumes:
        return
    source_host = host(host_name, volumes[0].config)
    log_info(f"logging out of {', '.join(v.volume for v in volumes)} on {host_name}")
    try:
        source_host.detach([v.target for v in volumes],
                           [v.path for v in volumes] if remove_links else [])
    except HostError as exc:
        if exc.exit_code == EXIT_NODE:
            revoke(session, source_host, volumes)
        raise
    revoke(session, source_host, volumes)


def revoke(session: TmSession, vm_host: Host, volumes: Sequence[Placed]) -> None:
    """Delete the access records of ``vm_host``'s initiator from the volumes (initiator
    mode)."""
    initiator: Optional[str] = None
    for volume in volumes:
        if volume.config.access_mode != "initiator":
            continue
        initiator = initiator or vm_host.initiator_name()
        group = session.group(volume.config)
        for record in group.list_access(volume.volume):
            if record.initiator.lower() == initiator.lower():
                log_info(f"removing access record {record.id} ({initiator}) "
                         f"from {volume.volume}")
                group.delete_access(volume.volume, record.id)
