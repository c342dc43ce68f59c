"""TM helpers that need no group or host: VM volume names and descriptions, which disks
are the driver's, argument forms (migration included), the monitor's VM lines."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Dict, List

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eqliscsi.action_xml import DatastoreInfo, parse_vm, parse_xml
from eqliscsi.config import ConfFile
from eqliscsi.group import VolumeSummary
from eqliscsi.naming import VOLUME_NAME_MAX, clone_volume_name
from eqliscsi.oned import Action, InputError
from eqliscsi.tm_common import (
    Kind,
    TmSession,
    legacy_clone_name,
    owned_by,
    shared_system_ds,
    source_volume,
    vm_dir_argument,
    vm_disk,
    vm_disk_description,
    volatile_volume_name,
    volume_vm_disk,
)
from eqliscsi.tm_migrate import parse_migration
from eqliscsi.tm_monitor import monitor_vm_lines, vm_disk_sizes
from tests.oned_xml import datastore_xml, disk_xml, history_xml, vm_xml

IDS = st.integers(min_value=0, max_value=2**31 - 1)
DISK_IDS = st.integers(min_value=0, max_value=9999)
VM = vm_xml("17", [
    disk_xml(DISK_ID="0"),
    disk_xml(DISK_ID="1", CLONE="NO", PERSISTENT="YES", SOURCE="data.43", IMAGE_ID="43"),
    disk_xml(DISK_ID="2", TYPE="swap", SOURCE=None, IMAGE_ID=None, DATASTORE_ID=None,
             TM_MAD=None, CLONE=None, SIZE="512"),
    disk_xml(DISK_ID="3", TM_MAD="ceph", SOURCE="one/one-9", IMAGE_ID="9"),
    disk_xml(DISK_ID="4", TM_MAD=None, DATASTORE_ID="101", CLONE=None, SOURCE="old.5",
             IMAGE_ID="5"),
], [history_xml(0, "kvm1", "0", "eqliscsi")])


@given(IDS, DISK_IDS)
def test_vm_volume_names_name_their_disk(vm_id, disk_id):
    volatile = volatile_volume_name(vm_id, disk_id)
    assert len(volatile) <= 21 and "." not in volatile
    clone = clone_volume_name("x" * 46, vm_id, disk_id)
    assert len(clone) <= VOLUME_NAME_MAX
    assert volume_vm_disk(volatile) == volume_vm_disk(clone) == (vm_id, disk_id)


@pytest.mark.parametrize("name", ["ubuntu.42", "ubuntu.42-17", "vm17-disk", "xvm1-disk2",
                                  "vm17-disk2.3", "one-v17-dx"])
def test_other_volumes_name_no_disk(name):
    assert volume_vm_disk(name) is None


def test_descriptions_name_the_owner():
    description = vm_disk_description(17, 2, "volatile ext4")
    assert description == "OpenNebula VM 17 disk 2 (volatile ext4)"
    assert owned_by(description, 17, 2)
    assert not owned_by(description, 17, 1) and not owned_by(description, 1, 2)
    assert owned_by("Clone 17 of ubuntu.42", 17, 5)  # 2014: the VM only
    assert not owned_by("Clone 170 of ubuntu.42", 17, 5)
    assert not owned_by("OpenNebula image 17 (x)", 17, 0)
    assert legacy_clone_name("ubuntu.42", 17) == "ubuntu.42-17"


def test_vm_disks_and_their_volumes():
    vm = parse_vm(VM.encode())
    clone, image, swap = (vm_disk(vm, 17, n, 0) for n in range(3))
    assert (clone.kind, clone.names, clone.datastore_id, clone.image_id, clone.size_mb) == (
        Kind.CLONE, ("ubuntu-24-04.42-v17-d0", "ubuntu-24-04.42-17"), 100, 42, 3584)
    assert (image.kind, image.names) == (Kind.IMAGE, ("data.43",))
    assert (swap.kind, swap.names, swap.datastore_id, swap.image_id) == (
        Kind.VOLATILE, ("vm17-disk2",), 0, None)
    with pytest.raises(InputError, match="VM 17 has no disk with DISK_ID 9"):
        vm_disk(vm, 17, 9, 0)


class FakeObjects:
    """``OneObjects`` with datastores from a dict."""

    def __init__(self, tm_mads: Dict[int, str]) -> None:
        self.tm_mads = tm_mads
        self.calls: List[int] = []

    def datastore(self, ds_id: int) -> DatastoreInfo:
        self.calls.append(ds_id)
        xml = datastore_xml(ID=str(ds_id), TM_MAD=self.tm_mads[ds_id])
        return DatastoreInfo(parse_xml(xml.encode(), "DATASTORE", "datastore"))


def action(name: str, *args: str, stdin: bytes = b"") -> Action:
    return Action(name, args, io.BytesIO(stdin), {}, Path("/nonexistent"), ConfFile())


def test_which_disks_are_the_drivers():
    session = TmSession(action("delete"))
    objects = FakeObjects({101: "eqliscsi"})
    session.one = objects  # type: ignore[assignment]
    vm = parse_vm(VM.encode())
    assert [d.disk_id for d in session.our_disks(vm, 17, 0, with_volatile=True)] == [0, 1, 2, 4]
    assert [d.disk_id for d in session.our_disks(vm, 17, 0, with_volatile=False)] == [0, 1, 4]
    assert objects.calls == [101, 101]  # only disk 4 has no TM_MAD of its own


@pytest.mark.parametrize(("value", "shared"), [("YES", True), ("no", False), (None, True)])
def test_shared_system_datastore(value, shared):
    xml = datastore_xml(TYPE="1", template={"SHARED": value})
    assert shared_system_ds(DatastoreInfo(parse_xml(xml.encode(), "DATASTORE", "ds"))) is shared


def test_source_and_directory_arguments():
    assert source_volume("copy.44") == source_volume("fe:copy.44") == "copy.44"
    legacy = "10.0.0.1:iqn.2001-05.com.equallogic:0-8a0906-4a1c7e105-1e2000000385a3a1-old"
    assert source_volume(legacy) == "old"
    assert vm_dir_argument("kvm1:/var/lib/one//datastores/0/17/", 17).path == (
        "/var/lib/one/datastores/0/17")
    for bad in ("kvm1:/var/lib/one/datastores/0/18", "kvm1:/17", "kvm1:17"):
        with pytest.raises(InputError, match="invalid VM directory"):
            vm_dir_argument(bad, 17)


def test_migration_argument_forms():
    encoded = base64.b64encode(VM.encode())
    args = ("kvm1", "kvm2", "/var/lib/one//datastores/0/17", "17", "0")
    direct = parse_migration(action("premigrate", *args, stdin=encoded + b"\n"))
    assert (direct.direct, direct.legacy, direct.vm_dir) == (
        True, False, "/var/lib/one/datastores/0/17")
    forwarded = parse_migration(action("premigrate", *args, "shared", stdin=encoded))
    assert (forwarded.caller, forwarded.direct) == ("shared", False)
    legacy = parse_migration(action("premigrate", *args, encoded.decode()))
    assert (legacy.direct, legacy.legacy, legacy.encoded_vm) == (True, True, encoded.decode())
    with pytest.raises(InputError, match="expected the arguments"):
        parse_migration(action("premigrate", *args[:4]))
    with pytest.raises(InputError, match="invalid host"):
        parse_migration(action("premigrate", "kvm 1", *args[1:]))


def test_monitor_vm_lines():
    volumes = [VolumeSummary(name, size, 0, "online", "read-write", 0, False)
               for name, size in (("vm9-disk1", 5), ("a.1-v9-d0", 10), ("a.1-v3-d2", 7),
                                  ("a.1", 10), ("a.1-9", 10))]
    disks = vm_disk_sizes(volumes)
    assert disks == {3: ["DISK_SIZE=[ID=2,SIZE=7]"],
                     9: ["DISK_SIZE=[ID=0,SIZE=10]", "DISK_SIZE=[ID=1,SIZE=5]"]}
    line = monitor_vm_lines(disks)[1]
    assert line.startswith('VM=[ID=9, MONITOR="') and line.endswith('"]')
    assert base64.b64decode(line[19:-2]) == (
        b"DISK_SIZE=[ID=0,SIZE=10]\nDISK_SIZE=[ID=1,SIZE=5]\n")
