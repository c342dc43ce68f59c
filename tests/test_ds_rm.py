"""DS ``rm`` run as oned runs it, against a simulated group with real tgtd iSCSI targets."""

from __future__ import annotations

import pytest

from eqliscsi.ds_actions import image_description, snapshot_name
from tests.ds_harness import DsHarness, ds_xml, iscsi
from tests.iscsi_tools import iscsi_session

pytestmark = iscsi
VOLUME = "ubuntu.42"
HOST = "iqn.2024-01.org.example:host1"


def rm_xml(source: str = VOLUME, **templates: str) -> str:
    image = {k[6:]: v for k, v in templates.items() if k.startswith("image_")}
    datastore = {k[3:]: v for k, v in templates.items() if k.startswith("ds_")}
    return ds_xml({"SOURCE": source, "PATH": ""}, image_template=image,
                  datastore_template=datastore)


def make_volume(ds: DsHarness, name: str = VOLUME,
                description: str = image_description(42, "Ubuntu")) -> None:
    with ds.group() as group:
        group.create_volume(name, 20, description=description)
        group.create_access(name, initiator=HOST)
        group.create_snapshot(name, snapshot_name(name, 0))
        group.create_snapshot(name)


@pytest.mark.parametrize("form", ["argv", "dash", "stdin"])
def test_volume_and_snapshots_are_deleted(ds, form):
    make_volume(ds)
    run = ds.run("rm", rm_xml(), form=form)
    assert run.ok() == ""
    assert f"deleting volume {VOLUME} and its 2 snapshot(s)" in run.stderr
    assert ds.volume_names() == []
    assert f"volume delete {VOLUME}" in ds.commands()


def test_missing_volume_is_success(ds):
    run = ds.run("rm", rm_xml())
    assert run.ok() == ""
    assert f"volume {VOLUME} does not exist (already deleted)" in run.stderr


def test_volume_in_use_is_refused_unless_forced(ds):
    make_volume(ds)
    iqn = ds.volume(VOLUME).iqn
    with iscsi_session(ds.portal, iqn, 1, initiator_name=HOST):
        reason = ds.run("rm", rm_xml()).reason
        assert reason == (f"volume {VOLUME} has 1 iSCSI connection(s), it is still in use: "
                          "refusing to delete it (EQL_FORCE_DELETE=YES overrides)")
        assert ds.volume_names() == [VOLUME]
        run = ds.run("rm", rm_xml(image_EQL_FORCE_DELETE="YES"))
        assert run.ok() == ""
        assert "has 1 iSCSI connection(s); deleting it anyway (EQL_FORCE_DELETE)" in run.stderr
    assert ds.volume_names() == []


def test_volume_of_another_image_is_refused_unless_forced(ds):
    make_volume(ds, description=image_description(7, "Other"))
    reason = ds.run("rm", rm_xml()).reason
    assert reason == (f"volume {VOLUME} belongs to image 7, not to image 42: refusing to "
                      "delete it (EQL_FORCE_DELETE=YES overrides)")
    assert ds.volume_names() == [VOLUME]
    assert ds.run("rm", rm_xml(ds_EQL_FORCE_DELETE="yes")).ok() == ""
    assert ds.volume_names() == []


def test_2014_volumes(ds):
    """A 2014 v0.1 SOURCE (``group-ip:iqn``) and a 2014 description (the image's)."""
    make_volume(ds, name="ubuntu", description="Ubuntu 14.04 server")
    iqn = ds.volume("ubuntu").iqn
    assert ds.run("rm", rm_xml(source=f"192.168.0.1:{iqn}")).ok() == ""
    assert ds.volume_names() == []


def test_failed_delete_can_be_retried(ds):
    make_volume(ds)
    ds.sim.set_faults([{"match": "volume delete", "action": "error"}])
    assert "Injected failure" in ds.run("rm", rm_xml()).reason
    assert ds.volume_names() == [VOLUME]
    assert ds.run("rm", rm_xml()).ok() == ""
    assert ds.volume_names() == []
