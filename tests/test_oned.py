"""The oned contract: invocation forms, stdout/stderr discipline, error mapping, debug log."""

import io
import os
import re
import subprocess
import sys
import syslog
from pathlib import Path

import pytest

from eqliscsi import errors, oned
from eqliscsi.oned import (
    ConfigError,
    DriverError,
    DsInvocation,
    InputError,
    clean_message,
    execute_action,
    mask_secrets,
    one_line,
    record_cli_command,
    register_secret,
    remotes_dir_of,
)
from tests.oned_xml import b64

XML = "<DS_DRIVER_ACTION_DATA><IMAGE><PATH>/x</PATH></IMAGE></DS_DRIVER_ACTION_DATA>"


@pytest.fixture(autouse=True)
def fresh_secrets(monkeypatch):
    monkeypatch.setattr(oned, "_secrets", set())


def stdin(text: str = "") -> io.BytesIO:
    return io.BytesIO(text.encode())


# --- invocation forms --------------------------------------------------------------------

@pytest.mark.parametrize(("args", "stdin_text"), [
    ([b64(XML), "7"], ""),          # OpenNebula 4.x - 6.6
    (["-", "7"], b64(XML)),         # 6.4.4+/6.6.2+ with -i
    (["7"], b64(XML)),              # 6.8+, 7.x
    (["7"], b64(XML) + "\n"),       # forwarded by bash: trailing newline
])
def test_all_three_invocation_forms(args, stdin_text):
    invocation = DsInvocation.parse(args, stdin(stdin_text))
    assert invocation == DsInvocation(7, XML.encode())


def test_stdin_is_not_read_when_the_data_is_an_argument():
    class Untouchable(io.BytesIO):
        def read(self, *args):
            raise AssertionError("stdin read")
    assert DsInvocation.parse([b64(XML), "-1"], Untouchable()).object_id == -1


@pytest.mark.parametrize(("args", "stdin_text", "message"), [
    ([], "", "expected '<id>' (action data on stdin), '- <id>' or '<base64> <id>', got 0"),
    (["a", "b", "c"], "", "got 3 arguments"),
    (["x7"], b64(XML), "invalid object id 'x7': expected an integer"),
    (["7"], "", "no action data: expected base64 text"),
    (["7"], "  \n", "no action data: expected base64 text"),
    (["-", "7"], "not base64!", "invalid action data: not valid base64"),
    (["7"], b64(XML)[:-3], "invalid action data: not valid base64"),
    (["7"], b64(XML)[:20] + "\n" + b64(XML)[20:], "invalid action data: not valid base64"),
    (["7"], "====", "invalid action data: not valid base64"),
    ([XML, "7"], "", "invalid action data: not valid base64"),
])
def test_invocation_errors(args, stdin_text, message):
    with pytest.raises(InputError) as error:
        DsInvocation.parse(args, stdin(stdin_text))
    assert message in str(error.value)


# --- message hygiene ---------------------------------------------------------------------

def test_mask_secrets_longest_first_and_one_line():
    register_secret("s3cr3t")
    register_secret("s3cr3t-longer")
    register_secret("")
    assert mask_secrets("a s3cr3t-longer b s3cr3t") == "a *** b ***"
    assert one_line("line one\n  line two\r\n\nend\x00x\tt") == "line one line two end?x\tt"
    assert clean_message("pw=s3cr3t\nnext") == "pw=*** next"


def test_remotes_dir_is_two_levels_above_the_script_directory():
    assert remotes_dir_of("/var/lib/one/remotes/datastore/eqliscsi/stat") == Path(
        "/var/lib/one/remotes")


# --- execute_action ----------------------------------------------------------------------

@pytest.fixture
def remotes(tmp_path):
    (tmp_path / "datastore" / "eqliscsi").mkdir(parents=True)
    return tmp_path


def run(remotes: Path, func, *, args=("7",), data="", environ=None, conf=None):
    environ = dict(environ or {})
    if conf is not None:
        path = remotes / "etc" / "datastore" / "eqliscsi" / "eqliscsi.conf"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(conf)
        path.chmod(0o600)
    script = str(remotes / "datastore" / "eqliscsi" / "testaction")
    return execute_action("testaction", func, [script, *args], stdin(data), environ)


def test_success_prints_only_the_result(remotes, capsys):
    def action(act):
        print("stray output")
        assert act.name == "testaction" and act.args == ("7",)
        assert act.remotes_dir == remotes and act.conf.path is None
        return "4"
    assert run(remotes, action) == 0
    out, err = capsys.readouterr()
    assert out == "4\n"
    assert err == "stray output\n"


def test_action_returning_none_prints_nothing(remotes, capsys):
    assert run(remotes, lambda act: None) == 0
    assert capsys.readouterr() == ("", "")


def test_action_reads_the_ds_invocation(remotes, capsys):
    assert run(remotes, lambda act: str(act.ds_invocation().object_id), data=b64(XML)) == 0
    assert capsys.readouterr().out == "7\n"


def fail_with(exc):
    def action(act):
        raise exc
    return action


def test_expected_error_gives_error_line_and_one_reason_line(remotes, capsys):
    def action(act):
        print("partial result")
        raise InputError("bad\ninput")
    assert run(remotes, action) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "partial result\nERROR: testaction: bad input\nbad input\n"


def test_group_client_errors_are_expected_errors(remotes, capsys):
    assert run(remotes, fail_with(errors.NotFound("volume select x show",
                                                  ["% Error - Volume does not exist."]))) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "`volume select x show`: % Error - Volume does not exist.")


def test_unexpected_error_is_an_internal_error_without_traceback(remotes, capsys):
    assert run(remotes, fail_with(ValueError("boom"))) == 1
    assert capsys.readouterr().err == (
        "ERROR: testaction: internal error: ValueError: boom\n"
        "internal error: ValueError: boom\n")


def test_keyboard_interrupt(remotes, capsys):
    assert run(remotes, fail_with(KeyboardInterrupt())) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "interrupted"


def test_reason_starting_with_dash_gets_a_prefix(remotes, capsys):
    assert run(remotes, fail_with(DriverError("-rf failed"))) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "error: -rf failed"


def test_empty_message_falls_back_to_the_type(remotes, capsys):
    assert run(remotes, fail_with(ConfigError())) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "ConfigError"


@pytest.mark.parametrize(("environ", "conf"), [
    ({"EQLISCSI_DEBUG": "1"}, None),
    ({}, 'EQL_DEBUG="yes"\n'),
])
def test_debug_switch_adds_a_traceback_as_debug_lines(remotes, capsys, environ, conf):
    assert run(remotes, fail_with(ValueError("boom")), environ=environ, conf=conf) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "ERROR: testaction: internal error: ValueError: boom"
    assert lines[1] == "DEBUG: testaction: Traceback (most recent call last):"
    assert all(line.startswith("DEBUG: testaction: ") for line in lines[1:-1])
    assert lines[-1] == "internal error: ValueError: boom"


def test_secrets_from_the_conf_never_leave_the_process(remotes, capsys):
    conf = 'EQL_PASS="Pa55-w0rd"\nEQL_DEBUG=yes\n'
    assert run(remotes, fail_with(RuntimeError("login Pa55-w0rd refused")), conf=conf) == 1
    err = capsys.readouterr().err
    assert "Pa55-w0rd" not in err
    assert err.splitlines()[-1] == "internal error: RuntimeError: login *** refused"


@pytest.mark.parametrize(("version", "markers"), [
    ("4.14.2\n", True), ("5.12.0.4", True), ("6.0.0.2", True), ("6.2.0", False),
    ("6.10.5", False), ("7.0.1", False), ("garbage", False), (None, False),
])
def test_error_markers_for_opennebula_6_0_and_older(remotes, capsys, version, markers):
    if version is not None:
        (remotes / "VERSION").write_text(version)
    assert run(remotes, fail_with(DriverError("it broke"))) == 1
    err = capsys.readouterr().err
    if markers:
        assert err == ("ERROR: testaction: it broke\nERROR MESSAGE --8<------\nit broke\n"
                       "ERROR MESSAGE ------>8--\n")
    else:
        assert err == "ERROR: testaction: it broke\nit broke\n"


def test_bad_conf_is_reported_cleanly(remotes, capsys):
    assert run(remotes, lambda act: "never", conf="EQL_PORT=http\n") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[-1].startswith("EQL_PORT in ")
    assert "expected an integer 1-65535, got 'http'" in err


def test_debug_log_file_records_actions_and_cli_commands(remotes, capsys, tmp_path):
    log = tmp_path / "debug.log"
    conf = f'EQL_DEBUG_LOG="{log}"\nEQL_PASS="Pa55-w0rd"\n'

    def action(act):
        record_cli_command("volume select v1 show", 0.25, None)
        record_cli_command("chapuser create u password Pa55-w0rd", 1.5, "% Error - Pa55-w0rd")
        return "ok"

    assert run(remotes, action, args=(b64(XML) * 3, "7"), conf=conf) == 0
    entries = log.read_text().splitlines()
    assert len(entries) == 4
    assert all(" testaction[" in entry for entry in entries)
    assert entries[0].endswith(f"start: <{len(b64(XML)) * 3} characters> 7")
    assert entries[1].endswith("cli ok 0.250s: volume select v1 show")
    assert entries[2].endswith("cli failed 1.500s: chapuser create u password ***: % Error - ***")
    assert " end: ok after " in entries[3]
    assert log.stat().st_mode & 0o777 == 0o600
    assert capsys.readouterr().out == "ok\n"


def test_debug_log_records_failures(remotes, capsys, tmp_path):
    log = tmp_path / "debug.log"
    assert run(remotes, fail_with(InputError("nope")), conf=f"EQL_DEBUG_LOG={log}\n") == 1
    assert re.search(r"\]: end: failed after \d+\.\d{3}s: nope$", log.read_text())


def test_debug_log_to_syslog(remotes, capsys, monkeypatch):
    sent = []
    monkeypatch.setattr(syslog, "openlog", lambda *args: None)
    monkeypatch.setattr(syslog, "syslog", lambda priority, text: sent.append(text))
    assert run(remotes, lambda act: "ok", conf="EQL_DEBUG_LOG=syslog\n") == 0
    assert sent[0] == "testaction: start: 7"
    assert sent[1].startswith("testaction: end: ok after ")


def test_unwritable_debug_log_only_warns(remotes, capsys, tmp_path):
    target = tmp_path / "missing-dir" / "debug.log"
    assert run(remotes, lambda act: "ok", conf=f"EQL_DEBUG_LOG={target}\n") == 0
    out, err = capsys.readouterr()
    assert out == "ok\n"
    assert err == (f"WARN: testaction: cannot open the debug log {target}: "
                   "No such file or directory\n")


def test_log_lines(capsys, monkeypatch):
    monkeypatch.setattr(oned, "_action_name", "cp")
    register_secret("hunter2")
    oned.log_info("copying\nfrom hunter2")
    oned.log_warn("w")
    oned.log_error("e")
    oned.log_debug("d")
    assert capsys.readouterr().err == (
        "INFO: cp: copying from ***\nWARN: cp: w\nERROR: cp: e\nDEBUG: cp: d\n")


ACTION_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from eqliscsi import oned
def act(action):
    if action.args[0] == "fail":
        raise oned.DriverError("no luck")
    return "x" * 200000 if action.args[0] == "big" else "done"
oned.run_action("x", act)
"""


@pytest.mark.parametrize("mode, status, out", [("ok", 0, "done\n"), ("big", 0, "x" * 200000 + "\n"),
                                               ("fail", 1, "")])
def test_run_action_exits_with_the_status(remotes, mode, status, out):
    """A real process: run_action ends it with os._exit after flushing stdout and stderr."""
    script = remotes / "datastore" / "eqliscsi" / "x"
    script.write_text(ACTION_SCRIPT.format(repo=str(Path(__file__).resolve().parents[1])))
    done = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], "HOME": str(remotes)}, timeout=60,
                          check=False)
    assert (done.returncode, done.stdout) == (status, out)
    assert done.stderr == ("ERROR: x: no luck\nno luck\n" if mode == "fail" else "")
