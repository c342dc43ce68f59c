"""DS ``snap_delete``, ``snap_revert``, ``snap_flatten`` run as oned runs them, against a
simulated group with real tgtd iSCSI targets."""

from __future__ import annotations

from typing import List

import pytest

from eqliscsi.ds_actions import snapshot_name
from tests.ds_harness import MIB, DsHarness, ds, ds_xml, iscsi
from tests.iscsi_tools import iscsi_session, write_pattern

__all__ = ["ds"]
pytestmark = iscsi
VOLUME = "ubuntu.42"
HOST = "iqn.2024-01.org.example:host1"


def snap_xml(target: int) -> str:
    return ds_xml({"SOURCE": VOLUME, "PATH": "", "TARGET_SNAPSHOT": str(target)})


def fill(ds: DsHarness, byte: int) -> None:
    """Write ``byte`` over the volume's first 4 MiB, over iSCSI as a host would."""
    write_pattern(ds.portal, ds.volume(VOLUME).iqn, 1, 0, 4 * MIB, byte,
                  initiator_name=HOST)


def snapshots(ds: DsHarness) -> List[str]:
    return sorted(s.name for s in ds.volume(VOLUME).snapshots)


@pytest.fixture
def volume(ds: DsHarness) -> DsHarness:
    """``ubuntu.42`` holding 0x11 with image snapshot 0, then 0x22 with snapshot 1, then
    0x33, plus a snapshot the group named itself."""
    with ds.group() as group:
        group.create_volume(VOLUME, 8)
        group.create_access(VOLUME, initiator=HOST)
        for snap_id, byte in enumerate((0x11, 0x22)):
            fill(ds, byte)
            group.create_snapshot(VOLUME, snapshot_name(VOLUME, snap_id))
        fill(ds, 0x33)
        group.create_snapshot(VOLUME)
    return ds


@pytest.mark.parametrize("form", ["argv", "dash", "stdin"])
def test_snap_delete(volume, form):
    run = volume.run("snap_delete", snap_xml(0), form=form)
    assert run.ok() == ""
    assert f"deleted snapshot {VOLUME}-snap0 of volume {VOLUME}" in run.stderr
    names = snapshots(volume)
    assert len(names) == 2 and f"{VOLUME}-snap1" in names and f"{VOLUME}-snap0" not in names


def test_snap_delete_of_a_missing_snapshot_is_success(volume):
    run = volume.run("snap_delete", snap_xml(5))
    assert run.ok() == ""
    assert "does not exist (already deleted)" in run.stderr


@pytest.mark.parametrize("form", ["argv", "dash", "stdin"])
def test_snap_revert(volume, form):
    before = snapshots(volume)
    run = volume.run("snap_revert", snap_xml(0), form=form)
    assert run.ok() == ""
    assert "the group's snapshot of the state before" in run.stderr
    assert volume.volume_bytes(VOLUME, 4 * MIB) == b"\x11" * (4 * MIB)
    assert snapshots(volume) == before  # the automatic snapshot is gone again
    assert volume.volume(VOLUME).status == "online"
    commands = volume.commands()
    assert commands.index(f"volume select {VOLUME} offline") < commands.index(
        f"volume select {VOLUME} snapshot select {VOLUME}-snap0 restore") < commands.index(
        f"volume select {VOLUME} online")


def test_snap_revert_refuses_a_volume_in_use(volume):
    with iscsi_session(volume.portal, volume.volume(VOLUME).iqn, 1,
                       initiator_name=HOST):
        reason = volume.run("snap_revert", snap_xml(0)).reason
    assert reason == (f"volume {VOLUME} has 1 iSCSI connection(s): it cannot be reverted to "
                      "snapshot 0 while it is in use")
    assert volume.volume_bytes(VOLUME, MIB) == b"\x33" * MIB


def test_snap_revert_to_a_missing_snapshot(volume):
    assert volume.run("snap_revert", snap_xml(9)).reason == (
        f"image snapshot 9: volume {VOLUME} has no snapshot {VOLUME}-snap9")
    assert volume.volume(VOLUME).status == "online"


def test_failed_restore_brings_the_volume_back_online(volume):
    volume.sim.set_faults([{"match": "restore", "action": "error"}])
    assert "Injected failure" in volume.run("snap_revert", snap_xml(0)).reason
    assert volume.volume(VOLUME).status == "online"
    assert volume.volume_bytes(VOLUME, MIB) == b"\x33" * MIB


def test_snap_flatten(volume):
    group_made = [name for name in snapshots(volume) if "-snap" not in name]
    run = volume.run("snap_flatten", snap_xml(1))
    assert run.ok() == ""
    assert volume.volume_bytes(VOLUME, 4 * MIB) == b"\x22" * (4 * MIB)
    assert snapshots(volume) == group_made  # only snapshots OpenNebula did not make remain
    assert volume.volume(VOLUME).status == "online"
