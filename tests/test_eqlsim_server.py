"""The simulated group over real SSH: session behaviour, limits, faults, logs, restarts."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time

import paramiko
import pytest

from tests.conftest import SimShell

MORE = "Press any key to continue (Q to quit)"


def open_shell(client) -> SimShell:
    """A raw shell channel, nothing read yet."""
    channel = client.get_transport().open_session(timeout=5)
    channel.get_pty()
    channel.invoke_shell()
    return SimShell(channel)


# ---- login, terminal behaviour -------------------------------------------------------------


def test_login_shows_banner_event_and_prompt(sim):
    text = sim.shell(quiet=False).greeting
    assert "           Welcome to Group Manager\r\n" in text
    assert "Copyright 2001-2014 Dell Inc." in text
    assert re.search(r"\r\nnetmgtd:[\d.]+:rcc_util\.c:1024:INFO:25\.2\.9:CLI: Login to acc", text)
    assert text.endswith("\r\ngroup-0> ")
    assert not re.search(r"(?<!\r)\n", text), "every line ends with CRLF"


def test_passwords_compare_only_eight_characters(sim):
    assert sim.exec("whoami", sim.connect(password="simsecreXYZ")) == (0, "grpadmin\r\n")
    with pytest.raises(paramiko.AuthenticationException):
        sim.connect(password="simsecr")
    with pytest.raises(paramiko.AuthenticationException):
        sim.connect(user="root")


@pytest.mark.parametrize("enter", ["\r", "\n", "\r\n"])
def test_echo_and_each_enter_style_runs_one_command(sim, enter):
    shell = sim.shell()
    assert shell.run("whoami", eol=enter) == "whoami\r\ngrpadmin\r\ngroup-0> "
    assert shell.run("whoami") == "whoami\r\ngrpadmin\r\ngroup-0> "  # no extra prompt
    assert shell.run("") == "\r\ngroup-0> "


def test_output_wraps_at_80_columns_until_stty_says_otherwise(sim):
    shell = sim.shell()
    name = "volume-5f3c9e0a-1b2c-4d5e-8f90-123456789abc"
    lines = shell.run(f"volume create {name} 10").split("\r\n")
    iqn = sim.load_state().volume(name).iqn
    assert all(len(line) <= 80 for line in lines)
    assert lines[1] == "Volume creation succeeded."
    assert lines[2] + lines[3] == f"iSCSI target name is {iqn}."
    assert len(lines[2]) == 80
    shell.run("stty hardwrap off")
    reply = shell.run(f"volume select {name} clone {name}-2")
    assert f"\r\niSCSI target name is {sim.load_state().volume(name + '-2').iqn}.\r\n" in reply
    fresh = sim.shell()  # stty belongs to the session
    assert f"iSCSI Name: {iqn}\r\n" not in fresh.run(f"volume show {name}")
    fresh.run("stty columns 255")
    assert f"iSCSI Name: {iqn}\r\n" in fresh.run(f"volume show {name}")


def test_paging_pauses_and_continues_or_quits(sim):
    shell = sim.shell(quiet=False)
    shell.run("cli-settings events off")
    shell.run("volume create v 10")
    shell.send("volume select v show\r")
    first = shell.read_until(MORE)
    assert len(first.split("\r\n")) == 25  # echo line + 23 lines + the pause line
    shell.send(" ")
    rest = shell.read_prompt()
    assert rest.startswith("\r\n") and "SectorSize: 512" in rest
    shell.send("volume select v show\r")
    shell.read_until(MORE)
    shell.send("q")
    assert shell.read_prompt() == "\r\ngroup-0> "
    shell.run("cli-settings paging off")
    assert MORE not in shell.run("volume select v show")


def test_confirmation_prompts(sim):
    shell = sim.shell(quiet=False)
    shell.run("volume create v 1GB offline")
    shell.send("volume delete v\r")
    shell.read_until("Do you really want to delete the volume and destroy 1GB of data? (y/n) [n] ")
    assert shell.run("n") == "n\r\ngroup-0> "
    assert sim.load_state().find_volume("v") is not None
    shell.send("volume delete v\r")
    shell.read_until("(y/n) [n] ")
    assert "Volume deletion succeeded." in shell.run("y")
    assert sim.load_state().find_volume("v") is None
    shell.send("logout\r")
    shell.read_until("Do you really want to logout? (y/n) [n] ")
    shell.send("y\r")
    assert shell.read_eof() == "y\r\n"
    assert shell.channel.recv_exit_status() == 0


def test_abbreviations_verb_first_and_volume_context(sim):
    shell = sim.shell()
    shell.run("vol cr v 10 thin-prov")
    assert "Name: v\r\n" in shell.run("vol sel v sh")
    assert "\r\nv " in shell.run("show volume")
    assert shell.run("volume select v").endswith("\r\ngroup-0(volume_v)> ")
    assert "Name: v\r\n" in shell.run("show")
    assert shell.run("offline").endswith("group-0(volume_v)> ")
    assert shell.run("exit").endswith("\r\ngroup-0> ")
    assert sim.load_state().volume("v").status == "offline"


def test_bad_input_is_reprinted_and_left_for_editing(sim):
    shell = sim.shell(quiet=False)
    shell.run("cli-settings events off")
    shell.send("volm create x\r")
    assert shell.read_until("group-0> volm create x") == (
        'volm create x\r\nError: Bad command "volm".\r\ngroup-0> volm create x'
    )
    shell.send("\x15whoami\r")
    assert shell.read_prompt().endswith("whoami\r\ngrpadmin\r\ngroup-0> ")
    shell.run("cli-settings reprintBadInput off")
    assert shell.run("volm create x") == 'volm create x\r\nError: Bad command "volm".\r\ngroup-0> '


# ---- exec, host key, state access ----------------------------------------------------------


def test_exec_requests_run_one_command(sim):
    client = sim.connect()
    status, output = sim.exec("volume create v 1GB", client)
    iqn = sim.load_state().volume("v").iqn
    assert (status, output) == (0, f"Volume creation succeeded.\r\niSCSI target name is {iqn}.\r\n")
    assert sim.exec("volume select nope show", client) == (
        1,
        "% Error - Volume does not exist.\r\n",
    )
    assert sim.exec("bogus", client) == (1, 'Error: Bad command "bogus".\r\n')
    assert sim.exec("", client) == (0, "")
    assert sim.exec("volume delete v", client)[0] == 1  # still online


def test_known_hosts_line_is_valid(sim, tmp_path):
    line = sim.known_hosts_line()
    assert re.fullmatch(rf"\[127\.0\.0\.1\]:{sim.port} ssh-ed25519 AAAA\S+", line)
    client = paramiko.SSHClient()
    client.load_host_keys(str(sim.write_known_hosts(tmp_path / "known_hosts")))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        sim.host,
        sim.port,
        username=sim.user,
        password=sim.password,
        look_for_keys=False,
        allow_agent=False,
        timeout=5,
    )
    client.close()


def test_pool_size_and_state_snapshot(sim):
    sim.set_pool_size("default", 3000)
    assert sim.exec("volume create v 1GB")[0] == 0
    assert sim.exec("volume create w 1GB")[1] == (
        "% Error - Not enough free space in the pool to complete the operation.\r\n"
    )
    state = sim.load_state()
    assert [v.name for v in state.volumes.values()] == ["v"]
    assert state.free_mb("default") == 3000 - 2070


def test_two_simulators_share_one_state_directory(sim, sim_factory):
    other = sim_factory(state_dir=sim.state_dir)
    assert sim.exec("volume create shared 10")[0] == 0
    assert "Name: shared" in other.exec("volume show shared")[1]


def test_restart_keeps_group_settings_and_host_key(sim_factory):
    first = sim_factory(group_name="grp1")
    shell = first.shell()
    shell.run("volume create keep 10")
    key = first.known_hosts_line().split()[-1]
    first.stop()
    second = sim_factory(state_dir=first.state_dir, group_name="grp1")
    assert second.known_hosts_line().split()[-1] == key
    text = second.shell(quiet=False).greeting
    assert "netmgtd" not in text  # events stayed off for the account
    assert text.endswith("\r\ngrp1> ")
    assert "Name: keep" in second.exec("volume show keep")[1]


def test_command_log_masks_passwords(sim):
    client = sim.connect()
    sim.exec("chapuser create u1 password s3cretpw1", client)
    sim.exec("volume select ghost show", client)
    entries = sim.commands()
    assert [e["command"] for e in entries] == [
        "chapuser create u1 password ***",
        "volume select ghost show",
    ]
    assert entries[0]["ok"] is True and entries[0]["error"] == ""
    assert entries[1] == {**entries[1], "ok": False, "error": "% Error - Volume does not exist."}
    assert (
        entries[0]["conn"] == entries[1]["conn"] and entries[0]["session"] != entries[1]["session"]
    )
    assert {e["user"] for e in entries} == {"grpadmin"}
    assert "s3cretpw1" not in (sim.state_dir / "commands.log").read_text()


# ---- session limit -------------------------------------------------------------------------


def test_session_limit_refuses_the_eighth_and_recovers(sim_factory):
    sim = sim_factory(max_sessions=7)
    clients = [sim.connect(), sim.connect()]
    shells = [sim.shell(clients[i % 2], quiet=False) for i in range(7)]
    assert sim.active_sessions() == 7
    refused = open_shell(clients[0])
    assert refused.read_eof() == ""
    _, stdout, _ = clients[1].exec_command("whoami", timeout=5)
    assert stdout.read() == b""
    shells.pop().close()  # a channel close frees a slot
    sim.wait_sessions(6)
    shells.append(sim.shell(clients[0], quiet=False))
    sim.wait_sessions(7)
    clients[1].get_transport().sock.shutdown(socket.SHUT_RDWR)  # the client vanishes
    sim.wait_sessions(4)
    assert sim.exec("whoami") == (0, "grpadmin\r\n")
    sim.wait_sessions(4)


def test_session_limit_message_is_optional(sim_factory):
    sim = sim_factory(max_sessions=1, session_limit_message=True)
    shell = sim.shell(quiet=False)
    assert open_shell(sim.connect()).read_eof() == (
        "% Error - Maximum number of CLI sessions reached.\r\n"
    )
    shell.close()
    sim.wait_sessions(0)


# ---- faults --------------------------------------------------------------------------------


def test_fault_drop_before_closes_without_running(sim):
    sim.set_faults([{"match": r"^volume create", "action": "drop"}])
    shell = sim.shell()
    shell.send("volume create v 10\r")
    assert shell.read_eof() == "volume create v 10\r\n"
    assert sim.load_state().find_volume("v") is None
    assert sim.exec("volume create v 10")[0] == 0  # used up (times defaults to 1)
    assert sim.commands()[-2]["fault"] == "drop"


def test_fault_drop_after_runs_then_closes_before_the_prompt(sim):
    sim.set_faults([{"match": "create", "when": "after", "action": "drop"}])
    shell = sim.shell()
    shell.send("volume create v 10\r")
    text = shell.read_eof()
    assert "Volume creation succeeded." in text and not text.endswith("> ")
    assert sim.load_state().find_volume("v") is not None
    sim.wait_sessions(0)


def test_fault_error_before_and_after(sim):
    sim.set_faults(
        [
            {"match": "volume create a ", "action": "error", "message": "% Error - Busy."},
            {"match": "volume create b ", "when": "after", "action": "error"},
        ]
    )
    assert sim.exec("volume create a 10") == (1, "% Error - Busy.\r\n")
    assert sim.exec("volume create b 10") == (1, "% Error - Injected failure.\r\n")
    names = {v.name for v in sim.load_state().volumes.values()}
    assert names == {"b"}
    logged = [(e["ok"], e["error"], e["fault"]) for e in sim.commands()]
    assert logged == [(False, "% Error - Busy.", "error"), (True, "", "error")]


def test_fault_delay(sim):
    sim.set_faults([{"match": "whoami", "action": "delay", "seconds": 0.3}])
    client = sim.connect()
    start = time.monotonic()
    assert sim.exec("whoami", client) == (0, "grpadmin\r\n")
    assert time.monotonic() - start >= 0.3


def test_fault_hang_ends_when_the_client_gives_up(sim):
    sim.set_faults([{"match": "volume create", "action": "hang", "seconds": 60}])
    shell = sim.shell()
    shell.send("volume create v 10\r")
    with pytest.raises(TimeoutError):
        shell.read_prompt(timeout=0.3)
    shell.close()
    sim.wait_sessions(0, timeout=2)
    assert sim.load_state().find_volume("v") is None


def test_fault_nth_and_times(sim):
    sim.set_faults([{"nth": 2, "action": "error", "times": -1}])
    for _ in range(2):
        client = sim.connect()
        results = [sim.exec("whoami", client)[0] for _ in range(3)]
        assert results == [0, 1, 0]
    sim.set_faults([{"match": "whoami", "action": "error", "times": 2}])
    assert [sim.exec("whoami")[0] for _ in range(3)] == [1, 1, 0]
    assert json.loads((sim.state_dir / "faults.json").read_text())[0]["times"] == 0
    with pytest.raises(ValueError):
        sim.set_faults([{"action": "explode"}])
    sim.clear_faults()
    assert sim.exec("whoami")[0] == 0


# ---- OpenSSH client ------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed")
def test_openssh_client_exec_and_interactive(sim, tmp_path):
    askpass = tmp_path / "askpass"
    askpass.write_text('#!/bin/sh\necho "$EQLSIM_TEST_PASSWORD"\n')
    askpass.chmod(0o700)
    env = {
        **os.environ,
        "SSH_ASKPASS": str(askpass),
        "SSH_ASKPASS_REQUIRE": "force",
        "EQLSIM_TEST_PASSWORD": sim.password,
    }
    destination = f"{sim.user}@{sim.host}"
    base = [
        "ssh",
        "-F",
        "/dev/null",
        "-p",
        str(sim.port),
        "-o",
        f"UserKnownHostsFile={sim.write_known_hosts(tmp_path / 'known_hosts')}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "NumberOfPasswordPrompts=1",
        "-o",
        "ConnectTimeout=5",
    ]

    def ssh(*arguments, stdin_text=""):
        """Run ssh; returns (exit status, stdout with its CRLFs untouched)."""
        done = subprocess.run(
            [*base, *arguments],
            env=env,
            input=stdin_text.encode(),
            capture_output=True,
            timeout=20,
        )
        assert done.returncode in (0, 1), done.stderr
        return done.returncode, done.stdout.decode()

    status, output = ssh(destination, "volume create osvol 10")
    assert status == 0
    assert output.startswith("Volume creation succeeded.\r\niSCSI target name is iqn.")
    assert ssh(destination, "volume select nope show") == (
        1,
        "% Error - Volume does not exist.\r\n",
    )
    status, output = ssh("-tt", destination, stdin_text="cli-settings events off\rwhoami\rexit\r")
    assert status == 0
    assert "Welcome to Group Manager" in output
    assert "whoami\r\ngrpadmin\r\ngroup-0> " in output


# ---- real iSCSI targets ----------------------------------------------------------------------


@pytest.mark.iscsi
@pytest.mark.skipif(shutil.which("iscsi-ls") is None, reason="iscsi-ls (libiscsi-bin) missing")
def test_volumes_become_real_targets_on_the_group_ip(sim_factory):
    sim = sim_factory(iscsi=True)
    group_ip = sim.load_state().group.ipaddress
    assert group_ip != sim.host and group_ip.startswith("127.")

    def discover():
        done = subprocess.run(
            ["iscsi-ls", "-s", f"iscsi://{group_ip}:3260"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return done.stdout

    assert sim.exec("volume create vol1 100MB")[0] == 0
    assert sim.exec("volume select vol1 access create ipaddress *.*.*.*")[0] == 0
    iqn = sim.load_state().volume("vol1").iqn
    listing = discover()
    assert f"Target:{iqn} Portal:{group_ip}:3260,1" in listing
    assert "DIRECT_ACCESS" in listing
    assert sim.exec("volume select vol1 offline")[0] == 0
    assert iqn not in discover()
