"""Live migration (pre/post/failmigrate) as the system datastore's TM and as an image
datastore's TM forwarded to by another system TM (also OpenNebula 4.x's argument form),
against the simulated group and real test hosts."""

from __future__ import annotations

import base64
from pathlib import Path

from tests import iscsi_tools
from tests.oned_xml import datastore_xml
from tests.tm_harness import (
    IMAGE_DS,
    MIB,
    SYSTEM_DS,
    TmHarness,
    image_disk,
    iscsi,
    vm,
    vm_path,
    volatile_disk,
)

pytestmark = iscsi

DS = str(IMAGE_DS)
SYS = str(SYSTEM_DS)
CHAP_USER = "onehosts"
CHAP_SECRET = "chapsecret0123"
FORWARD_LOG = "forwarded.log"
FAKE_TM = """#!/bin/sh
# another TM's {action}: records its arguments and stdin, then exits {code}
{{ echo "{action} $*"; cat; echo; }} >> '{log}'
exit {code}
"""


def b64(tm: TmHarness, vm_id: int = 17) -> bytes:
    return base64.b64encode((tm.one_dir / f"vm-{vm_id}.xml").read_bytes())


def test_forwarded_by_a_shared_system_datastore(tm_factory):
    """System datastore ``shared`` (SHARED=YES) forwards to eqliscsi; multihost access is
    off by configuration and on only during the move; hosts log in with CHAP."""
    tm = tm_factory(shared=True)
    tm.write_conf(EQL_MULTIHOST="disable", EQL_CHAP_USER=CHAP_USER, EQL_CHAP_PASS=CHAP_SECRET)
    with tm.group() as group:
        group.create_chap_user(CHAP_USER, CHAP_SECRET)
    tm.chap = iscsi_tools.Chap(CHAP_USER, CHAP_SECRET)
    tm.put_datastore(SYSTEM_DS, datastore_xml(
        ID=SYS, NAME="system", TYPE="1", TM_MAD="shared",
        template={"EQL_HOST": None, "SHARED": "YES", "TM_MAD": "shared", "TYPE": "SYSTEM_DS"}))
    data = tm.make_image(43, "data", 16, 0x11, persistent=True)
    disks = [image_disk(0, data, 43, 16, persistent=True),
             image_disk(1, "other.9", 9, 16, TM_MAD="shared"), volatile_disk(2, 8)]
    tm.put_vm(17, vm(17, disks, ["host1"], system_tm="shared"))
    tm.run("ln", f"one:{data}", f"host1:{vm_path(17, 0)}", "17", DS).ok()
    link = tm.link("host2", vm_path(17, 0))  # the shared directory: host2 sees it too
    assert link is not None and link.endswith(f"-{data}-lun-1")
    assert [(r.initiator, r.username, r.authmethod) for r in tm.volume(data).access] == [
        (tm.iqn("host1"), CHAP_USER, "chap")]

    migrate = ("host1", "host2", vm_path(17), "17", SYS)
    tm.run("premigrate", *migrate, "shared", stdin=b64(tm)).ok()
    assert tm.logged_in("host1") == tm.logged_in("host2") == [data]
    assert tm.volume(data).multihost
    assert tm.access(data) == sorted([tm.iqn("host1"), tm.iqn("host2")])
    run = tm.run("postmigrate", *migrate, "shared", stdin=b64(tm))
    run.ok()
    assert "called by tm/shared" in run.stderr and "forwarding" not in run.stderr
    assert tm.logged_in("host1") == [] and tm.logged_in("host2") == [data]
    assert tm.link("host2", vm_path(17, 0)) == link  # not removed from under host2
    assert not tm.volume(data).multihost
    assert tm.access(data) == [tm.iqn("host2")]
    tm.write_disk("host2", vm_path(17, 0), 1, 0x22)
    assert tm.read(data, MIB, 16) == b"\x22" * 16

    # OpenNebula 4.x: the VM XML as the 6th argument; a failed move back to host1
    tm.put_vm(17, vm(17, disks[:1], ["host2", "host1"], system_tm="shared"))
    legacy = ("host2", "host1", vm_path(17), "17", SYS, b64(tm).decode())
    tm.run("premigrate", *legacy).ok()
    assert tm.logged_in("host1") == [data]
    tm.run("failmigrate", *legacy).ok()
    assert tm.logged_in("host1") == [] and tm.logged_in("host2") == [data]
    assert tm.link("host2", vm_path(17, 0)) == link
    assert not tm.volume(data).multihost and tm.access(data) == [tm.iqn("host2")]

    tm.run("mvds", f"host2:{vm_path(17, 0)}", data, "17", DS).ok()
    assert tm.access(data) == [] and tm.link("host2", vm_path(17, 0)) is None


def fake_tm(tm: TmHarness, name: str, action: str, code: int) -> Path:
    script = tm.remotes / "tm" / name / action
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(FAKE_TM.format(action=action, code=code, log=tm.base / FORWARD_LOG))
    script.chmod(0o755)
    return script


def test_system_datastore_tm_copies_the_directory_and_forwards(tm):
    """eqliscsi is the system datastore's TM (SHARED=NO): premigrate copies the VM
    directory and, after a failure, undoes everything; the other disk's TM is called."""
    tm.write_conf(EQL_MULTIHOST="disable")
    image = tm.make_image(42, "ubuntu", 16, 0xAB)
    disks = [image_disk(0, image, 42, 16), image_disk(1, "other.9", 9, 16, TM_MAD="other")]
    tm.put_vm(17, vm(17, disks, ["host1", "host2"]))
    fake_tm(tm, "other", "premigrate", 0)
    fake_tm(tm, "other", "postmigrate", 1)
    clone = "ubuntu.42-v17-d0"
    tm.run("clone", f"one:{image}", f"host1:{vm_path(17, 0)}", "17", DS).ok()
    context = tm.host("host1").path(vm_path(17, 2))
    context.write_bytes(b"context")
    assert not tm.volume(clone).multihost

    migrate = ("host1", "host2", vm_path(17), "17", SYS)
    tm.write_conf(EQL_MULTIHOST="disable", EQL_PORTAL="127.0.0.1:3261")  # host2 cannot log in
    run = tm.run("premigrate", *migrate, stdin=b64(tm))
    assert run.reason.startswith("host host2: attach: ")
    assert tm.logged_in("host2") == [] and tm.access(clone) == [tm.iqn("host1")]
    assert not tm.volume(clone).multihost
    assert not tm.host("host2").path(vm_path(17)).exists()
    assert not (tm.base / FORWARD_LOG).exists()

    tm.write_conf(EQL_MULTIHOST="disable")
    run = tm.run("premigrate", *migrate, stdin=b64(tm))
    run.ok()
    assert tm.logged_in("host1") == tm.logged_in("host2") == [clone]
    assert tm.volume(clone).multihost
    assert tm.host("host2").path(vm_path(17, 2)).read_bytes() == b"context"
    assert (tm.base / FORWARD_LOG).read_text() == (
        f"premigrate {' '.join(migrate)} eqliscsi\n{b64(tm).decode()}\n\n")
    run = tm.run("postmigrate", *migrate, stdin=b64(tm))
    run.ok()
    assert "WARN: postmigrate: tm/other/postmigrate failed (exit 1), ignored" in run.stderr
    assert tm.logged_in("host1") == [] and tm.logged_in("host2") == [clone]
    assert not tm.host("host1").path(vm_path(17)).exists()
    assert not tm.volume(clone).multihost
    assert tm.read_disk("host2", vm_path(17, 0), 0) == b"\xab" * MIB

    tm.run("delete", f"host2:{vm_path(17, 0)}", "17", DS).ok()
    tm.run("delete", f"host2:{vm_path(17)}", "17", SYS).ok()
    assert tm.volume_names() == [image]
