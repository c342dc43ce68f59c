"""The iSCSI data path end to end: the driver's client drives the simulated group over SSH,
and the bytes are written and read by a real initiator (libiscsi through qemu) over real
tgtd targets.  Nothing here is mocked."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Tuple

import pytest

from eqliscsi.group import GroupClient, GroupSettings
from tests import iscsi_tools
from tests.conftest import RunningSim

pytestmark = pytest.mark.iscsi

HOST_IQN = "iqn.2024-01.org.example:host1"
OTHER_IQN = "iqn.2024-01.org.example:host2"
MIB = 1 << 20


@pytest.fixture
def group(sim_factory, tmp_path: Path) -> Iterator[Tuple[RunningSim, GroupClient, str]]:
    sim = sim_factory(iscsi=True)
    settings = GroupSettings(
        host=sim.host, port=sim.port, user=sim.user, password=sim.password,
        known_hosts=str(sim.write_known_hosts(tmp_path / "known_hosts")),
        slot_dir=str(tmp_path / "slots"))
    with GroupClient(settings) as client:
        yield sim, client, f"{client.group_ip()}:3260"


def test_pattern_survives_clone_snapshot_and_restore(group):
    sim, client, portal = group
    lun = 1  # tgtd keeps LUN 0 for itself (see tests/eqlsim/iscsi.py)
    iqn = client.create_volume("vol1", 32)
    client.create_access("vol1", initiator=HOST_IQN)
    iscsi_tools.write_pattern(portal, iqn, lun, 4 * MIB, MIB, 0xAB, HOST_IQN)
    assert sim.load_state().volume("vol1").size_mb == 32

    clone_iqn = client.clone_volume("vol1", "vol1-clone")
    client.create_access("vol1-clone", initiator=HOST_IQN)
    assert clone_iqn != iqn
    assert iscsi_tools.read_bytes(portal, clone_iqn, lun, 4 * MIB, MIB, HOST_IQN) == b"\xab" * MIB

    snapshot = client.create_snapshot("vol1", "vol1-before")
    iscsi_tools.write_pattern(portal, iqn, lun, 4 * MIB, MIB, 0xCD, HOST_IQN)
    from_snapshot = client.clone_snapshot("vol1", snapshot, "vol1-from-snap")
    client.create_access("vol1-from-snap", initiator=HOST_IQN)
    assert iscsi_tools.read_bytes(portal, from_snapshot, lun, 4 * MIB, MIB,
                                  HOST_IQN) == b"\xab" * MIB

    client.set_online("vol1", False)
    automatic = client.restore_snapshot("vol1", snapshot)
    client.set_online("vol1", True)
    assert automatic is not None and automatic != snapshot
    assert iscsi_tools.read_bytes(portal, iqn, lun, 4 * MIB, MIB, HOST_IQN) == b"\xab" * MIB


def test_access_records_and_extend_reach_the_target(group):
    _, client, portal = group
    iqn = client.create_volume("vol2", 16)
    assert not iscsi_tools.can_login(portal, iqn, 1, HOST_IQN)
    record = client.create_access("vol2", initiator=HOST_IQN)
    assert iscsi_tools.can_login(portal, iqn, 1, HOST_IQN)
    assert not iscsi_tools.can_login(portal, iqn, 1, OTHER_IQN)
    assert iscsi_tools.discover(portal, OTHER_IQN).count(iqn) == 0

    client.extend_volume("vol2", 60)
    assert iscsi_tools.lun_size(portal, iqn, 1, HOST_IQN) == 60 * MIB

    client.delete_access("vol2", record)
    assert not iscsi_tools.can_login(portal, iqn, 1, HOST_IQN)
    client.create_access("vol2", initiator=HOST_IQN)
    client.set_online("vol2", False)
    assert iqn not in iscsi_tools.discover(portal, HOST_IQN)
    assert client.delete_volume("vol2")
    assert iqn not in iscsi_tools.discover(portal, HOST_IQN)
