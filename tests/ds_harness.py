"""Run datastore actions the way oned does, against a simulated group with real iSCSI.

``DsHarness`` builds a private remotes tree (``<tmp>/remotes/datastore/eqliscsi/<action>``
symlinks to the repository's scripts, like an installed driver), a 0600 conf file pointing
at the simulator (EQL_PASS only there, never on argv), a known_hosts file, a staging and a
slot directory, and runs actions as subprocesses with base64 action data in one of
oned's three invocation forms.  ``ds`` is the fixture: a fresh group with tgtd targets
(skipped outside CI when not root or tools are missing, a failure in CI).
"""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Type

import pytest

from eqliscsi.group import GroupClient, GroupSettings
from tests.conftest import RunningSim
from tests.eqlsim.iscsi import TgtBackend
from tests.eqlsim.state import Volume
from tests.iscsi_tools import require_iscsi
from tests.oned_xml import Fields, action_xml, b64, datastore_xml, image_xml

REPO = Path(__file__).resolve().parent.parent
ACTIONS = ("cp", "mkfs", "rm", "clone", "monitor", "snap_delete", "snap_revert",
           "snap_flatten", "stat")
VENV_BIN = Path(sys.executable).parent
FRONTEND = "iqn.2024-11.org.example.cloud:frontend"
LUN = TgtBackend.data_lun
MIB = 1024 * 1024
ACTION_TIMEOUT = 120.0

iscsi = pytest.mark.iscsi


@contextmanager
def serve_http(handler: Type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server on 127.0.0.1 answering with ``handler``; yields its base URL
    (``http://127.0.0.1:PORT``) and stops it afterwards."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass(frozen=True)
class DsRun:
    """One finished action: exit code, stdout and stderr as text."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def reason(self) -> str:
        """The failure reason line (the last stderr line), after checking the contract."""
        assert self.returncode == 1, self.stderr
        assert self.stdout == ""
        lines = self.stderr.splitlines()
        assert f"ERROR: {lines[-2].split(': ', 2)[1]}: {lines[-1]}" == lines[-2], lines
        return lines[-1]

    def ok(self) -> str:
        """stdout of a successful run (after checking it succeeded)."""
        assert self.returncode == 0, self.stderr
        assert "ERROR" not in self.stderr, self.stderr
        return self.stdout


class DsHarness:
    """A simulated group plus everything an action needs to reach it."""

    def __init__(self, sim: RunningSim, base: Path) -> None:
        self.sim = sim
        self.base = base
        self.remotes = base / "remotes"
        self.staging = base / "staging"
        self.slots = base / "slots"
        base.mkdir()
        self.known_hosts = sim.write_known_hosts(base / "known_hosts")
        self.conf = base / "eqliscsi.conf"
        driver_dir = self.remotes / "datastore" / "eqliscsi"
        driver_dir.mkdir(parents=True)
        for action in ACTIONS:
            (driver_dir / action).symlink_to(REPO / "datastore" / "eqliscsi" / action)
        self.staging.mkdir()
        self.write_conf()

    # --- configuration ---------------------------------------------------------------------

    def write_conf(self, **extra: str) -> None:
        """The conf file: the simulator's address and account, LUN 1, private directories,
        the test front-end initiator, plus ``extra`` keys."""
        values: Dict[str, str] = {
            "EQL_HOST": self.sim.host, "EQL_PORT": str(self.sim.port),
            "EQL_USER": self.sim.user, "EQL_PASS": self.sim.password,
            "EQL_KNOWN_HOSTS": str(self.known_hosts), "EQL_POOL": "default",
            "EQL_LUN": str(LUN), "EQL_SLOT_DIR": str(self.slots),
            "EQL_STAGING_DIR": str(self.staging), "EQL_FRONTEND_INITIATOR": FRONTEND,
            "EQL_CONNECT_TIMEOUT": "5", "EQL_COMMAND_TIMEOUT": "10",
        }
        values.update(extra)
        self.conf.write_text("".join(f'{key}="{value}"\n' for key, value in values.items()))
        self.conf.chmod(0o600)

    def env(self) -> Dict[str, str]:
        home = self.base / "home"
        home.mkdir(exist_ok=True)
        return {"PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": str(home), "EQLISCSI_CONF": str(self.conf), "LANG": "C.UTF-8"}

    # --- running actions -------------------------------------------------------------------

    def run(self, action: str, xml: str, *, object_id: int = 42, form: str = "stdin",
            env: Optional[Dict[str, str]] = None) -> DsRun:
        """Run ``action`` like oned: ``form`` argv (4.x-6.6), dash (6.4.4+ ``-i``) or stdin
        (6.8+)."""
        encoded = b64(xml)
        args, data = {"argv": ([encoded, str(object_id)], ""),
                      "dash": (["-", str(object_id)], encoded),
                      "stdin": ([str(object_id)], encoded)}[form]
        script = self.remotes / "datastore" / "eqliscsi" / action
        done = subprocess.run([str(script), *args], input=data.encode(), capture_output=True,
                              env={**self.env(), **(env or {})}, timeout=ACTION_TIMEOUT,
                              check=False, cwd=self.base)
        return DsRun(done.returncode, done.stdout.decode(), done.stderr.decode())

    def run_terminated(self, action: str, xml: str, started: Callable[[], bool], what: str,
                       env: Optional[Dict[str, str]] = None) -> DsRun:
        """Run ``action`` (stdin form) and send it oned's SIGTERM once ``started()`` holds
        (``what`` did not happen: the test fails after 20 s)."""
        script = self.remotes / "datastore" / "eqliscsi" / action
        data = self.base / f"{action}.stdin"
        data.write_text(b64(xml))
        with open(data, "rb") as stdin:
            process = subprocess.Popen([str(script), "42"], stdin=stdin,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       env={**self.env(), **(env or {})}, cwd=self.base)
        try:
            deadline = time.monotonic() + 20
            while not started():
                assert time.monotonic() < deadline, what
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=ACTION_TIMEOUT)
        finally:
            process.kill()
            process.wait()
        return DsRun(process.returncode, stdout.decode(), stderr.decode())

    # --- the group -------------------------------------------------------------------------

    @contextmanager
    def group(self) -> Iterator[GroupClient]:
        """A client for test set-up and checks (its own session slots)."""
        settings = GroupSettings(
            host=self.sim.host, port=self.sim.port, user=self.sim.user,
            password=self.sim.password, known_hosts=str(self.known_hosts),
            slot_dir=str(self.base / "test-slots"), connect_timeout=5, command_timeout=10)
        with GroupClient(settings) as client:
            yield client

    @property
    def portal(self) -> str:
        return f"{self.sim.load_state().group.ipaddress}:3260"

    def volume(self, name: str) -> Volume:
        """The volume's state in the group (it must exist)."""
        volume = self.sim.load_state().find_volume(name)
        assert volume is not None, f"no volume {name}"
        return volume

    def volume_names(self) -> List[str]:
        return sorted(v.name for v in self.sim.load_state().volumes.values())

    def data_file(self, name: str) -> Path:
        """The file behind the volume's LUN."""
        return self.sim.state_dir / "data" / f"{self.volume(name).obj_id}.img"

    def volume_bytes(self, name: str, length: int, offset: int = 0) -> bytes:
        with open(self.data_file(name), "rb") as stream:
            stream.seek(offset)
            return stream.read(length)

    def commands(self) -> List[str]:
        """The command lines the group received, oldest first."""
        return [str(entry.get("command", "")) for entry in self.sim.commands()]

    def staging_left(self) -> List[str]:
        return sorted(path.name for path in self.staging.iterdir())

    def fake_qemu_img(self, write: str = "run") -> Dict[str, str]:
        """Environment with a ``qemu-img`` wrapper first on PATH that logs every argument
        list to ``qemu-img.log`` (one argument per line, ``---`` after each call; one
        append per call, as calls may overlap) and, for
        the image write (``--target-image-opts``), ``run``s it, ``skip``s it (exit 0,
        nothing written), ``fail``s it (exit 1) or ``hang``s (sleeps, then runs it)."""
        real = shutil.which("qemu-img")
        assert real is not None
        bin_dir = self.base / "fake-bin"
        bin_dir.mkdir(exist_ok=True)
        log = self.base / "qemu-img.log"
        actions = {"run": "", "skip": "exit 0", "hang": "exec sleep 60",
                   "fail": 'echo "qemu-img: simulated failure" >&2; exit 1'}
        script = bin_dir / "qemu-img"
        script.write_text(f"""#!/bin/sh
printf '%s\\n' "$@" --- >> '{log}'
case " $* " in *" --target-image-opts "*) {actions[write]} ;; esac
exec '{real}' "$@"
""")
        script.chmod(0o755)
        return {"PATH": f"{bin_dir}:{self.env()['PATH']}"}

    def qemu_img_calls(self) -> List[List[str]]:
        """The argument lists the ``fake_qemu_img`` wrapper saw."""
        text = (self.base / "qemu-img.log").read_text()
        return [call.strip("\n").split("\n") for call in text.split("---\n") if call.strip()]


def ds_xml(image: Optional[Fields] = None, image_template: Optional[Fields] = None,
           datastore_template: Optional[Fields] = None, extra: str = "",
           with_image: bool = True) -> str:
    """DS_DRIVER_ACTION_DATA for the harness: the datastore template's EQL_HOST (a
    placeholder in ``oned_xml``) is dropped so the conf file's address applies."""
    ds_template: Dict[str, Optional[str]] = {"EQL_HOST": None, **(datastore_template or {})}
    image_part = image_xml(template=image_template, **(image or {})) if with_image else ""
    return action_xml(image_part, datastore_xml(template=ds_template), extra)


@pytest.fixture
def ds(sim_factory: Callable[..., RunningSim], tmp_path: Path) -> DsHarness:
    """A fresh simulated group with real iSCSI targets, and a harness around it."""
    require_iscsi()
    sim = sim_factory(iscsi=True)
    return DsHarness(sim, tmp_path / "ds")


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data
