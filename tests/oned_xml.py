"""Build the XML oned sends to drivers, shaped like its serialisers, for tests.

* ``image_xml`` / ``datastore_xml``: ``Image::to_xml`` / ``Datastore::to_xml`` field order;
  fixed fields are XML-escaped text, TEMPLATE values CDATA-wrapped (as oned writes them).
* ``action_xml``: ``<DS_DRIVER_ACTION_DATA>`` = IMAGE + DATASTORE + extra elements;
  ``stat_action_xml``: the reduced IMAGE oned sends to ``stat``.
* ``vm_xml``: ``onevm show -x`` with DISKs and HISTORY records.
* ``b64``: base64 as oned passes it (one line, no newline).

Field overrides: ``image_xml(NAME="x", SOURCE=None)`` sets a field, ``None`` drops it;
``template={...}`` is merged into the default TEMPLATE (``None`` drops an attribute).
"""

from __future__ import annotations

import base64
from typing import Dict, List, Mapping, Optional, Sequence
from xml.sax.saxutils import escape

Fields = Mapping[str, Optional[str]]

PERMISSIONS = ("<PERMISSIONS><OWNER_U>1</OWNER_U><OWNER_M>1</OWNER_M><OWNER_A>0</OWNER_A>"
               "<GROUP_U>0</GROUP_U><GROUP_M>0</GROUP_M><GROUP_A>0</GROUP_A><OTHER_U>0</OTHER_U>"
               "<OTHER_M>0</OTHER_M><OTHER_A>0</OTHER_A></PERMISSIONS>")

IMAGE_FIELDS: Dict[str, Optional[str]] = {
    "ID": "42", "UID": "0", "GID": "0", "UNAME": "oneadmin", "GNAME": "oneadmin",
    "NAME": "ubuntu-24.04", "TYPE": "0", "DISK_TYPE": "2", "PERSISTENT": "0",
    "REGTIME": "1722000000", "MODTIME": "1722000000", "SOURCE": "",
    "PATH": "https://cloud-images.example.org/noble.qcow2", "FORMAT": "raw", "FS": "",
    "SIZE": "3584", "STATE": "4", "PREV_STATE": "4", "RUNNING_VMS": "0", "CLONING_OPS": "0",
    "CLONING_ID": "-1", "TARGET_SNAPSHOT": "-1", "DATASTORE_ID": "100",
    "DATASTORE": "san_images",
}
IMAGE_TEMPLATE: Dict[str, Optional[str]] = {"DEV_PREFIX": "vd", "MD5": ""}

DATASTORE_FIELDS: Dict[str, Optional[str]] = {
    "ID": "100", "UID": "0", "GID": "0", "UNAME": "oneadmin", "GNAME": "oneadmin",
    "NAME": "san_images", "DS_MAD": "eqliscsi", "TM_MAD": "eqliscsi",
    "BASE_PATH": "/var/lib/one//datastores/100", "TYPE": "0", "DISK_TYPE": "2", "STATE": "0",
    "TOTAL_MB": "1048576", "FREE_MB": "900000", "USED_MB": "148576",
}
DATASTORE_TEMPLATE: Dict[str, Optional[str]] = {
    "ALLOW_ORPHANS": "YES", "BRIDGE_LIST": "kvm1 kvm2", "CLONE_TARGET": "SELF",
    "DISK_TYPE": "BLOCK", "DRIVER": "raw", "DS_MAD": "eqliscsi", "LN_TARGET": "NONE",
    "EQL_HOST": "192.168.0.1", "EQL_POOL": "default", "PERSISTENT_SNAPSHOTS": "YES",
    "TM_MAD": "eqliscsi", "TYPE": "IMAGE_DS",
}


def cdata(value: str) -> str:
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def element(name: str, value: str) -> str:
    return f"<{name}>{escape(value)}</{name}>"


OBJECT_HEAD = ("ID", "UID", "GID", "UNAME", "GNAME", "NAME")  # the fields before PERMISSIONS


def _fields(values: Fields) -> str:
    return "".join(element(name, value) for name, value in values.items() if value is not None)


def template_xml(defaults: Fields, overrides: Optional[Fields] = None) -> str:
    merged = {**defaults, **(overrides or {})}
    body = "".join(f"<{name}>{cdata(value)}</{name}>" for name, value in merged.items()
                   if value is not None)
    return f"<TEMPLATE>{body}</TEMPLATE>"


def image_xml(template: Optional[Fields] = None, **fields: Optional[str]) -> str:
    merged = {**IMAGE_FIELDS, **fields}
    head = {k: merged[k] for k in OBJECT_HEAD}
    rest = {k: v for k, v in merged.items() if k not in head}
    return ("<IMAGE>" + _fields(head) + PERMISSIONS + _fields(rest)
            + "<VMS/><CLONES/><APP_CLONES/>" + template_xml(IMAGE_TEMPLATE, template)
            + "<SNAPSHOTS><ALLOW_ORPHANS><![CDATA[NO]]></ALLOW_ORPHANS>"
            "<CURRENT_BASE><![CDATA[-1]]></CURRENT_BASE>"
            "<NEXT_SNAPSHOT><![CDATA[0]]></NEXT_SNAPSHOT></SNAPSHOTS>"
            "<BACKUP_INCREMENTS/><BACKUP_DISK_IDS/></IMAGE>")


def datastore_xml(template: Optional[Fields] = None, **fields: Optional[str]) -> str:
    merged = {**DATASTORE_FIELDS, **fields}
    head = {k: merged[k] for k in OBJECT_HEAD}
    rest = {k: v for k, v in merged.items() if k not in head}
    return ("<DATASTORE>" + _fields(head) + PERMISSIONS + _fields(rest)
            + "<CLUSTERS><ID>0</ID></CLUSTERS><IMAGES><ID>7</ID><ID>42</ID></IMAGES>"
            + template_xml(DATASTORE_TEMPLATE, template) + "</DATASTORE>")


def action_xml(image: Optional[str] = None, datastore: Optional[str] = None,
               extra: str = "") -> str:
    """A DS_DRIVER_ACTION_DATA document (default image/datastore when not given; pass
    ``""`` to leave one out)."""
    image = image_xml() if image is None else image
    datastore = datastore_xml() if datastore is None else datastore
    return f"<DS_DRIVER_ACTION_DATA>{image}{datastore}{extra}</DS_DRIVER_ACTION_DATA>"


def stat_action_xml(path: str, size: Optional[str] = None,
                    datastore_template: Optional[Fields] = None) -> str:
    """What oned sends to ``stat`` (``ImageManager::stat_image``): a reduced IMAGE."""
    image = "<IMAGE>" + element("PATH", path) + (element("SIZE", size) if size else "")
    return action_xml(image + "</IMAGE>", datastore_xml(datastore_template))


def b64(xml: str) -> str:
    return base64.b64encode(xml.encode()).decode()


DISK_FIELDS: Dict[str, Optional[str]] = {
    "ALLOW_ORPHANS": "YES", "CLONE": "YES", "CLONE_TARGET": "SELF", "CLUSTER_ID": "0",
    "DATASTORE": "san_images", "DATASTORE_ID": "100", "DEV_PREFIX": "vd", "DISK_ID": "0",
    "DISK_SNAPSHOT_TOTAL_SIZE": "0", "DISK_TYPE": "BLOCK", "DRIVER": "raw", "FORMAT": "raw",
    "IMAGE": "ubuntu-24.04", "IMAGE_ID": "42", "IMAGE_STATE": "2", "LN_TARGET": "NONE",
    "ORIGINAL_SIZE": "3584", "READONLY": "NO", "SAVE": "NO", "SIZE": "3584",
    "SOURCE": "ubuntu-24-04.42", "TARGET": "vda", "TM_MAD": "eqliscsi", "TYPE": "BLOCK",
}


def disk_xml(**fields: Optional[str]) -> str:
    merged = {**DISK_FIELDS, **fields}
    body = "".join(f"<{k}>{cdata(v)}</{k}>" for k, v in merged.items() if v is not None)
    return f"<DISK>{body}</DISK>"


def history_xml(seq: int, hostname: str, ds_id: str = "0", tm_mad: str = "shared") -> str:
    return ("<HISTORY>" + element("OID", "17") + element("SEQ", str(seq))
            + element("HOSTNAME", hostname) + element("HID", str(seq)) + element("CID", "0")
            + element("STIME", "1722000000") + element("ETIME", "0")
            + element("VM_MAD", "kvm") + element("TM_MAD", tm_mad) + element("DS_ID", ds_id)
            + element("ACTION", "0") + "</HISTORY>")


def vm_xml(vm_id: str = "17", disks: Sequence[str] = (), history: Sequence[str] = (),
           lcm_state: str = "3") -> str:
    """``onevm show -x``; ``disks`` from ``disk_xml``, ``history`` from ``history_xml``."""
    parts: List[str] = [
        "<VM>", element("ID", vm_id), element("UID", "0"), element("GID", "0"),
        element("UNAME", "oneadmin"), element("GNAME", "oneadmin"), element("NAME", "vm-17"),
        PERMISSIONS, element("LAST_POLL", "0"), element("STATE", "3"),
        element("LCM_STATE", lcm_state), element("PREV_STATE", "3"),
        element("PREV_LCM_STATE", "3"), element("RESCHED", "0"),
        element("STIME", "1722000000"), element("ETIME", "0"), element("DEPLOY_ID", "one-17"),
        "<TEMPLATE>", *disks, "<VMID><![CDATA[", vm_id, "]]></VMID></TEMPLATE>",
        "<USER_TEMPLATE/>",
    ]
    if history:
        parts += ["<HISTORY_RECORDS>", *history, "</HISTORY_RECORDS>"]
    parts.append("</VM>")
    return "".join(parts)
