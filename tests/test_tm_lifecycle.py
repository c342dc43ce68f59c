"""A whole VM life as oned sequences the TM actions, against the simulated group (real
tgtd targets) and real test hosts; the group's state, the hosts' sessions and the data
are checked after every step.

VM 17: disk 0 non-persistent (image 42), disk 1 persistent (image 43), disk 2 volatile
ext4, disk 3 context.  host3 stands in for the front-end (NO_ISCSI) for undeploy and
resume.  VM 18 then checks ``terminate --hard`` with a persistent disk.
"""

from __future__ import annotations

import base64

from tests.oned_xml import image_xml
from tests.tm_harness import (
    IMAGE_DS,
    MIB,
    SYSTEM_DS,
    TmHarness,
    disk_arg,
    image_disk,
    iscsi,
    vm,
    vm_path,
    volatile_disk,
)

pytestmark = iscsi

CLONE = "ubuntu.42-v17-d0"
DATA = "data.43"
VOLATILE = "vm17-disk2"
VOLUMES = [CLONE, DATA, VOLATILE]
DS = str(IMAGE_DS)
SYS = str(SYSTEM_DS)
ISO_MAGIC = b"CD001"  # ISO 9660 volume descriptor, at byte 32769


class Life:
    """VM 17 as oned knows it: its disks and hosts, kept in the onevm stand-in."""

    def __init__(self, tm: TmHarness) -> None:
        self.tm = tm
        self.size0 = 24
        self.hosts = ["host1"]
        self.lcm_state = 1  # PROLOG

    def publish(self) -> None:
        disks = [image_disk(0, "ubuntu.42", 42, self.size0),
                 image_disk(1, DATA, 43, 16, persistent=True),
                 volatile_disk(2, 8, "ext4")]
        self.tm.put_vm(17, vm(17, disks, self.hosts, self.lcm_state))

    def xml_b64(self) -> bytes:
        text = (self.tm.one_dir / "vm-17.xml").read_bytes()
        return base64.b64encode(text)

    def run(self, action: str, *args: str, stdin: bytes = b"") -> str:
        self.publish()
        return self.tm.run(action, *args, stdin=stdin).ok()


def assert_on(tm: TmHarness, host: str, *others: str) -> None:
    """VM 17's volumes are logged in and linked on ``host`` only, with access for it."""
    assert tm.logged_in(host) == sorted(VOLUMES)
    for other in others:
        assert tm.logged_in(other) == []
    for disk_id, volume in enumerate(VOLUMES):
        link = tm.link(host, vm_path(17, disk_id))
        assert link is not None and link.endswith(f"-{volume}-lun-1"), link
        assert tm.access(volume) == [tm.iqn(host)]


def assert_released(tm: TmHarness) -> None:
    for host in tm.hosts.names:
        assert tm.logged_in(host) == []
    for volume in VOLUMES:
        assert tm.access(volume) == []


def test_vm_lifecycle(tm_factory):
    tm = tm_factory(hosts=3)
    tm.write_conf(NO_ISCSI="host3")
    image = tm.make_image(42, "ubuntu", 16, 0xAB)
    data = tm.make_image(43, "data", 16, 0x11, persistent=True)
    life = Life(tm)
    context_sh = tm.base / "context.sh"
    context_sh.write_text("HOSTNAME='vm17'\n")

    # deploy on host1: clone, ln, mkimage (system TM), context (system TM)
    life.run("clone", f"one:{image}", disk_arg("host1", 0), "17", DS)
    life.run("ln", f"one:{data}", disk_arg("host1", 1), "17", DS)
    life.run("mkimage", "8", "raw", disk_arg("host1", 2), "17", SYS)
    life.run("context", str(context_sh), disk_arg("host1", 3), "17", SYS)
    assert tm.volume(CLONE).size_mb == 24
    assert tm.volume(VOLATILE).description == "OpenNebula VM 17 disk 2 (volatile ext4)"
    assert_on(tm, "host1", "host2", "host3")
    iso = tm.host("host1").path(vm_path(17, 3)).read_bytes()
    assert iso[32769:32774] == ISO_MAGIC and b"CONTEXT" in iso[32768:34816]
    assert tm.read(CLONE, 0, 16) == b"\xab" * 16
    assert tm.read(VOLATILE, 1024 + 56, 2) == b"\x53\xef"  # the ext4 superblock magic

    # the guest writes through its disk links
    life.lcm_state = 3  # RUNNING
    tm.write_disk("host1", vm_path(17, 0), 2, 0xC0)
    tm.write_disk("host1", vm_path(17, 1), 2, 0xC1)
    assert tm.read(CLONE, 2 * MIB, MIB) == b"\xc0" * MIB
    assert tm.read(DATA, 2 * MIB, MIB) == b"\xc1" * MIB
    assert tm.read(image, 2 * MIB, 16) == bytes(16)  # the image itself is untouched

    # poweroff, then resize disk 0 and snapshot/revert it
    life.lcm_state = 51
    life.run("resize", disk_arg("host1", 0), "40", "17", DS)
    life.size0 = 40
    assert tm.volume(CLONE).size_mb == 40
    assert "volume select ubuntu.42-v17-d0 size 40MB no-snap" in tm.commands()
    life.run("snap_create", disk_arg("host1", 0), "0", "17", DS)
    assert [s.name for s in tm.volume(CLONE).snapshots] == [f"{CLONE}-snap0"]
    tm.write_disk("host1", vm_path(17, 0), 2, 0xEE)
    assert tm.read(CLONE, 2 * MIB, 16) == b"\xee" * 16
    life.run("snap_revert", disk_arg("host1", 0), "0", "17", DS)
    assert tm.read(CLONE, 2 * MIB, MIB) == b"\xc0" * MIB
    assert tm.read_disk("host1", vm_path(17, 0), 2) == b"\xc0" * MIB
    assert [s.name for s in tm.volume(CLONE).snapshots] == [f"{CLONE}-snap0"]
    assert_on(tm, "host1", "host2")
    life.run("snap_delete", disk_arg("host1", 0), "0", "17", DS)
    assert tm.volume(CLONE).snapshots == []

    # live migration host1 -> host2: both hosts are logged in between pre and post
    life.lcm_state, life.hosts = 4, ["host1", "host2"]  # MIGRATE
    migrate = ("host1", "host2", vm_path(17), "17", SYS)
    life.run("premigrate", *migrate, stdin=life.xml_b64())
    assert tm.logged_in("host1") == tm.logged_in("host2") == sorted(VOLUMES)
    assert all(tm.volume(v).multihost for v in VOLUMES)
    assert tm.host("host2").path(vm_path(17, 3)).read_bytes() == iso  # directory copied
    life.run("postmigrate", *migrate, stdin=life.xml_b64())
    assert_on(tm, "host2", "host1")
    assert not tm.host("host1").path(vm_path(17)).exists()

    # a failed live migration host2 -> host1 leaves it on host2
    life.hosts = ["host1", "host2", "host1"]
    back = ("host2", "host1", vm_path(17), "17", SYS)
    life.run("premigrate", *back, stdin=life.xml_b64())
    assert tm.logged_in("host1") == sorted(VOLUMES)
    life.run("failmigrate", *back, stdin=life.xml_b64())
    assert_on(tm, "host2", "host1")
    assert not tm.host("host1").path(vm_path(17)).exists()

    # cold migration (from poweroff) host2 -> host1: mv of every disk, then the directory
    life.lcm_state, life.hosts = 43, ["host1", "host2", "host1", "host1"]
    for disk_id in range(3):
        life.run("mv", disk_arg("host2", disk_id), disk_arg("host1", disk_id), "17",
                 SYS if disk_id == 2 else DS)
    life.run("mv", f"host2:{vm_path(17)}", f"host1:{vm_path(17)}", "17", SYS)
    assert_on(tm, "host1", "host2")
    assert tm.host("host1").path(vm_path(17, 3)).read_bytes() == iso
    assert not tm.host("host2").path(vm_path(17)).exists()
    assert tm.read_disk("host1", vm_path(17, 1), 2) == b"\xc1" * MIB

    # disk-saveas of the running disk 0, and of its snapshot 1
    life.lcm_state = 3
    life.run("snap_create_live", disk_arg("host1", 0), "1", "17", DS)
    tm.write_disk("host1", vm_path(17, 0), 2, 0xC2)
    for image_id, snap in ((44, "-1"), (45, "1")):
        tm.put_image(image_id, image_xml(ID=str(image_id), NAME=f"copy{image_id}",
                                         SIZE="40", FORMAT="save_as", SOURCE=""))
        life.run("cpds", disk_arg("host1", 0), f"copy{image_id}.{image_id}", snap, "17", DS)
        tm.allow(f"copy{image_id}.{image_id}")
    assert tm.read("copy44.44", 2 * MIB, MIB) == b"\xc2" * MIB
    assert tm.read("copy45.45", 2 * MIB, MIB) == b"\xc0" * MIB
    for copy in ("copy44.44", "copy45.45"):
        assert tm.volume(copy).access == [] and tm.volume(copy).size_mb == 40
    assert tm.volume("copy44.44").description == "OpenNebula image 44 (copy44)"
    life.run("snap_delete", disk_arg("host1", 0), "1", "17", DS)

    # undeploy to the front-end (host3, NO_ISCSI), resume on host2
    life.lcm_state, life.hosts = 30, [*life.hosts, "host3"]
    for disk_id in range(3):
        life.run("mv", disk_arg("host1", disk_id), disk_arg("host3", disk_id), "17",
                 SYS if disk_id == 2 else DS)
    life.run("mv", f"host1:{vm_path(17)}", f"host3:{vm_path(17)}", "17", SYS)
    assert_released(tm)
    assert tm.host("host3").path(vm_path(17, 3)).read_bytes() == iso
    assert sorted(p.name for p in tm.host("host3").path(vm_path(17)).iterdir()) == ["disk.3"]
    life.lcm_state, life.hosts = 9, [*life.hosts, "host2"]
    for disk_id in range(3):
        life.run("mv", disk_arg("host3", disk_id), disk_arg("host2", disk_id), "17",
                 SYS if disk_id == 2 else DS)
    life.run("mv", f"host3:{vm_path(17)}", f"host2:{vm_path(17)}", "17", SYS)
    assert_on(tm, "host2", "host1", "host3")
    assert not tm.host("host3").path(vm_path(17)).exists()
    assert tm.read_disk("host2", vm_path(17, 0), 2) == b"\xc2" * MIB

    # terminate: delete the clone, mvds the persistent disk, delete the volatile one, dir
    life.lcm_state = 11  # EPILOG
    life.run("delete", disk_arg("host2", 0), "17", DS)
    life.run("mvds", disk_arg("host2", 1), DATA, "17", DS)
    life.run("delete", disk_arg("host2", 2), "17", SYS)
    life.run("delete", f"host2:{vm_path(17)}", "17", SYS)
    assert tm.volume_names() == sorted(["copy44.44", "copy45.45", DATA, image])
    assert tm.read(DATA, 2 * MIB, MIB) == b"\xc1" * MIB
    assert tm.access(DATA) == []
    assert not tm.host("host2").path(vm_path(17)).exists()
    assert_no_leftovers(tm)

    # VM 18: terminate --hard deletes every disk, the persistent one is only logged out
    disks = [image_disk(0, DATA, 43, 16, persistent=True), image_disk(1, image, 42, 16)]
    tm.put_vm(18, vm(18, disks, ["host1"]))
    tm.run("ln", f"one:{DATA}", f"host1:{vm_path(18, 0)}", "18", DS).ok()
    tm.run("clone", f"one:{image}", f"host1:{vm_path(18, 1)}", "18", DS).ok()
    assert tm.logged_in("host1") == sorted([DATA, "ubuntu.42-v18-d1"])
    run = tm.run("delete", f"host1:{vm_path(18, 0)}", "18", DS)
    run.ok()
    assert f"keeping volume {DATA}: it is the image's own volume" in run.stderr
    tm.run("delete", f"host1:{vm_path(18, 1)}", "18", DS).ok()
    tm.run("delete", f"host1:{vm_path(18)}", "18", SYS).ok()
    assert tm.logged_in("host1") == []
    assert tm.volume_names() == sorted(["copy44.44", "copy45.45", DATA, image])
    assert tm.read(DATA, 2 * MIB, MIB) == b"\xc1" * MIB


def assert_no_leftovers(tm: TmHarness) -> None:
    """No node records, links or directories of VM 17 on any host."""
    for host in tm.hosts.hosts:
        records = host.ssh("sudo -n iscsiadm -m node")
        assert records.returncode == 21, records.stdout
        assert not host.path(vm_path(17)).exists()
