"""Which OpenNebula image or VM owns each volume, and what nothing owns any more.

Owner of a volume, first match wins:

1. its description: ``OpenNebula image <id> (...)`` (``ds_actions.image_description``),
   ``OpenNebula VM <vm> disk <disk> (...)`` (``tm_common.vm_disk_description``: clones
   and volatile disks), or the 2014 driver's ``Clone <vm> of <volume>``;
2. its name: ``vm<vm>-disk<disk>`` (volatile disk), ``<image volume>-v<vm>-d<disk>``
   (per-VM clone), ``<name>.<image id>-<vm>`` (2014 per-VM clone),
   ``<name>.<image id>`` (image volume, 2014 names included).

Anything else is not recognised as OpenNebula's and never reported as an orphan.

This driver and the 2014 one never give a volume with one of these names a description
that names another owner, so such a name settles the owner alone (``name_owner``):
listings read the descriptions of the other volumes only.  An orphan verdict is always
made with the description read.

Orphans, given OpenNebula's images and VMs (``oneimage list -x``, ``onevm list -x``):

* a volume whose owning image or VM does not exist (an image volume also counts as owned
  when an image's SOURCE names it);
* a host's iSCSI session, to the group's portal, whose volume no VM on that host uses:
  the VM's volumes are those of its disks (image volume, clone - new or 2014 name -, or
  volatile volume) on the host of its last history record, while the VM is ACTIVE,
  SUSPENDED or POWEROFF.  A session during a live migration shows on both hosts.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from lxml import etree

from eqliscsi.action_xml import parse_xml, xpath_text
from eqliscsi.ds_actions import description_owner
from eqliscsi.naming import clone_volume_name, volume_from_source
from eqliscsi.oned import InputError
from eqliscsi.tm_common import VOLATILE_TYPES, description_vm_disk, volume_vm_disk

IMAGE = "image"
VM = "vm"
NONE = "none"
VM_ON_HOST_STATES = frozenset({3, 5, 8})  # ACTIVE, SUSPENDED, POWEROFF: disks on the host

_LEGACY_CLONE_NAME = re.compile(r"[^.]+\.(\d{1,10})-(\d{1,10})")
_IMAGE_NAME = re.compile(r"[^.]+\.(\d{1,10})")
_EQL_IQN = re.compile(r"iqn\.2001-05\.com\.equallogic:\d-[0-9a-f]{6}-[0-9a-f]{9}-[0-9a-f]{16}-"
                      r"(?P<volume>.+)")
_SESSION = re.compile(r"\S+:\s+\[(?P<sid>\d+)\]\s+(?P<portal>\S+?),\d+\s+(?P<target>\S+)")


@dataclass(frozen=True)
class Owner:
    """Who a volume belongs to, and what told (``description``, ``name``, ``2014 name``,
    ``2014 description``)."""

    kind: str = NONE
    image_id: Optional[int] = None
    vm_id: Optional[int] = None
    disk_id: Optional[int] = None
    evidence: str = ""

    def __str__(self) -> str:
        if self.kind == IMAGE:
            return f"image {self.image_id}"
        if self.kind == VM:
            disk = f" disk {self.disk_id}" if self.disk_id is not None else ""
            image = f" (image {self.image_id})" if self.image_id is not None else ""
            return f"VM {self.vm_id}{disk}{image}"
        return "-"


def volume_owner(name: str, description: str) -> Owner:
    """The owner of volume ``name`` with ``description`` (module docstring)."""
    image_id = description_owner(description)
    if image_id is not None:
        return Owner(IMAGE, image_id=image_id, evidence="description")
    described = description_vm_disk(description)
    if described is not None:
        vm_id, disk_id = described
        if disk_id is not None:
            return Owner(VM, vm_id=vm_id, disk_id=disk_id, evidence="description")
        legacy = _LEGACY_CLONE_NAME.fullmatch(name)
        return Owner(VM, vm_id=vm_id, image_id=int(legacy.group(1)) if legacy else None,
                     evidence="2014 description")
    return name_owner(name) or Owner()


def name_owner(name: str) -> Optional[Owner]:
    """The owner the name of volume ``name`` tells (rule 2 of the module docstring), None
    when only its description can."""
    named = volume_vm_disk(name)
    if named is not None:
        return Owner(VM, vm_id=named[0], disk_id=named[1], evidence="name")
    legacy = _LEGACY_CLONE_NAME.fullmatch(name)
    if legacy is not None:
        return Owner(VM, image_id=int(legacy.group(1)), vm_id=int(legacy.group(2)),
                     evidence="2014 name")
    match = _IMAGE_NAME.fullmatch(name)
    if match:
        return Owner(IMAGE, image_id=int(match.group(1)), evidence="name")
    return None


def volume_of_target(iqn: str) -> Optional[str]:
    """The volume name of a PS Series target IQN, None for other targets."""
    match = _EQL_IQN.fullmatch(iqn)
    return match.group("volume") if match else None


# --- OpenNebula's view -------------------------------------------------------------------

@dataclass(frozen=True)
class OneImage:
    """One image of ``oneimage list -x``."""

    id: int
    name: str
    volume: Optional[str]  # the volume its SOURCE names, None if SOURCE is no volume


@dataclass(frozen=True)
class OneVm:
    """One VM of ``onevm list -x``: where its disks are and which volumes they use."""

    id: int
    name: str
    state: int
    host: Optional[str]
    volumes: Tuple[str, ...]
    has_disks: bool

    @property
    def on_host(self) -> Optional[str]:
        """The host its disks are logged in on, None when they are on no host."""
        return self.host if self.state in VM_ON_HOST_STATES else None


def _int(node: etree._Element, path: str) -> int:
    text = xpath_text(node, path)
    if not re.fullmatch(r"-?\d{1,10}", text):
        raise InputError(f"{path} {text!r} is not an integer")
    return int(text)


def _volume(source: str) -> Optional[str]:
    try:
        return volume_from_source(source) if source else None
    except InputError:
        return None


def parse_images(xml: bytes) -> List[OneImage]:
    """The images of an ``<IMAGE_POOL>`` document."""
    pool = parse_xml(xml, "IMAGE_POOL", "oneimage list -x")
    return [OneImage(_int(node, "ID"), xpath_text(node, "NAME"),
                     _volume(xpath_text(node, "SOURCE")))
            for node in pool.findall("IMAGE")]


def vm_volumes(vm: etree._Element, vm_id: int) -> Tuple[str, ...]:
    """The volumes the disks of a ``<VM>`` may use (clones under both naming schemes)."""
    volumes: List[str] = []
    for disk in vm.findall("TEMPLATE/DISK"):
        disk_text = xpath_text(disk, "DISK_ID")
        disk_id = int(disk_text) if disk_text.isdigit() else None
        kind = xpath_text(disk, "TYPE").lower()
        source = _volume(xpath_text(disk, "SOURCE"))
        if kind in VOLATILE_TYPES and disk_id is not None:
            volumes.append(f"vm{vm_id}-disk{disk_id}")
        elif source is None:
            continue
        elif xpath_text(disk, "CLONE").upper() == "YES" and disk_id is not None:
            volumes += [clone_volume_name(source, vm_id, disk_id), f"{source}-{vm_id}"]
        else:
            volumes.append(source)
    return tuple(volumes)


def parse_vms(xml: bytes) -> List[OneVm]:
    """The VMs of a ``<VM_POOL>`` document."""
    pool = parse_xml(xml, "VM_POOL", "onevm list -x")
    return [parse_vm_node(node) for node in pool.findall("VM")]


def parse_vm_node(node: etree._Element) -> OneVm:
    """A ``<VM>`` element as ``OneVm``."""
    vm_id = _int(node, "ID")
    records = node.findall("HISTORY_RECORDS/HISTORY")
    host = xpath_text(records[-1], "HOSTNAME") if records else ""
    return OneVm(vm_id, xpath_text(node, "NAME"), _int(node, "STATE"), host or None,
                 vm_volumes(node, vm_id), bool(node.findall("TEMPLATE/DISK")))


# --- volumes and sessions ----------------------------------------------------------------

@dataclass(frozen=True)
class VolumeRow:
    """One volume with its owner, as ``volumes`` and ``orphans`` report it."""

    name: str
    size_mb: int
    pool: str
    status: str
    connections: int
    description: Optional[str]  # None: not read, the name told the owner
    owner: Owner = field(default_factory=Owner)
    why: str = ""

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["owner"] = {"kind": self.owner.kind, "image_id": self.owner.image_id,
                         "vm_id": self.owner.vm_id, "disk_id": self.owner.disk_id,
                         "from": self.owner.evidence, "text": str(self.owner)}
        return data


@dataclass(frozen=True)
class Session:
    """One iSCSI session of a host."""

    host: str
    target: str
    portal: str
    volume: Optional[str]
    why: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def parse_sessions(host: str, output: str) -> List[Session]:
    """The sessions in ``iscsiadm -m session`` output."""
    sessions = []
    for line in output.splitlines():
        match = _SESSION.match(line.strip())
        if match:
            target = match.group("target")
            sessions.append(Session(host, target, match.group("portal"),
                                    volume_of_target(target)))
    return sessions


def orphan_volumes(volumes: Iterable[VolumeRow], images: Sequence[OneImage],
                   vms: Sequence[OneVm]) -> List[VolumeRow]:
    """The recognised volumes whose owner does not exist, each with the reason."""
    image_ids = {image.id for image in images}
    sourced = {image.volume for image in images if image.volume}
    vm_ids = {vm.id for vm in vms}
    orphans = []
    for row in volumes:
        owner = row.owner
        if owner.kind == IMAGE and owner.image_id not in image_ids and row.name not in sourced:
            orphans.append(_with_reason(row, f"no image {owner.image_id} in OpenNebula"))
        elif owner.kind == VM and owner.vm_id not in vm_ids:
            orphans.append(_with_reason(row, f"VM {owner.vm_id} does not exist (or is done)"))
    return orphans


def _with_reason(row: VolumeRow, why: str) -> VolumeRow:
    return VolumeRow(row.name, row.size_mb, row.pool, row.status, row.connections,
                     row.description, row.owner, why)


def orphan_sessions(sessions: Iterable[Session], portals: Set[str],
                    existing: Dict[str, Owner], vms: Sequence[OneVm]) -> List[Session]:
    """The sessions to the group (a portal in ``portals``) whose volume no VM on that
    host uses; ``existing`` maps the group's volume names to their owners."""
    by_id = {vm.id: vm for vm in vms}
    used: Dict[str, Set[str]] = {}
    for vm in vms:
        if vm.on_host:
            used.setdefault(vm.on_host, set()).update(vm.volumes)
    orphans = []
    for session in sessions:
        if session.volume is None or session.portal not in portals:
            continue
        if session.volume in used.get(session.host, set()):
            continue
        why = _session_reason(session, existing, by_id)
        if why:
            orphans.append(Session(session.host, session.target, session.portal,
                                   session.volume, why))
    return orphans


def _session_reason(session: Session, existing: Dict[str, Owner],
                    vms: Dict[int, OneVm]) -> str:
    """Why nothing uses the session's volume on its host ("" if a VM there does)."""
    volume = session.volume or ""
    if volume not in existing:
        return "the volume does not exist"
    owner = existing[volume]
    if owner.kind != VM or owner.vm_id is None:
        return f"no VM on {session.host} uses it"
    vm = vms.get(owner.vm_id)
    if vm is None:
        return f"VM {owner.vm_id} does not exist (or is done)"
    if vm.on_host == session.host:
        # without disks in the list the VM's own volumes count as used on its host
        return f"no disk of VM {vm.id} uses it" if vm.has_disks else ""
    where = f"is on {vm.on_host}" if vm.on_host else "has its disks on no host"
    return f"VM {owner.vm_id} {where}"
