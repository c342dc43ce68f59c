"""DS ``monitor`` run as oned runs it, against a simulated group."""

from __future__ import annotations

import pytest

from tests.ds_harness import ds_xml, iscsi

pytestmark = iscsi


def monitor_xml(**datastore_template: str) -> str:
    """What oned sends to monitor: no IMAGE, the datastore only."""
    return ds_xml(datastore_template=datastore_template, with_image=False)


@pytest.mark.parametrize("form", ["argv", "dash", "stdin"])
def test_empty_default_pool(ds, form):
    run = ds.run("monitor", monitor_xml(), object_id=100, form=form)
    assert run.ok() == "USED_MB=0\nTOTAL_MB=10485760\nFREE_MB=10485760\n"  # 10TB
    assert ds.commands()[-1] == "pool select default show"


def test_pool_sizes_in_mb_and_with_decimals(ds):
    ds.sim.set_pool_size("default", 1000)
    assert ds.run("monitor", monitor_xml(), object_id=100).ok() == (
        "USED_MB=0\nTOTAL_MB=1000\nFREE_MB=1000\n")
    ds.sim.set_pool_size("default", 5000)  # shown as 4.88GB = 4997.12 MB
    with ds.group() as group:
        group.create_volume("data.1", 100)  # 105 MB of pages + 100% snapshot reserve
    # the group shows 4.88GB total and 4.68GB (4792.32 MB) free; sizes are rounded up
    assert ds.run("monitor", monitor_xml(), object_id=100).ok() == (
        "USED_MB=205\nTOTAL_MB=4998\nFREE_MB=4793\n")


def test_pool_from_the_datastore_template(ds):
    ds.sim.set_pool_size("fast", 3 * 1024 * 1024)
    run = ds.run("monitor", monitor_xml(EQL_POOL="fast"), object_id=100)
    assert run.ok() == "USED_MB=0\nTOTAL_MB=3145728\nFREE_MB=3145728\n"
    assert ds.commands()[-1] == "pool select fast show"


def test_unknown_pool(ds):
    assert ds.run("monitor", monitor_xml(EQL_POOL="nope"), object_id=100).reason == (
        "`pool select nope show`: % Error - Pool does not exist.")
