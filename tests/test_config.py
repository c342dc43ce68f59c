"""eqliscsi.conf parsing, lookup, precedence, validation and secret handling."""

from pathlib import Path

import pytest

from eqliscsi import oned
from eqliscsi.config import (
    KEYS,
    AccessRecord,
    ConfFile,
    DriverConfig,
    Level,
    Portal,
    ThinProvisioning,
    find_conf_file,
    load_conf_file,
    parse_conf_text,
    parse_portal,
    resolve_config,
)
from eqliscsi.group import GroupSettings
from eqliscsi.oned import ConfigError, mask_secrets

REPO = Path(__file__).resolve().parent.parent

# The settings part of the 2014 add-on's datastore/eqliscsi/eqliscsi.conf.sample (v0.2.0).
SAMPLE_2014 = """\
#### Default values for volumes on Equalogic SAN 
EQL_HOST="192.168.0.1"
EQL_POOL="sample_pool"
EQL_USER="sample_user"
EQL_PASS="sample_pass"

#EQL_MULTIHOST="<enable|disable>"
EQL_MULTIHOST="enable"
#EQL_SECURITY_ACCESS="apply-to <volume|snapshot|both> authmethod <chap|none> \
username <user_name> ipaddress <ip_address> initiator <initiator_name>"
EQL_SECURITY_ACCESS="ipaddress 192.168.*.*"
EQL_THINPROVISION="thin-provision thin-min-reserve 50%"


#### Config values for ONE eqliscsi driver
#EQL_BASE_DEVICE="/dev/eql"
EQL_BASE_DEVICE="/dev/iscsi"

# Default iSCSI interface for discovery
EQL_IFACE="eql00"

# Seconds to wait after some login/logout operations
EQL_WAIT_TIME=1

# Lists of hosts (separated by spaces) for which no iscsiadm login or logout
# is performed. Include here OpenNebula frontends to avoid open sessions on mv operations.
NO_ISCSI=""

# Utilities
EQLADM=EqlCliExec.py
"""  # noqa: W291 (trailing space as in the original)


@pytest.fixture(autouse=True)
def fresh_secrets(monkeypatch):
    monkeypatch.setattr(oned, "_secrets", set())


def conf(**values: str) -> ConfFile:
    return ConfFile(Path("/etc/eqliscsi.conf"), values)


def write_conf(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


# --- parsing -----------------------------------------------------------------------------

def test_parse_quoting_forms():
    values = parse_conf_text(
        "# comment\n"
        "\n"
        'A="double quoted"\n'
        "B='single $quoted \\n'\n"
        "C=plain\n"
        "export D=exported\n"
        '  E="esc \\" \\\\ \\$HOME \\` \\n" # trailing comment\n'
        "F=\n"
        "G=a#b\n"
        "H=#comment\n"
        "I=\"con\"'cat'enated\n"
        "J=back\\ slash\n"
        "K='x'  \t# comment\r\n"
        "C=second\n",
        "test",
    )
    assert values == {
        "A": "double quoted", "B": "single $quoted \\n", "C": "second", "D": "exported",
        "E": 'esc " \\ $HOME ` \\n', "F": "", "G": "a#b", "H": "", "I": "concatenated",
        "J": "back slash", "K": "x",
    }


@pytest.mark.parametrize("text", [
    'EQL_HOST="$(rm -rf /)"',
    "EQL_HOST='$(rm -rf /)'",
    'EQL_HOST="`rm -rf /`"',
    'EQL_HOST="${HOME:-x}; reboot"',
])
def test_shell_expansions_stay_literal(text, tmp_path):
    value = parse_conf_text(text, "test")["EQL_HOST"]
    assert value.startswith(("$", "`"))
    with pytest.raises(ConfigError, match=r"EQL_HOST in /etc/eqliscsi\.conf: not an IP address"):
        resolve_config(conf(EQL_HOST=value))


def test_command_substitution_is_never_run(tmp_path):
    marker = tmp_path / "ran"
    parse_conf_text(f'EQL_HOST="$(touch {marker})"\nEQL_USER="`touch {marker}`"\n', "test")
    assert not marker.exists()


@pytest.mark.parametrize(("line", "problem"), [
    ("EQL_HOST=$(rm -rf /)", "shell syntax '(' is not supported"),
    ("EQL_HOST=`id`", "shell syntax '`' is not supported"),
    ("EQL_HOST=a;reboot", "shell syntax ';' is not supported"),
    ("EQL_HOST=a|b", "shell syntax '|' is not supported"),
    ("EQL_HOST=a b", "unexpected text after the value"),
    ('EQL_HOST="open', "unterminated double quote"),
    ("EQL_HOST='open", "unterminated single quote"),
])
def test_bad_values_are_rejected_with_line_numbers(line, problem):
    with pytest.raises(ConfigError) as error:
        parse_conf_text(f"# first\n{line}\n", "/x/eqliscsi.conf")
    assert str(error.value).startswith(f"/x/eqliscsi.conf line 2 (EQL_HOST): {problem}")


@pytest.mark.parametrize("line", [
    "EQL_HOST = 1.2.3.4", "source /etc/other.conf", "if true; then", "1KEY=x", "KEY",
])
def test_non_assignments_are_rejected(line):
    with pytest.raises(ConfigError, match=r"^test line 1: expected KEY=value$"):
        parse_conf_text(line, "test")


def test_2014_sample_parses_and_resolves(capsys):
    values = parse_conf_text(SAMPLE_2014, "2014 sample")
    config = resolve_config(ConfFile(Path("/old/eqliscsi.conf"), values))
    assert config.group_settings() == GroupSettings(
        host="192.168.0.1", user="sample_user", password="sample_pass",
        known_hosts=str(config.known_hosts))
    assert config.pool == "sample_pool"
    assert config.multihost is True
    assert config.security_access == AccessRecord(ipaddress="192.168.*.*")
    assert config.thin_provisioning == ThinProvisioning(thin=True, thin_min_reserve=50)
    assert (config.base_device, config.iface) == (Path("/dev/iscsi"), "eql00")
    assert config.wait_time == 10.0
    assert config.no_iscsi == frozenset()
    assert capsys.readouterr().err == ""


def test_the_shipped_sample_loads_without_warnings(capsys, tmp_path):
    path = write_conf(tmp_path / "eqliscsi.conf", (REPO / "eqliscsi.conf.sample").read_text())
    config = resolve_config(load_conf_file(path))
    assert config.host == "192.168.0.1" and config.iface == "eql00"
    assert capsys.readouterr().err == ""


def test_every_key_is_documented_in_the_sample():
    sample = (REPO / "eqliscsi.conf.sample").read_text()
    for key in KEYS:
        assert f"{key}=" in sample, key


# --- finding and loading the file --------------------------------------------------------

def test_conf_lookup_order(tmp_path, capsys):
    modern = tmp_path / "etc" / "datastore" / "eqliscsi" / "eqliscsi.conf"
    legacy = tmp_path / "datastore" / "eqliscsi" / "eqliscsi.conf"
    assert find_conf_file(tmp_path, {}) is None
    write_conf(legacy, "")
    assert find_conf_file(tmp_path, {}) == legacy
    write_conf(modern, "")
    assert find_conf_file(tmp_path, {}) == modern
    assert capsys.readouterr().err == (
        f"WARN: eqliscsi: using {modern}; the 2014 location {legacy} is ignored\n")
    explicit = write_conf(tmp_path / "other.conf", "")
    assert find_conf_file(tmp_path, {"EQLISCSI_CONF": str(explicit)}) == explicit
    with pytest.raises(ConfigError, match=r"^EQLISCSI_CONF=/nonexistent: no such file$"):
        find_conf_file(tmp_path, {"EQLISCSI_CONF": "/nonexistent"})


def test_no_conf_file_gives_the_defaults():
    assert load_conf_file(None) == ConfFile()
    assert resolve_config(ConfFile()) == DriverConfig()


def test_unknown_keys_warn_once(tmp_path, capsys):
    path = write_conf(tmp_path / "e.conf", "EQL_HSOT=1\nFOO=2\nEQL_HSOT=3\nEQLADM=x\n")
    assert load_conf_file(path).values == {"EQL_HSOT": "3", "FOO": "2", "EQLADM": "x"}
    assert capsys.readouterr().err == (
        f"WARN: eqliscsi: {path}: unknown keys ignored: EQL_HSOT, FOO\n")


@pytest.mark.parametrize(("mode", "text", "warned"), [
    (0o600, 'EQL_PASS="x"', False),
    (0o640, 'EQL_PASS="x"', True),
    (0o604, 'EQL_PASS="x"', True),
    (0o644, 'EQL_HOST="h"', False),
    (0o644, 'EQL_PASS=""', False),
])
def test_readable_conf_with_a_password_warns(tmp_path, capsys, mode, text, warned):
    path = write_conf(tmp_path / "e.conf", text + "\n", mode)
    load_conf_file(path)
    err = capsys.readouterr().err
    assert (f"holds EQL_PASS but is readable by group/others (mode {mode:04o})" in err) == warned


def test_unreadable_conf(tmp_path):
    path = tmp_path / "e.conf"
    path.write_bytes(b"EQL_HOST=\xff\n")
    with pytest.raises(ConfigError, match=f"^cannot read {path}: "):
        load_conf_file(path)


# --- precedence --------------------------------------------------------------------------

VALID = {
    "EQL_HOST": "10.1.2.3", "EQL_PORT": "2222", "EQL_USER": "grpadmin", "EQL_PASS": "pw-123",
    "EQL_KNOWN_HOSTS": "/etc/one/eql_known_hosts", "EQL_HOST_KEY_POLICY": "accept-new",
    "EQL_POOL": "fast", "EQL_MULTIHOST": "disable",
    "EQL_SECURITY_ACCESS": "initiator iqn.1993-08.org.debian:01:abc",
    "EQL_THINPROVISION": "thin-provision", "EQL_SNAP_RESERVE": "0%", "EQL_ACCESS_MODE": "static",
    "EQL_CHAP_USER": "chapuser", "EQL_CHAP_PASS": "chap-secret-01", "EQL_PORTAL": "10.9.9.9",
    "EQL_LUN": "1", "EQL_IFACE": "eql01", "EQL_BASE_DEVICE": "/dev/eql", "NO_ISCSI": "fe1",
    "EQL_WAIT_TIME": "45", "EQL_MAX_SESSIONS": "3", "EQL_SLOT_DIR": "/run/eql",
    "EQL_SLOT_WAIT": "5", "EQL_CONNECT_TIMEOUT": "2.5", "EQL_COMMAND_TIMEOUT": "90",
    "EQL_DEBUG": "yes", "EQL_DEBUG_LOG": "syslog",
    "EQL_FRONTEND_INITIATOR": "iqn.2024-01.org.example:fe", "EQL_STAGING_DIR": "/srv/stage",
    "EQL_VERIFY": "full", "EQL_FORCE_DELETE": "YES",
}
"""A valid, non-default value for every key."""

PAIRED = {"EQL_CHAP_USER": "EQL_CHAP_PASS", "EQL_CHAP_PASS": "EQL_CHAP_USER"}


def test_every_key_has_a_test_value():
    assert set(VALID) == set(KEYS)


@pytest.mark.parametrize("key", sorted(KEYS))
@pytest.mark.parametrize("level", list(Level))
def test_keys_apply_exactly_at_their_levels(key, level, capsys):
    values = {key: VALID[key]}
    if key in PAIRED:
        values[PAIRED[key]] = VALID[PAIRED[key]]
    layers = {lv: dict(values) if lv is level else {} for lv in Level}
    config = resolve_config(ConfFile(None, layers[Level.CONF]), layers[Level.DATASTORE],
                            layers[Level.IMAGE])
    allowed = level in KEYS[key].levels
    assert (config != DriverConfig()) == allowed
    err = capsys.readouterr().err
    assert (f"{key} in {level.value} ignored" in err) == (not allowed)


def test_higher_levels_win():
    config = resolve_config(conf(EQL_POOL="p1", EQL_MULTIHOST="enable"),
                            {"EQL_POOL": "p2", "EQL_MULTIHOST": "disable"},
                            {"EQL_MULTIHOST": "enable"})
    assert (config.pool, config.multihost) == ("p2", True)


def test_empty_values_clear_keys_where_empty_is_meaningful():
    base = conf(EQL_THINPROVISION="thin-provision", EQL_SECURITY_ACCESS="ipaddress 10.*.*.*",
                EQL_SNAP_RESERVE="50%", EQL_PORTAL="10.0.0.1", NO_ISCSI="fe")
    assert resolve_config(base).thin_provisioning.thin is True
    cleared_by_ds = resolve_config(base, {"EQL_THINPROVISION": "", "EQL_PORTAL": " ",
                                          "NO_ISCSI": ""})
    assert cleared_by_ds.thin_provisioning == ThinProvisioning()
    assert (cleared_by_ds.portal, cleared_by_ds.no_iscsi) == (None, frozenset())
    cleared_by_image = resolve_config(base, {}, {"EQL_SECURITY_ACCESS": "",
                                                 "EQL_SNAP_RESERVE": ""})
    assert (cleared_by_image.security_access, cleared_by_image.snap_reserve) == (None, None)
    assert cleared_by_image.thin_provisioning.thin is True


def test_empty_values_are_ignored_where_empty_is_invalid():
    config = resolve_config(conf(EQL_HOST="10.0.0.5", EQL_MULTIHOST="disable", EQL_POOL="p"),
                            {"EQL_HOST": "", "EQL_POOL": ""}, {"EQL_MULTIHOST": ""})
    assert (config.host, config.multihost, config.pool) == ("10.0.0.5", False, "p")
    assert resolve_config(conf(EQL_PORT="", EQL_POOL="")) == DriverConfig(
        conf_path=Path("/etc/eqliscsi.conf"))


def test_image_template_cannot_redirect_the_driver(capsys):
    config = resolve_config(conf(EQL_HOST="10.0.0.5"), {},
                            {"EQL_HOST": "6.6.6.6", "EQL_POOL": "other", "EQL_PASS": "img-pw"})
    assert (config.host, config.pool, config.password) == ("10.0.0.5", "default", None)
    assert capsys.readouterr().err.count("in the image template ignored") == 3


def test_unknown_eql_attributes_in_templates_warn(capsys):
    resolve_config(ConfFile(), {"EQL_HSOT": "x", "BRIDGE_LIST": "kvm1"}, {"DEV_PREFIX": "vd"})
    assert capsys.readouterr().err == (
        "WARN: eqliscsi: unknown attribute EQL_HSOT in the datastore template ignored\n")


# --- validation --------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "value", "problem"), [
    ("EQL_PORT", "0", "expected an integer 1-65535, got '0'"),
    ("EQL_PORT", "22 ", None),
    ("EQL_HOST", "-oProxyCommand=x", "not an IP address or host name"),
    ("EQL_USER", "a b", "expected 1-64 characters"),
    ("EQL_POOL", "pool;x", "expected 1-63 characters"),
    ("EQL_HOST_KEY_POLICY", "no", "expected one of strict, accept-new, got 'no'"),
    ("EQL_MULTIHOST", "yes", "expected one of enable, disable, got 'yes'"),
    ("EQL_ACCESS_MODE", "open", "expected one of initiator, static"),
    ("EQL_SNAP_RESERVE", "101%", "expected a percentage 0-100"),
    ("EQL_LUN", "-1", "expected an integer 0-16383"),
    ("EQL_IFACE", "eth0;x", "expected an open-iscsi iface name"),
    ("EQL_BASE_DEVICE", "dev/iscsi", "expected an absolute path"),
    ("EQL_BASE_DEVICE", "/dev/../etc", "expected an absolute path without '..'"),
    ("EQL_SLOT_WAIT", "0", "expected seconds"),
    ("EQL_CONNECT_TIMEOUT", "1e3", "expected seconds"),
    ("EQL_MAX_SESSIONS", "0", "expected an integer 1-32"),
    ("EQL_DEBUG", "maybe", "expected yes or no"),
    ("EQL_DEBUG_LOG", "debug.log", "expected an absolute path"),
    ("NO_ISCSI", "fe1 bad;host", "not an IP address or host name"),
    ("EQL_PORTAL", "10.0.0.1:99999", "expected an integer 1-65535"),
])
def test_invalid_values_name_the_key_and_place(key, value, problem):
    if problem is None:
        resolve_config(conf(**{key: value}))
        return
    in_datastore = Level.DATASTORE in KEYS[key].levels
    with pytest.raises(ConfigError) as error:
        if in_datastore:
            resolve_config(ConfFile(), {key: value})
        else:
            resolve_config(conf(**{key: value}))
    where = "the datastore template" if in_datastore else "/etc/eqliscsi.conf"
    assert str(error.value).startswith(f"{key} in {where}: ")
    assert problem in str(error.value)


@pytest.mark.parametrize(("text", "record"), [
    ("ipaddress 192.168.*.*", AccessRecord(ipaddress="192.168.*.*")),
    ("apply-to both authmethod chap username one ipaddress 10.0.0.1 "
     "initiator iqn.2005-10.org.example:host1",
     AccessRecord(initiator="iqn.2005-10.org.example:host1", ipaddress="10.0.0.1",
                  chap_user="one", authmethod="chap", apply_to="both")),
    ("  initiator   iqn.2005-10.org.example:h  ",
     AccessRecord(initiator="iqn.2005-10.org.example:h")),
])
def test_security_access_is_parsed_token_by_token(text, record):
    assert resolve_config(conf(EQL_SECURITY_ACCESS=text)).security_access == record


@pytest.mark.parametrize(("text", "problem"), [
    ("apply-to both", "needs at least one of username, ipaddress, initiator"),
    ("ipaddress", "ipaddress needs a value"),
    ("ipaddress 300.1.1.1", "invalid IP address pattern '300.1.1.1'"),
    ("ipaddress 10.*.*.* ipaddress 10.1.*.*", "ipaddress given twice"),
    ("ipaddress 10.*.*.*; volume delete x", "invalid IP address pattern"),
    ("ipaddress 10.*.*.* ; volume delete x", "unknown keyword ';'"),
    ("username bad#name", "invalid CHAP user name"),
    ("authmethod kerberos username u", "expected one of chap, none"),
    ("unrestricted", "unknown keyword 'unrestricted'"),
    ("initiator $(id)", "invalid iSCSI initiator name"),
])
def test_security_access_rejects(text, problem):
    with pytest.raises(ConfigError) as error:
        resolve_config(ConfFile(), {}, {"EQL_SECURITY_ACCESS": text})
    assert str(error.value).startswith("EQL_SECURITY_ACCESS in the image template: ")
    assert problem in str(error.value)


@pytest.mark.parametrize(("text", "thin"), [
    ("thin-provision", ThinProvisioning(thin=True)),
    ("thin-provision thin-min-reserve 50% thin-growth-warn 70 thin-growth-max 100%",
     ThinProvisioning(True, 50, 70, 100)),
    ("", ThinProvisioning()),
])
def test_thin_provisioning(text, thin):
    assert resolve_config(conf(EQL_THINPROVISION=text)).thin_provisioning == thin


@pytest.mark.parametrize(("text", "problem"), [
    ("thin-min-reserve 50%", "must start with thin-provision"),
    ("thin-provision pool other", "unknown keyword 'pool'"),
    ("thin-provision thin-min-reserve 150%", "expected a percentage 0-100"),
    ("thin-provision thin-min-reserve", "thin-min-reserve needs a value"),
    ("thin-provision thin-min-reserve 5% thin-min-reserve 6%", "given twice"),
    ("thin-provision; volume delete x", "must start with thin-provision"),
    ("thin-provision description x", "unknown keyword 'description'"),
])
def test_thin_provisioning_rejects(text, problem):
    with pytest.raises(ConfigError, match=r"^EQL_THINPROVISION in /etc/eqliscsi\.conf: ") as error:
        resolve_config(conf(EQL_THINPROVISION=text))
    assert problem in str(error.value)


@pytest.mark.parametrize(("text", "portal"), [
    ("10.0.0.1", Portal("10.0.0.1", 3260)),
    ("10.0.0.1:3261", Portal("10.0.0.1", 3261)),
    ("san.example.org", Portal("san.example.org", 3260)),
    ("[fd00::1]:3260", Portal("fd00::1", 3260)),
    ("[fd00::1]", Portal("fd00::1", 3260)),
])
def test_portal(text, portal):
    assert parse_portal(text) == portal


def test_portal_str():
    assert str(Portal("fd00::1")) == "[fd00::1]:3260"
    assert str(Portal("10.0.0.1", 3261)) == "10.0.0.1:3261"


@pytest.mark.parametrize("text", ["a:b:c", ":3260", "[zz::1]", "10.0.0.1:", "fd00::1"])
def test_portal_rejects(text):
    with pytest.raises(ValueError):
        parse_portal(text)


def test_chap_needs_both_keys():
    with pytest.raises(ConfigError, match="EQL_CHAP_USER and EQL_CHAP_PASS must be set together"):
        resolve_config(conf(EQL_CHAP_USER="u"))
    with pytest.raises(ConfigError, match="EQL_CHAP_USER and EQL_CHAP_PASS must be set together"):
        resolve_config(conf(EQL_CHAP_USER="u", EQL_CHAP_PASS="chap-secret-01"),
                       {"EQL_CHAP_USER": ""})


def test_no_iscsi_matches_exact_host_names():
    config = resolve_config(conf(NO_ISCSI="node fe.example  10.0.0.1"))
    assert config.no_iscsi == frozenset({"node", "fe.example", "10.0.0.1"})
    assert not config.uses_iscsi_on("node")
    assert config.uses_iscsi_on("node-1")
    assert config.uses_iscsi_on("fe-example")


def test_known_hosts_expands_home(monkeypatch):
    monkeypatch.setenv("HOME", "/var/lib/one")
    assert DriverConfig().known_hosts == Path("/var/lib/one/.ssh/eqliscsi_known_hosts")
    assert resolve_config(conf(EQL_KNOWN_HOSTS="~/kh")).known_hosts == Path("/var/lib/one/kh")


def test_wait_time_keeps_a_10_second_floor():
    assert resolve_config(conf(EQL_WAIT_TIME="1")).wait_time == 10.0
    assert resolve_config(conf(EQL_WAIT_TIME="12.5")).wait_time == 12.5


# --- secrets -----------------------------------------------------------------------------

def test_group_settings_carry_the_connection_keys():
    config = resolve_config(conf(
        EQL_HOST="10.1.2.3", EQL_PORT="2222", EQL_USER="grpadmin", EQL_PASS="pw-123",
        EQL_KNOWN_HOSTS="/etc/one/kh", EQL_HOST_KEY_POLICY="accept-new",
        EQL_CONNECT_TIMEOUT="3", EQL_COMMAND_TIMEOUT="90", EQL_SLOT_DIR="/run/eql",
        EQL_MAX_SESSIONS="2", EQL_SLOT_WAIT="7.5"))
    settings = config.group_settings()
    assert settings == GroupSettings(
        host="10.1.2.3", user="grpadmin", password="pw-123", port=2222,
        known_hosts="/etc/one/kh", host_key_policy="accept-new", connect_timeout=3.0,
        command_timeout=90.0, slot_dir="/run/eql", max_sessions=2, slot_wait=7.5)
    assert "pw-123" not in repr(settings)


def test_group_settings_name_every_missing_key():
    with pytest.raises(ConfigError) as error:
        resolve_config(conf(EQL_USER="u")).group_settings()
    assert str(error.value) == ("EQL_HOST, EQL_PASS not set: set it in /etc/eqliscsi.conf "
                                "or in the datastore template")
    with pytest.raises(ConfigError, match=r"in eqliscsi.conf \(none found\)"):
        DriverConfig().group_settings()


def test_passwords_are_masked_and_never_in_repr():
    values = parse_conf_text('EQL_PASS="conf-Pa55"\nEQL_CHAP_PASS="chap-secret-01"\n'
                             "EQL_CHAP_USER=u\n", "test")
    config = resolve_config(ConfFile(None, values), {"EQL_PASS": "ds-Pa55"})
    assert config.password == "ds-Pa55"
    assert "ds-Pa55" not in repr(config) and "chap-secret-01" not in repr(config)
    assert mask_secrets("conf-Pa55 ds-Pa55 chap-secret-01") == "*** *** ***"


def test_invalid_secrets_are_not_echoed():
    with pytest.raises(ConfigError) as error:
        resolve_config(ConfFile(), {"EQL_PASS": "bad\x01pw"})
    assert str(error.value) == "EQL_PASS in the datastore template: invalid value"
    with pytest.raises(ConfigError) as error:
        resolve_config(conf(EQL_CHAP_USER="u", EQL_CHAP_PASS="short"))
    assert str(error.value) == "EQL_CHAP_PASS in /etc/eqliscsi.conf: invalid value"
    assert mask_secrets("bad\x01pw short") == "*** ***"
