"""DS ``snap_delete``, ``snap_revert``, ``snap_flatten`` run as oned runs them, against a
simulated group with real tgtd iSCSI targets."""

from __future__ import annotations

from typing import List

import pytest

from eqliscsi.ds_actions import pre_restore_snapshot_name, snapshot_name
from tests.ds_harness import MIB, DsHarness, ds_xml, iscsi
from tests.iscsi_tools import iscsi_session, write_pattern

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


# --- the group's automatic snapshot of the state before a restore (finding F2) -----------

# deleting (offline or delete) any snapshot but an image snapshot
AUTOMATIC_SNAPSHOT = rf"^volume select {VOLUME} snapshot (select |delete )(?!{VOLUME}-snap)"


def test_revert_marks_the_automatic_snapshot_before_deleting_it(volume):
    before = snapshots(volume)
    volume.run("snap_revert", snap_xml(0)).ok()
    marked = pre_restore_snapshot_name(VOLUME)
    commands = volume.commands()
    renames = [c for c in commands if " snapshot rename " in c and c.endswith(f" {marked}")]
    assert len(renames) == 1
    assert commands.index(renames[0]) < commands.index(
        f"volume select {VOLUME} snapshot delete {marked}")
    assert snapshots(volume) == before


@pytest.mark.parametrize("where", ["select", "delete", "rename"])
def test_failed_deletion_of_the_automatic_snapshot_leaves_nothing(volume, where):
    """One failure at the rename, offline or delete: the action fails, its cleanup
    deletes the snapshot (under whichever name it has)."""
    before = snapshots(volume)
    match = (rf"^volume select {VOLUME} snapshot rename " if where == "rename"
             else AUTOMATIC_SNAPSHOT.replace("(select |delete )", f"{where} "))
    volume.sim.set_faults([{"match": match, "action": "error"}])
    assert "Injected failure" in volume.run("snap_revert", snap_xml(0)).reason
    assert snapshots(volume) == before
    assert volume.volume(VOLUME).status == "online"
    assert volume.volume_bytes(VOLUME, MIB) == b"\x11" * MIB


@pytest.mark.parametrize("next_action", ["snap_revert", "snap_flatten"])
def test_automatic_snapshot_left_by_a_failed_revert_goes_with_the_next(volume, next_action):
    """Deleting it fails twice (the action and its cleanup): it stays, marked, and the
    volume's next revert or flatten deletes it; snapshots the driver did not mark stay."""
    with volume.group() as group:
        group.create_snapshot(VOLUME, f"{VOLUME}-before-restore")  # an administrator's
    before = snapshots(volume)
    volume.sim.set_faults([{"match": AUTOMATIC_SNAPSHOT, "action": "error", "times": 2}])
    assert volume.run("snap_revert", snap_xml(0)).returncode == 1
    marked = pre_restore_snapshot_name(VOLUME)
    assert snapshots(volume) == sorted([*before, marked])
    volume.sim.clear_faults()
    volume.run(next_action, snap_xml(1)).ok()
    expected = [n for n in before if "-snap" not in n] if next_action == "snap_flatten" \
        else before
    assert snapshots(volume) == expected
    assert volume.volume_bytes(VOLUME, MIB) == b"\x22" * MIB
