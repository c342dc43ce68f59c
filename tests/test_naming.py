"""Volume names, SOURCE parsing and TM host:path arguments."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eqliscsi.naming import (
    CLONE_SUFFIX_RESERVE,
    IMAGE_VOLUME_MAX,
    VOLUME_NAME_MAX,
    HostPath,
    check_volume_name,
    clean_name,
    clone_volume_name,
    image_volume_name,
    parse_host_path,
    volume_from_source,
    volume_from_tm_source,
)
from eqliscsi.oned import InputError

LEGACY_IQN = "iqn.2001-05.com.equallogic:0-8a0906-4a1c7e105-1e2000000385a3a1-"
IDS = st.integers(min_value=0, max_value=2**31 - 1)
DISK_IDS = st.integers(min_value=0, max_value=9999)


@pytest.mark.parametrize(("name", "clean"), [
    ("Ubuntu_14.04 Server", "ubuntu-14-04-server"),  # the 2014 driver's own example
    ("A.B.C", "a-b-c"),
    ("  padded\tname\n", "padded-name"),
    ("a--b__c..d", "a-b-c-d"),
    ("Ünïcödé Café", "unicode-cafe"),
    ("$(rm -rf /); `id` 'x'", "rm-rf-id-x"),
    ("-leading and trailing-", "leading-and-trailing"),
    ("", "one"),
    ("___ ...", "one"),
    ("日本語", "one"),
])
def test_clean_name(name, clean):
    assert clean_name(name) == clean


def test_image_volume_name_keeps_the_2014_format():
    assert image_volume_name("Ubuntu_14.04 Server", 42) == "ubuntu-14-04-server.42"
    assert volume_from_source("ubuntu-14-04-server.42") == "ubuntu-14-04-server.42"


def test_image_volume_name_is_cut_to_leave_room_for_clone_suffixes():
    name = image_volume_name("x" * 100, 2147483647)
    assert name == "x" * (IMAGE_VOLUME_MAX - 11) + ".2147483647"
    assert len(name) == IMAGE_VOLUME_MAX == VOLUME_NAME_MAX - CLONE_SUFFIX_RESERVE == 46
    assert image_volume_name("ab-" + "c" * 60, 7) == "ab-" + "c" * (IMAGE_VOLUME_MAX - 5) + ".7"


def test_cut_does_not_leave_a_dash_before_the_id():
    assert image_volume_name("a" * 43 + "-bcd", 1) == "a" * 43 + ".1"


@pytest.mark.parametrize("image_id", [-1, 10**10])
def test_image_volume_name_rejects_bad_ids(image_id):
    with pytest.raises(InputError):
        image_volume_name("x", image_id)


def test_clone_volume_name_is_unique_per_vm_and_disk():
    assert clone_volume_name("ubuntu.42", 117, 0) == "ubuntu.42-v117-d0"
    assert clone_volume_name("ubuntu.42", 117, 1) != clone_volume_name("ubuntu.42", 117, 0)
    longest = clone_volume_name(image_volume_name("x" * 80, 2147483647), 9999999999, 9999)
    assert len(longest) == VOLUME_NAME_MAX
    assert longest.endswith(".2147483647-v9999999999-d9999")


def test_clone_of_a_long_legacy_volume_keeps_its_suffix():
    legacy = "a" * 60 + ".123"
    clone = clone_volume_name(legacy, 5, 2)
    assert len(clone) <= VOLUME_NAME_MAX and clone.endswith("-v5-d2")
    assert clone == "a" * (VOLUME_NAME_MAX - 6) + "-v5-d2"


@pytest.mark.parametrize(("vm_id", "disk_id"), [(-1, 0), (0, -1), (10**10, 0), (0, 10**4)])
def test_clone_volume_name_rejects_ids_out_of_range(vm_id, disk_id):
    with pytest.raises(InputError):
        clone_volume_name("ubuntu.42", vm_id, disk_id)


def test_legacy_v01_source_gives_its_volume():
    assert volume_from_source(f"192.168.0.1:{LEGACY_IQN}mydisk") == "mydisk"
    assert volume_from_source(f"eql.example:{LEGACY_IQN}web-data") == "web-data"


@pytest.mark.parametrize("source", [
    "", "a" * 65, "vol:1", "two words", "../../etc/passwd", "/dev/sda", "-rf", ".hidden",
    "a..b", "vol;reboot", "vol$(id)", "vol`id`", "vol\nshow", "vol'x", 'vol"x', "vol_1",
    f"192.168.0.1:{LEGACY_IQN}bad;name", "192.168.0.1:iqn.2001-05.com.equallogic:short-vol",
])
def test_volume_from_source_rejects_unsafe_values(source):
    with pytest.raises(InputError, match="invalid volume name"):
        volume_from_source(source)


def test_check_volume_name_accepts_group_names_without_colons():
    assert check_volume_name("Vol-1.2") == "Vol-1.2"
    assert check_volume_name("a" * 64) == "a" * 64


def test_volume_from_tm_source():
    assert volume_from_tm_source("fe:ubuntu-24-04.42") == "ubuntu-24-04.42"
    assert volume_from_tm_source("frontend.example.org:ubuntu.7") == "ubuntu.7"
    assert volume_from_tm_source(f"192.168.0.1:{LEGACY_IQN}mydisk") == "mydisk"


@pytest.mark.parametrize(("argument", "problem"), [
    ("ubuntu.42", "expected host:path"),
    ("fe:a:b", "more than one ':'"),
    ("fe:../etc/passwd", "'..'"),
    ("fe:", "empty path"),
    (":ubuntu.42", "invalid host"),
])
def test_volume_from_tm_source_rejects(argument, problem):
    with pytest.raises(InputError, match=problem):
        volume_from_tm_source(argument)


@pytest.mark.parametrize(("argument", "host", "path", "disk_id"), [
    ("kvm1:/var/lib/one//datastores/0/17/disk.0", "kvm1", "/var/lib/one/datastores/0/17/disk.0", 0),
    ("kvm1:/var/lib/one/datastores/0/17/", "kvm1", "/var/lib/one/datastores/0/17", None),
    ("kvm-2.example:/var/./lib//one/disk.12", "kvm-2.example", "/var/lib/one/disk.12", 12),
    ("fe:/", "fe", "/", None),
    ("fe:ubuntu.42", "fe", "ubuntu.42", None),
    ("h:/x/disk.3.snap", "h", "/x/disk.3.snap", None),
])
def test_parse_host_path(argument, host, path, disk_id):
    parsed = parse_host_path(argument)
    assert parsed == HostPath(host, path)
    assert parsed.disk_id == disk_id


@pytest.mark.parametrize(("argument", "problem"), [
    ("/var/lib/one/disk.0", "expected host:path"),
    ("kvm1:/a:b", "more than one ':'"),
    ("kvm1:/var/lib/one/../../etc", "'..'"),
    ("kvm1:/var/lib/one/x/..", "'..'"),
    ("kvm1:/a b", "spaces"),
    ("kvm1:/a\nb", "spaces"),
    ("-o:/x", "invalid host"),
    ("kvm 1:/x", "invalid host"),
    ("kvm1:", "empty path"),
])
def test_parse_host_path_rejects(argument, problem):
    with pytest.raises(InputError, match=problem):
        parse_host_path(argument)


@given(st.text(max_size=200), IDS)
def test_image_volume_names_are_always_valid_and_bounded(name, image_id):
    volume = image_volume_name(name, image_id)
    assert check_volume_name(volume) == volume
    assert volume_from_source(volume) == volume
    assert len(volume) <= IMAGE_VOLUME_MAX
    assert volume.endswith(f".{image_id}") and volume.count(".") == 1
    assert volume == image_volume_name(name, image_id)  # stable


@given(st.text(max_size=100), st.text(max_size=100), IDS, IDS)
def test_image_volume_names_differ_for_different_ids(name_a, name_b, id_a, id_b):
    if id_a != id_b:
        assert image_volume_name(name_a, id_a) != image_volume_name(name_b, id_b)


@given(st.text(max_size=100), IDS, IDS, DISK_IDS, IDS, DISK_IDS)
def test_clone_names_are_valid_bounded_and_unique(name, image_id, vm_a, disk_a, vm_b, disk_b):
    volume = image_volume_name(name, image_id)
    clone_a = clone_volume_name(volume, vm_a, disk_a)
    assert check_volume_name(clone_a) == clone_a
    assert len(clone_a) <= VOLUME_NAME_MAX
    assert clone_a == volume + f"-v{vm_a}-d{disk_a}"
    if (vm_a, disk_a) != (vm_b, disk_b):
        assert clone_a != clone_volume_name(volume, vm_b, disk_b)
