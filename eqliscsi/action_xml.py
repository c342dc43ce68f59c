"""Reading oned's XML: ``<DS_DRIVER_ACTION_DATA>`` and ``onevm show -x`` documents.

Parsing is safe for untrusted input: no DTD (a document with one is rejected), no entity
resolution, no network access, libxml2's size limits on (``huge_tree`` off).

``xpath_text`` has the semantics of OpenNebula's ``xpath.rb``: the text of the first
matching element, where a missing and an empty element are the same (``default``).

The views (``ImageInfo``, ``DatastoreInfo``, ``VmInfo``, ``DiskInfo``) read fields when they
are accessed, so an action only fails for the fields it needs.  A required field that is
missing, empty or not an integer raises ``InputError`` naming the element, e.g.
``/DS_DRIVER_ACTION_DATA/IMAGE/SIZE is missing or empty``.  ``TEMPLATE`` sections are
exposed as ``{ATTRIBUTE: text}`` of their simple (non-vector) attributes; an attribute
present but empty maps to ``""`` (``config.resolve_config`` tells that from absent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional

from lxml import etree

from eqliscsi.oned import InputError, parse_bool

if TYPE_CHECKING:
    from eqliscsi.oned import Action

ACTION_ROOT = "DS_DRIVER_ACTION_DATA"
VM_ROOT = "VM"


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False,
                           load_dtd=False, dtd_validation=False)


def parse_xml(data: bytes, root_tag: str, what: str) -> etree._Element:
    """Parse ``data`` safely and check its root element is ``root_tag``."""
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise InputError(f"invalid {what} XML: {exc}") from None
    if root.getroottree().docinfo.internalDTD is not None:
        raise InputError(f"invalid {what} XML: a DOCTYPE is not allowed")
    if root.tag != root_tag:
        raise InputError(f"invalid {what} XML: root element is <{root.tag}>, "
                         f"expected <{root_tag}>")
    return root


def xpath_text(node: etree._Element, path: str, default: str = "") -> str:
    """The text of the first element matching ``path``, or ``default`` if none or empty."""
    result = node.xpath(path)
    if isinstance(result, list):
        for item in result:
            if isinstance(item, etree._Element):
                return item.text or default
    return default


def template_attributes(node: Optional[etree._Element]) -> Dict[str, str]:
    """``{NAME: text}`` of the simple attributes directly under a TEMPLATE element (the
    first of duplicates wins, vector attributes are skipped)."""
    attributes: Dict[str, str] = {}
    if node is None:
        return attributes
    for child in node:
        if isinstance(child.tag, str) and len(child) == 0:
            attributes.setdefault(child.tag, child.text or "")
    return attributes


class ElementView:
    """Typed, lazily validated access to the children of one element."""

    def __init__(self, element: etree._Element) -> None:
        self.element = element

    @property
    def location(self) -> str:
        """The element's absolute path, for messages."""
        return str(self.element.getroottree().getpath(self.element))

    def text(self, name: str, default: str = "") -> str:
        """Child ``name``'s text (``xpath_text`` semantics)."""
        return xpath_text(self.element, name, default)

    def required_text(self, name: str) -> str:
        """Child ``name``'s text; InputError if missing or empty."""
        value = self.text(name)
        if not value:
            raise InputError(f"{self.location}/{name} is missing or empty")
        return value

    def required_int(self, name: str) -> int:
        """Child ``name`` as an integer; InputError if missing, empty or not an integer."""
        value = self.required_text(name).strip()
        if not re.fullmatch(r"-?[0-9]{1,18}", value, re.ASCII):  # \d takes any script's digits
            raise InputError(f"{self.location}/{name} is not an integer: {value[:40]!r}")
        return int(value)

    def yes_no(self, name: str) -> bool:
        """Child ``name`` as YES/NO or 1/0 (any case); missing or empty is False."""
        value = self.text(name).strip()
        parsed = parse_bool(value) if value else False
        if parsed is None:
            raise InputError(f"{self.location}/{name} is not YES/NO: {value[:40]!r}")
        return parsed

    @property
    def template(self) -> Dict[str, str]:
        """The simple attributes of the child TEMPLATE element."""
        return template_attributes(self.element.find("TEMPLATE"))


class ImageInfo(ElementView):
    """``/DS_DRIVER_ACTION_DATA/IMAGE`` (the full object, or ``stat``'s reduced one)."""

    @property
    def id(self) -> int:
        return self.required_int("ID")

    @property
    def name(self) -> str:
        return self.required_text("NAME")

    @property
    def size_mb(self) -> int:
        """SIZE in MB."""
        return self.required_int("SIZE")

    @property
    def format(self) -> str:
        """FORMAT (``raw``, ``qcow2``, ``save_as`` for disk-saveas), may be empty."""
        return self.text("FORMAT")

    @property
    def fs(self) -> str:
        """FS, the filesystem for a new datablock (``FSTYPE`` before OpenNebula 6.0)."""
        return self.text("FS") or self.text("FSTYPE")

    @property
    def path(self) -> str:
        """PATH: the file or URL to copy, or the source image's SOURCE for clone."""
        return self.required_text("PATH")

    @property
    def source(self) -> str:
        return self.required_text("SOURCE")

    @property
    def persistent(self) -> bool:
        return self.yes_no("PERSISTENT")

    @property
    def type(self) -> int:
        """TYPE: 0 OS, 1 CDROM, 2 DATABLOCK, 3 KERNEL, 4 RAMDISK, 5 CONTEXT, 6 BACKUP."""
        return self.required_int("TYPE")

    @property
    def target_snapshot(self) -> int:
        return self.required_int("TARGET_SNAPSHOT")

    @property
    def cloning_id(self) -> int:
        """CLONING_ID: the source image of a clone (-1 otherwise)."""
        return self.required_int("CLONING_ID")

    @property
    def datastore_id(self) -> int:
        return self.required_int("DATASTORE_ID")

    @property
    def md5(self) -> str:
        return self.template.get("MD5", "")

    @property
    def sha1(self) -> str:
        return self.template.get("SHA1", "")


class DatastoreInfo(ElementView):
    """``/DS_DRIVER_ACTION_DATA/DATASTORE`` (or ``onedatastore show -x``)."""

    @property
    def id(self) -> int:
        return self.required_int("ID")

    @property
    def name(self) -> str:
        return self.required_text("NAME")

    @property
    def type(self) -> int:
        """TYPE: 0 IMAGE_DS, 1 SYSTEM_DS, 2 FILE_DS, 3 BACKUP_DS."""
        return self.required_int("TYPE")

    @property
    def base_path(self) -> str:
        return self.required_text("BASE_PATH")

    @property
    def safe_dirs(self) -> List[str]:
        return self.template.get("SAFE_DIRS", "").split()

    @property
    def restricted_dirs(self) -> List[str]:
        return self.template.get("RESTRICTED_DIRS", "").split()

    @property
    def bridge_list(self) -> List[str]:
        return self.template.get("BRIDGE_LIST", "").split()

    @property
    def no_decompress(self) -> bool:
        """NO_DECOMPRESS=yes (any case): copy compressed images as they are."""
        return self.template.get("NO_DECOMPRESS", "").strip().lower() == "yes"

    @property
    def limit_transfer_bw(self) -> str:
        """LIMIT_TRANSFER_BW, the downloader's bandwidth limit (e.g. ``10M``), may be empty."""
        return self.template.get("LIMIT_TRANSFER_BW", "").strip()


class ActionData(ElementView):
    """The whole ``<DS_DRIVER_ACTION_DATA>`` document."""

    @property
    def image(self) -> ImageInfo:
        return ImageInfo(self._child("IMAGE"))

    @property
    def datastore(self) -> DatastoreInfo:
        return DatastoreInfo(self._child("DATASTORE"))

    def _child(self, name: str) -> etree._Element:
        child = self.element.find(name)
        if child is None:
            raise InputError(f"{self.location}/{name} is missing")
        return child


def parse_action_data(xml: bytes) -> ActionData:
    """The decoded ``<DS_DRIVER_ACTION_DATA>`` document of a DS action."""
    return ActionData(parse_xml(xml, ACTION_ROOT, "action data"))


@dataclass(frozen=True)
class DsRequest:
    """A DS action's object id and data."""

    object_id: int
    data: ActionData


def ds_request(action: Action) -> DsRequest:
    """Read the DS invocation of ``action`` (any of oned's three forms) and parse its XML."""
    invocation = action.ds_invocation()
    return DsRequest(invocation.object_id, parse_action_data(invocation.xml))


# --- VM documents (TM actions) -----------------------------------------------------------

class DiskInfo(ElementView):
    """One ``/VM/TEMPLATE/DISK``."""

    @property
    def disk_id(self) -> int:
        return self.required_int("DISK_ID")

    @property
    def source(self) -> str:
        return self.required_text("SOURCE")

    @property
    def persistent(self) -> bool:
        """PERSISTENT=YES; oned writes it only for persistent images (absent = no)."""
        return self.yes_no("PERSISTENT")

    @property
    def clone(self) -> bool:
        """CLONE=YES: the disk is a per-VM copy of its image."""
        return self.yes_no("CLONE")

    @property
    def save(self) -> bool:
        return self.yes_no("SAVE")

    @property
    def datastore_id(self) -> int:
        return self.required_int("DATASTORE_ID")

    @property
    def image_id(self) -> int:
        return self.required_int("IMAGE_ID")

    @property
    def size_mb(self) -> int:
        return self.required_int("SIZE")

    @property
    def format(self) -> str:
        return self.text("FORMAT")

    @property
    def type(self) -> str:
        """TYPE as oned writes it in a VM disk: ``BLOCK``, ``FILE``, ``CDROM``, ``fs``..."""
        return self.text("TYPE")

    @property
    def tm_mad(self) -> str:
        return self.text("TM_MAD")

    @property
    def attributes(self) -> Dict[str, str]:
        """All simple attributes of the disk (inherited ``EQL_*`` ones included)."""
        return template_attributes(self.element)


class HistoryInfo(ElementView):
    """One ``/VM/HISTORY_RECORDS/HISTORY``: where the VM ran (or runs)."""

    @property
    def hostname(self) -> str:
        return self.required_text("HOSTNAME")

    @property
    def ds_id(self) -> int:
        """DS_ID: the system datastore."""
        return self.required_int("DS_ID")

    @property
    def tm_mad(self) -> str:
        return self.text("TM_MAD")


class VmInfo(ElementView):
    """A ``<VM>`` document (``onevm show -x``, or premigrate's stdin)."""

    @property
    def id(self) -> int:
        return self.required_int("ID")

    @property
    def lcm_state(self) -> int:
        return self.required_int("LCM_STATE")

    @property
    def disks(self) -> List[DiskInfo]:
        return [DiskInfo(disk) for disk in self.element.findall("TEMPLATE/DISK")]

    def disk(self, disk_id: int) -> DiskInfo:
        """The disk with DISK_ID ``disk_id``; InputError if the VM has none."""
        matches = self.element.xpath("TEMPLATE/DISK[DISK_ID=$id]", id=str(disk_id))
        if isinstance(matches, list):
            for disk in matches:
                if isinstance(disk, etree._Element):
                    return DiskInfo(disk)
        raise InputError(f"VM {self.text('ID', '?')} has no disk with DISK_ID {disk_id}")

    @property
    def last_history(self) -> HistoryInfo:
        """The last HISTORY record (the current or latest host)."""
        records = self.element.findall("HISTORY_RECORDS/HISTORY")
        if not records:
            raise InputError(f"{self.location}/HISTORY_RECORDS/HISTORY is missing")
        return HistoryInfo(records[-1])


def parse_vm(xml: bytes) -> VmInfo:
    """A ``<VM>`` document."""
    return VmInfo(parse_xml(xml, VM_ROOT, "VM"))
