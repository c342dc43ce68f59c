"""DS ``mkfs`` run as oned runs it, against a simulated group with real tgtd iSCSI targets."""

from __future__ import annotations

import json
import subprocess

import pytest

from eqliscsi.ds_actions import image_description
from tests.ds_harness import MIB, DsHarness, ds_xml, iscsi
from tests.iscsi_tools import read_bytes

pytestmark = iscsi
VOLUME = "data.42"
READER = "iqn.2024-01.org.example:reader"


def mkfs_xml(size: str = "16", **fields: str) -> str:
    image = {"NAME": "Data", "TYPE": "2", "SIZE": size, "PATH": "", "FORMAT": "raw", "FS": ""}
    image.update(fields)
    return ds_xml(image)


def read_volume(ds: DsHarness, name: str, length: int) -> bytes:
    """The first ``length`` bytes of the volume, read over iSCSI by another initiator."""
    with ds.group() as group:
        record = group.create_access(name, initiator=READER)
        try:
            iqn = group.show_volume(name).iqn
            return read_bytes(ds.portal, iqn, 1, 0, length, initiator_name=READER)
        finally:
            group.delete_access(name, record)


def assert_clean(ds: DsHarness, *volumes: str) -> None:
    assert ds.volume_names() == sorted(volumes)
    for name in volumes:
        assert ds.volume(name).access == [], name
    assert ds.staging_left() == []


@pytest.mark.parametrize("form", ["argv", "dash", "stdin"])
def test_raw_datablock(ds, form):
    run = ds.run("mkfs", mkfs_xml(), form=form)
    assert run.ok() == f"{VOLUME}\n"
    volume = ds.volume(VOLUME)
    assert (volume.size_mb, volume.multihost, volume.description) == (
        16, True, image_description(42, "Data"))
    assert not any("access create" in command for command in ds.commands())
    assert_clean(ds, VOLUME)


def test_ext4_spans_the_whole_volume(ds, tmp_path):
    run = ds.run("mkfs", mkfs_xml(FS="ext4"))
    assert run.ok() == f"{VOLUME}\n"
    assert "building a ext4 filesystem of 16 MB" in run.stderr
    assert ds.data_file(VOLUME).stat().st_blocks * 512 < 8 * MIB  # only used blocks written
    image = tmp_path / "back.img"
    image.write_bytes(read_volume(ds, VOLUME, 16 * MIB))
    check = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    stats = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True,
                           check=True).stdout
    block_count = int(stats.split("Block count:")[1].split()[0])
    block_size = int(stats.split("Block size:")[1].split()[0])
    assert block_count * block_size == 16 * MIB
    assert_clean(ds, VOLUME)


@pytest.mark.parametrize(("element", "fs"), [("FS", "vfat"), ("FSTYPE", "swap"),
                                             ("FSTYPE", "ext3")])
def test_other_filesystems_and_the_old_fstype_element(ds, tmp_path, element, fs):
    fields = {"FS": fs} if element == "FS" else {"FS": None, "FSTYPE": fs}
    assert ds.run("mkfs", mkfs_xml(**fields)).ok() == f"{VOLUME}\n"
    image = tmp_path / "back.img"
    image.write_bytes(ds.volume_bytes(VOLUME, 16 * MIB))
    if fs == "swap":
        assert image.read_bytes()[4086:4096] == b"SWAPSPACE2"
    else:
        command = ["fsck.vfat", "-n"] if fs == "vfat" else ["e2fsck", "-fn"]
        check = subprocess.run([*command, str(image)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    assert_clean(ds, VOLUME)


@pytest.mark.parametrize("fields", [{"FORMAT": "save_as"},
                                    {"FORMAT": "", "FS": None, "FSTYPE": "save_as"}])
def test_save_as_only_reserves_the_name(ds, fields):
    run = ds.run("mkfs", mkfs_xml(**fields))
    assert run.ok() == f"{VOLUME}\n"
    assert ds.commands() == []
    assert ds.volume_names() == []


@pytest.mark.parametrize(("fields", "reason"), [
    ({"FS": "zfs"}, "unsupported filesystem 'zfs' (FS): use one of btrfs, ext2, ext3, ext4, "
                    "ntfs, swap, vfat, xfs or raw"),
    ({"FORMAT": "qcow2"}, "FORMAT qcow2 is not supported: eqliscsi volumes are raw"),
    ({"SIZE": "0"}, "invalid datablock SIZE 0 MB"),
])
def test_refused_before_anything_happens(ds, fields, reason):
    assert ds.run("mkfs", mkfs_xml(**fields)).reason == reason
    assert ds.commands() == []


def test_mkfs_tool_failure(ds):
    reason = ds.run("mkfs", mkfs_xml(size="16", FS="xfs")).reason  # xfs needs 300 MB
    assert reason.startswith("mkfs.xfs (FS xfs) failed (exit 1)")
    assert ds.commands() == []
    assert ds.staging_left() == []


@pytest.mark.parametrize(("fault", "fs"), [("multihost-access", ""), ("access create", "ext4"),
                                           ("access delete", "ext4"), ("volume create", "")])
def test_failing_group_step_leaves_nothing_and_a_rerun_succeeds(ds, fault, fs):
    ds.sim.set_faults([{"match": fault, "action": "error"}])
    assert "Injected failure" in ds.run("mkfs", mkfs_xml(FS=fs)).reason
    assert_clean(ds)
    assert ds.run("mkfs", mkfs_xml(FS=fs)).ok() == f"{VOLUME}\n"
    assert_clean(ds, VOLUME)


@pytest.mark.parametrize("verify", ["sample", "full"])
def test_failing_verification_leaves_nothing(ds, verify):
    ds.write_conf(EQL_VERIFY=verify)
    run = ds.run("mkfs", mkfs_xml(FS="ext4"), env=ds.fake_qemu_img("skip"))
    assert run.reason.startswith("verification failed: the volume differs from the image")
    assert_clean(ds)


def test_leftover_is_replaced(ds):
    with ds.group() as group:
        group.create_volume(VOLUME, 50, description=image_description(42, "Data"))
    run = ds.run("mkfs", mkfs_xml(FS="ext4"))
    assert run.ok() == f"{VOLUME}\n"
    assert "left by an earlier attempt for image 42" in run.stderr
    assert ds.volume(VOLUME).size_mb == 16
    assert_clean(ds, VOLUME)


def test_volume_the_group_makes_after_the_timeout_is_deleted(ds):
    """Finding F1: the group answers ``volume create`` after EQL_COMMAND_TIMEOUT but makes
    the volume anyway; the failed action's cleanup waits for it and deletes it."""
    ds.write_conf(EQL_COMMAND_TIMEOUT="2")
    ds.sim.set_faults([{"match": "^volume create ", "action": "delay", "seconds": 3}])
    run = ds.run("mkfs", mkfs_xml())
    assert run.reason.startswith("no answer to `volume create data.42 ")
    assert f"deleting volume {VOLUME}, made by the group although the command failed" in (
        run.stderr)
    assert [e["ok"] for e in ds.sim.commands() if e["command"].startswith("volume create")] \
        == [True]
    assert_clean(ds)
    assert ds.run("mkfs", mkfs_xml()).ok() == f"{VOLUME}\n"


def test_wait_for_a_late_volume_is_bounded(ds):
    """The group never makes it (the command hangs, then the session ends): the cleanup
    gives up after EQL_COMMAND_TIMEOUT and the action fails with the timeout."""
    ds.write_conf(EQL_COMMAND_TIMEOUT="2")
    ds.sim.set_faults([{"match": "^volume create ", "action": "hang"}])
    run = ds.run("mkfs", mkfs_xml())
    assert run.reason.startswith("no answer to `volume create data.42 ")
    assert f"volume {VOLUME} did not appear within 2 s after the failure" in run.stderr
    assert_clean(ds)


def test_sigterm_during_volume_create_deletes_the_late_volume(ds, tmp_path):
    """oned's SIGTERM while the group is still making the volume: the cleanup waits for
    it (EQL_COMMAND_TIMEOUT) and deletes it."""
    ds.sim.set_faults([{"match": "^volume create ", "action": "delay", "seconds": 3}])
    faults = ds.sim.state_dir / "faults.json"
    run = ds.run_terminated(
        "mkfs", mkfs_xml(), lambda: json.loads(faults.read_text())[0].get("times") == 0,
        "volume create was never sent")
    assert (run.returncode, run.stdout) == (1, "")
    assert run.stderr.splitlines()[-1] == "terminated by SIGTERM"
    assert f"deleting volume {VOLUME}, made by the group although" in run.stderr
    assert_clean(ds)
