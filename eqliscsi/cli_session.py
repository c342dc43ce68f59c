"""One SSH connection to a PS Series group and one interactive CLI shell on it.

The session behaves like an administrator at a terminal: a pty 255 columns wide, the
banner, the ``GROUP> `` prompt (the group name is learnt from it), then the commands of
``SESSION_SETUP`` and the caller's commands, each read up to the next prompt.

* End of output: the prompt at the *end* of the buffer, after a line break.  A rejected
  command reprinted after the prompt (``Error: ...`` then ``GROUP> <our text>``) also
  ends the read; that shell is then closed and the next command opens a new one.
* An empty read is the group closing the session (``ConnectionLost``), never a retry loop.
* A stray ``Press any key to continue (Q to quit)`` is answered with a space.  A stray
  ``(y/n) [n]`` question is answered ``y`` only for commands built with ``confirm=True``
  (deletes the caller asked for: confirming does what was requested); anything else is
  answered ``n`` and reported as an error, since the command then did not run.
* Every blocking step has a deadline: ``connect_timeout`` for TCP, ``login_timeout`` for
  handshake, authentication, shell, banner and set-up, and a per-command timeout.  The
  connection is closed when a deadline passes, so a hung group cannot hang the caller;
  the session is then dead (``GroupTimeout``).  Commands rely on channel timeouts (reads
  and writes), the login on a watchdog (paramiko's pty and shell requests have none).

The ``cli-settings`` sent at set-up persist per account on a real group: give the driver
its own group account so administrators' sessions keep their settings.

The host key is checked against a known_hosts file (entry ``host`` or ``[host]:port``):
policy ``strict`` refuses unknown and changed keys; ``accept-new`` records an unknown key
and still refuses a changed one.  The password is only given to paramiko.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import os
import re
import socket
import sys
import threading
import time
from typing import Callable, List, Mapping, Optional, Tuple

from eqliscsi.cli_commands import SESSION_SETUP, CliCommand
from eqliscsi.cli_output import (
    is_error_line,
    is_event_line,
    overlay,
    raise_for_errors,
    split_lines,
    strip_echo,
)
from eqliscsi.errors import (
    AuthenticationFailed,
    CliError,
    ConnectionLost,
    EqlError,
    GroupTimeout,
    GroupUnreachable,
    HostKeyRejected,
    SessionRefused,
)

# paramiko loads the ``invoke`` package (~75 ms CPU, a third of its import) only for
# ``Match exec`` in OpenSSH config files, which this module never reads: hidden meanwhile.
_HIDE_INVOKE = "invoke" not in sys.modules
if _HIDE_INVOKE:
    sys.modules["invoke"] = None  # type: ignore[assignment]  # import raises ImportError
try:
    import paramiko
finally:
    if _HIDE_INVOKE:
        del sys.modules["invoke"]

CommandLogHook = Callable[[str, float, Optional[str]], None]
"""Called after every CLI command with (masked command text, seconds, error or None)."""

TERMINAL_TYPE, TERMINAL_COLUMNS, TERMINAL_ROWS = "vt100", 255, 24
RECV_BYTES = 65536
MAX_READS = 1_000_000
MAX_QUESTIONS = 3

_PROMPT = re.compile(r"(?P<group>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\((?P<context>[^()\s]*)\))?> ")
_PAGER = "Press any key to continue"
_QUESTION = re.compile(r"\(y/n\)\s*\[[yn]\]\s*:?\s*$", re.IGNORECASE)


class CliSession:
    """An SSH connection with one CLI shell; not thread-safe (one command at a time).

    ``host_key_policy`` is ``strict`` or ``accept-new`` (see the module doc).
    """

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        password: str,
        *,
        known_hosts: str,
        host_key_policy: str = "strict",
        connect_timeout: float = 10.0,
        login_timeout: float = 30.0,
        command_log: Optional[CommandLogHook] = None,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self._password = password
        self.known_hosts = os.path.expanduser(known_hosts)
        self.host_key_policy = host_key_policy
        self.connect_timeout = connect_timeout
        self.login_timeout = login_timeout
        self._command_log = command_log
        self.group_name: Optional[str] = None
        self._transport: Optional[paramiko.Transport] = None
        self._channel: Optional[paramiko.Channel] = None
        self._expired = False

    def __repr__(self) -> str:
        return f"CliSession({self.user}@{self._host_entry()})"

    @property
    def is_open(self) -> bool:
        """True while the SSH connection is up (a new shell can be opened on it)."""
        return self._transport is not None and self._transport.is_active()

    # --- opening -------------------------------------------------------------------------

    def open(self) -> None:
        """Connect, authenticate and open the CLI shell (all within ``login_timeout``)."""
        self._expired = False
        sock = self._connect_socket()
        try:
            with _Watchdog(self.login_timeout, self._expire):
                self._start_ssh(sock, time.monotonic() + self.login_timeout)
                self._open_shell()
        except EqlError as exc:
            self.close()
            raise self._login_failure(exc) from None
        except BaseException:
            self.close()
            raise
        finally:
            if self._transport is None:
                sock.close()

    def _connect_socket(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except socket.timeout:
            raise GroupUnreachable(
                f"no TCP connection to {self._host_entry()} within {self.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise GroupUnreachable(
                f"cannot connect to {self._host_entry()}: {exc.strerror or exc}"
            ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _start_ssh(self, sock: socket.socket, deadline: float) -> None:
        known = self._load_known_hosts()
        transport = paramiko.Transport(sock)
        self._transport = transport
        transport.banner_timeout = transport.auth_timeout = self.login_timeout + 1
        _prefer_key_types(transport, known.lookup(self._host_entry()))
        try:
            transport.start_client(timeout=max(deadline - time.monotonic(), 0.001))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise GroupUnreachable(
                f"SSH handshake with {self._host_entry()} failed: {exc}") from None
        self._check_host_key(known, transport.get_remote_server_key())
        try:
            transport.auth_password(self.user, self._password)
        except paramiko.BadAuthenticationType:
            raise AuthenticationFailed(
                f"{self._host_entry()} does not accept password logins") from None
        except paramiko.AuthenticationException:
            if not transport.is_active():
                raise SessionRefused(
                    f"{self._host_entry()} closed the connection during login") from None
            raise AuthenticationFailed(
                f"{self._host_entry()} rejected the login of user {self.user!r} "
                "(wrong user name or password?)") from None
        except (paramiko.SSHException, EOFError, OSError):
            raise SessionRefused(
                f"{self._host_entry()} closed the connection during login") from None

    def _open_shell(self) -> None:
        """Open the shell channel, read the banner to the first prompt, send the set-up."""
        transport = self._transport
        if transport is None or not transport.is_active():
            raise ConnectionLost(f"not connected to {self._host_entry()}", command_sent=False)
        try:
            channel = transport.open_session(timeout=self.login_timeout)
            self._channel = channel
            channel.get_pty(term=TERMINAL_TYPE, width=TERMINAL_COLUMNS, height=TERMINAL_ROWS)
            channel.invoke_shell()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise SessionRefused(
                f"{self._host_entry()} refused the CLI session: {exc or 'channel closed'}"
            ) from None
        try:
            self._read_reply(None, time.monotonic() + self.login_timeout)
        except ConnectionLost:
            raise SessionRefused(
                f"{self._host_entry()} closed the CLI session before its first prompt "
                "(too many concurrent sessions?)") from None
        for command in SESSION_SETUP:
            try:
                self._logged(command, self.login_timeout)
            except CliError:
                if self._channel is None:  # the rejected text was reprinted: shell closed
                    raise
                # Firmware without this setting: the reader copes with wrapping, pager
                # prompts, questions and event lines itself, so the session stays usable.

    # --- commands ------------------------------------------------------------------------

    def run(self, command: CliCommand, timeout: float) -> List[str]:
        """Send ``command`` and return its output lines (echo and prompt removed).

        Raises the typed ``CliError`` for error replies, ``ConnectionLost`` when the
        session ends (``command_sent`` tells whether it went out), ``GroupTimeout`` when
        no prompt came back within ``timeout`` seconds (the session is then closed).
        """
        if self._channel is None:
            try:
                with _Watchdog(self.login_timeout, self._expire):
                    self._open_shell()
            except EqlError as exc:
                self._close_channel()
                raise self._login_failure(exc) from None
        return self._logged(command, timeout)

    def _login_failure(self, exc: EqlError) -> EqlError:
        """What a failed login raises: a timeout if the deadline passed; a lost connection
        as one that happened before the caller's command was sent."""
        if self._expired:
            return GroupTimeout(f"no complete login to {self._host_entry()} within "
                                f"{self.login_timeout:g} s", retryable=True)
        if isinstance(exc, ConnectionLost):
            return ConnectionLost(str(exc), command_sent=False)
        return exc

    def _logged(self, command: CliCommand, timeout: float) -> List[str]:
        started = time.monotonic()
        error: Optional[str] = None
        try:
            try:
                return self._exchange(command, time.monotonic() + timeout)
            except ConnectionLost:
                if self._expired:
                    raise GroupTimeout(
                        f"no answer to `{command.masked}` from {self._host_entry()} within "
                        f"{timeout:g} s; the session was closed and the group may still "
                        "complete the command") from None
                raise
        except EqlError as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if self._command_log is not None:
                self._command_log(command.masked, time.monotonic() - started, error)

    def _exchange(self, command: CliCommand, deadline: float) -> List[str]:
        channel = self._channel
        if channel is None or channel.closed or not self.is_open:
            self._close_channel()
            raise ConnectionLost(f"the CLI session to {self._host_entry()} is closed",
                                 command_sent=False)
        try:
            for _ in range(MAX_READS):  # drop anything unsolicited before our echo
                if not channel.recv_ready():
                    break
                if not channel.recv(RECV_BYTES):
                    raise EOFError
        except (paramiko.SSHException, EOFError, OSError):
            self._close_channel()
            raise ConnectionLost(f"the CLI session to {self._host_entry()} closed before "
                                 f"`{command.masked}` was sent", command_sent=False) from None
        self._send(command.text.encode("utf-8") + b"\r", deadline, command_sent=False)
        lines, reprinted, declined = self._read_reply(command, deadline)
        if reprinted:
            self._close_channel()
        raise_for_errors(command, lines)
        if declined is not None:
            raise CliError(command.masked, message=f"the group asked {declined!r}; "
                           "the client answered no, so the command did not run")
        return lines

    def _read_reply(
        self, command: Optional[CliCommand], deadline: float
    ) -> Tuple[List[str], bool, Optional[str]]:
        """Read up to the prompt: (output lines, bad input reprinted, declined question)."""
        channel = self._channel
        assert channel is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        done: List[str] = []
        tail = ""
        error_seen = False
        declined: Optional[str] = None
        questions = 0
        for _ in range(MAX_READS):
            screen = overlay(tail)
            if self._is_prompt(screen, first=command is None, after_break=bool(done)):
                return self._output(done, command), False, declined
            if command is not None and error_seen:
                reprint_at = self._reprint_start(done, screen, command)
                if reprint_at is not None:
                    return self._output(done[:reprint_at], command), True, declined
            if _PAGER in screen:
                tail = tail[:max(tail.find(_PAGER), 0)]
                self._send(b" ", deadline)
                continue
            if _QUESTION.search(screen):
                questions += 1
                if questions > MAX_QUESTIONS:
                    raise CliError(command.masked if command else "login",
                                   message=f"too many questions from the group: {screen!r}")
                confirm = command is not None and command.confirm
                if not confirm:
                    declined = screen.strip()
                done.append(tail)
                tail = ""
                self._send(b"y\r" if confirm else b"n\r", deadline)
                continue
            text = tail + decoder.decode(self._recv(channel, deadline))
            *complete, tail = text.split("\n")
            done.extend(complete)
            error_seen = error_seen or any(is_error_line(overlay(line)) for line in complete)
        raise GroupTimeout(f"endless output from {self._host_entry()}")

    def _recv(self, channel: paramiko.Channel, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self._expire()
            raise ConnectionLost("deadline passed")
        channel.settimeout(remaining)
        try:
            data = channel.recv(RECV_BYTES)
        except socket.timeout:
            self._expire()
            raise ConnectionLost("deadline passed") from None
        except (paramiko.SSHException, EOFError, OSError):
            data = b""
        if not data:
            self._close_channel()
            raise ConnectionLost(f"{self._host_entry()} closed the CLI session")
        return data

    def _send(self, data: bytes, deadline: float, command_sent: bool = True) -> None:
        channel = self._channel
        assert channel is not None
        try:
            channel.settimeout(max(deadline - time.monotonic(), 0.001))
            channel.sendall(data)
        except socket.timeout:
            self._expire()
            raise ConnectionLost("deadline passed") from None
        except (paramiko.SSHException, EOFError, OSError):
            self._close_channel()
            raise ConnectionLost(f"{self._host_entry()} closed the CLI session",
                                 command_sent=command_sent) from None

    def _is_prompt(self, screen: str, first: bool, after_break: bool) -> bool:
        match = _PROMPT.fullmatch(screen)
        if match is None or not (after_break or first):
            return False
        if self.group_name is None:
            self.group_name = match.group("group")
        return match.group("group") == self.group_name

    def _reprint_start(self, done: List[str], screen: str, command: CliCommand) -> Optional[int]:
        """Index in ``done`` of the prompt that reprints our rejected command (it may have
        wrapped over several lines), or None if the output does not end that way."""
        wanted = "".join(command.text.split())
        recent = [overlay(line) for line in done[-4:]] + [screen]
        for start in range(len(recent) - 1, -1, -1):
            match = _PROMPT.match(recent[start])
            if match is not None and match.group("group") == self.group_name:
                typed = recent[start][match.end():] + "".join(recent[start + 1:])
                if "".join(typed.split()) != wanted:
                    return None
                return len(done) - (len(recent) - 1 - start)
        return None

    @staticmethod
    def _output(done: List[str], command: Optional[CliCommand]) -> List[str]:
        lines = [line for line in split_lines("\n".join(done)) if not is_event_line(line)]
        return strip_echo(lines, command.text) if command is not None else lines

    # --- host keys -----------------------------------------------------------------------

    def _host_entry(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def _load_known_hosts(self) -> paramiko.HostKeys:
        keys = paramiko.HostKeys()
        if os.path.exists(self.known_hosts):
            try:
                keys.load(self.known_hosts)
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise HostKeyRejected(
                    f"cannot read known_hosts file {self.known_hosts}: {exc}") from None
        return keys

    def _check_host_key(self, known: paramiko.HostKeys, key: paramiko.PKey) -> None:
        entry = self._host_entry()
        recorded = known.lookup(entry)
        fingerprint = f"{key.get_name()} {_fingerprint(key)}"
        if recorded is None:
            if self.host_key_policy == "accept-new":
                self._record_host_key(entry, key)
                return
            port = f"-p {self.port} " if self.port != 22 else ""
            raise HostKeyRejected(
                f"the SSH host key of {entry} ({fingerprint}) is not in {self.known_hosts}; "
                "check the fingerprint with the group administrator, then add it, e.g. "
                f"`ssh-keyscan {port}{self.host} >> {self.known_hosts}` "
                "(or use host_key_policy accept-new once)")
        expected = recorded.get(key.get_name())
        if expected is None or expected.asbytes() != key.asbytes():
            raise HostKeyRejected(
                f"the SSH host key of {entry} ({fingerprint}) does NOT match "
                f"{self.known_hosts}: refusing to connect (possible man-in-the-middle). If "
                "the group's key really changed, remove the old entry with "
                f"`ssh-keygen -R '{entry}' -f {self.known_hosts}` and add the new one")

    def _record_host_key(self, entry: str, key: paramiko.PKey) -> None:
        directory = os.path.dirname(self.known_hosts)
        try:
            if directory:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as stream:
                needs_break = stream.tell() > 0 and not _ends_with_newline(self.known_hosts)
                stream.write(("\n" if needs_break else "")
                             + f"{entry} {key.get_name()} {key.get_base64()}\n")
        except OSError as exc:
            raise HostKeyRejected(
                f"cannot record the host key of {entry} in {self.known_hosts}: {exc}"
            ) from None

    # --- closing -------------------------------------------------------------------------

    def _expire(self) -> None:
        """Deadline passed: close the connection so every blocked call returns."""
        self._expired = True
        self.close()

    def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            try:
                channel.close()
            except (paramiko.SSHException, EOFError, OSError):
                pass  # the connection is gone already: nothing left to close

    def close(self) -> None:
        """Close the shell and the connection (idempotent)."""
        self._close_channel()
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()


class _Watchdog:
    """Calls ``expire`` from a timer thread if the ``with`` block outlives ``seconds``."""

    def __init__(self, seconds: float, expire: Callable[[], None]) -> None:
        self._timer = threading.Timer(max(seconds, 0.0), expire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()


def _fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as stream:
        stream.seek(-1, os.SEEK_END)
        return stream.read(1) == b"\n"


def _prefer_key_types(transport: paramiko.Transport, recorded: Optional[Mapping[str, paramiko.PKey]]
                      ) -> None:
    """Negotiate a host key type that known_hosts has for this host, as OpenSSH does."""
    if not recorded:
        return
    options = transport.get_security_options()
    wanted: List[str] = []
    for key_type in recorded.keys():
        wanted += ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if key_type == "ssh-rsa" else [
            key_type]
    available = list(options.key_types)
    first = [key_type for key_type in wanted if key_type in available]
    options.key_types = first + [key_type for key_type in available if key_type not in first]
