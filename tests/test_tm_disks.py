"""TM actions on single disks, run as oned runs them: argument checks, clones of the same
image twice, failure cleanup and re-runs, 2014 clone names, volatile disks, the context
ISO, the VM directory, deferred save-as (mvds) and lost source hosts."""

from __future__ import annotations

import socket
import subprocess

from tests.oned_xml import image_xml
from tests.tm_harness import (
    IMAGE_DS,
    MIB,
    SYSTEM_DS,
    disk_arg,
    image_disk,
    iscsi,
    vm,
    vm_path,
    volatile_disk,
)

pytestmark = iscsi

DS = str(IMAGE_DS)
SYS = str(SYSTEM_DS)
IMAGE = "ubuntu.42"


def test_invalid_arguments_fail_before_any_work(tm_factory):
    tm = tm_factory(hosts=0)
    tm.put_vm(17, vm(17, [image_disk(0, IMAGE, 42, 16)], ["host1"]))
    cases = {
        ("clone", f"one:{IMAGE}", "host1:/var/lib/one:x/0/17/disk.0", "17", DS):
            "more than one ':'",
        ("clone", f"one:{IMAGE}", disk_arg("host1", 0), "17"): "expected the arguments",
        ("clone", f"one:{IMAGE}", "host1:/var/lib/one/datastores/0/17", "17", DS):
            "expected host:path/disk.N",
        ("ln", "one:bad name", disk_arg("host1", 0), "17", DS): "invalid",
        ("mv", disk_arg("host1", 0), disk_arg("host2", 1), "17", DS): "must be the same disk",
        ("mv", "host1:/var/lib/one/datastores/0/18", "host2:/var/lib/one/datastores/0/18",
         "17", SYS): "invalid VM directory",
        ("delete", "host1:/", "17", SYS): "invalid VM directory",
        ("delete", disk_arg("host1", 0), "x17", DS): "invalid VM id",
        ("mkimage", "8", "qcow2", disk_arg("host1", 2), "17", SYS): "FORMAT 'qcow2'",
        ("mkswap", "0", disk_arg("host1", 2), "17", SYS): "must be at least 1",
        ("resize", disk_arg("host1", 0), "40MB", "17", DS): "invalid size in MB",
        ("snap_create", disk_arg("host1", 0), "-1", "17", DS): "invalid snapshot id",
        ("cpds", disk_arg("host1", 0), "copy.44", "-2", "17", DS): "invalid snapshot id",
        ("context", f"{tm.base}/context.sh", "http://x/y", disk_arg("host1", 3), "17", SYS):
            "URLs are not supported",
        ("premigrate", "host1", "host2", "relative/17", "17", SYS): "invalid VM directory",
    }
    for argv, expected in cases.items():
        run = tm.run(*argv)
        assert expected in run.reason, (argv, run.reason)
    assert tm.cli_calls() == []
    assert tm.commands() == []


def test_the_same_image_twice_in_one_vm_static_access(tm):
    """Two clones, one per disk; EQL_ACCESS_MODE static: the volumes' standing record
    (here EQL_SECURITY_ACCESS) lets the host in, no per-host records are made."""
    tm.write_conf(EQL_ACCESS_MODE="static", EQL_SECURITY_ACCESS=f"initiator {tm.iqn('host1')}")
    image = tm.make_image(42, "ubuntu", 16, 0xAB)
    tm.put_vm(17, vm(17, [image_disk(0, image, 42, 16), image_disk(1, image, 42, 32)],
                     ["host1"]))
    for disk_id in (0, 1):
        run = tm.run("clone", f"one:{image}", disk_arg("host1", disk_id), "17", DS)
        run.ok()
        assert "adding the static access record" in run.stderr
        assert "added access record" not in run.stderr
    clones = ["ubuntu.42-v17-d0", "ubuntu.42-v17-d1"]
    assert tm.logged_in("host1") == clones
    assert [tm.volume(c).size_mb for c in clones] == [16, 32]
    assert tm.access(clones[0]) == tm.access(clones[1]) == [tm.iqn("host1")]
    tm.write_disk("host1", vm_path(17, 1), 1, 0x5A)
    assert tm.read(clones[0], MIB, 16) == bytes(16)
    assert tm.read(clones[1], MIB, 16) == b"\x5a" * 16
    tm.run("delete", disk_arg("host1", 0), "17", DS).ok()
    assert tm.logged_in("host1") == clones[1:]
    assert tm.volume_names() == [image, clones[1]]
    tm.run("delete", disk_arg("host1", 1), "17", DS).ok()
    assert tm.volume_names() == [image]


def test_failed_login_deletes_the_clone_and_its_access_then_a_rerun_works(tm):
    image = tm.make_image(42, "ubuntu", 16, 0xAB)
    tm.put_vm(17, vm(17, [image_disk(0, image, 42, 16)], ["host1"]))
    tm.write_conf(EQL_PORTAL="127.0.0.1:3261")  # nothing listens there: the login fails
    run = tm.run("clone", f"one:{image}", disk_arg("host1", 0), "17", DS)
    assert run.reason.startswith("host host1: attach: ")
    assert "deleting volume ubuntu.42-v17-d0 after the failure" in run.stderr
    assert "added access record 1 for iqn.2024-01.org.example:host1" in run.stderr
    assert tm.volume_names() == [image]
    assert "volume select ubuntu.42-v17-d0 access delete 1" in tm.commands()
    assert tm.logged_in("host1") == [] and tm.link("host1", vm_path(17, 0)) is None

    tm.write_conf()
    tm.run("clone", f"one:{image}", disk_arg("host1", 0), "17", DS).ok()
    assert tm.logged_in("host1") == ["ubuntu.42-v17-d0"]
    run = tm.run("clone", f"one:{image}", disk_arg("host1", 0), "17", DS)  # oned retries
    run.ok()
    assert "using volume ubuntu.42-v17-d0, made for this disk by an earlier attempt" in run.stderr
    assert tm.access("ubuntu.42-v17-d0") == [tm.iqn("host1")]
    tm.run("delete", disk_arg("host1", 0), "17", DS).ok()


def test_a_foreign_volume_with_the_clone_name_is_refused(tm_factory):
    tm = tm_factory(hosts=0)
    image = tm.make_image(42, "ubuntu", 16, 0xAB)
    with tm.group() as group:
        group.create_volume("ubuntu.42-v17-d0", 16, description="someone else's")
    tm.allow("ubuntu.42-v17-d0")
    tm.put_vm(17, vm(17, [image_disk(0, image, 42, 16)], ["host1"]))
    run = tm.run("clone", f"one:{image}", disk_arg("host1", 0), "17", DS)
    assert "volume ubuntu.42-v17-d0 already exists and is not disk 0 of VM 17" in run.reason
    run = tm.run("delete", disk_arg(socket.gethostname(), 0), "17", DS)
    assert "refusing to delete it (EQL_FORCE_DELETE=YES overrides)" in run.reason
    assert tm.volume_names() == [image, "ubuntu.42-v17-d0"]


def test_a_vm_of_the_2014_driver_keeps_working(tm):
    """Its non-persistent disk is the clone ``<image volume>-<vm id>``."""
    image = tm.make_image(42, "ubuntu", 16, 0xAB)
    with tm.group() as group:
        group.clone_volume(image, "ubuntu.42-17", description="Clone 17 of ubuntu.42")
    tm.put_vm(17, vm(17, [image_disk(0, image, 42, 16)], ["host1"], lcm_state=9))
    tm.run("mv", disk_arg(socket.gethostname(), 0), disk_arg("host1", 0), "17", DS).ok()  # resume
    assert tm.logged_in("host1") == ["ubuntu.42-17"]
    tm.write_disk("host1", vm_path(17, 0), 3, 0x77)
    assert tm.read("ubuntu.42-17", 3 * MIB, 16) == b"\x77" * 16
    tm.run("snap_create", disk_arg("host1", 0), "0", "17", DS).ok()
    assert [s.name for s in tm.volume("ubuntu.42-17").snapshots] == ["ubuntu.42-17-snap0"]
    run = tm.run("delete", disk_arg("host1", 0), "17", DS)
    run.ok()
    assert "deleting volume ubuntu.42-17 (the VM's clone) and its snapshots" in run.stderr
    assert tm.volume_names() == [image]


def test_volatile_disks_formatted_on_the_front_end(tm):
    tm.put_vm(17, vm(17, [volatile_disk(0, 8, "vfat"), volatile_disk(1, 24, kind="swap"),
                          volatile_disk(2, 8)], ["host1"]))
    tm.run("mkimage", "40", "raw", disk_arg("host1", 0), "17", SYS).ok()
    tm.run("mkswap", "24", disk_arg("host1", 1), "17", SYS).ok()
    tm.run("mkimage", "8", "raw", disk_arg("host1", 2), "17", SYS).ok()
    assert tm.logged_in("host1") == ["vm17-disk0", "vm17-disk1", "vm17-disk2"]
    assert tm.read("vm17-disk0", 3, 8) == b"mkfs.fat"
    assert tm.read("vm17-disk1", 4086, 10) == b"SWAPSPACE2"
    assert tm.read("vm17-disk2", 0, MIB) == bytes(MIB)
    assert tm.volume("vm17-disk1").description == "OpenNebula VM 17 disk 1 (volatile swap)"
    assert [tm.volume(f"vm17-disk{n}").size_mb for n in range(3)] == [40, 24, 8]
    run = tm.run("mkswap", "24", disk_arg("host1", 1), "17", SYS)  # a retried prolog
    run.ok()
    assert "using volume vm17-disk1, made for this disk by an earlier attempt" in run.stderr
    # the VM directory delete logs out what per-disk deletes did not (a failed epilog)
    tm.run("delete", f"host1:{vm_path(17)}", "17", SYS).ok()
    assert tm.logged_in("host1") == []
    assert not tm.host("host1").path(vm_path(17)).exists()
    for disk_id in range(3):
        tm.run("delete", disk_arg("host1", disk_id), "17", SYS).ok()
    assert tm.volume_names() == []


def test_context_iso_holds_the_files(tm):
    (tm.base / "context.sh").write_text("ETH0_IP='10.0.0.7'\n")
    (tm.base / "f1a2").write_text("payload\n")
    run = tm.run("context", str(tm.base / "context.sh"), f"{tm.base / 'f1a2'}:'app.conf'",
                 disk_arg("host1", 1), "17", SYS)
    run.ok()
    assert tm.cli_calls() == [] and tm.commands() == []
    iso = tm.base / "copy.iso"
    iso.write_bytes(tm.host("host1").path(vm_path(17, 1)).read_bytes())
    listing = subprocess.run(["isoinfo", "-R", "-f", "-i", str(iso)], capture_output=True,
                             text=True, check=True).stdout.split()
    assert sorted(listing) == ["/app.conf", "/context.sh"]
    volume_id = subprocess.run(["isoinfo", "-d", "-i", str(iso)], capture_output=True,
                               text=True, check=True).stdout
    assert "Volume id: CONTEXT" in volume_id
    content = subprocess.run(["isoinfo", "-R", "-x", "/context.sh", "-i", str(iso)],
                             capture_output=True, text=True, check=True).stdout
    assert content == "ETH0_IP='10.0.0.7'\n"
    assert tm.staging.exists() and list(tm.staging.iterdir()) == []
    tm.put_vm(17, vm(17, [], ["host1"]))
    tm.run("delete", f"host1:{vm_path(17)}", "17", SYS).ok()
    assert not tm.host("host1").path(vm_path(17)).exists()


def test_mvds_of_a_deferred_save_as_clones_then_deletes_the_vm_clone(tm_factory):
    tm = tm_factory(hosts=0)
    image = tm.make_image(42, "ubuntu", 16, 0xAB)
    fe = socket.gethostname()
    tm.put_vm(17, vm(17, [image_disk(0, image, 42, 16)], [fe]))
    tm.run("clone", f"one:{image}", disk_arg(fe, 0), "17", DS).ok()
    tm.put_image(50, image_xml(ID="50", NAME="saved", SIZE="20", SOURCE="", FORMAT="save_as"))
    tm.run("mvds", disk_arg(fe, 0), "saved.50", "17", DS).ok()
    assert tm.volume_names() == ["saved.50", image]
    assert tm.volume("saved.50").description == "OpenNebula image 50 (saved)"
    assert tm.volume("saved.50").size_mb == 20
    assert tm.read("saved.50", 0, 16) == b"\xab" * 16
    tm.allow("saved.50")


def test_a_lost_source_host_does_not_stop_a_recovery(tm):
    """``onevm recover`` of a VM whose host died (PROLOG_MIGRATE_UNKNOWN): the source
    cannot be reached, the destination still logs in; in other states that fails."""
    image = tm.make_image(42, "ubuntu", 16, 0xAB)
    tm.put_vm(17, vm(17, [image_disk(0, image, 42, 16)], ["host9", "host2"]))
    tm.run("clone", f"one:{image}", disk_arg(socket.gethostname(), 0), "17", DS).ok()
    run = tm.run("mv", disk_arg("host9", 0), disk_arg("host2", 0), "17", DS)
    assert run.reason.startswith("host host9: ")
    tm.put_vm(17, vm(17, [image_disk(0, image, 42, 16)], ["host9", "host2"], lcm_state=60))
    run = tm.run("mv", disk_arg("host9", 0), disk_arg("host2", 0), "17", DS)
    assert run.returncode == 0, run.stderr
    assert "WARN: mv: host9 is lost (host host9: " in run.stderr
    assert tm.logged_in("host2") == ["ubuntu.42-v17-d0"]
    tm.run("delete", disk_arg("host2", 0), "17", DS).ok()


def test_failures_leave_nothing_behind(tm):
    image = tm.make_image(42, "ubuntu", 16, 0xAB)
    tm.put_vm(17, vm(17, [image_disk(0, image, 42, 16), volatile_disk(1, 8)], ["host1"]))
    tm.run("clone", f"one:{image}", disk_arg("host1", 0), "17", DS).ok()
    clone = "ubuntu.42-v17-d0"

    run = tm.run("snap_revert", disk_arg("host1", 0), "3", "17", DS)
    assert run.reason == f"image snapshot 3: volume {clone} has no snapshot {clone}-snap3"
    assert "logging out of ubuntu.42-v17-d0 on host1 for the revert" in run.stderr
    assert tm.logged_in("host1") == [clone]  # logged in again
    assert tm.volume(clone).status == "online"

    tm.put_image(44, image_xml(ID="44", NAME="copy", SIZE="16", SOURCE="", FORMAT="save_as"))
    run = tm.run("cpds", disk_arg("host1", 0), "copy.44", "2", "17", DS)
    assert run.reason == f"disk 0 has no snapshot 2 (no snapshot {clone}-snap2 of volume {clone})"

    tm.write_conf(EQL_PORTAL="127.0.0.1:3261")
    run = tm.run("mkimage", "8", "raw", disk_arg("host1", 1), "17", SYS)
    assert run.reason.startswith("host host1: attach: ")
    assert "deleting volume vm17-disk1 after the failure" in run.stderr
    assert tm.volume_names() == [image, clone]
    assert list(tm.staging.iterdir()) == []
    tm.write_conf()
    tm.run("delete", disk_arg("host1", 0), "17", DS).ok()
    tm.run("delete", f"host1:{vm_path(17)}", "17", SYS).ok()


def test_an_access_record_the_group_adds_after_the_timeout_is_removed(tm):
    """Finding F3: the group answers ``access create`` for host1 after EQL_COMMAND_TIMEOUT
    but adds the record anyway; the failed ``ln`` waits for it and deletes it, and leaves
    host1's record that was there before (another address) alone."""
    data = tm.make_image(43, "data", 16, 0xCD, persistent=True)
    tm.put_vm(17, vm(17, [image_disk(1, data, 43, 16, persistent=True)], ["host1"]))
    with tm.group() as group:
        kept = group.create_access(data, initiator=tm.iqn("host1"), ipaddress="10.1.2.3")
    tm.write_conf(EQL_COMMAND_TIMEOUT="2")
    tm.sim.set_faults([{"match": f"^volume select {data} access create initiator ",
                        "action": "delay", "seconds": 3}])
    run = tm.run("ln", f"one:{data}", disk_arg("host1", 1), "17", DS)
    assert run.reason.startswith(f"no answer to `volume select {data} access create ")
    tm.sim.wait_sessions(0, timeout=20)  # the delayed command has completed
    assert [(r.id, r.initiator) for r in tm.volume(data).access] == [(kept, tm.iqn("host1"))]
    assert "added by the group although the command failed" in run.stderr
    assert tm.logged_in("host1") == []

    tm.sim.clear_faults()
    tm.write_conf()
    tm.run("ln", f"one:{data}", disk_arg("host1", 1), "17", DS).ok()
    assert tm.logged_in("host1") == [data]
    tm.run("delete", disk_arg("host1", 1), "17", DS).ok()


def test_a_snapshot_the_group_makes_after_the_timeout_is_deleted(tm):
    """The group answers ``snapshot create-now`` after EQL_COMMAND_TIMEOUT but makes the
    (group-named) snapshot anyway: the failed ``snap_create`` waits for it and deletes it;
    the volume's other snapshot stays."""
    image = tm.make_image(42, "ubuntu", 16, 0xAB)
    tm.put_vm(17, vm(17, [image_disk(0, image, 42, 16)], ["host1"]))
    tm.run("clone", f"one:{image}", disk_arg("host1", 0), "17", DS).ok()
    clone = "ubuntu.42-v17-d0"
    tm.run("snap_create", disk_arg("host1", 0), "0", "17", DS).ok()
    tm.write_conf(EQL_COMMAND_TIMEOUT="2")
    tm.sim.set_faults([{"match": f"^volume select {clone} snapshot create-now ",
                        "action": "delay", "seconds": 3}])
    run = tm.run("snap_create", disk_arg("host1", 0), "1", "17", DS)
    assert run.reason.startswith(f"no answer to `volume select {clone} snapshot create-now ")
    tm.sim.wait_sessions(0, timeout=20)  # the delayed command has completed
    assert [s.name for s in tm.volume(clone).snapshots] == [f"{clone}-snap0"]
    assert f"left by an attempt at snapshot {clone}-snap1" in run.stderr

    tm.sim.clear_faults()
    tm.write_conf()
    tm.run("snap_create", disk_arg("host1", 0), "1", "17", DS).ok()
    assert sorted(s.name for s in tm.volume(clone).snapshots) == [
        f"{clone}-snap0", f"{clone}-snap1"]
    tm.run("delete", disk_arg("host1", 0), "17", DS).ok()
