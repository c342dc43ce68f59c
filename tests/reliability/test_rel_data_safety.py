"""Data safety: a persistent disk's volume survives every TM ``delete`` path, ``rm``
refuses a volume that still has iSCSI connections, and nothing the driver did not create
is deleted (foreign descriptions are refused, even for names the driver would use).

TM actions run for the front-end as the VM's host (no iSCSI there, so no test hosts are
needed); the host-side logout paths of ``delete`` are covered by test_tm_lifecycle.
"""

from __future__ import annotations

import socket

import pytest

from eqliscsi.ds_actions import image_description
from tests.ds_harness import DsHarness, ds_xml
from tests.iscsi_tools import iscsi_session
from tests.tm_harness import (
    IMAGE_DS,
    TmHarness,
    image_disk,
    iscsi,
    vm,
    vm_path,
)

pytestmark = iscsi
DS = str(IMAGE_DS)
HOST = "iqn.2024-01.org.example:host1"


def fe_disk(disk_id: int, vm_id: int = 17) -> str:
    return f"{socket.gethostname()}:{vm_path(vm_id, disk_id)}"


@pytest.mark.parametrize("force", ["NO", "YES"])
@pytest.mark.parametrize("lcm_state", [3, 11, 15])  # RUNNING, EPILOG, EPILOG_UNDEPLOY
def test_persistent_disk_survives_delete(tm_factory, force, lcm_state):
    tm: TmHarness = tm_factory(hosts=0)
    tm.write_conf(EQL_FORCE_DELETE=force)
    data = tm.make_image(43, "data", 16, 0x5A, persistent=True)
    disks = [image_disk(0, data, 43, 16, persistent=True),
             image_disk(1, data, 43, 16, persistent=False, CLONE="NO")]  # CD-ROM-like
    tm.put_vm(17, vm(17, disks, [socket.gethostname()], lcm_state=lcm_state))
    tm.run("ln", f"one:{data}", fe_disk(0), "17", DS).ok()
    for disk_id in (0, 1):
        run = tm.run("delete", fe_disk(disk_id), "17", DS)
        assert run.ok() == ""
        assert f"keeping volume {data}" in run.stderr
    tm.run("mvds", fe_disk(0), data, "17", DS).ok()
    assert tm.volume_names() == [data]
    assert tm.read(data, 0, 16) == b"\x5a" * 16


@pytest.mark.parametrize("description", [
    "", "Finance database", image_description(42, "ubuntu"),
    "OpenNebula VM 18 disk 0 (clone of ubuntu.42)",
])
def test_foreign_volume_under_a_driver_name_is_never_deleted(tm_factory, description):
    tm: TmHarness = tm_factory(hosts=0)
    image = tm.make_image(42, "ubuntu", 16, 0x11)
    clone = "ubuntu.42-v17-d0"
    with tm.group() as group:
        group.create_volume(clone, 16, description=description or None)
    tm.allow(clone)
    tm.put_vm(17, vm(17, [image_disk(0, image, 42, 16)], [socket.gethostname()]))
    run = tm.run("delete", fe_disk(0), "17", DS)
    assert run.returncode == 1 and run.reason
    assert tm.volume_names() == sorted([image, clone])


def test_rm_refuses_a_connected_volume_and_other_images(ds: DsHarness):
    with ds.group() as group:
        group.create_volume("ubuntu.42", 16, description=image_description(42, "Ubuntu"))
        group.create_access("ubuntu.42", initiator=HOST)
        group.create_volume("other.42", 16, description=image_description(7, "Other"))
    xml = ds_xml({"SOURCE": "ubuntu.42", "PATH": ""})
    with iscsi_session(ds.portal, ds.volume("ubuntu.42").iqn, 1, initiator_name=HOST):
        for attempt in range(3):  # refused every time, not only the first
            assert "still in use" in ds.run("rm", xml).reason, attempt
        assert ds.volume_names() == ["other.42", "ubuntu.42"]
    other = ds.run("rm", ds_xml({"SOURCE": "other.42", "PATH": ""}))
    assert "belongs to image 7" in other.reason
    assert ds.volume_names() == ["other.42", "ubuntu.42"]
    assert not any(c.startswith("volume delete") for c in ds.commands())
