"""Command building: exact command lines, validation, quoting and masking."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eqliscsi import cli_commands as cmd
from eqliscsi.cli_commands import CliCommand, quoted_description, sanitize_description
from eqliscsi.errors import InvalidValue
from eqliscsi.units import size_argument

NAME_ALPHABET = "ABCXYZabcxyz0189.-:"


def test_volume_create_full():
    command = cmd.volume_create(
        "one-42", 10240, pool="fast", thin=True, thin_min_reserve=10, thin_growth_warn=60,
        thin_growth_max=100, description="Image 42 of alice", online=False, snap_reserve=50)
    assert command.text == (
        'volume create one-42 10240MB pool fast description "Image 42 of alice" offline '
        "snap-reserve 50% thin-provision thin-min-reserve 10% thin-growth-warn 60% "
        "thin-growth-max 100%")
    assert not command.read_only and not command.slow and not command.confirm


def test_volume_create_minimal_and_size_strings():
    assert cmd.volume_create("v", 1).text == "volume create v 1MB online"
    assert cmd.volume_create("v", "10gb").text == "volume create v 10GB online"
    assert cmd.volume_create("v", "2TB").text == "volume create v 2TB online"


def test_thin_options_need_thin():
    with pytest.raises(InvalidValue, match="thin-min-reserve"):
        cmd.volume_create("v", 1, thin_min_reserve=10)


@pytest.mark.parametrize("size", [0, -1, True, 1.5, "10", "10 GB", "1.5GB", "10PB", "0GB",
                                  "010GB", 10**12])
def test_invalid_sizes(size):
    with pytest.raises(InvalidValue):
        size_argument(size)


def test_command_texts():
    assert cmd.volume_show("v").text == "volume select v show"
    assert cmd.volume_list().text == "volume show"
    assert cmd.volume_clone("a", "b", description="x y", snap_reserve=0).text == (
        'volume select a clone b description "x y" online snap-reserve 0%')
    assert cmd.volume_delete("v").text == "volume delete v"
    assert cmd.volume_rename("a", "b").text == "volume rename a b"
    assert cmd.volume_description("v", "").text == 'volume select v description ""'
    assert cmd.volume_size("v", 2048).text == "volume select v size 2048MB no-snap"
    assert cmd.volume_online("v", False).text == "volume select v offline"
    assert cmd.volume_multihost("v", True).text == "volume select v multihost-access enable"
    assert cmd.access_create("v", initiator="iqn.1993-08.org.debian:01:abc", ipaddress="10.1.*.*",
                             chap_user="user1", authmethod="chap", apply_to="both").text == (
        "volume select v access create initiator iqn.1993-08.org.debian:01:abc "
        "ipaddress 10.1.*.* username user1 authmethod chap apply-to both")
    assert cmd.access_show("v").text == "volume select v access show"
    assert cmd.access_delete("v", 3).text == "volume select v access delete 3"
    assert cmd.snapshot_create("v").text == "volume select v snapshot create-now"
    assert cmd.snapshot_rename("v", "v-2016-12-06-11:40:12.1", "snap1").text == (
        "volume select v snapshot rename v-2016-12-06-11:40:12.1 snap1")
    assert cmd.snapshot_list("v").text == "volume select v snapshot show"
    assert cmd.snapshot_show("v", "s").text == "volume select v snapshot select s show"
    assert cmd.snapshot_online("v", "s", True).text == "volume select v snapshot select s online"
    assert cmd.snapshot_restore("v", "s").text == "volume select v snapshot select s restore"
    assert cmd.snapshot_delete("v", "s").text == "volume select v snapshot delete s"
    assert cmd.snapshot_clone("v", "s", "n").text == "volume select v snapshot select s clone n"
    assert cmd.pool_show("default").text == "pool select default show"
    assert cmd.grpparams_show().text == "grpparams show"
    assert cmd.chapuser_create("u").text == "chapuser create u"
    assert cmd.chapuser_show("u").text == "chapuser show u"


def test_command_kinds():
    read_only = [cmd.volume_show("v"), cmd.volume_list(), cmd.access_show("v"),
                 cmd.snapshot_list("v"), cmd.snapshot_show("v", "s"), cmd.pool_show("p"),
                 cmd.grpparams_show(), cmd.chapuser_show("u"), *cmd.SESSION_SETUP]
    assert all(c.read_only for c in read_only)
    slow = [cmd.volume_list(), cmd.volume_clone("a", "b"), cmd.snapshot_restore("v", "s"),
            cmd.pool_show("p"), cmd.snapshot_clone("v", "s", "n")]
    assert all(c.slow for c in slow)
    assert cmd.volume_delete("v").confirm and cmd.snapshot_delete("v", "s").confirm
    assert not cmd.volume_create("v", 1).confirm


def test_session_setup():
    assert [c.text for c in cmd.SESSION_SETUP] == [
        "stty hardwrap off", "stty columns 255", "cli-settings paging off",
        "cli-settings confirmation off", "cli-settings events off",
        "cli-settings reprintBadInput off"]


def test_secret_is_masked():
    command = cmd.chapuser_create("user1", "Abcdef123456!")
    assert command.text == "chapuser create user1 password Abcdef123456!"
    assert command.masked == "chapuser create user1 password ***"
    assert str(command) == command.masked
    assert "Abcdef" not in repr(command)


@pytest.mark.parametrize("secret", ["short", "with space 12345", 'quote"123456789', "hash#12345678",
                                    "x" * 17, "back\\slash12345"])
def test_invalid_chap_secret_not_echoed(secret):
    with pytest.raises(InvalidValue) as caught:
        cmd.chapuser_create("user1", secret)
    assert secret not in str(caught.value)


@pytest.mark.parametrize("name", ["", "a" * 65, "has space", "under_score", "semi;colon",
                                  "quote\"", "hash#", "new\nline", "é"])
def test_invalid_volume_names(name):
    with pytest.raises(InvalidValue):
        cmd.volume_show(name)


def test_name_lengths():
    assert cmd.volume_show("a" * 64).words[2] == "a" * 64
    long_group_name = "a" * 64 + "-2016-12-06-11:40:12.1"
    assert cmd.snapshot_show("v", long_group_name).words[5] == long_group_name
    with pytest.raises(InvalidValue):
        cmd.snapshot_rename("v", "s", long_group_name)


@pytest.mark.parametrize("iqn", ["iqn.1993-08.org.debian:01:222abc", "iqn.2004-10.com.ubuntu",
                                 "eui.02004567A425678D", "naa.52004567BA64678D"])
def test_valid_initiators(iqn):
    assert cmd.initiator_name(iqn) == iqn


@pytest.mark.parametrize("iqn", ["", "iqn", "iqn.93-08.org:x", "iqn.1993-08.org.debian:01 x",
                                 "iqn.1993-08.org.debian:#x", "eui.123", "x" * 300])
def test_invalid_initiators(iqn):
    with pytest.raises(InvalidValue):
        cmd.initiator_name(iqn)


@pytest.mark.parametrize("ip", ["10.1.1.1", "*.*.*.*", "10.1.*.*", "255.255.255.0"])
def test_valid_ip_patterns(ip):
    assert cmd.ip_pattern(ip) == ip


@pytest.mark.parametrize("ip", ["", "10.1.1", "10.1.1.256", "10.1.1.01", "10.1.1.**", "a.b.c.d",
                                "10.1.1.1/24"])
def test_invalid_ip_patterns(ip):
    with pytest.raises(InvalidValue):
        cmd.ip_pattern(ip)


def test_access_create_validation():
    with pytest.raises(InvalidValue, match="needs"):
        cmd.access_create("v")
    with pytest.raises(InvalidValue):
        cmd.access_create("v", chap_user="bad user")
    with pytest.raises(InvalidValue):
        cmd.access_create("v", ipaddress="*.*.*.*", authmethod="kerberos")
    with pytest.raises(InvalidValue):
        cmd.access_create("v", ipaddress="*.*.*.*", apply_to="all")


@pytest.mark.parametrize("value", [-1, 101, True, "50", 5.0])
def test_invalid_percentages(value):
    with pytest.raises(InvalidValue):
        cmd.percent(value)


@pytest.mark.parametrize("value", [0, True, -3, "1"])
def test_invalid_record_ids(value):
    with pytest.raises(InvalidValue):
        cmd.access_delete("v", value)


def test_description_quoting_rule():
    assert quoted_description("OpenStack Managed") == '"OpenStack Managed"'
    assert quoted_description("Bob's disk (v2) 50%") == '"Bob\'s disk (v2) 50%"'
    for text in ['say "hi"', "a#b", "two\nlines", "tab\there", "back\\slash", "x" * 128, "café"]:
        with pytest.raises(InvalidValue):
            quoted_description(text)


def test_sanitize_description_examples():
    assert sanitize_description('say "hi" #1\n\tnext  \x7f') == "say 'hi' 1 next"
    assert sanitize_description("café\\x") == "caf?/x"
    assert len(sanitize_description("y" * 500)) == 127


def test_unsafe_words_are_refused_by_the_command_itself():
    for word in ["two words", "#comment", 'a"b', "line\r", ""]:
        with pytest.raises(InvalidValue):
            CliCommand(("volume", "show", word))
    with pytest.raises(InvalidValue):
        CliCommand(())
    with pytest.raises(InvalidValue) as caught:
        CliCommand(("chapuser", "create", "u", "password", "bad secret"), secret=frozenset({4}))
    assert "bad secret" not in str(caught.value)


@given(st.text(alphabet=NAME_ALPHABET, min_size=1, max_size=64))
def test_property_valid_names_pass_unchanged(name):
    assert cmd.volume_show(name).words == ("volume", "select", name, "show")


@given(st.text(max_size=80))
def test_property_names_outside_the_rule_are_refused(name):
    valid = 0 < len(name) <= 64 and all(char in NAME_ALPHABET or (char.isascii() and
                                        char.isalnum()) for char in name)
    try:
        command = cmd.volume_show(name)
    except InvalidValue:
        assert not valid
    else:
        assert valid
        assert command.text.split(" ") == ["volume", "select", name, "show"]


@given(st.text(max_size=200))
def test_property_descriptions_are_quoted_or_refused(text):
    try:
        command = cmd.volume_description("v", text)
    except InvalidValue:
        return
    quoted = command.words[-1]
    assert quoted == f'"{text}"'
    assert re.fullmatch(r'"[\x20-\x7e]*"', quoted)
    assert "#" not in quoted and quoted.count('"') == 2 and "\\" not in quoted


@given(st.text(max_size=300))
def test_property_sanitized_descriptions_are_always_accepted(text):
    clean = sanitize_description(text)
    assert cmd.volume_description("v", clean).words[-1] == f'"{clean}"'
