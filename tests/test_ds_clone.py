"""DS ``clone`` run as oned runs it, against a simulated group with real tgtd iSCSI targets."""

from __future__ import annotations

import pytest

from eqliscsi.ds_actions import image_description
from tests.ds_harness import MIB, DsHarness, ds_xml, iscsi, write_random

pytestmark = iscsi
SOURCE = "golden.7"
CLONE = "copy.43"


def clone_xml(size: str = "16", path: str = SOURCE) -> str:
    return ds_xml({"ID": "43", "NAME": "Copy", "PATH": path, "SIZE": size, "CLONING_ID": "7",
                   "SOURCE": ""})


@pytest.fixture
def golden(ds: DsHarness, tmp_path) -> bytes:
    """Image 7 (``golden.7``, 16 MB) made by ``cp``, with a host's access record."""
    data = write_random(tmp_path / "golden.raw", 16 * MIB)
    xml = ds_xml({"ID": "7", "NAME": "Golden", "PATH": str(tmp_path / "golden.raw"),
                  "SIZE": "16"})
    assert ds.run("cp", xml, object_id=7).ok() == f"{SOURCE} raw\n"
    with ds.group() as group:
        group.create_access(SOURCE, initiator="iqn.2024-01.org.example:host1")
    return data


def assert_clean(ds: DsHarness, *extra: str) -> None:
    assert ds.volume_names() == sorted([SOURCE, *extra])
    for name in extra:
        assert ds.volume(name).access == [], name


@pytest.mark.parametrize("form", ["argv", "dash", "stdin"])
def test_clone_carries_the_data(ds, golden, form):
    run = ds.run("clone", clone_xml(), object_id=43, form=form)
    assert run.ok() == f"{CLONE} raw\n"
    assert f"cloning volume {SOURCE} (image 7) to {CLONE}" in run.stderr
    volume = ds.volume(CLONE)
    assert (volume.size_mb, volume.multihost, volume.description) == (
        16, True, image_description(43, "Copy"))
    assert ds.volume_bytes(CLONE, 16 * MIB) == golden
    assert_clean(ds, CLONE)
    assert not any(command.startswith(f"volume select {CLONE} size")
                   for command in ds.commands())


def test_clone_is_extended_to_the_image_size(ds, golden):
    run = ds.run("clone", clone_xml(size="40"), object_id=43)
    assert run.ok() == f"{CLONE} raw\n"
    assert f"extending volume {CLONE} from 16 to 40 MB" in run.stderr
    assert f"volume select {CLONE} size 40MB no-snap" in ds.commands()
    assert ds.volume(CLONE).size_mb == 40
    assert ds.volume_bytes(CLONE, 16 * MIB) == golden
    assert ds.volume_bytes(CLONE, MIB, 39 * MIB) == bytes(MIB)


def test_clone_in_static_mode(ds, golden):
    ds.write_conf(EQL_ACCESS_MODE="static", EQL_SECURITY_ACCESS="initiator "
                  "iqn.2024-01.org.example:all-hosts", EQL_MULTIHOST="disable")
    assert ds.run("clone", clone_xml(), object_id=43).ok() == f"{CLONE} raw\n"
    volume = ds.volume(CLONE)
    assert not volume.multihost
    assert [r.initiator for r in volume.access] == ["iqn.2024-01.org.example:all-hosts"]


def test_inherited_access_records_are_removed(ds, golden):
    with ds.group() as group:  # a firmware that copies access records into the clone
        group.clone_volume(SOURCE, CLONE, description=image_description(43, "Copy"))
        group.create_access(CLONE, initiator="iqn.2024-01.org.example:host1")
    run = ds.run("clone", clone_xml(), object_id=43)
    assert run.ok() == f"{CLONE} raw\n"
    assert "left by an earlier attempt for image 43" in run.stderr
    assert_clean(ds, CLONE)


@pytest.mark.parametrize("fault", ["access show", "multihost-access", f"{CLONE} show",
                                   "size 40MB"])
def test_failure_after_the_clone_deletes_it_and_a_rerun_succeeds(ds, golden, fault):
    # the name check before the clone shows the volume once: let that one pass
    ds.sim.set_faults([{"match": f"{CLONE} show", "action": "delay", "seconds": 0},
                       {"match": fault, "action": "error"}])
    run = ds.run("clone", clone_xml(size="40"), object_id=43)
    assert "Injected failure" in run.reason
    assert f"deleting volume {CLONE} after the failure" in run.stderr
    assert_clean(ds)
    assert ds.run("clone", clone_xml(size="40"), object_id=43).ok() == f"{CLONE} raw\n"
    assert_clean(ds, CLONE)


def test_missing_source(ds, golden):
    reason = ds.run("clone", clone_xml(path="missing.5"), object_id=43).reason
    assert reason == ("`volume select missing.5 clone copy.43 description \"OpenNebula image "
                      "43 (Copy)\" online`: % Error - Volume does not exist.")
    assert_clean(ds)


def test_foreign_volume_with_the_name_is_refused(ds, golden):
    with ds.group() as group:
        group.create_volume(CLONE, 20, description="someone else's")
    assert "is not a leftover of image 43" in ds.run("clone", clone_xml(), object_id=43).reason
    assert ds.volume(CLONE).size_mb == 20
