"""The simulated group's SSH front end: a paramiko server with PS Series session behaviour.

One thread accepts connections, one thread serves each connection's channels and one thread
runs each CLI session (shell or exec). Sessions beyond ``max_sessions`` (counted across all
connections) are refused right after authentication. Every command is appended to
``<state-dir>/commands.log`` as a JSON line, with passwords masked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
import logging
import os
import selectors
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import paramiko
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)

from tests.eqlsim.backend import FileBackend
from tests.eqlsim.cli import MESSAGES, CliConfig, Interpreter, Result, Session, mask_secrets
from tests.eqlsim.faults import Fault, FaultBook
from tests.eqlsim.state import StateStore
from tests.eqlsim.terminal import SessionClosed, Terminal

# paramiko logs every client that hangs up ("Socket exception: Connection reset by peer").
_paramiko_log = logging.getLogger("paramiko")
_paramiko_log.addHandler(logging.NullHandler())
_paramiko_log.propagate = False

REQUEST_TIMEOUT = 10.0  # a channel must ask for a shell or exec within this time
STOP_TIMEOUT = 5.0  # how long stop() waits for the threads in total
DEFAULT_ACCOUNTS = {"grpadmin": "grpadmin"}  # the factory account of a new array
DEFAULT_IDLE_LOGOUT = 1800.0  # seconds before an idle session ends when idlelogout is on [M]


def load_host_key(path: Path) -> paramiko.Ed25519Key:
    """The Ed25519 host key stored at ``path``, generated on first use (mode 0600)."""
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()
        )
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        try:
            os.link(tmp, path)  # atomic and exclusive: a concurrent first start keeps its key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return paramiko.Ed25519Key(filename=str(path))


def known_hosts_line(host: str, port: int, key: paramiko.PKey) -> str:
    """The OpenSSH known_hosts line for a server key."""
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {key.get_name()} {key.get_base64()}"


def read_command_log(state_dir: Path) -> List[Dict[str, Any]]:
    path = Path(state_dir) / "commands.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class CommandLog:
    """Appends one JSON object per line to ``<state-dir>/commands.log``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "commands.log"
        self._lock = threading.Lock()

    def append(self, entry: Dict[str, Any]) -> None:
        line = json.dumps(entry) + "\n"
        with self._lock, open(self.path, "a") as f:
            f.write(line)


class SessionSlots:
    """Counts CLI sessions across all connections and refuses those over the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        with self._lock:
            if self.active >= self.limit:
                return False
            self.active += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.active -= 1


@dataclasses.dataclass
class _ChannelRequest:
    """What a channel asked for: a shell (command None) or one exec command."""

    ready: threading.Event = dataclasses.field(default_factory=threading.Event)
    command: Optional[str] = None


class _Connection:
    """One SSH connection: its number, account and the count of commands it has sent."""

    def __init__(self, number: int, transport: paramiko.Transport) -> None:
        self.number = number
        self.transport = transport
        self.account = ""
        self._commands = 0
        self._lock = threading.Lock()

    def next_command_index(self) -> int:
        with self._lock:
            self._commands += 1
            return self._commands


class _SshServer(paramiko.ServerInterface):
    """paramiko's view of one connection: password auth, session channels, pty/shell/exec."""

    def __init__(self, accounts: Dict[str, str], connection: _Connection) -> None:
        self._accounts = accounts
        self._connection = connection
        self._requests: Dict[int, _ChannelRequest] = {}
        self._lock = threading.Lock()

    def request(self, channel: paramiko.Channel) -> _ChannelRequest:
        with self._lock:
            return self._requests.setdefault(channel.get_id(), _ChannelRequest())

    def get_allowed_auths(self, username: str) -> str:
        return "password"

    def check_auth_password(self, username: str, password: str) -> int:
        """Like the array, only the first 8 characters of the password are compared."""
        expected = self._accounts.get(username)
        if expected is not None and hmac.compare_digest(
            password[:8].encode(), expected[:8].encode()
        ):
            self._connection.account = username
            return AUTH_SUCCESSFUL
        return AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return OPEN_SUCCEEDED
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_pty_request(
        self,
        channel: paramiko.Channel,
        term: bytes,
        width: int,
        height: int,
        pixelwidth: int,
        pixelheight: int,
        modes: bytes,
    ) -> bool:
        return True  # the pty size is ignored: the array starts at 80x24 [M]

    def check_channel_window_change_request(
        self,
        channel: paramiko.Channel,
        width: int,
        height: int,
        pixelwidth: int,
        pixelheight: int,
    ) -> bool:
        return True

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        return self._start(channel, None)

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        return self._start(channel, command.decode("utf-8", "replace"))

    def _start(self, channel: paramiko.Channel, command: Optional[str]) -> bool:
        request = self.request(channel)
        if request.ready.is_set():
            return False  # one shell or exec per channel
        request.command = command
        request.ready.set()
        return True


class _ChannelPort:
    """A ``terminal.Port`` on a paramiko channel."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel

    def read(self, timeout: float) -> Optional[bytes]:
        self._channel.settimeout(timeout)
        try:
            return self._channel.recv(4096)
        except socket.timeout:
            return None

    def write(self, data: bytes) -> None:
        self._channel.sendall(data)


class GroupSimulator:
    """A simulated PS Series group listening for SSH on ``listen`` (port 0 = any free port)."""

    def __init__(
        self,
        state_dir: Path,
        listen: Tuple[str, int] = ("127.0.0.1", 0),
        *,
        accounts: Optional[Dict[str, str]] = None,
        group_name: Optional[str] = None,
        group_ip: Optional[str] = None,
        pool_size_mb: Optional[int] = None,
        max_sessions: int = 7,
        session_limit_message: bool = False,
        backend: Optional[FileBackend] = None,
        messages: Optional[Dict[str, str]] = None,
        max_access_records: int = 16,
        host_key_path: Optional[Path] = None,
        idle_logout: float = DEFAULT_IDLE_LOGOUT,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.accounts = dict(accounts or DEFAULT_ACCOUNTS)
        self.store = StateStore(self.state_dir)
        self.backend = backend or FileBackend(self.state_dir)
        self.config = CliConfig(dict(messages or MESSAGES), max_access_records)
        self.faults = FaultBook(self.state_dir)
        self.log = CommandLog(self.state_dir)
        self.slots = SessionSlots(max_sessions)
        self.session_limit_message = session_limit_message
        self.idle_logout = idle_logout
        self.host_key_path = Path(host_key_path or self.state_dir / "ssh_host_ed25519_key")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.host_key = load_host_key(self.host_key_path)
        self._listen = listen
        self._group_name = group_name
        self._group_ip = group_ip
        self._pool_size_mb = pool_size_mb
        self.stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._listener: Optional[socket.socket] = None
        self._accept_thread: Optional[threading.Thread] = None  # set once started
        self._threads: Set[threading.Thread] = set()
        self._transports: Set[paramiko.Transport] = set()
        self._lock = threading.Lock()

    # ---- life cycle -------------------------------------------------------------------------

    @property
    def address(self) -> Tuple[str, int]:
        assert self._listener is not None, "start() first"
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def active_sessions(self) -> int:
        return self.slots.active

    def start(self) -> None:
        """Load the group, start the backend and publish online objects, then listen."""
        self.backend.start()
        try:
            self._listener = socket.create_server(self._listen, backlog=64)
            group_ip = self._group_ip or self.address[0]
            self.store.initialize(self._group_name, group_ip, self._pool_size_mb)
            for obj_id, publication in self.store.load().publications().items():
                self.backend.publish(obj_id, publication)
        except BaseException:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            self.backend.stop()
            raise
        self._accept_thread = self._spawn(self._accept_loop)

    def stop(self) -> None:
        """Close every connection, wait for the threads, stop the backend. Idempotent."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self._wake_w.send(b"x")
        if self._accept_thread is not None and self._listener is not None:
            deadline = time.monotonic() + STOP_TIMEOUT
            self._accept_thread.join(STOP_TIMEOUT)  # no new connections after this
            with self._lock:
                transports, threads = list(self._transports), list(self._threads)
            for transport in transports:
                transport.close()
                with transport.lock:  # wake its connection thread, waiting in accept()
                    transport.server_accept_cv.notify_all()
            for thread in threads:
                thread.join(max(deadline - time.monotonic(), 0.0))
            self._listener.close()
            self.backend.stop()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> GroupSimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], *args: Any) -> threading.Thread:
        """Run ``target`` in a tracked daemon thread (forgotten when it ends)."""

        def tracked() -> None:
            try:
                target(*args)
            finally:
                with self._lock:
                    self._threads.discard(thread)

        thread = threading.Thread(target=tracked, daemon=True, name=f"eqlsim-{target.__name__}")
        with self._lock:
            self._threads.add(thread)
        thread.start()
        return thread

    # ---- connections and channels -----------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self.stopping.is_set():
                for key, _ in selector.select(timeout=1.0):
                    if key.fileobj is self._wake_r:
                        return
                    sock, _ = self._listener.accept()
                    self._spawn(self._serve_connection, sock)

    def _serve_connection(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock)
        with self._lock:
            self._transports.add(transport)
        try:
            if self.stopping.is_set():
                return  # accepted while stop() was collecting the transports
            transport.add_server_key(self.host_key)
            with self.store.transaction() as state:
                connection = _Connection(state.next_counter("connection"), transport)
            server = _SshServer(self.accounts, connection)
            transport.start_server(server=server)
            while not self.stopping.is_set() and transport.is_active():
                channel = transport.accept(timeout=1.0)
                if channel is not None:
                    self._spawn(self._serve_channel, connection, server, channel)
        except (paramiko.SSHException, EOFError, OSError):
            pass  # the client went away during negotiation
        finally:
            transport.close()
            with self._lock:
                self._transports.discard(transport)

    def _serve_channel(
        self, connection: _Connection, server: _SshServer, channel: paramiko.Channel
    ) -> None:
        request = server.request(channel)
        try:
            if not request.ready.wait(REQUEST_TIMEOUT):
                return
            if not self.slots.acquire():
                if self.session_limit_message:
                    channel.sendall((self.config.text("session_limit") + "\r\n").encode())
                return
            try:
                with self.store.transaction() as state:
                    number = state.next_counter("session")
                _CliSession(self, connection, channel, number).run(request.command)
            finally:
                self.slots.release()
        except (SessionClosed, paramiko.SSHException, EOFError, OSError):
            pass  # the client or a fault ended the session
        finally:
            with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
                channel.close()  # fails when the connection is already gone


class _CliSession:
    """One CLI session: an interactive shell or a single exec command."""

    def __init__(
        self,
        sim: GroupSimulator,
        connection: _Connection,
        channel: paramiko.Channel,
        number: int,
    ) -> None:
        self.sim = sim
        self.connection = connection
        self.channel = channel
        self.number = number

    def run(self, command: Optional[str]) -> None:
        if command is None:
            self._shell()
        else:
            self._exec(command)

    def _interpreter(self, interactive: bool) -> Interpreter:
        session = Session(self.connection.account, interactive=interactive)
        return Interpreter(self.sim.store, self.sim.backend, self.sim.config, session)

    def _keep_going(self) -> bool:
        return not self.sim.stopping.is_set() and self.connection.transport.is_active()

    def _shell(self) -> None:
        interpreter = self._interpreter(interactive=True)
        port = _ChannelPort(self.channel)
        terminal = Terminal(port, interpreter.session.terminal, self._keep_going)
        more = self.sim.config.text("more")

        def emit(result: Result) -> None:
            terminal.write_lines(result.lines, more if result.settings.paging else None)

        result = interpreter.login()
        emit(result)
        pending = ""  # rejected input, reprinted after the prompt and left for editing
        while not result.end_session:
            terminal.idle_timeout = self.sim.idle_logout if result.settings.idlelogout else None
            terminal.write(result.prompt + pending)
            line = terminal.read_line(pending)
            pending = ""
            if not line.strip():
                continue
            result = self._command(interpreter, line, emit, terminal)
            if result.bad_input and result.settings.reprint_bad_input:
                pending = line
        self.channel.send_exit_status(0)

    def _exec(self, command: str) -> None:
        def emit(result: Result) -> None:
            self.channel.sendall("".join(f"{line}\r\n" for line in result.lines).encode())

        status = 0
        if command.strip():
            result = self._command(self._interpreter(interactive=False), command, emit, None)
            status = 1 if result.error else 0
        self.channel.send_exit_status(status)

    def _command(
        self,
        interpreter: Interpreter,
        line: str,
        emit: Callable[[Result], None],
        terminal: Optional[Terminal],
    ) -> Result:
        """Run one command with its faults, print the reply, and log it."""
        index = self.connection.next_command_index()
        entry = {
            "ts": time.time(),
            "conn": self.connection.number,
            "session": self.number,
            "user": self.connection.account,
            "command": mask_secrets(line),
        }
        fault = self.sim.faults.take(line, index, "before")
        if fault is not None and fault.action == "delay":
            # the group is busy with the command: like a real group it completes it even
            # when the client stops waiting (only the answer then goes nowhere)
            self._pause(fault.seconds, until_client_leaves=False)
        elif fault is not None:
            error = self._fault_message(fault) if fault.action == "error" else ""
            self.sim.log.append({**entry, "ok": False, "error": error, "fault": fault.action})
            return self._fail(interpreter, fault, emit)
        result = interpreter.execute(line)
        if result.question is not None and terminal is not None:
            if terminal.ask(result.question):
                result = interpreter.execute(line, confirmed=True)
            else:
                result = dataclasses.replace(result, question=None)
        fault = self.sim.faults.take(line, index, "after")
        logged = {**entry, "ok": result.error is None, "error": result.error or ""}
        self.sim.log.append({**logged, "fault": fault.action} if fault else logged)
        if fault is None or fault.action == "delay":
            self._pause(fault.seconds if fault else 0.0)
            emit(result)
            return result
        if fault.action == "drop":
            emit(result)
        return self._fail(interpreter, fault, emit)

    def _fail(
        self, interpreter: Interpreter, fault: Fault, emit: Callable[[Result], None]
    ) -> Result:
        """Apply an error, drop or hang fault; the last two end the connection."""
        if fault.action == "error":
            result = interpreter.reply_error(self._fault_message(fault))
            emit(result)
            return result
        if fault.action == "hang":
            self._pause(fault.seconds)
        self.connection.transport.close()
        raise SessionClosed(f"fault: {fault.action}")

    def _fault_message(self, fault: Fault) -> str:
        return fault.message or self.sim.config.text("injected_error")

    def _pause(self, seconds: float, until_client_leaves: bool = True) -> None:
        """Sleep, but stop early when the server stops or (``until_client_leaves``) the
        client goes away."""
        deadline = time.monotonic() + seconds
        while not until_client_leaves or (self._keep_going() and not self.channel.closed):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.sim.stopping.wait(min(remaining, 0.05)):
                return
