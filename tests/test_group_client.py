"""GroupClient against the simulated group over real SSH (tests/eqlsim, tests/conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import paramiko
import pytest

from eqliscsi import cli_session
from eqliscsi.cli_commands import SESSION_SETUP, CliCommand
from eqliscsi.errors import (
    AlreadyExists,
    AuthenticationFailed,
    Busy,
    CliError,
    ConnectionLost,
    GroupTimeout,
    GroupUnreachable,
    HostKeyRejected,
    InvalidInput,
    InvalidValue,
    NoSpace,
    NotFound,
    SessionRefused,
    SlotTimeout,
    StateUnknown,
    UnexpectedOutput,
)
from eqliscsi.group import GroupClient, GroupSettings
from tests.conftest import RunningSim
from tests.eqlsim.cli import MESSAGES

REPO = Path(__file__).resolve().parents[1]
LogEntry = Tuple[str, float, Optional[str]]
INITIATOR = "iqn.1993-08.org.debian:01:2227dab76162"
LONG_INITIATOR = "iqn.2024-01.org.example.cluster-node-number-one:initiator-port-a"
CHAP_SECRET = "Chap+Secret123"


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., GroupSettings]:
    """GroupSettings for a simulator, with short timeouts and a private slot directory."""

    def make(sim: RunningSim, **overrides: Any) -> GroupSettings:
        known_hosts = tmp_path / "known_hosts"
        if not known_hosts.exists():
            sim.write_known_hosts(known_hosts)
        values: Dict[str, Any] = dict(
            host=sim.host, port=sim.port, user=sim.user, password=sim.password,
            known_hosts=str(known_hosts), slot_dir=str(tmp_path / "slots"),
            connect_timeout=5, login_timeout=5, command_timeout=5, slow_command_timeout=10,
            slot_wait=10, retries=2, retry_delay=0.01, retry_time=10)
        values.update(overrides)
        return GroupSettings(**values)

    return make


@pytest.fixture
def calls() -> List[LogEntry]:
    """What the command log hook received."""
    return []


@pytest.fixture
def group(sim: RunningSim, make_settings: Callable[..., GroupSettings],
          calls: List[LogEntry]) -> Iterator[GroupClient]:
    with GroupClient(make_settings(sim), command_log=lambda *entry: calls.append(entry)) as client:
        yield client


def logged(sim: RunningSim, prefix: str) -> List[Dict[str, Any]]:
    """Command log entries of the simulator starting with ``prefix``."""
    return [entry for entry in sim.commands() if entry["command"].startswith(prefix)]


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


def setup_without(monkeypatch: pytest.MonkeyPatch, *texts: str) -> None:
    """Leave some session set-up commands out (the account keeps the group's defaults)."""
    monkeypatch.setattr(cli_session, "SESSION_SETUP",
                        tuple(c for c in SESSION_SETUP if c.text not in texts))


# --- sessions ----------------------------------------------------------------------------

def test_one_connection_and_session_for_all_commands(sim, group, calls):
    group.connect()
    assert group.group_name == "group-0"
    group.create_volume("vol1", 100)
    group.show_volume("vol1")
    group.group_params()
    entries = sim.commands()
    assert [e["command"] for e in entries[:6]] == [c.text for c in SESSION_SETUP]
    assert all(e["ok"] for e in entries)
    assert len({(e["conn"], e["session"]) for e in entries}) == 1
    assert sim.active_sessions() == 1
    assert [c[0] for c in calls] == [e["command"] for e in entries]
    group.close()
    sim.wait_sessions(0)
    assert sim.load_state().accounts["grpadmin"].paging is False


# --- operations --------------------------------------------------------------------------

def test_volume_operations(sim, group):
    iqn = group.create_volume("vol1", 1024, pool="default", thin=True, thin_min_reserve=20,
                              thin_growth_warn=70, thin_growth_max=90,
                              description="Image 7 (alice's)", snap_reserve=50)
    stored = sim.load_state().find_volume("vol1")
    assert stored is not None and iqn == stored.iqn and iqn.endswith("-vol1")
    assert (stored.thin, stored.thin_min_reserve, stored.thin_growth_warn,
            stored.thin_growth_max, stored.snap_reserve) == (True, 20, 70, 90, 50)
    info = group.show_volume("vol1")
    assert (info.name, info.size_mb, info.iqn, info.status, info.description, info.thin,
            info.multihost, info.pool, info.connections, info.snapshots) == (
        "vol1", 1024, iqn, "online", "Image 7 (alice's)", True, False, "default", 0, 0)
    assert info.fields["SectorSize"] == "512"
    assert group.volume_exists("vol1") and not group.volume_exists("nothing")
    assert group.find_volume("nothing") is None

    group.create_volume("vol2", 10, online=False)
    assert [(v.name, v.size_mb, v.status, v.thin) for v in group.list_volumes()] == [
        ("vol1", 1024, "online", True), ("vol2", 10, "offline", False)]

    group.extend_volume("vol1", 2048)
    sizes_sent = len(logged(sim, "volume select vol1 size"))
    group.extend_volume("vol1", 1500)  # never shrinks: nothing sent
    assert len(logged(sim, "volume select vol1 size")) == sizes_sent == 1
    assert logged(sim, "volume select vol1 size")[0]["command"].endswith("2048MB no-snap")
    assert group.show_volume("vol1").size_mb == 2048
    assert group.show_volume("vol1").snapshots == 0

    group.set_description("vol1", "")
    group.set_multihost("vol1", True)
    group.set_online("vol1", False)
    info = group.show_volume("vol1")
    assert (info.description, info.multihost, info.status) == ("", True, "offline")
    group.set_online("vol1", True)

    clone_iqn = group.clone_volume("vol1", "vol3", description="copy", snap_reserve=0)
    assert clone_iqn.endswith("-vol3") and clone_iqn != iqn
    assert group.show_volume("vol3").size_mb == 2048
    group.rename_volume("vol3", "vol4")
    assert group.show_volume("vol4").iqn == clone_iqn

    assert group.delete_volume("vol4") is True
    assert group.delete_volume("vol4") is False
    assert sim.load_state().find_volume("vol4") is None
    assert group.delete_volume("vol1") is True
    assert [v.name for v in group.list_volumes()] == ["vol2"]


def test_access_records(sim, group):
    group.create_volume("vol1", 100)
    first = group.create_access("vol1", initiator=LONG_INITIATOR)
    second = group.create_access("vol1", ipaddress="10.1.1.*", chap_user="chap1",
                                 authmethod="chap", apply_to="volume")
    assert (first, second) == (1, 2)
    records = group.list_access("vol1")
    assert [(r.id, r.initiator, r.ipaddress, r.authmethod, r.username, r.apply_to)
            for r in records] == [
        (1, LONG_INITIATOR, "", "none", "", "both"),
        (2, "", "10.1.1.*", "chap", "chap1", "volume")]
    assert group.ensure_access("vol1", initiator=LONG_INITIATOR) == 1
    assert group.ensure_access("vol1", initiator=LONG_INITIATOR.upper().replace("IQN", "iqn")
                               ) == 1
    assert group.ensure_access("vol1", ipaddress="10.1.1.*", chap_user="chap1",
                               authmethod="chap") == 2
    assert len(logged(sim, "volume select vol1 access create")) == 2
    assert group.ensure_access("vol1", initiator=INITIATOR, apply_to="snapshot") == 3
    assert group.delete_access("vol1", 1) is True
    assert group.delete_access("vol1", 1) is False
    assert group.delete_access("missing", 1) is False
    assert [r.id for r in group.list_access("vol1")] == [2, 3]


def test_snapshots(sim, group):
    group.create_volume("vol1", 100)
    auto = group.create_snapshot("vol1")
    assert auto.startswith("vol1-")
    assert group.create_snapshot("vol1", "snap1", description="before upgrade") == "snap1"
    assert [s.name for s in group.list_snapshots("vol1")] == [auto, "snap1"]
    info = group.show_snapshot("vol1", "snap1")
    assert (info.name, info.status, info.size_mb) == ("snap1", "offline", 100)
    assert info.iqn.startswith("iqn.2001-05.com.equallogic:")
    assert group.find_snapshot("vol1", "nothing") is None

    with pytest.raises(AlreadyExists):
        group.create_snapshot("vol1", "snap1")
    assert [s.name for s in group.list_snapshots("vol1")] == [auto, "snap1"]

    group.set_snapshot_online("vol1", "snap1", True)
    assert group.show_snapshot("vol1", "snap1").status == "online"
    group.set_snapshot_online("vol1", "snap1", False)
    with pytest.raises(Busy, match="offline"):
        group.restore_snapshot("vol1", "snap1")
    group.set_online("vol1", False)
    saved = group.restore_snapshot("vol1", "snap1")
    assert saved is not None and saved not in (auto, "snap1")
    assert {s.name for s in group.list_snapshots("vol1")} == {auto, "snap1", saved}

    clone_iqn = group.clone_snapshot("vol1", "snap1", "vol2", description="from snap1")
    assert clone_iqn == group.show_volume("vol2").iqn
    group.set_snapshot_online("vol1", "snap1", True)
    assert group.delete_snapshot("vol1", "snap1") is True  # online: set offline first
    assert group.delete_snapshot("vol1", "snap1") is False
    assert group.delete_snapshot("missing", "snap1") is False
    assert [s.name for s in group.list_snapshots("vol1")] == [auto, saved]


def test_pool_group_and_chap(sim, group):
    sim.set_pool_size("default", 2 * 1024 * 1024)
    group.create_volume("vol1", 10240)
    pool = group.pool_capacity("default")
    assert pool.total_mb == 2 * 1024 * 1024
    assert pool.used_mb == pool.total_mb - pool.free_mb > 10240
    assert (pool.reported_mb, pool.volumes) == (10240, 1)
    params = group.group_params()
    assert params["Group-Name"] == "group-0"
    assert group.group_ip() == params["Group-Ipaddress"] == "127.0.0.1"

    generated = group.create_chap_user("chap1")
    assert len(generated) >= 12
    assert group.create_chap_user("chap2", CHAP_SECRET) == CHAP_SECRET
    user = group.show_chap_user("chap1")
    assert (user.name, user.password, user.enabled) == ("chap1", generated, True)
    with pytest.raises(NotFound):
        group.pool_capacity("nopool")


# --- CLI errors --------------------------------------------------------------------------

def test_cli_error_types(sim, group):
    with pytest.raises(NotFound) as caught:
        group.show_volume("missing")
    assert "volume select missing show" in str(caught.value)
    group.create_volume("vol1", 100)
    with pytest.raises(AlreadyExists):
        group.create_volume("vol1", 100)
    sim.set_pool_size("default", 1000)
    with pytest.raises(NoSpace):
        group.create_volume("big", 2000)
    group.create_snapshot("vol1", "s1")
    with pytest.raises(Busy):
        group.restore_snapshot("vol1", "s1")
    with pytest.raises(InvalidInput):
        group._ready_session().run(CliCommand(("volm", "show")), 5)
    sim.set_faults([{"match": "^grpparams", "action": "error",
                     "message": "% Error - Internal error: disk on fire"}])
    with pytest.raises(CliError) as generic:
        group.group_params()
    assert type(generic.value) is CliError
    assert "disk on fire" in str(generic.value)
    assert len({e["session"] for e in sim.commands()}) == 1  # errors keep the session


def test_outputs_without_optional_lines(sim_factory, make_settings):
    """No ``created with ID`` or ``Password is`` line: looked up instead.  No IQN line:
    ``UnexpectedOutput`` naming the command."""
    quiet = sim_factory(messages={**MESSAGES, "access_created": "", "chapuser_password": "",
                                  "target_name": ""})
    with GroupClient(make_settings(quiet)) as group:
        with pytest.raises(UnexpectedOutput, match="volume create vol1 10MB online"):
            group.create_volume("vol1", 10)
        assert group.create_access("vol1", initiator=INITIATOR) == 1
        assert group.create_access("vol1", ipaddress="10.0.0.1") == 2
        assert group.create_chap_user("u1") == group.show_chap_user("u1").password


def test_settings_validation():
    base: Dict[str, Any] = dict(host="127.0.0.1", user="grpadmin", password="secret-pw")
    assert "secret-pw" not in repr(GroupSettings(**base))
    bad: Dict[str, Any]
    for bad in (dict(host=""), dict(host="a b"), dict(user=""), dict(password=""),
                dict(port=0), dict(port=70000), dict(host_key_policy="yes"),
                dict(command_timeout=0), dict(login_timeout=-1), dict(slot_wait=-1),
                dict(max_sessions=0), dict(retries=-1)):
        with pytest.raises(InvalidValue) as caught:
            GroupSettings(**{**base, **bad})
        assert "secret-pw" not in str(caught.value)


def test_invalid_values_fail_before_connecting(sim, group):
    for call in (lambda: group.create_volume("bad name", 10),
                 lambda: group.create_volume("v", 0),
                 lambda: group.set_description("v", 'a "quote"'),
                 lambda: group.create_access("v"),
                 lambda: group.create_snapshot("v", "bad_name"),
                 lambda: group.create_chap_user("u", "short")):
        with pytest.raises(InvalidValue):
            call()
    assert sim.commands() == []
    assert sim.active_sessions() == 0


# --- terminal behaviour: wrapping, paging, confirmations, reprinted input -----------------

def test_wrapped_output_at_80_columns(sim, make_settings, monkeypatch):
    setup_without(monkeypatch, "stty hardwrap off", "stty columns 255")
    name = "volume-74cf9c04-4543-47ae-a937-a9b7c6c921e7"
    description = "d" * 66 + " wrapped after the space"
    with GroupClient(make_settings(sim)) as group:
        iqn = group.create_volume(name, 100, description=description)
        assert len(f"iSCSI target name is {iqn}.") > 80
        assert iqn == sim.load_state().find_volume(name).iqn
        info = group.show_volume(name)
        assert (info.iqn, info.description) == (iqn, description)
        assert [v.name for v in group.list_volumes()] == [name]
        group.create_access(name, initiator=LONG_INITIATOR)
        assert group.list_access(name)[0].initiator == LONG_INITIATOR
        snapshot = group.create_snapshot(name)
        assert [s.name for s in group.list_snapshots(name)] == [snapshot]
        assert group.clone_volume(name, name[:-1] + "f").endswith(name[:-1] + "f")


def test_account_with_paging_on(sim, make_settings, monkeypatch):
    setup_without(monkeypatch, "cli-settings paging off")
    with GroupClient(make_settings(sim)) as group:
        for n in range(30):
            group.create_volume(f"vol{n}", 10)
        assert len(group.list_volumes()) == 30
        info = group.show_volume("vol7")  # longer than one 24-line page
        assert info.fields["SectorSize"] == "512" and info.name == "vol7"
    assert sim.load_state().accounts["grpadmin"].paging is True


def test_account_with_confirmation_on(sim, make_settings, monkeypatch):
    setup_without(monkeypatch, "cli-settings confirmation off")
    with GroupClient(make_settings(sim)) as group:
        group.create_volume("vol1", 10)
        assert group.delete_volume("vol1") is True  # "(y/n) [n]" answered y
        assert not group.volume_exists("vol1")
        with pytest.raises(CliError, match="answered no"):
            group._ready_session().run(CliCommand(("logout",)), 5)
        assert group.group_params()["Group-Name"] == "group-0"


def test_reprinted_bad_input_closes_that_shell(sim, make_settings, monkeypatch):
    setup_without(monkeypatch, "cli-settings reprintBadInput off")
    with GroupClient(make_settings(sim)) as group:
        group.connect()
        started = time.monotonic()
        with pytest.raises(InvalidInput, match="volm show"):
            group._ready_session().run(CliCommand(("volm", "show")), 5)
        assert time.monotonic() - started < 4  # not the 5 s command timeout
        group.create_volume("vol1", 10)
        assert group.volume_exists("vol1")
    entries = sim.commands()
    assert len({e["conn"] for e in entries}) == 1
    assert len({e["session"] for e in entries}) == 2


def test_volume_sub_context_prompt(sim, group):
    group.create_volume("vol1", 10)
    session = group._ready_session()
    assert session.run(CliCommand(("volume", "select", "vol1")), 5) == []
    assert "Name: vol1" in session.run(CliCommand(("show",)), 5)
    session.run(CliCommand(("exit",)), 5)
    assert group.show_volume("vol1").name == "vol1"


class ScriptedChannel:
    """A channel that replays chunks of group output and records what the client sends."""

    def __init__(self, chunks: List[bytes]) -> None:
        self.chunks = list(chunks)
        self.sent: List[bytes] = []
        self.closed = False

    def recv_ready(self) -> bool:
        return False

    def recv(self, size: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def settimeout(self, seconds: float) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self) -> None:
        self.closed = True


class ActiveTransport:
    def is_active(self) -> bool:
        return True

    def close(self) -> None:
        pass


def scripted_session(chunks: List[bytes]) -> Tuple[cli_session.CliSession, ScriptedChannel]:
    session = cli_session.CliSession("127.0.0.1", 22, "u", "pw", known_hosts="/nonexistent")
    channel = ScriptedChannel(chunks)
    session.group_name = "grp"
    session._transport = ActiveTransport()  # type: ignore[assignment]
    session._channel = channel  # type: ignore[assignment]
    return session, channel


def test_reader_joins_split_characters_and_line_ends():
    session, channel = scripted_session([
        b"grpparams sh", b"ow\r", b"\nDescription: caf\xc3", b"\xa9 \xff\r\nGroup-Na",
        b"me: grp\r\n", b"grp> "])
    lines = session.run(CliCommand(("grpparams", "show")), 5)
    assert lines == ["Description: caf\u00e9 \ufffd", "Group-Name: grp"]
    assert channel.sent == [b"grpparams show\r"]


def test_reader_answers_pager_and_drops_events():
    session, channel = scripted_session([
        b"volume show\r\n", b"netmgtd:1.2:x.c:1:INFO:25.2.9:CLI: something\r\n",
        b"line 1\r\nPress any key to continue (Q to quit)", b"\r\nline 2\r\ngrp> "])
    lines = session.run(CliCommand(("volume", "show")), 5)
    assert [line for line in lines if line] == ["line 1", "line 2"]
    assert channel.sent == [b"volume show\r", b" "]


def test_reader_sees_prompt_only_at_the_end_after_a_line_break():
    session, _ = scripted_session([
        b"grpparams show\r\nDescription: grp> inside\r\n", b"grp> "])
    assert session.run(CliCommand(("grpparams", "show")), 5) == ["Description: grp> inside"]
    session, _ = scripted_session([b"grp> "])  # no line break: not the end
    with pytest.raises(ConnectionLost):
        session.run(CliCommand(("grpparams", "show")), 5)


def test_reader_detects_a_wrapped_reprint():
    command = CliCommand(("volm", "create", "x" * 70))
    reprint = ("grp> " + command.text).encode()
    session, channel = scripted_session([
        command.text.encode() + b"\r\n", b'Error: Bad command "volm".\r\n',
        reprint[:80] + b"\r\n" + reprint[80:]])
    with pytest.raises(InvalidInput, match="volm"):
        session.run(command, 5)
    assert channel.closed and session._channel is None


def test_reader_treats_end_of_file_as_a_lost_connection():
    session, channel = scripted_session([b"volume create v 1MB online\r\nVolume creat"])
    with pytest.raises(ConnectionLost) as caught:
        session.run(CliCommand(("volume", "create", "v", "1MB", "online")), 5)
    assert caught.value.command_sent and channel.closed


# --- lost connections, retries and verification ------------------------------------------

def test_read_only_command_is_retried_after_a_drop(sim, group):
    group.create_volume("vol1", 10)
    sim.set_faults([{"match": "^volume select vol1 show$", "when": "after", "action": "drop"}])
    assert group.show_volume("vol1").name == "vol1"
    shows = logged(sim, "volume select vol1 show")
    assert [e.get("fault") for e in shows] == ["drop", None]
    assert shows[0]["conn"] != shows[1]["conn"]


def test_create_after_drop_is_verified_not_resent(sim, group):
    sim.set_faults([{"match": "^volume create vol1 ", "when": "after", "action": "drop"}])
    iqn = group.create_volume("vol1", 10)
    assert iqn == sim.load_state().find_volume("vol1").iqn
    assert len(logged(sim, "volume create")) == 1
    assert len(logged(sim, "volume select vol1 show")) == 1


def test_create_dropped_before_running_is_sent_again(sim, group):
    sim.set_faults([{"match": "^volume create vol1 ", "when": "before", "action": "drop"}])
    iqn = group.create_volume("vol1", 10)
    assert iqn == sim.load_state().find_volume("vol1").iqn
    creates = logged(sim, "volume create")
    assert [(e["ok"], e.get("fault")) for e in creates] == [(False, "drop"), (True, None)]


@pytest.mark.parametrize(("fault_match", "operation", "check"), [
    ("^volume delete vol1$", lambda g: g.delete_volume("vol1"),
     lambda g, result: result is True and not g.volume_exists("vol1")),
    ("size", lambda g: g.extend_volume("vol1", 500),
     lambda g, result: g.show_volume("vol1").size_mb == 500),
    ("access create", lambda g: g.create_access("vol1", initiator=INITIATOR),
     lambda g, result: [r.id for r in g.list_access("vol1")] == [result]),
    ("clone", lambda g: g.clone_volume("vol1", "vol2"),
     lambda g, result: g.show_volume("vol2").iqn == result),
    ("rename", lambda g: g.rename_volume("vol1", "vol9"),
     lambda g, result: g.volume_exists("vol9") and not g.volume_exists("vol1")),
    ("multihost", lambda g: g.set_multihost("vol1", True),
     lambda g, result: g.show_volume("vol1").multihost),
    ("chapuser create", lambda g: g.create_chap_user("u1"),
     lambda g, result: g.show_chap_user("u1").password == result),
])
def test_changes_after_drop_are_verified(sim, group, fault_match, operation, check):
    group.create_volume("vol1", 10)
    sim.set_faults([{"match": fault_match, "when": "after", "action": "drop"}])
    result = operation(group)
    assert check(group, result)
    faulted = [e for e in sim.commands() if e.get("fault") == "drop"]
    assert len(faulted) == 1
    assert len([e for e in sim.commands() if e["command"] == faulted[0]["command"]]) == 1


def test_restore_after_drop_finds_the_automatic_snapshot(sim, group):
    group.create_volume("vol1", 10, online=False)
    group.create_snapshot("vol1", "s1")
    sim.set_faults([{"match": "restore", "when": "after", "action": "drop"}])
    saved = group.restore_snapshot("vol1", "s1")
    assert saved is not None and saved != "s1"
    assert len(logged(sim, "volume select vol1 snapshot select s1 restore")) == 1


def test_snapshot_create_after_drop_is_state_unknown(sim, group):
    group.create_volume("vol1", 10)
    sim.set_faults([{"match": "create-now", "when": "after", "action": "drop"}])
    with pytest.raises(StateUnknown, match="create-now") as caught:
        group.create_snapshot("vol1", "s1")
    assert "cannot be checked" in str(caught.value)
    assert len(logged(sim, "volume select vol1 snapshot create-now")) == 1


def test_drop_during_login_is_retried_as_unsent(sim, group):
    group.create_volume("vol1", 10)
    group.close()
    sim.set_faults([{"match": "^cli-settings events off$", "action": "drop"}])
    assert group.create_snapshot("vol1").startswith("vol1-")  # not StateUnknown
    assert len(logged(sim, "volume select vol1 snapshot create-now")) == 1
    assert len({e["conn"] for e in sim.commands()}) == 3


def test_retries_are_bounded(sim, make_settings):
    sim.set_faults([{"match": "^volume select vol1 show$", "action": "drop", "times": -1}])
    with GroupClient(make_settings(sim, retries=2)) as group:
        with pytest.raises(ConnectionLost):
            group.show_volume("vol1")
    assert len(logged(sim, "volume select vol1 show")) == 3


# --- timeouts ----------------------------------------------------------------------------

def test_slow_command_times_out_and_closes_the_session(sim, make_settings):
    with GroupClient(make_settings(sim, command_timeout=0.5)) as group:
        group.create_volume("vol1", 10)
        sim.set_faults([{"match": "^volume select vol1 show$", "action": "delay", "seconds": 5}])
        started = time.monotonic()
        with pytest.raises(GroupTimeout, match=r"0\.5 s") as caught:
            group.show_volume("vol1")
        assert 0.5 <= time.monotonic() - started < 4.5  # bounded: well before the 5 s delay
        assert not caught.value.retryable
        sim.wait_sessions(0, timeout=15)  # the group finishes the command first
        sim.clear_faults()
        assert group.show_volume("vol1").name == "vol1"


def test_create_that_timed_out_is_completed_by_the_group(sim, make_settings):
    """A slow group still makes the volume after the client stopped waiting (finding F1:
    the driver's cleanup waits for it with ``await_volume``)."""
    with GroupClient(make_settings(sim, command_timeout=0.5)) as group:
        sim.set_faults([{"match": "^volume create vol1 ", "action": "delay", "seconds": 2}])
        with pytest.raises(GroupTimeout, match="may still complete"):
            group.create_volume("vol1", 10, description="made late")
        late = group.await_volume("vol1", 30)
        assert late is not None and late.description == "made late"
    assert [e["ok"] for e in logged(sim, "volume create vol1 ")] == [True]


def test_await_volume_gives_up_after_its_bound(sim, group):
    started = time.monotonic()
    assert group.await_volume("vol1", 1.5) is None
    assert time.monotonic() - started >= 1.5
    shows = logged(sim, "volume select vol1 show")
    assert 2 <= len(shows) <= 4  # back-off from 0.5 s, a last look at the bound
    assert group.await_volume("vol1", 0) is None
    assert len(logged(sim, "volume select vol1 show")) == len(shows) + 1


def test_access_create_that_timed_out_is_awaited(sim, make_settings):
    """A slow group still adds the access record after the client stopped waiting (finding
    F3): ``await_access`` finds it, and only records of that initiator not known before."""
    with GroupClient(make_settings(sim, command_timeout=0.5)) as group:
        group.create_volume("vol1", 10)
        known = group.create_access("vol1", initiator="iqn.2024-01.org.example:host1")
        group.create_access("vol1", initiator="iqn.2024-01.org.example:host2")
        sim.set_faults([{"match": "^volume select vol1 access create ", "action": "delay",
                         "seconds": 2}])
        with pytest.raises(GroupTimeout, match="may still complete"):
            group.create_access("vol1", initiator="iqn.2024-01.org.example:host1")
        group.close()
        late = group.await_access("vol1", "IQN.2024-01.org.example:HOST1", {known}, 30)
        assert [r.initiator for r in late] == ["iqn.2024-01.org.example:host1"]
        assert late[0].id != known


def test_await_access_gives_up_after_its_bound(sim, group):
    group.create_volume("vol1", 10)
    known = group.create_access("vol1", initiator="iqn.2024-01.org.example:host1")
    started = time.monotonic()
    assert group.await_access("vol1", "iqn.2024-01.org.example:host1", {known}, 1.5) == []
    assert time.monotonic() - started >= 1.5
    assert 2 <= len(logged(sim, "volume select vol1 access show")) <= 4


def test_hung_command_times_out(sim, make_settings):
    with GroupClient(make_settings(sim, command_timeout=0.3)) as group:
        group.connect()
        sim.set_faults([{"match": "^volume create", "action": "hang", "when": "after"}])
        started = time.monotonic()
        with pytest.raises(GroupTimeout, match="may still complete"):
            group.create_volume("vol1", 10)
        assert time.monotonic() - started < 8  # bounded, not the hang
    assert len(logged(sim, "volume create")) == 1


def test_hung_login_times_out_and_is_retried_boundedly(sim, make_settings):
    sim.set_faults([{"match": "^stty hardwrap off$", "action": "hang", "times": -1}])
    started = time.monotonic()
    with GroupClient(make_settings(sim, login_timeout=0.3, retries=1)) as group:
        with pytest.raises(GroupTimeout, match="login") as caught:
            group.group_params()
    assert caught.value.retryable
    assert 0.6 <= time.monotonic() - started < 8
    assert len(logged(sim, "stty hardwrap off")) == 2
    sim.wait_sessions(0)


# --- refused connections, sessions and logins --------------------------------------------

def test_unreachable_group(sim, make_settings):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    with GroupClient(make_settings(sim, port=free_port, retries=1)) as group:
        with pytest.raises(GroupUnreachable, match=str(free_port)):
            group.connect()


def test_wrong_password(sim, make_settings):
    wrong = "Wrongpass-123"
    with GroupClient(make_settings(sim, password=wrong)) as group:
        with pytest.raises(AuthenticationFailed) as caught:
            group.connect()
    assert not caught.value.retryable
    assert_no_secret(str(caught.value), wrong, sim.password)
    assert "grpadmin" in str(caught.value)


def test_session_limit_message_then_close(sim_factory, make_settings, tmp_path):
    limited = sim_factory(max_sessions=1, session_limit_message=True)
    with GroupClient(make_settings(limited)) as holder:
        holder.connect()
        settings = make_settings(limited, slot_dir=str(tmp_path / "other"), retries=1)
        with GroupClient(settings) as refused:
            with pytest.raises(SessionRefused):
                refused.group_params()


def test_session_limit_refusal_and_retry(sim_factory, make_settings, tmp_path):
    limited = sim_factory(max_sessions=1)
    holder = GroupClient(make_settings(limited))
    holder.connect()
    other_slots = str(tmp_path / "other-slots")
    with GroupClient(make_settings(limited, slot_dir=other_slots, retries=0)) as refused:
        with pytest.raises(SessionRefused, match="first prompt"):
            refused.connect()
    threading.Timer(0.2, holder.close).start()
    with GroupClient(make_settings(limited, slot_dir=other_slots, retries=5,
                                   retry_delay=0.1)) as patient:
        assert patient.group_params()["Group-Name"] == "group-0"


def test_local_slots_cap_sessions(sim, make_settings):
    settings = make_settings(sim, max_sessions=1, slot_wait=0.3)
    with GroupClient(settings) as first:
        first.connect()
        started = time.monotonic()
        with GroupClient(settings) as second:
            with pytest.raises(SlotTimeout):
                second.connect()
        assert 0.3 <= time.monotonic() - started < 8
    with GroupClient(settings) as third:
        third.connect()


# --- host keys ---------------------------------------------------------------------------

def test_unknown_host_key_refused_when_strict(sim, make_settings, tmp_path):
    known = tmp_path / "empty_known_hosts"
    known.write_text("")
    with GroupClient(make_settings(sim, known_hosts=str(known))) as group:
        with pytest.raises(HostKeyRejected) as caught:
            group.connect()
    message = str(caught.value)
    assert f"ssh-keyscan -p {sim.port} {sim.host} >> {known}" in message
    assert "SHA256:" in message
    assert sim.commands() == []
    assert known.read_text() == ""


def test_unknown_host_key_recorded_with_accept_new(sim, make_settings, tmp_path):
    known = tmp_path / "new" / "known_hosts"
    with GroupClient(make_settings(sim, known_hosts=str(known),
                                   host_key_policy="accept-new")) as group:
        group.connect()
    assert known.read_text() == sim.known_hosts_line() + "\n"
    with GroupClient(make_settings(sim, known_hosts=str(known))) as strict:
        strict.connect()


def test_changed_host_key_refused(sim, sim_factory, make_settings, tmp_path):
    impostor = sim_factory()
    known = tmp_path / "known_hosts_changed"
    entry = f"[{sim.host}]:{sim.port}"
    known.write_text(f"# comment\n{entry} ssh-ed25519 {impostor.simulator.host_key.get_base64()}"
                     "\n")
    for policy in ("strict", "accept-new"):
        with GroupClient(make_settings(sim, known_hosts=str(known),
                                       host_key_policy=policy)) as group:
            with pytest.raises(HostKeyRejected, match="does NOT match") as caught:
                group.connect()
        assert f"ssh-keygen -R '{entry}'" in str(caught.value)
    rsa = paramiko.RSAKey.generate(1024)
    known.write_text(f"{entry} ssh-rsa {rsa.get_base64()}\n")
    with GroupClient(make_settings(sim, known_hosts=str(known))) as group:
        with pytest.raises(HostKeyRejected, match="does NOT match"):
            group.connect()
    assert sim.commands() == []


# --- secrets, logging, many processes ----------------------------------------------------

def test_log_hook_and_no_secrets(sim, group, calls):
    group.create_chap_user("chap1", CHAP_SECRET)
    with pytest.raises(NotFound):
        group.show_volume("missing")
    assert ("chapuser create chap1 password ***", calls[6][1], None) == calls[6]
    name, seconds, error = calls[-1]
    assert name == "volume select missing show" and 0 < seconds < 5
    assert error is not None and error.startswith("NotFound: ") and "does not exist" in error
    text = json.dumps(calls) + repr(group.settings) + repr(group._session)
    assert_no_secret(text, CHAP_SECRET, sim.password)
    assert "password=" not in repr(group.settings)


HOLDER = """
import json, sys, time
from eqliscsi.group import GroupClient, GroupSettings
job = json.loads(sys.stdin.readline())
with GroupClient(GroupSettings(**job["settings"])) as group:
    if job["mode"] == "hold":
        group.connect()
        print("connected", flush=True)
        time.sleep(60)
    name = job["name"]
    iqn = group.create_volume(name, 10)
    assert group.show_volume(name).iqn == iqn
    assert group.delete_volume(name)
print("done", flush=True)
"""


def start_process(settings: GroupSettings, mode: str, name: str = "") -> subprocess.Popen[str]:
    """A separate process using the client; the password travels on stdin only."""
    fields = {key: getattr(settings, key) for key in settings.__dataclass_fields__}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps({"settings": fields, "mode": mode, "name": name}) + "\n")
    proc.stdin.flush()
    return proc


def command_lines() -> List[bytes]:
    lines = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                lines.append(Path(f"/proc/{entry}/cmdline").read_bytes())
            except OSError:
                continue
    return lines


def test_many_processes_share_the_session_limit(sim_factory, make_settings):
    limited = sim_factory(max_sessions=3)
    settings = make_settings(limited, max_sessions=3, retries=0, slot_wait=60)
    procs = [start_process(settings, "work", f"p{n}") for n in range(12)]
    try:
        outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert [proc.returncode for proc in procs] == [0] * 12
    assert all(output.strip() == "done" for output in outputs)
    assert len(logged(limited, "volume create")) == 12
    limited.wait_sessions(0)


def test_killed_processes_release_slots_and_sessions(sim, make_settings):
    settings = make_settings(sim, max_sessions=3, slot_wait=0.3)
    holders = [start_process(settings, "hold") for _ in range(3)]
    try:
        for proc in holders:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "connected"
        sim.wait_sessions(3)
        assert not any(sim.password.encode() in line for line in command_lines())
        with GroupClient(settings) as blocked:
            with pytest.raises(SlotTimeout):
                blocked.connect()
        for proc in holders:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    finally:
        for proc in holders:
            proc.kill()
            proc.wait()
    sim.wait_sessions(0)
    with GroupClient(settings) as group:
        assert group.group_ip() == "127.0.0.1"
