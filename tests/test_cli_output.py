"""Output parsing and error detection on recorded real-format outputs (group-cli notes)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eqliscsi import cli_commands as cmd
from eqliscsi.cli_output import (
    AccessRecord,
    field_value,
    is_event_line,
    parse_access_record_id,
    parse_access_records,
    parse_chap_password,
    parse_chap_user,
    parse_fields,
    parse_pool_capacity,
    parse_snapshot_info,
    parse_snapshot_list,
    parse_snapshot_name,
    parse_table,
    parse_target_iqn,
    parse_volume_info,
    parse_volume_list,
    raise_for_errors,
    split_lines,
    strip_echo,
)
from eqliscsi.errors import (
    AlreadyExists,
    Busy,
    CliError,
    InvalidInput,
    NoSpace,
    NotFound,
)
from eqliscsi.units import parse_size_mb

VOLUME = "volume-74cf9c04-4543-47ae-a937-a9b7c6c921e7"
VOLUME_IQN = "iqn.2001-05.com.equallogic:0-8a0906-19f91850c-067000000b4532c1-" + VOLUME

# §2.2: the show transcript from Cinder's troubleshooting doc.
SHOW_TRANSCRIPT = f"""\
_______________________________ Volume Information ________________________________
Name: {VOLUME}
Size: 1GB
VolReserve: 1.01GB
VolReserveInUse: 0MB
ReplReserveInUse: 0MB
iSCSI Alias: {VOLUME}
iSCSI Name: {VOLUME_IQN}
ActualMembers: 1
Snap-Warn: 10%
Snap-Depletion: delete-oldest
Description:
Snap-Reserve: 100%
Snap-Reserve-Avail: 100% (1.01GB)
Permission: read-write
DesiredStatus: online
Status: online
Connections: 0
Snapshots: 0
Bind:
Type: not-replicated
ReplicationReserveSpace: 0MB
""".splitlines()

# §2.3: the access table, wrapped initiator and an IP-only record.
ACCESS_TABLE = """\
ID  Initiator                     Ipaddress       AuthMethod UserName   Apply-To
--- ----------------------------- --------------- ---------- ---------- --------
1   iqn.1993-08.org.debian:01:222 *.*.*.*         none                  both
      7dab76162
2                                 10.1.1.*        chap       cinderchap volume
""".splitlines()

# §2.9: volume list with a name wrapped onto lines indented by two spaces.
VOLUME_TABLE = """\
Name            Size       SnapShots Status         Permission Connections T
--------------- ---------- --------- -------------- ---------- ----------- -
vm-100-disk-1   32GB       0         online         read-write 1           Y
volume-74cf9c04 1.5GB      2         offline        read-write 0           N
  -4543-47ae-a9
  37-a9b7c6c921
  e7
""".splitlines()

POOL_TABLE = """\
Name                 Default Members Volumes Capacity   FreeSpace
-------------------- ------- ------- ------- ---------- ----------
default              true    1       12      5.21TB     3.13TB
""".splitlines()

POOL_DETAIL = """\
____________________________ Pool Information ____________________________
Name: default
TotalCapacity: 5.21TB
FreeSpace: 3.13TB
VolumeReserve: 1.93TB
VolumeReportedSpace: 7.5TB
TotalVolumes: 120
_______________________________ Volumes _________________________________
Name            Size       SnapShots Status         Permission Connections T
--------------- ---------- --------- -------------- ---------- ----------- -
vm-1            32GB       0         online         read-write 1           Y
""".splitlines()

SNAPSHOT_CREATED = """\
Snapshot creation succeeded.
Snapshot name is volume-5f3c9e0a-2016-12-06-11:40:12.1
""".splitlines()

CREATE_IQN = ("iqn.2001-05.com.equallogic:0-8a0906-83bcb3401-16e0002fd0a46f3d-"
              "volume-5f3c9e0a-1b2c-4d5e-8f90-123456789abc")


def wrap80(text: str) -> list[str]:
    """What an 80-column hard-wrapping terminal makes of one line."""
    return [text[i:i + 80] for i in range(0, len(text), 80)]


# --- line handling -----------------------------------------------------------------------

def test_split_lines_handles_crlf_and_carriage_return_overwrite():
    raw = "one\r\ntwo\r\r\nPress any key\r             \rthree  \r\n"
    assert [line.rstrip() for line in split_lines(raw)] == ["one", "two", "three", ""]
    assert split_lines("a \r\n b") == ["a ", " b"]


def test_wrapped_field_keeps_the_space_at_the_wrap():
    description = "x" * 66 + " two words"
    lines = wrap80("Description: " + description)
    assert lines[0].endswith(" ")
    assert parse_fields(["Name: v", *lines, "Status: online"])["Description"] == description


def test_strip_echo_removes_plain_and_wrapped_echo():
    command = "volume select " + VOLUME + " access create initiator iqn.1993-08.org.debian:01:x"
    wrapped = wrap80("group-0> " + command)
    echo = [wrapped[0][len("group-0> "):], *wrapped[1:]]
    assert len(echo) == 2
    assert strip_echo([*echo, "Access control record created with ID 3."], command) == [
        "Access control record created with ID 3."]
    assert strip_echo(["grpparams show", "Group-Name: g"], "grpparams show") == ["Group-Name: g"]
    assert strip_echo(["Group-Name: g"], "grpparams show") == ["Group-Name: g"]


def test_event_lines_are_recognised():
    assert is_event_line("netmgtd:1700722419.77:rcc_util.c:1024:INFO:25.2.9:CLI: Login to "
                         "account grpadmin succeeded, using lo.")
    assert not is_event_line("Name: vol1")
    assert not is_event_line("iSCSI Name: iqn.2001-05.com.equallogic:0-8a0906-1-2-x")


# --- Key: value blocks -------------------------------------------------------------------

def test_show_transcript_fields():
    fields = parse_fields(SHOW_TRANSCRIPT)
    assert fields["Name"] == VOLUME
    assert fields["iSCSI Name"] == VOLUME_IQN
    assert fields["Description"] == ""
    assert fields["Bind"] == ""
    assert fields["Snap-Reserve-Avail"] == "100% (1.01GB)"
    info = parse_volume_info(SHOW_TRANSCRIPT)
    assert (info.name, info.size_mb, info.iqn, info.status) == (VOLUME, 1024, VOLUME_IQN,
                                                                 "online")
    assert (info.thin, info.multihost, info.pool, info.connections, info.snapshots) == (
        False, False, "", 0, 0)
    assert info.fields["VolReserve"] == "1.01GB"


def test_show_with_wrapped_iqn_and_later_sections():
    lines = [*SHOW_TRANSCRIPT[:7], *wrap80("iSCSI Name: " + VOLUME_IQN), *SHOW_TRANSCRIPT[8:]]
    lines += ["Pool: default", "Thin-Provision: enabled", "MultiHostAccess: enabled",
              "", "___________ iSCSI Connections ___________",
              "Initiator                    Ipaddress", "---------------------------- ------",
              "Name: not-a-volume-field"]
    info = parse_volume_info(lines)
    assert info.iqn == VOLUME_IQN
    assert (info.thin, info.multihost, info.pool) == (True, True, "default")
    assert info.name == VOLUME


def test_cinder_volume_fixture_fields():
    fields = parse_fields(["Size: 5GB", "iSCSI Name: iqn.2001-05.com.equallogic:x",
                           "Description: "])
    assert fields == {"Size": "5GB", "iSCSI Name": "iqn.2001-05.com.equallogic:x",
                      "Description": ""}
    with pytest.raises(ValueError, match="Name"):
        parse_volume_info(["Size: 5GB", "Description: "])


def test_field_lookup_ignores_case_and_punctuation():
    assert field_value({"Multihost-Access": "enabled"}, "MultiHostAccess") == "enabled"
    assert field_value({"A": "b"}, "missing") is None


# --- tables ------------------------------------------------------------------------------

def test_access_table_with_wrapped_initiator_and_ip_only_record():
    assert parse_access_records(ACCESS_TABLE) == [
        AccessRecord(1, "iqn.1993-08.org.debian:01:2227dab76162", "*.*.*.*", "none", "", "both"),
        AccessRecord(2, "", "10.1.1.*", "chap", "cinderchap", "volume"),
    ]


def test_access_table_with_extra_header_lines_and_echo():
    lines = ["volume select v access show", "", "Access Policies: none", *ACCESS_TABLE]
    assert [r.id for r in parse_access_records(lines)] == [1, 2]
    assert parse_access_records(["No access control records."]) == []


def test_access_table_with_multi_line_initiator_wrap():
    iqn = "iqn.2024-01.org.example.long-domain-name:host-number-one-with-long-suffix"
    header = ACCESS_TABLE[:2]
    row = f"7   {iqn[:29]} 10.0.0.1        none                  both"
    rest = [f"      {iqn[29 + i:29 + i + 27]}" for i in range(0, len(iqn) - 29, 27)]
    records = parse_access_records([*header, row, *rest])
    assert records == [AccessRecord(7, iqn, "10.0.0.1", "none", "", "both")]


def test_volume_list_with_wrapped_name():
    volumes = parse_volume_list(VOLUME_TABLE)
    assert [(v.name, v.size_mb, v.snapshots, v.status, v.connections, v.thin) for v in volumes] == [
        ("vm-100-disk-1", 32768, 0, "online", 1, True),
        (VOLUME, 1536, 2, "offline", 0, False),
    ]


def test_pool_table():
    assert parse_table(POOL_TABLE) == [{
        "Name": "default", "Default": "true", "Members": "1", "Volumes": "12",
        "Capacity": "5.21TB", "FreeSpace": "3.13TB"}]


def test_table_absent():
    assert parse_table(["Volume creation succeeded."]) == []


def test_snapshot_list_with_wrapped_names():
    name = "volume-5f3c9e0a-2016-12-06-11:40:12.1"
    lines = ["Name                      Permission Status         Connections",
             "------------------------- ---------- -------------- -----------",
             f"{name[:25]} read-write offline        0",
             f"  {name[25:]}",
             "short                     read-only  online         2"]
    snapshots = parse_snapshot_list(lines)
    assert [(s.name, s.permission, s.status, s.connections) for s in snapshots] == [
        (name, "read-write", "offline", 0), ("short", "read-only", "online", 2)]


# --- sentences ---------------------------------------------------------------------------

def test_create_output():
    lines = ["Volume creation succeeded.", f"iSCSI target name is {CREATE_IQN}."]
    assert parse_target_iqn(lines) == CREATE_IQN


def test_create_output_wrapped_at_80_columns():
    lines = ["Volume creation succeeded.", *wrap80(f"iSCSI target name is {CREATE_IQN}.")]
    assert len(lines) == 3
    assert parse_target_iqn(lines) == CREATE_IQN


def test_create_output_wrapped_just_before_the_period():
    line = f"iSCSI target name is {CREATE_IQN}"
    assert parse_target_iqn([line, ".", "Other text."]) == CREATE_IQN


def test_create_output_iqn_not_joined_with_following_sentence():
    lines = [f"iSCSI target name is {CREATE_IQN}.", "Volume cloning succeeded."]
    assert parse_target_iqn(lines) == CREATE_IQN


def test_cinder_fake_iqn_fixture():
    line = "iSCSI target name is iqn.2003-10.com.equallogic:group01:25366:fakev."
    assert parse_target_iqn([line]) == "iqn.2003-10.com.equallogic:group01:25366:fakev"


def test_missing_iqn_is_an_error():
    with pytest.raises(ValueError):
        parse_target_iqn(["Volume creation succeeded."])


def test_snapshot_name():
    assert parse_snapshot_name(SNAPSHOT_CREATED) == "volume-5f3c9e0a-2016-12-06-11:40:12.1"
    assert parse_snapshot_name(["Snapshot name is fake_snap_name"]) == "fake_snap_name"


def test_snapshot_name_wrapped_at_80_columns():
    name = "a" * 60 + "-2016-12-06-11:40:12.1"
    assert parse_snapshot_name(wrap80("Snapshot name is " + name)) == name
    with pytest.raises(ValueError):
        parse_snapshot_name(["Snapshot creation succeeded."])


def test_access_record_id():
    assert parse_access_record_id(["Access control record created with ID 12."]) == 12
    assert parse_access_record_id([]) is None


def test_chap_password_and_user():
    assert parse_chap_password(["CHAP user creation succeeded.", "Password is s3cr3tpass1234"]
                               ) == "s3cr3tpass1234"
    assert parse_chap_password(["CHAP user creation succeeded."]) is None
    user = parse_chap_user(["Name: one", "Password: abcdefabcdef12", "Enabled: enable"])
    assert (user.name, user.password, user.enabled) == ("one", "abcdefabcdef12", True)
    assert "abcdef" not in repr(user)


def test_snapshot_info():
    info = parse_snapshot_info(["Name: s1", "iSCSI Name: iqn.2001-05.com.equallogic:0-x-s1",
                                "Size: 10GB", "Status: offline", "Permission: read-write"])
    assert (info.name, info.iqn, info.size_mb, info.status) == (
        "s1", "iqn.2001-05.com.equallogic:0-x-s1", 10240, "offline")


# --- capacity ----------------------------------------------------------------------------

def test_pool_detail_capacity():
    pool = parse_pool_capacity(POOL_DETAIL)
    assert pool.total_mb == math.ceil(5.21 * 1024 * 1024)
    assert pool.free_mb == math.ceil(3.13 * 1024 * 1024)
    assert pool.used_mb == pool.total_mb - pool.free_mb
    assert pool.reserved_mb == math.ceil(1.93 * 1024 * 1024)
    assert pool.reported_mb == int(7.5 * 1024 * 1024)
    assert pool.volumes == 120


def test_cinder_pool_fixture():
    pool = parse_pool_capacity(["TotalCapacity: 111GB", "FreeSpace: 11GB",
                                "VolumeReportedSpace: 80GB", "TotalVolumes: 100"])
    assert (pool.total_mb, pool.free_mb, pool.used_mb) == (111 * 1024, 11 * 1024, 100 * 1024)
    assert (pool.reserved_mb, pool.reported_mb, pool.volumes) == (None, 80 * 1024, 100)


def test_pool_capacity_older_firmware_without_optional_fields():
    pool = parse_pool_capacity(["TotalCapacity: 2048MB", "FreeSpace: 774.62GB"])
    assert (pool.total_mb, pool.free_mb, pool.used_mb) == (2048, 793211, 0)
    assert (pool.reported_mb, pool.volumes) == (None, None)


@pytest.mark.parametrize(("text", "gigabytes"), [
    ("123.0GB", 123), ("123.5GB", 124), ("123.0TB", 125952), ("1024.0MB", 1), ("1536.0MB", 2),
])
def test_cinder_get_space_in_gb_cases(text, gigabytes):
    assert math.ceil(parse_size_mb(text) / 1024) == gigabytes


@pytest.mark.parametrize(("text", "mb"), [
    ("0MB", 0), ("1GB", 1024), ("1.01GB", 1035), ("2.01GB", 2059), ("5.21TB", 5463081),
    ("15", 15), ("10G", 10240), ("0.5 TB", 524288),
])
def test_parse_size_mb(text, mb):
    assert parse_size_mb(text) == mb


@pytest.mark.parametrize("text", ["", "GB", "1,5GB", "-1GB", "1PB", "1.2.3GB"])
def test_parse_size_mb_rejects(text):
    with pytest.raises(ValueError):
        parse_size_mb(text)


@given(st.integers(min_value=0, max_value=10**9))
def test_parse_size_mb_never_under_reports(mb):
    """The group prints auto-scaled sizes rounded to 2 decimals; parsing rounds up."""
    for value, unit, scale in ((mb / 1024, "GB", 1024), (mb / 1024**2, "TB", 1024**2)):
        printed = f"{math.ceil(value * 100) / 100:.2f}{unit}"
        assert parse_size_mb(printed) >= mb
        assert parse_size_mb(printed) - mb <= scale / 100 + 1


# --- errors ------------------------------------------------------------------------------

COMMAND = cmd.volume_show("vol1")


@pytest.mark.parametrize(("line", "error"), [
    ("% Error - Volume does not exist.", NotFound),
    ("% Error - Snapshot does not exist.", NotFound),
    ("% Error - Volume name already exists.", AlreadyExists),
    ("% Error - Not enough free space in the pool to complete the operation.", NoSpace),
    ("% Error - Volume must be offline before it can be deleted.", Busy),
    ("% Error - Snapshot is online. Set it offline first.", Busy),
    ("% Error - Volume has active iSCSI connections.", Busy),
    ("% Error - Invalid size \"12XB\".", InvalidInput),
    ("Error: Bad command \"volm\".", InvalidInput),
    ("Error: Bad command \"onlin\".", InvalidInput),
    ("Error: Missing argument: volume name.", InvalidInput),
    ("% Error - Volume size cannot be decreased.", CliError),
    ("% Error - The volume already has the maximum number of access control records (16).",
     CliError),
])
def test_error_detection(line, error):
    with pytest.raises(error) as caught:
        raise_for_errors(COMMAND, ["volume select vol1 show", line])
    assert type(caught.value) is error
    assert "volume select vol1 show" in str(caught.value)
    assert caught.value.lines == (line,)


def test_no_error_in_normal_output():
    raise_for_errors(COMMAND, SHOW_TRANSCRIPT)
    raise_for_errors(COMMAND, ["Description: Error: this is text, not an error"])


def test_error_message_masks_secrets():
    command = cmd.chapuser_create("one", "Sup3rSecret12")
    with pytest.raises(InvalidInput) as caught:
        raise_for_errors(command, ['% Error - Invalid password "Sup3rSecret12".'])
    assert "Sup3rSecret12" not in str(caught.value)
    assert "chapuser create one password ***" in str(caught.value)
