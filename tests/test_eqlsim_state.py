"""The simulator's group model: sizes, names, IQNs, space accounting, persistence."""

from __future__ import annotations

import re
import threading

import pytest

from tests.eqlsim.backend import AccessRule
from tests.eqlsim.cli import format_size
from tests.eqlsim.state import (
    AccessRecord,
    ChapUser,
    GroupError,
    GroupState,
    StateStore,
    Volume,
    pages_mb,
    parse_size_mb,
)


@pytest.fixture
def store(tmp_path):
    store = StateStore(tmp_path)
    store.initialize("grp", "127.0.0.9", 100 * 1024)
    return store


@pytest.mark.parametrize(
    ("text", "mb"),
    [
        ("10", 10),
        ("1024MB", 1024),
        ("5m", 5),
        ("10G", 10240),
        ("1.5GB", 1536),
        ("2gb", 2048),
        ("1T", 1024**2),
        ("1.25TB", 1310720),
        ("0.5", 1),
    ],
)
def test_parse_size_accepts_documented_forms(text, mb):
    assert parse_size_mb(text) == mb


@pytest.mark.parametrize("text", ["", "0", "-1", "10GiB", "1.GB", "G", "10 GB", "1e3", "1KB"])
def test_parse_size_rejects_everything_else(text):
    with pytest.raises(GroupError) as exc:
        parse_size_mb(text)
    assert exc.value.key == "invalid_size"


def test_sizes_are_allocated_in_15mb_pages():
    assert pages_mb(1) == 15
    assert pages_mb(1024) == 1035
    assert pages_mb(2048) == 2055
    assert pages_mb(15) == 15


@pytest.mark.parametrize(
    ("mb", "text"),
    [
        (0, "0MB"),
        (1000, "1000MB"),
        (1024, "1GB"),
        (1035, "1.01GB"),
        (2055, "2.01GB"),
        (1536, "1.5GB"),
        (int(5.21 * 1024**2), "5.21TB"),
        (1024**2, "1TB"),
    ],
)
def test_format_size_auto_scales_with_binary_units(mb, text):
    assert format_size(mb) == text


def test_format_size_in_mb():
    assert format_size(1035, in_mb=True) == "1035MB"


def test_iqn_has_the_documented_shape(store):
    with store.transaction() as state:
        first = state.add_volume(Volume("Data.Vol:1", 10))
        second = state.add_volume(Volume("other", 10))
    pattern = r"iqn\.2001-05\.com\.equallogic:0-8a0906-([0-9a-f]{9})-[0-9a-f]{16}-(.*)"
    match = re.fullmatch(pattern, first.iqn)
    assert match is not None
    assert match.group(2) == "data.vol:1"
    assert len(first.iqn.split(":", 1)[1]) - len("data.vol:1") == 36
    other = re.fullmatch(pattern, second.iqn)
    assert other is not None
    assert match.group(1)[4:] == other.group(1)[4:]  # the group part repeats
    assert first.iqn != second.iqn


@pytest.mark.parametrize("name", ["a", "A" * 64, "vol-1.2:3", "volume-5f3c9e0a-1b2c-4d5e-8f90"])
def test_valid_volume_names(store, name):
    with store.transaction() as state:
        state.add_volume(Volume(name, 10))


@pytest.mark.parametrize("name", ["", "A" * 65, "with_underscore", "with space", "ä"])
def test_invalid_volume_names(store, name):
    with store.transaction() as state, pytest.raises(GroupError) as exc:
        state.add_volume(Volume(name, 10))
    assert exc.value.key == "invalid_name"


def test_volume_names_are_unique_ignoring_case(store):
    with store.transaction() as state:
        state.add_volume(Volume("Vol1", 10))
        with pytest.raises(GroupError) as exc:
            state.add_volume(Volume("vol1", 10))
    assert exc.value.key == "volume_exists"


def test_space_accounting_thick_thin_and_snapshot_reserve():
    thick = Volume("thick", 1024)
    assert (thick.reserve_mb, thick.snap_reserve_mb) == (1035, 1035)
    thin = Volume("thin", 10240, thin=True)
    assert thin.reserve_mb == pages_mb(1024)  # 10% of the allocated 10245MB, in pages
    assert Volume("x", 1024, snap_reserve=0).pool_usage_mb == 1035
    assert Volume("y", 1024, thin=True, thin_min_reserve=50).reserve_mb == 525


def test_out_of_space_is_refused_for_create_resize_and_thick_conversion(store):
    store.set_pool_size("default", 4200)
    with store.transaction() as state:
        volume = state.add_volume(Volume("v", 2048, thin=True, snap_reserve=0))
        with pytest.raises(GroupError, match="no_space"):
            state.add_volume(Volume("big", 2100))
        with pytest.raises(GroupError, match="no_space"):
            state.resize_volume(volume, 100 * 1024, snapshot_first=False)
        state.set_thin(volume, False)  # 2055MB fits
        with pytest.raises(GroupError, match="no_space"):
            state.add_volume(Volume("more", 2048))
    assert store.load().free_mb("default") == 4200 - 2055


def test_transaction_saves_on_success_only(store):
    with store.transaction() as state:
        state.add_volume(Volume("kept", 10))
    with pytest.raises(RuntimeError), store.transaction() as state:
        state.add_volume(Volume("lost", 10))
        raise RuntimeError("boom")
    names = [v.name for v in store.load().volumes.values()]
    assert names == ["kept"]
    assert store.load().data_ops == []


def test_state_round_trips_through_json(store):
    with store.transaction() as state:
        volume = state.add_volume(Volume("v", 100, description="d", thin=True))
        state.add_access(volume, AccessRecord(0, initiator="iqn.x"), 16)
        state.create_snapshot(volume, description="s")
        state.create_chap_user("chap", "secret", True)
        state.settings_for("grpadmin").paging = False
    loaded = store.load()
    assert GroupState.from_json(loaded.to_json()).to_json() == loaded.to_json()
    assert loaded.accounts["grpadmin"].paging is False
    assert loaded.volume("v").snapshots[0].description == "s"


def test_initialize_keeps_the_group_and_applies_options(tmp_path):
    store = StateStore(tmp_path)
    store.initialize(None, "127.0.0.2", None)
    first = store.load()
    assert (first.group.name, first.pools["default"].capacity_mb) == ("group-0", 10 * 1024**2)
    store.initialize("renamed", "127.0.0.3", 2048)
    second = store.load()
    assert second.group.iqn_serial == first.group.iqn_serial
    assert (second.group.name, second.group.ipaddress) == ("renamed", "127.0.0.3")
    assert second.pools["default"].capacity_mb == 2048


def test_set_pool_size_creates_pools(store):
    store.set_pool_size("fast", 4096)
    assert store.load().pools["fast"].capacity_mb == 4096


def test_transactions_are_serialised_across_stores(tmp_path):
    StateStore(tmp_path).initialize(None, "127.0.0.1", None)

    def bump():
        store = StateStore(tmp_path)  # own file descriptors, like another process
        for _ in range(25):
            with store.transaction() as state:
                state.next_counter("test")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert StateStore(tmp_path).load().counters["test"] == 100


def test_access_ids_start_at_1_and_reuse_the_lowest_free(store):
    with store.transaction() as state:
        volume = state.add_volume(Volume("v", 10))
        ids = [state.add_access(volume, AccessRecord(0, ipaddress="*.*.*.*"), 16).id for _ in "abc"]
        volume.access.remove(volume.access_record(2))
        again = state.add_access(volume, AccessRecord(0, ipaddress="1.2.3.4"), 16)
    assert ids == [1, 2, 3]
    assert again.id == 2


def test_publications_follow_status_acl_and_chap(store):
    with store.transaction() as state:
        volume = state.add_volume(Volume("v", 10, unrestricted=True))
        state.add_access(volume, AccessRecord(0, initiator="iqn.h1", apply_to="volume"), 16)
        state.add_access(
            volume, AccessRecord(0, username="chap", authmethod="chap", apply_to="snapshot"), 16
        )
        state.chap_users["chap"] = ChapUser("chap", "secret123456")
        snap = state.create_snapshot(volume, status="online", permission="read-only")
        offline = state.add_volume(Volume("off", 10, status="offline"))
    pubs = store.load().publications()
    assert set(pubs) == {volume.obj_id, snap.obj_id}
    assert offline.obj_id not in pubs
    assert pubs[volume.obj_id].rules == (AccessRule(initiator="iqn.h1"),)
    assert pubs[volume.obj_id].unrestricted is True
    assert pubs[snap.obj_id].iqn == snap.iqn
    assert pubs[snap.obj_id].rules == (AccessRule(chap_user="chap"),)
    assert pubs[snap.obj_id].chap_secrets == {"chap": "secret123456"}
    assert pubs[snap.obj_id].read_only is True
