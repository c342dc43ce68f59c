"""The Group Manager command interpreter, without SSH: every command and every error."""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Tuple

import pytest

from tests.eqlsim.backend import Connection, FileBackend, Publication
from tests.eqlsim.cli import (
    MESSAGES,
    BadInput,
    CliConfig,
    Interpreter,
    Result,
    Session,
    load_messages,
    mask_secrets,
    match_keyword,
    tokenize,
)
from tests.eqlsim.state import StateStore

POOL_MB = 100 * 1024


class RecordingBackend(FileBackend):
    """Sparse files plus a journal of publish/unpublish calls and fake connections."""

    def __init__(self, state_dir):
        super().__init__(state_dir)
        self.calls: List[Tuple[Any, ...]] = []
        self.fake_connections: Dict[str, List[Connection]] = {}

    def publish(self, obj_id: str, publication: Publication) -> None:
        self.calls.append(("publish", obj_id, publication))

    def unpublish(self, obj_id: str) -> None:
        self.calls.append(("unpublish", obj_id))

    def connections(self, obj_id: str) -> List[Connection]:
        return self.fake_connections.get(obj_id, [])


class Cli:
    """An interpreter on a fresh group; confirmations off unless a test turns them on."""

    def __init__(self, tmp_path, interactive=True, **config):
        self.store = StateStore(tmp_path)
        self.store.initialize("grp", "127.0.0.9", POOL_MB)
        self.backend = RecordingBackend(tmp_path)
        self.backend.start()
        self.config = CliConfig(**config)
        self.session = Session("grpadmin", interactive=interactive)
        self.interpreter = Interpreter(self.store, self.backend, self.config, self.session)
        self.ok("cli-settings confirmation off")

    def run(self, line: str) -> Result:
        return self.interpreter.execute(line)

    def ok(self, line: str) -> List[str]:
        result = self.run(line)
        assert result.error is None and result.question is None, result
        return result.lines

    def error(self, line: str, bad_input: bool = False) -> str:
        result = self.run(line)
        assert result.error is not None, result
        assert result.bad_input is bad_input
        assert result.lines == [result.error]
        return result.error

    def fields(self, line: str) -> Dict[str, str]:
        """The ``Key: value`` lines of a reply."""
        found = {}
        for entry in self.ok(line):
            key, sep, value = entry.partition(": ")
            if sep:
                found[key] = value
        return found

    def volume(self, name: str):
        return self.store.load().volume(name)

    def data(self, obj_id: str):
        return self.backend.path(obj_id)

    def head(self, obj_id: str, size: int = 16) -> bytes:
        with open(self.data(obj_id), "rb") as f:
            return f.read(size)

    def poke(self, obj_id: str, data: bytes) -> None:
        with open(self.data(obj_id), "r+b") as f:
            f.write(data)


@pytest.fixture
def cli(tmp_path):
    return Cli(tmp_path)


def create_offline(cli, name="v", size="100"):
    cli.ok(f"volume create {name} {size} offline")


# ---- tokenizer, keywords, masking ----------------------------------------------------------


def test_tokenize_quotes_and_comments():
    words = [t.text for t in tokenize("a \"b c\" 'd e' '' f#g # comment")]
    assert words == ["a", "b c", "d e", "", "f#g"]
    unclosed = tokenize('description "abc')
    assert unclosed[-1].text == "abc" and not unclosed[-1].closed


def test_match_keyword_prefixes():
    table = ["select", "show", "snapshot", "create"]
    assert match_keyword("sel", table) == "select"
    assert match_keyword("SHOW", table) == "show"
    assert match_keyword("c", table) == "create"
    with pytest.raises(BadInput, match="ambiguous_command"):
        match_keyword("s", table)
    with pytest.raises(BadInput, match="unknown_command"):
        match_keyword("delete", table)


def test_mask_secrets():
    assert mask_secrets("chapuser create u password s3cret enable") == (
        "chapuser create u password *** enable"
    )
    assert mask_secrets("chapuser create u pass 'a b'") == "chapuser create u pass ***"
    assert mask_secrets("chapuser create u p x") == "chapuser create u p ***"
    assert mask_secrets("volume create v 10") == "volume create v 10"


# ---- volume create / show ------------------------------------------------------------------


def test_volume_create_prints_exactly_two_lines(cli):
    lines = cli.ok("volume create vol1 1GB")
    iqn = cli.volume("vol1").iqn
    assert lines == ["Volume creation succeeded.", f"iSCSI target name is {iqn}."]
    assert cli.data(cli.volume("vol1").obj_id).stat().st_size == 1035 << 20


def test_volume_create_with_every_option(cli):
    cli.ok("cli-settings displayinMB on")
    cli.ok(
        "vol create Big 2G pool default thin-provision thin-min-reserve 50% thin-growth-warn 70% "
        "thin-growth-max 90 description 'Clone 5 of vol.3' offline read-only unrestricted "
        "snap-reserve 0% snap-warn 20% snap-depletion volume-offline iscsi-alias alias1 "
        "sectorsize 4096"
    )
    v = cli.volume("big")
    assert (v.name, v.size_mb, v.pool, v.thin) == ("Big", 2048, "default", True)
    assert (v.thin_min_reserve, v.thin_growth_warn, v.thin_growth_max) == (50, 70, 90)
    assert (v.description, v.status, v.permission, v.unrestricted) == (
        "Clone 5 of vol.3",
        "offline",
        "read-only",
        True,
    )
    assert (v.snap_reserve, v.snap_warn, v.snap_depletion) == (0, 20, "volume-offline")
    assert (v.iscsi_alias, v.sector_size) == ("alias1", 4096)
    assert v.iqn.endswith("-big")
    fields = cli.fields("volume select Big show")
    assert fields["Thin-Min-Reserve"] == "50% (1035MB)"
    assert fields["VolReserve"] == "1035MB"


def test_volume_create_defaults_and_double_quotes(cli):
    cli.ok('volume create v 10240 description "OpenStack Managed"')
    v = cli.volume("v")
    assert (v.size_mb, v.status, v.permission, v.thin, v.multihost) == (
        10240,
        "online",
        "read-write",
        False,
        False,
    )
    assert (v.description, v.iscsi_alias, v.snap_reserve) == ("OpenStack Managed", "v", 100)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("volume create bad_name 10", '% Error - Invalid name "bad_name".'),
        ("volume create v 10GiB", '% Error - Invalid size "10GiB".'),
        ("volume create v 0", '% Error - Invalid size "0".'),
        ("volume create v 10 pool nope", "% Error - Pool does not exist."),
        ("volume create v 200GB", MESSAGES["no_space"]),
        ("volume create v 10 thin-min-reserve 101%", '% Error - Invalid argument "101%".'),
        ("volume create v 10 snap-depletion never", 'Error: Bad command "never".'),
    ],
)
def test_volume_create_errors(cli, line, message):
    result = cli.run(line)
    assert result.lines == [message]
    assert cli.store.load().find_volume("v") is None


def test_duplicate_volume_name(cli):
    cli.ok("volume create v 10")
    assert cli.error("volume create V 10") == "% Error - Volume name already exists."


def test_volume_show_table_wraps_long_names(cli):
    cli.ok("volume create volume-74cf9c04-4543-47ae-a937-a9b7c6c921e7 1.5GB thin-provision")
    cli.ok("volume create vm-100-disk-1 32GB")
    cli.ok("volume select vm-100-disk-1 snapshot create-now")
    assert cli.ok("volume show") == [
        "Name            Size       SnapShots Status         Permission Connections T",
        "--------------- ---------- --------- -------------- ---------- ----------- -",
        "volume-74cf9c04 1.5GB      0         online         read-write 0           Y",
        "  -4543-47ae-a9",
        "  37-a9b7c6c921",
        "  e7",
        "vm-100-disk-1   32GB       1         online         read-write 0           N",
    ]
    assert cli.ok("show volume") == cli.ok("volume show")
    assert cli.ok("sh vol") == cli.ok("volume show")


def test_volume_detail_matches_the_reference_transcript(cli):
    name = "volume-74cf9c04-4543-47ae-a937-a9b7c6c921e7"
    cli.ok(f"volume create {name} 1GB")
    cli.ok("stty columns 255")
    lines = cli.ok(f"volume select {name} show")
    iqn = cli.volume(name).iqn
    assert lines[:22] == [
        "_" * 31 + " Volume Information " + "_" * 32,
        f"Name: {name}",
        "Size: 1GB",
        "VolReserve: 1.01GB",
        "VolReserveInUse: 0MB",
        "ReplReserveInUse: 0MB",
        f"iSCSI Alias: {name}",
        f"iSCSI Name: {iqn}",
        "ActualMembers: 1",
        "Snap-Warn: 10%",
        "Snap-Depletion: delete-oldest",
        "Description: ",
        "Snap-Reserve: 100%",
        "Snap-Reserve-Avail: 100% (1.01GB)",
        "Permission: read-write",
        "DesiredStatus: online",
        "Status: online",
        "Connections: 0",
        "Snapshots: 0",
        "Bind: ",
        "Type: not-replicated",
        "ReplicationReserveSpace: 0MB",
    ]
    fields = cli.fields(f"vol sel {name} sh")
    assert fields["Pool"] == "default"
    assert fields["Thin-Provision"] == "disabled"
    assert fields["MultiHostAccess"] == "disabled"
    assert len(lines) > 24  # longer than one page, like the real output
    assert "iSCSI Connections" in lines[-3]
    assert cli.ok(f"volume show {name}") == lines


def test_volume_detail_lists_backend_connections(cli):
    cli.ok("volume create v 10")
    obj_id = cli.volume("v").obj_id
    cli.backend.fake_connections[obj_id] = [Connection("iqn.2024-01.test:h1", "127.0.0.5")]
    lines = cli.ok("volume select v show")
    assert "Connections: 1" in lines
    assert lines[-1].split() == ["iqn.2024-01.test:h1", "127.0.0.5", "0", "0MB", "0MB"]
    assert cli.ok("volume show")[2].split()[5] == "1"


def test_unknown_volume(cli):
    for line in (
        "volume select nope show",
        "volume show nope",
        "volume delete nope",
        "volume rename nope x",
        "volume select nope clone x",
    ):
        assert cli.error(line) == "% Error - Volume does not exist."


# ---- volume changes ------------------------------------------------------------------------


def test_volume_delete_needs_offline_and_removes_data(cli):
    cli.ok("volume create v 10")
    cli.ok("volume select v snapshot create-now")
    volume = cli.volume("v")
    assert cli.error("volume delete v") == (
        "% Error - Volume must be offline before it can be deleted."
    )
    cli.ok("volume select v offline")
    assert cli.ok("volume delete v") == ["Volume deletion succeeded."]
    assert cli.store.load().find_volume("v") is None
    assert not cli.data(volume.obj_id).exists()
    assert not cli.data(volume.snapshots[0].obj_id).exists()


def test_volume_delete_asks_when_confirmation_is_on(cli):
    create_offline(cli, size="1GB")
    cli.ok("cli-settings confirmation on")
    result = cli.run("volume delete v")
    assert result.question == (
        "Do you really want to delete the volume and destroy 1GB of data? (y/n) [n]"
    )
    assert result.lines == [] and result.error is None
    assert cli.store.load().find_volume("v") is not None
    confirmed = cli.interpreter.execute("volume delete v", confirmed=True)
    assert confirmed.lines == ["Volume deletion succeeded."]


def test_exec_sessions_are_never_asked(tmp_path):
    cli = Cli(tmp_path, interactive=False)
    cli.ok("cli-settings confirmation on")
    create_offline(cli)
    assert cli.ok("volume delete v") == ["Volume deletion succeeded."]
    assert cli.ok("logout") == []


def test_volume_rename_keeps_iqn_and_data(cli):
    cli.ok("volume create old 10")
    before = cli.volume("old")
    assert cli.ok("volume rename old new") == []
    after = cli.volume("new")
    assert (after.iqn, after.obj_id) == (before.iqn, before.obj_id)
    cli.ok("volume create other 10")
    assert cli.error("volume rename new other") == "% Error - Volume name already exists."
    assert cli.error("volume rename new bad/name") == '% Error - Invalid name "bad/name".'


def test_volume_simple_settings(cli):
    cli.ok("volume create v 10")
    for line in (
        'volume select v description "two words"',
        "volume select v iscsi-alias myalias",
        "volume select v multihost-access enable",
        "volume select v read-only",
        "volume select v offline",
        "volume select v thin-provision",
    ):
        assert cli.ok(line) == []
    v = cli.volume("v")
    assert (v.description, v.iscsi_alias, v.multihost) == ("two words", "myalias", True)
    assert (v.permission, v.status, v.thin) == ("read-only", "offline", True)
    for line in (
        "volume select v multihost-access disable",
        "volume select v read-write",
        "volume select v online",
        "volume select v no-thin-provision",
    ):
        assert cli.ok(line) == []
    v = cli.volume("v")
    assert (v.multihost, v.permission, v.status, v.thin) == (False, "read-write", "online", False)


def test_no_thin_provision_needs_space(cli):
    cli.ok("volume create v 60GB thin-provision")
    assert cli.error("volume select v no-thin-provision") == MESSAGES["no_space"]


def test_volume_size_grows_with_or_without_snapshot(cli):
    cli.ok("volume create v 1GB")
    obj_id = cli.volume("v").obj_id
    assert cli.ok("volume select v size 2GB") == []
    assert len(cli.volume("v").snapshots) == 1
    assert cli.ok("volume select v size 3G no-snap") == []
    volume = cli.volume("v")
    assert (volume.size_mb, len(volume.snapshots)) == (3072, 1)
    assert cli.data(obj_id).stat().st_size == 3075 << 20
    assert cli.error("volume select v size 1GB no-snap") == (
        "% Error - Volume size cannot be decreased."
    )
    assert cli.error("volume select v size 1XB") == '% Error - Invalid size "1XB".'
    assert cli.error("volume select v size 90GB no-snap") == MESSAGES["no_space"]


def test_volume_clone(cli):
    cli.ok("volume create src 1GB thin-provision")
    source = cli.volume("src")
    cli.poke(source.obj_id, b"payload")
    lines = cli.ok("volume select src clone copy description 'a clone' offline snap-reserve 0%")
    clone = cli.volume("copy")
    assert lines == ["Volume creation succeeded.", f"iSCSI target name is {clone.iqn}."]
    assert (clone.size_mb, clone.thin, clone.pool) == (1024, True, "default")
    assert (clone.description, clone.status, clone.snap_reserve) == ("a clone", "offline", 0)
    assert clone.iqn != source.iqn
    assert cli.head(clone.obj_id, 7) == b"payload"
    assert cli.error("volume select src clone copy") == "% Error - Volume name already exists."


# ---- access control records ----------------------------------------------------------------


def test_access_records_table_and_wrapping(cli):
    cli.ok("volume create v 10")
    assert cli.ok(
        "volume select v access create initiator iqn.1993-08.org.debian:01:2227dab76162 "
        "ipaddress *.*.*.* authmethod none"
    ) == ["Access control record created with ID 1."]
    assert cli.ok(
        "volume select v access create ipaddress 10.1.1.* username cinderchap apply-to volume"
    ) == ["Access control record created with ID 2."]
    assert cli.ok("volume select v access show") == [
        "ID  Initiator                     Ipaddress       AuthMethod UserName   Apply-To",
        "--- ----------------------------- --------------- ---------- ---------- --------",
        "1   iqn.1993-08.org.debian:01:222 *.*.*.*         none                  both",
        "      7dab76162",
        "2                                 10.1.1.*        chap       cinderchap volume",
    ]
    fields = cli.fields("volume select v access select 2 show")
    assert fields["UserName"] == "cinderchap" and fields["AuthMethod"] == "chap"
    assert cli.ok("volume select v access delete 1") == []
    assert [r.id for r in cli.volume("v").access] == [2]


def test_access_errors(tmp_path):
    cli = Cli(tmp_path, max_access_records=2)
    cli.ok("volume create v 10")
    cli.ok("volume select v access create ipaddress 10.0.0.1")
    cli.ok("volume select v access create ipaddress 10.0.0.1")  # duplicates are allowed
    assert "access control records" in cli.error("volume select v access create initiator x")
    assert cli.error("volume select v access delete 9") == (
        "% Error - Access control record does not exist."
    )
    assert cli.error("volume select v access delete one") == '% Error - Invalid argument "one".'
    assert cli.error("volume select v access select 9 show") == (
        "% Error - Access control record does not exist."
    )
    cli.ok("volume select v access delete 1")
    assert cli.error("volume select v access create ipaddress 10.0.0.256") == (
        '% Error - Invalid argument "10.0.0.256".'
    )
    assert cli.error("volume select v access create", bad_input=True) == (
        "Error: Missing argument: initiator, ipaddress or username."
    )
    assert (
        cli.error(
            "volume select v access create authmethod kerberos ipaddress *.*.*.*", bad_input=True
        )
        == 'Error: Bad command "kerberos".'
    )


# ---- snapshots -----------------------------------------------------------------------------


def test_snapshot_create_now_output_and_defaults(cli):
    cli.ok("volume create vol1 10")
    lines = cli.ok('volume select vol1 snapshot create-now description "before upgrade"')
    assert lines[0] == "Snapshot creation succeeded."
    name = lines[1].removeprefix("Snapshot name is ")
    assert re.fullmatch(r"vol1-\d{4}-\d\d-\d\d-\d\d:\d\d:\d\d\.1", name)
    snap = cli.volume("vol1").snapshots[0]
    assert (snap.name, snap.status, snap.description) == (name, "offline", "before upgrade")
    assert snap.iqn.endswith("-" + name.lower()) and snap.iqn != cli.volume("vol1").iqn
    second = cli.ok("volume select vol1 snapshot create-now online read-only")[1]
    assert second.endswith(".2")
    assert cli.volume("vol1").snapshots[1].status == "online"


def test_snapshot_show_rename_select_delete(cli):
    cli.ok("volume create vm-100-disk-1 10")
    name = cli.ok("volume select vm-100-disk-1 snapshot create-now")[1].split()[-1]
    table = cli.ok("volume select vm-100-disk-1 snapshot show")
    assert table[0].split() == ["Name", "Permission", "Status", "Connections"]
    assert table[2].startswith("vm-100-disk-1-20") and table[3].startswith("  ")
    assert cli.ok(f"volume select vm-100-disk-1 snapshot rename {name} snap-a") == []
    fields = cli.fields("volume select vm-100-disk-1 snapshot select snap-a show")
    assert fields["Name"] == "snap-a" and fields["Status"] == "offline"
    assert fields["iSCSI Name"] == cli.volume("vm-100-disk-1").snapshots[0].iqn
    cli.ok("volume select vm-100-disk-1 snapshot select snap-a online")
    assert cli.error("volume select vm-100-disk-1 snapshot delete snap-a") == (
        "% Error - Snapshot is online. Set it offline first."
    )
    cli.ok("volume select vm-100-disk-1 snapshot select snap-a offline")
    assert cli.ok("volume select vm-100-disk-1 snapshot delete snap-a") == [
        "Snapshot deletion succeeded."
    ]
    assert cli.volume("vm-100-disk-1").snapshots == []


def test_snapshot_errors(cli):
    cli.ok("volume create v 10")
    cli.ok("volume select v snapshot create-now")
    cli.ok("volume select v snapshot create-now")
    first, second = (s.name for s in cli.volume("v").snapshots)
    for line in (
        "volume select v snapshot delete nope",
        "volume select v snapshot select nope show",
        "volume select v snapshot rename nope x",
    ):
        assert cli.error(line) == "% Error - Snapshot does not exist."
    assert cli.error(f"volume select v snapshot rename {first} {second}") == (
        "% Error - Snapshot name already exists."
    )
    assert cli.error(f"volume select v snapshot rename {first} bad_name") == (
        '% Error - Invalid name "bad_name".'
    )


def test_snapshot_clone_and_restore(cli):
    cli.ok("volume create v 1GB")
    obj_id = cli.volume("v").obj_id
    cli.poke(obj_id, b"old")
    cli.ok("volume select v snapshot create-now")
    snap = cli.volume("v").snapshots[0]
    cli.ok("volume select v size 2GB no-snap")
    cli.poke(obj_id, b"new")
    lines = cli.ok(f"volume select v snapshot select {snap.name} clone fromsnap")
    assert lines == [
        "Volume creation succeeded.",
        f"iSCSI target name is {cli.volume('fromsnap').iqn}.",
    ]
    assert cli.volume("fromsnap").size_mb == 1024
    assert cli.head(cli.volume("fromsnap").obj_id, 3) == b"old"
    assert cli.error(f"volume select v snapshot select {snap.name} restore") == (
        "% Error - Volume must be offline before a snapshot can be restored."
    )
    cli.ok("volume select v offline")
    assert cli.ok(f"volume select v snapshot select {snap.name} restore") == []
    volume = cli.volume("v")
    assert volume.size_mb == 1024 and len(volume.snapshots) == 2
    assert cli.head(obj_id, 3) == b"old"
    saved = volume.snapshots[1]
    assert cli.head(saved.obj_id, 3) == b"new"
    # what the driver does with it: rename (its mark), then delete
    marked = "v-eqliscsi-pre-restore"
    assert cli.ok(f"volume select v snapshot rename {saved.name} {marked}") == []
    assert cli.fields(f"volume select v snapshot select {marked} show")["Status"] == "offline"
    assert cli.ok(f"volume select v snapshot delete {marked}") == ["Snapshot deletion succeeded."]
    assert [s.name for s in cli.volume("v").snapshots] == [snap.name]


# ---- pools, group, CHAP --------------------------------------------------------------------


def test_pool_show_and_detail(cli):
    cli.ok("volume create v 1GB")
    cli.ok("volume create t 10GB thin-provision snap-reserve 0%")
    assert cli.ok("pool show") == [
        "Name                 Default Members Volumes Capacity   FreeSpace",
        "-------------------- ------- ------- ------- ---------- ----------",
        "default              true    1       2       100GB      96.97GB",
    ]
    lines = cli.ok("pool select default show")
    fields = cli.fields("pool select default show")
    assert [line for line in lines if line.startswith(("TotalCapacity", "FreeSpace"))] == [
        "TotalCapacity: 100GB",
        "FreeSpace: 96.97GB",
    ]
    assert fields["VolumeReserve"] == "2.02GB"  # 1035MB + 10% of 10245MB in pages
    assert fields["VolumeReportedSpace"] == "11GB"
    assert fields["TotalVolumes"] == "2"
    assert any(line.startswith("v ") for line in lines)  # the pool lists its volumes
    assert cli.ok("show pool") == cli.ok("pool show")
    assert cli.error("pool select nope show") == "% Error - Pool does not exist."


def test_pool_size_change_and_display_in_mb(cli):
    cli.store.set_pool_size("default", 2048)
    cli.ok("cli-settings displayinMB on")
    assert cli.fields("pool select default show")["TotalCapacity"] == "2048MB"
    assert cli.error("volume create v 1GB") == MESSAGES["no_space"]
    cli.ok("volume create v 1GB snap-reserve 0%")


def test_grpparams_and_group_summary(cli):
    fields = cli.fields("grpparams show")
    assert fields["Group-Ipaddress"] == "127.0.0.9"
    assert fields["Group-Name"] == "grp"
    assert fields["Def-Iscsi-Prefix"] == "iqn.2001-05.com.equallogic"
    cli.ok("volume create v 10")
    summary = cli.ok("show")
    assert "Group-Ipaddress: 127.0.0.9" in summary
    assert any(line.startswith("default ") for line in summary)
    assert any(line.startswith("v ") for line in summary)
    assert cli.ok("show grpparams") == cli.ok("grpparams show")


def test_chapuser_commands(cli):
    lines = cli.ok("chapuser create gen")
    assert lines[0] == "CHAP user creation succeeded."
    generated = lines[1].removeprefix("Password is ")
    assert len(generated) == 16
    assert cli.ok("chapuser create mine password s3cret-pass disable") == [
        "CHAP user creation succeeded."
    ]
    assert cli.fields("chapuser show mine") == {
        "Name": "mine",
        "Password": "s3cret-pass",
        "Enabled": "disabled",
    }
    table = cli.ok("chapuser show")
    assert [line.split()[0] for line in table[2:]] == ["gen", "mine"]
    assert cli.error("chapuser create gen") == "% Error - CHAP user already exists."
    assert cli.ok("chapuser delete gen") == ["CHAP user deletion succeeded."]
    assert cli.error("chapuser delete gen") == "% Error - CHAP user does not exist."
    assert cli.error("chapuser show gen") == "% Error - CHAP user does not exist."
    assert cli.error("chapuser create bad/name") == '% Error - Invalid name "bad/name".'


# ---- session commands ----------------------------------------------------------------------


def test_cli_settings_persist_per_account(cli, tmp_path):
    for setting in ("events", "paging", "formatoutput", "reprintBadInput", "idlelogout"):
        cli.ok(f"cli-settings {setting} off")
    cli.ok("cli-settings displayinmb on")
    other = Interpreter(cli.store, cli.backend, cli.config, Session("grpadmin"))
    settings = other.execute("cli-settings show")
    assert settings.lines[1:] == [
        "events: off",
        "paging: off",
        "confirmation: off",
        "formatoutput: off",
        "displayinMB: on",
        "reprintBadInput: off",
        "idlelogout: off",
    ]
    assert settings.settings.paging is False
    fresh = Interpreter(cli.store, cli.backend, cli.config, Session("someone")).login()
    assert fresh.settings.paging and fresh.settings.confirmation and fresh.settings.events
    assert fresh.settings.reprint_bad_input
    assert cli.error("cli-settings paging maybe", bad_input=True) == 'Error: Bad command "maybe".'


def test_login_banner_and_event(cli):
    result = Interpreter(cli.store, cli.backend, cli.config, Session("newuser")).login()
    assert result.lines[1] == "           Welcome to Group Manager"
    assert "Copyright 2001-2014 Dell Inc." in result.lines[3]
    assert re.fullmatch(
        r"netmgtd:\d+\.\d\d:rcc_util\.c:1024:INFO:25\.2\.9:CLI: Login to account newuser "
        r"succeeded, using ssh\.",
        result.lines[-1],
    )
    assert result.prompt == "grp> "
    cli.ok("cli-settings events off")
    assert not any("netmgtd" in line for line in cli.interpreter.login().lines)


def test_stty_is_per_session(cli):
    assert cli.ok("stty") == ["columns: 80", "rows: 24", "hardwrap: on"]
    cli.ok("stty columns 255")
    cli.ok("stty rows 50")
    cli.ok("stty hardwrap off")
    terminal = cli.session.terminal
    assert (terminal.columns, terminal.rows, terminal.hardwrap) == (255, 50, False)
    other = Session("grpadmin")
    assert other.terminal.columns == 80
    assert cli.error("stty columns wide") == '% Error - Invalid argument "wide".'


def test_whoami_exit_logout(cli):
    assert cli.ok("whoami") == ["grpadmin"]
    assert cli.run("exit").end_session
    assert cli.run("logout").end_session
    cli.ok("cli-settings confirmation on")
    asked = cli.run("logout")
    assert asked.question == "Do you really want to logout? (y/n) [n]" and not asked.end_session


def test_volume_context(cli):
    cli.ok("volume create v 10")
    assert cli.ok("volume select v") == []
    assert cli.run("whoami").prompt == "grp(volume_v)> "
    assert cli.fields("show")["Name"] == "v"
    cli.ok("offline")
    cli.ok("snapshot create-now")
    assert cli.volume("v").status == "offline"
    assert cli.run("exit").prompt == "grp> "
    cli.ok("volume select v")
    cli.ok("volume rename v w")
    assert cli.run("whoami").prompt == "grp(volume_w)> "
    cli.ok("volume delete w")
    assert cli.run("whoami").prompt == "grp> "


def test_bad_input_is_flagged_for_reprint(cli):
    assert cli.error("volm create x", bad_input=True) == 'Error: Bad command "volm".'
    assert cli.error("s", bad_input=True) == 'Error: Ambiguous command "s".'
    assert cli.error("volume create", bad_input=True) == "Error: Missing argument: volume name."
    assert cli.error("whoami extra", bad_input=True) == 'Error: Bad command "extra".'
    assert cli.error('volume create v 10 description "x', bad_input=True) == (
        "Error: Missing closing quote."
    )
    assert cli.ok("") == [] and cli.ok("# just a comment") == []


# ---- messages ------------------------------------------------------------------------------


def test_messages_can_be_overridden(tmp_path):
    path = tmp_path / "messages.json"
    path.write_text(json.dumps({"volume_not_found": "% Error - No such volume {name}.{typo}"}))
    cli = Cli(tmp_path, messages=load_messages(path))
    assert cli.error("volume select ghost show") == "% Error - No such volume ghost.{typo}"


@pytest.mark.parametrize(
    "overrides",
    [{"no_such_key": "x"}, {"volume_created": "created {iqn"}, {"banner": 3}, ["list"]],
)
def test_bad_message_files_are_refused(tmp_path, overrides):
    path = tmp_path / "messages.json"
    path.write_text(json.dumps(overrides))
    with pytest.raises(ValueError):
        load_messages(path)


# ---- backend synchronisation ---------------------------------------------------------------


def test_backend_follows_visibility_changes(cli):
    calls = cli.backend.calls
    cli.ok("volume create v 10")
    volume = cli.volume("v")
    assert calls == [("publish", volume.obj_id, Publication(iqn=volume.iqn))]
    calls.clear()
    cli.ok("volume select v multihost-access enable")
    cli.ok("volume select v description changed")
    assert calls == []  # nothing visible changed
    cli.ok("volume select v access create initiator iqn.h1 username chap")
    cli.ok("chapuser create chap password chapsecret12")
    assert [c[0] for c in calls] == ["publish", "publish"]
    assert calls[-1][2].chap_secrets == {"chap": "chapsecret12"}
    calls.clear()
    cli.ok("volume select v offline")
    assert calls == [("unpublish", volume.obj_id)]
    calls.clear()
    snap = cli.ok("volume select v snapshot create-now online")[1].split()[-1]
    snap_id = cli.volume("v").snapshot(snap).obj_id
    assert calls[0][:2] == ("publish", snap_id)
    calls.clear()
    cli.ok(f"volume select v snapshot select {snap} offline")
    assert calls == [("unpublish", snap_id)]
    calls.clear()
    cli.ok("volume select v online")
    cli.ok("volume select v read-only")
    assert [c[2].read_only for c in calls] == [False, True]


def test_failed_commands_leave_backend_alone(cli):
    cli.ok("volume create v 10")
    cli.backend.calls.clear()
    cli.error("volume create v 10")
    cli.error("volume select v size 1")
    assert cli.backend.calls == []
