"""Shared fixtures: a simulated PS Series group reachable over real SSH on 127.0.0.1.

``sim`` is a fresh group per test (in-process server thread, no iSCSI, account grpadmin /
simsecret1); ``sim_factory`` starts groups with other options. Both stop everything at
teardown. ``RunningSim`` is the handle tests get: address, credentials, host key, the command
log, fault knobs, and a few paramiko helpers (``connect``, ``shell``, ``exec``).
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import paramiko
import pytest

from tests.eqlsim.faults import FaultBook
from tests.eqlsim.server import GroupSimulator, known_hosts_line, read_command_log
from tests.eqlsim.state import GroupState, StateStore

pytest_plugins = ["tests.hosts.fixtures", "tests.ds_harness", "tests.tm_harness"]

SIM_PASSWORD = "simsecret1"
PROMPT_RE = re.compile(r"(?:^|\n)[^\r\n]*?> $")  # a prompt at the very end of the output


class SimShell:
    """An interactive CLI session (pty + shell) on a paramiko channel."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self.buffer = ""
        self.greeting = ""  # banner, events and first prompt, once read

    def send(self, text: str) -> None:
        self.channel.sendall(text.encode())

    def read_until(self, pattern: Union[str, re.Pattern[str]], timeout: float = 5.0) -> str:
        """Everything received up to the end of the first match of ``pattern``."""
        regex = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.buffer)
            if match:
                text, self.buffer = self.buffer[: match.end()], self.buffer[match.end() :]
                return text
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {regex.pattern!r} in {self.buffer!r}")
            self.channel.settimeout(remaining)
            try:
                data = self.channel.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise EOFError(f"channel closed; received {self.buffer!r}")
            self.buffer += data.decode("utf-8", "replace")

    def read_prompt(self, timeout: float = 5.0) -> str:
        return self.read_until(PROMPT_RE, timeout)

    def run(self, command: str, eol: str = "\r") -> str:
        """Send a command and return the reply: echo, output and the next prompt."""
        self.send(command + eol)
        return self.read_prompt()

    def read_eof(self, timeout: float = 5.0) -> str:
        """Everything until the server closes the channel."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.channel.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data = self.channel.recv(65536)
            except socket.timeout:
                continue
            if not data:
                text, self.buffer = self.buffer, ""
                return text
            self.buffer += data.decode("utf-8", "replace")
        raise TimeoutError(f"channel still open; received {self.buffer!r}")

    def close(self) -> None:
        self.channel.close()


@dataclass
class RunningSim:
    """A running simulated group, as tests see it."""

    host: str
    port: int
    user: str
    password: str
    group_name: str
    state_dir: Path
    simulator: GroupSimulator = field(repr=False)
    clients: List[paramiko.SSHClient] = field(default_factory=list, repr=False)

    def known_hosts_line(self) -> str:
        return known_hosts_line(self.host, self.port, self.simulator.host_key)

    def write_known_hosts(self, path: Path) -> Path:
        path = Path(path)
        path.write_text(self.known_hosts_line() + "\n")
        return path

    def commands(self) -> List[Dict[str, Any]]:
        """The command log, oldest first."""
        return read_command_log(self.state_dir)

    def set_faults(self, faults: List[Dict[str, Any]]) -> None:
        FaultBook(self.state_dir).write(faults)

    def clear_faults(self) -> None:
        FaultBook(self.state_dir).write([])

    def load_state(self) -> GroupState:
        """A read-only snapshot of the group state."""
        return StateStore(self.state_dir).load()

    def set_pool_size(self, pool: str, size_mb: int) -> None:
        """Set a pool's capacity (creating the pool if needed)."""
        StateStore(self.state_dir).set_pool_size(pool, size_mb)

    def active_sessions(self) -> int:
        return self.simulator.active_sessions

    def wait_sessions(self, count: int, timeout: float = 5.0) -> None:
        """Wait until exactly ``count`` CLI sessions are active."""
        deadline = time.monotonic() + timeout
        while self.active_sessions() != count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.active_sessions()} sessions active, expected {count}")
            time.sleep(0.01)

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.simulator.stop()

    # ---- paramiko helpers -------------------------------------------------------------------

    def connect(
        self, user: Optional[str] = None, password: Optional[str] = None
    ) -> paramiko.SSHClient:
        """A paramiko client checking the host key, on a TCP_NODELAY socket."""
        client = paramiko.SSHClient()
        client.get_host_keys().add(
            f"[{self.host}]:{self.port}", "ssh-ed25519", self.simulator.host_key
        )
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        sock = socket.create_connection((self.host, self.port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.clients.append(client)
        client.connect(
            self.host,
            self.port,
            username=user or self.user,
            password=password if password is not None else self.password,
            sock=sock,
            look_for_keys=False,
            allow_agent=False,
            timeout=5,
        )
        return client

    def shell(self, client: Optional[paramiko.SSHClient] = None, quiet: bool = True) -> SimShell:
        """An interactive session at its first prompt (what came before is in ``greeting``);
        ``quiet`` turns paging, confirmations, events and bad-input reprint off for the
        account first."""
        transport = (client or self.connect()).get_transport()
        assert transport is not None
        channel = transport.open_session(timeout=5)
        channel.get_pty()
        channel.invoke_shell()
        shell = SimShell(channel)
        shell.greeting = shell.read_prompt()
        if quiet:
            for setting in ("paging", "confirmation", "events", "reprintBadInput"):
                shell.run(f"cli-settings {setting} off")
        return shell

    def exec(self, command: str, client: Optional[paramiko.SSHClient] = None) -> Tuple[int, str]:
        """Run one command as an SSH exec request: (exit status, output)."""
        _, stdout, _ = (client or self.connect()).exec_command(command, timeout=5)
        output = stdout.read().decode()
        return stdout.channel.recv_exit_status(), output


def _start(state_dir, port, users, group_name, max_sessions, options) -> GroupSimulator:
    simulator = GroupSimulator(
        state_dir,
        ("127.0.0.1", port),
        accounts=users,
        group_name=group_name,
        max_sessions=max_sessions,
        **options,
    )
    simulator.start()
    return simulator


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[Callable[..., RunningSim]]:
    """Start simulated groups; every one is stopped at teardown.

    Options: ``max_sessions``, ``iscsi`` (real tgtd targets; the test is skipped when they
    cannot run, and fails instead under CI=true), ``group_name``, ``users`` (name -> password,
    the first one is the handle's),
    ``state_dir`` (reuse one to restart a group), ``port``, and any other GroupSimulator
    keyword (``pool_size_mb``, ``messages``, ``max_access_records``, ...).
    """
    started: List[RunningSim] = []

    def factory(
        *,
        max_sessions: int = 7,
        iscsi: bool = False,
        group_name: str = "group-0",
        users: Optional[Dict[str, str]] = None,
        state_dir: Optional[Path] = None,
        port: int = 0,
        **options: Any,
    ) -> RunningSim:
        users = users or {"grpadmin": SIM_PASSWORD}
        state_dir = Path(state_dir or tmp_path / f"group{len(started) + 1}")
        if iscsi:
            from tests import iscsi_tools
            from tests.eqlsim.iscsi import BackendUnavailable, TgtBackend, pick_free_group_ip

            iscsi_tools.require_iscsi()  # skips here without root/tools; fails under CI=true
            try:
                options["group_ip"] = options.get("group_ip") or pick_free_group_ip()
                options["backend"] = TgtBackend(state_dir, options["group_ip"])
                simulator = _start(state_dir, port, users, group_name, max_sessions, options)
            except BackendUnavailable as exc:
                if os.environ.get("CI") == "true":
                    pytest.fail(f"real iSCSI targets must run in CI: {exc}")
                pytest.skip(f"no real iSCSI targets here: {exc}")
        else:
            simulator = _start(state_dir, port, users, group_name, max_sessions, options)
        host, bound_port = simulator.address
        user, password = next(iter(users.items()))
        running = RunningSim(host, bound_port, user, password, group_name, state_dir, simulator)
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


@pytest.fixture
def sim(sim_factory: Callable[..., RunningSim]) -> RunningSim:
    """A fresh simulated group (group-0, grpadmin/simsecret1, 7 sessions, no iSCSI)."""
    return sim_factory()
