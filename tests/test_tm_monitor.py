"""``monitor`` of an eqliscsi system datastore: capacity on stdout, the VMs' disk sizes
through OpenNebula's ``send_to_monitor`` (stood in for by a recording script), or on
stdout for OpenNebula before 5.12; one ``volume show`` for all volumes."""

from __future__ import annotations

import base64
from typing import List

from tests.oned_xml import action_xml, b64, datastore_xml
from tests.tm_harness import (
    SYSTEM_DS,
    TmHarness,
    iscsi,
)

pytestmark = iscsi

SEND_TO_MONITOR = """# stands in for OpenNebula's scripts_common.sh: records send_to_monitor's input
send_to_monitor() {{ printf '%s\\n' "$@" > '{log}'; }}
"""
VOLUMES = {"ubuntu.42-v17-d0": 16, "vm17-disk2": 8, "vm18-disk0": 30, "ubuntu.42": 16,
           "ubuntu.42-19": 16, "data.43": 45}


def monitor_xml(vm_disks: bool) -> str:
    extra = "<MONITOR_VM_DISKS>1</MONITOR_VM_DISKS>" if vm_disks else ""
    system = datastore_xml(ID=str(SYSTEM_DS), NAME="system", TYPE="1",
                           template={"EQL_HOST": None, "SHARED": "YES", "TYPE": "SYSTEM_DS"})
    return action_xml("", system, extra)


def run_monitor(tm: TmHarness, vm_disks: bool) -> List[str]:
    run = tm.run("monitor", str(SYSTEM_DS), stdin=b64(monitor_xml(vm_disks)).encode())
    return run.ok().splitlines()


def test_capacity_and_vm_disk_sizes(tm_factory):
    tm = tm_factory(hosts=0)
    tm.sim.set_pool_size("default", 10240)
    with tm.group() as group:
        for name, size in VOLUMES.items():
            group.create_volume(name, size)
        capacity = group.pool_capacity("default")
    tm.allow(*VOLUMES)
    sent = tm.base / "sent"
    (tm.remotes / "scripts_common.sh").write_text(SEND_TO_MONITOR.format(log=sent))
    expected = [f"USED_MB={capacity.used_mb}", "TOTAL_MB=10240", f"FREE_MB={capacity.free_mb}"]
    before = len(tm.commands())

    assert run_monitor(tm, vm_disks=True) == expected
    assert [c for c in tm.commands()[before:] if c.startswith(("volume", "pool"))] == [
        "pool select default show", "volume show"]
    kind, result, oid, payload = sent.read_text().split("\n", 3)
    assert (kind, result, oid) == ("MONITOR_VM", "0", "-1")
    lines = payload.strip().split("\n")
    assert [line.split(",")[0] for line in lines] == ["VM=[ID=17", "VM=[ID=18"]
    monitor = [base64.b64decode(line.split('MONITOR="')[1][:-2]).decode() for line in lines]
    assert monitor == ["DISK_SIZE=[ID=0,SIZE=16]\nDISK_SIZE=[ID=2,SIZE=8]\n",
                       "DISK_SIZE=[ID=0,SIZE=30]\n"]

    sent.unlink()
    assert run_monitor(tm, vm_disks=False) == expected
    assert not sent.exists()

    (tm.remotes / "VERSION").write_text("5.10.1\n")
    assert run_monitor(tm, vm_disks=False) == [
        *expected, 'VM=[ID=17,POLL="DISK_SIZE=[ID=0,SIZE=16] DISK_SIZE=[ID=2,SIZE=8]"]',
        'VM=[ID=18,POLL="DISK_SIZE=[ID=0,SIZE=30]"]']
    assert not sent.exists()
