"""``python3 -m tests.eqlsim``: start-up contract, signals, and the choice of backend."""

from __future__ import annotations

import importlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import paramiko
import pytest

from tests.eqlsim import __main__ as standalone
from tests.eqlsim.backend import FileBackend
from tests.eqlsim.server import load_host_key

REPO = Path(__file__).resolve().parent.parent


def read_line(process: subprocess.Popen[bytes], timeout: float = 10.0) -> str:
    """One stdout line, waiting at most ``timeout`` seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "the simulator printed nothing"
    line: str = process.stdout.readline().decode()
    return line


def start(tmp_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.eqlsim",
            "--state-dir",
            str(tmp_path / "state"),
            "--listen",
            "127.0.0.1:0",
            "--iscsi",
            "off",
            "--group-name",
            "standalone",
            *extra,
        ],
        cwd=REPO,
        env={**os.environ, "EQLSIM_PASSWORD": "envsecret1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_start_serve_and_stop(tmp_path, stop_signal):
    process = start(tmp_path, "--max-sessions", "3", "--pool-size", "2TB")
    try:
        line = read_line(process)
        host, port = line.removeprefix("eqlsim listening on ").strip().rsplit(":", 1)
        assert line == f"eqlsim listening on 127.0.0.1:{port}\n" and int(port) > 0
        key = load_host_key(tmp_path / "state" / "ssh_host_ed25519_key")
        client = paramiko.SSHClient()
        client.get_host_keys().add(f"[{host}]:{port}", "ssh-ed25519", key)
        client.connect(
            host,
            int(port),
            username="grpadmin",
            password="envsecret1",
            look_for_keys=False,
            allow_agent=False,
            timeout=5,
        )
        _, stdout, _ = client.exec_command("pool select default show", timeout=5)
        assert "TotalCapacity: 2TB\r\n" in stdout.read().decode()
        client.close()
        process.send_signal(stop_signal)
        assert process.wait(timeout=10) == 0
        assert process.stdout is not None and process.stdout.read() == b""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_help_documents_every_flag():
    done = subprocess.run(
        [sys.executable, "-m", "tests.eqlsim", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0
    for flag in (
        "--state-dir",
        "--listen",
        "--group-name",
        "--user",
        "--password",
        "--max-sessions",
        "--pool-size",
        "--iscsi",
        "--group-ip",
        "--messages",
        "--host-key",
        "--session-limit-message",
        "--max-access-records",
        "--idle-logout",
    ):
        assert flag in done.stdout


def test_bad_arguments_are_refused(tmp_path):
    for argv in (["--listen", "nowhere"], ["--listen", "127.0.0.1:1", "--pool-size", "10XB"]):
        with pytest.raises(SystemExit):
            standalone.parse_args(["--state-dir", str(tmp_path), *argv])


class FakeIscsi(SimpleNamespace):
    """Stands in for tests.eqlsim.iscsi: its backend refuses to start."""

    class BackendUnavailable(Exception):
        pass

    @staticmethod
    def pick_free_group_ip() -> str:
        return "127.0.0.77"

    class TgtBackend(FileBackend):
        def __init__(self, state_dir, group_ip):
            super().__init__(state_dir)

        def start(self):
            raise FakeIscsi.BackendUnavailable("tgtd needs root")


def test_auto_falls_back_to_plain_files_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(standalone, "_iscsi_module", lambda mode: FakeIscsi())
    args = standalone.parse_args(["--state-dir", str(tmp_path), "--listen", "127.0.0.1:0"])
    sim = standalone.start_simulator(args)
    try:
        assert type(sim.backend) is FileBackend
        assert sim.store.load().group.ipaddress == "127.0.0.1"
    finally:
        sim.stop()
    assert capsys.readouterr().err == (
        "eqlsim: iSCSI off (tgtd needs root); volumes are plain files\n"
    )
    args.iscsi = "on"
    with pytest.raises(SystemExit, match="tgtd needs root"):
        standalone.start_simulator(args)


def test_iscsi_module_choice(monkeypatch, capsys):
    assert standalone._iscsi_module("off") is None

    def missing(name):
        raise ImportError("No module named 'tests.eqlsim.iscsi'")

    monkeypatch.setattr(importlib, "import_module", missing)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/sbin/tgtd")
    assert standalone._iscsi_module("auto") is None
    assert "No module named" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        standalone._iscsi_module("on")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert standalone._iscsi_module("auto") is None
    assert "needs root and tgtd" in capsys.readouterr().err


@pytest.mark.iscsi
def test_sigkilled_simulator_leaves_no_tgtd(tmp_path):
    """tgtd ignores SIGTERM and would outlive a killed simulator unless told otherwise."""
    from tests import iscsi_tools

    iscsi_tools.require_iscsi()
    process = start(tmp_path, "--iscsi", "on")
    try:
        assert read_line(process).startswith("eqlsim listening on ")
        tgtd = json.loads((tmp_path / "state" / "tgt" / "tgtd.pid").read_text())["pid"]
        assert Path(f"/proc/{tgtd}/cmdline").read_bytes().split(b"\0")[0] == b"tgtd"
        process.kill()
        process.wait(timeout=10)
        for _ in range(100):  # bounded: the kernel sends the parent-death signal at once
            if _gone(tgtd):
                break
            time.sleep(0.05)
        assert _gone(tgtd)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def _gone(pid: int) -> bool:
    """No such process any more, or only a zombie waiting for PID 1 to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"
