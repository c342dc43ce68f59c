"""The contract between oned and every action script.

oned (through its Ruby MAD) runs an action as ``oneadmin`` on the front-end and reads:

* **stdout**: the protocol result only (one line for ``stat``/``cp``/``clone``/``mkfs``).
  ``run_action`` writes it after the action succeeded; anything an action prints to
  stdout while running is diverted to stderr.
* **stderr**: log lines ``INFO: <action>: msg`` (also ``WARN:``, ``ERROR:``, ``DEBUG:``) and,
  on failure, ONE plain single-line reason after the ``ERROR:`` line(s).  OpenNebula <= 6.0
  only reads the reason between ``ERROR MESSAGE --8<------`` / ``ERROR MESSAGE ------>8--``
  markers; they are written when ``<remotes>/VERSION`` says 6.0 or older (the markers were
  removed in 6.1.80/6.2).  ``<remotes>`` is two directories above the action script as oned
  ran it (``<remotes>/datastore/eqliscsi/stat``), not following symlinks.
* **exit code**: 0 on success, 1 on failure.

Tracebacks are printed (as ``DEBUG:`` lines, so OpenNebula 7 does not glue them into the
reason) only when ``EQLISCSI_DEBUG=1`` is in the environment or ``EQL_DEBUG`` in the conf.

Every text that leaves the process passes ``clean_message``: secrets registered with
``register_secret`` (EQL_PASS, EQL_CHAP_PASS, URL passwords) become ``***`` and line breaks
become spaces.

DS actions receive their data in one of three forms (``DsInvocation.parse``), told apart by
the arguments alone: ``<base64> <id>`` (OpenNebula 4.x - 6.6), ``- <id>`` with base64 on
stdin (6.4.4+/6.6.2+ with ``-i``), ``<id>`` with base64 on stdin (6.8+, 7.x).

The optional debug log (conf ``EQL_DEBUG_LOG``: a file path or ``syslog``) records action
start/end with timings and, through ``record_cli_command`` (the ``command_log`` hook of
``group.GroupClient``), each Group CLI command.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import sys
import syslog
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    BinaryIO,
    Callable,
    List,
    Mapping,
    NoReturn,
    Optional,
    Sequence,
    Set,
    Tuple,
)

if TYPE_CHECKING:
    from eqliscsi.config import ConfFile

DEBUG_ENV = "EQLISCSI_DEBUG"
SECRET_MASK = "***"  # noqa: S105 (the mask, not a secret)
ERROR_MARKER_START = "ERROR MESSAGE --8<------"
ERROR_MARKER_END = "ERROR MESSAGE ------>8--"
LAST_VERSION_WITH_MARKERS = (6, 0)
LONG_ARGUMENT = 256  # longer arguments (base64 action data) are never written to the debug log
TRUE_WORDS = frozenset({"1", "yes", "true", "on"})
FALSE_WORDS = frozenset({"0", "no", "false", "off"})


class DriverError(Exception):
    """An expected failure; ``str()`` is the reason shown to oned (masked, one line)."""


class InputError(DriverError):
    """oned's invocation, action data or an object attribute is missing or invalid."""


class ConfigError(DriverError):
    """A driver setting (conf file or template attribute) is missing or invalid."""


# --- secrets and message hygiene ---------------------------------------------------------

_secrets: Set[str] = set()


def register_secret(value: str) -> None:
    """Make ``mask_secrets`` hide ``value`` in every message from now on."""
    if value:
        _secrets.add(value)


def mask_secrets(text: str) -> str:
    """``text`` with every registered secret replaced by ``***`` (longest first)."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, SECRET_MASK)
    return text


def one_line(text: str) -> str:
    """``text`` on one line: line breaks become single spaces, other controls ``?``."""
    joined = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return "".join("?" if ord(char) < 32 and char != "\t" else char for char in joined)


def clean_message(text: str) -> str:
    """The one form in which any text leaves the process: masked and on one line."""
    return one_line(mask_secrets(text))


# --- stderr log lines and the debug log --------------------------------------------------

_action_name = "eqliscsi"
_debug_log: Optional[Callable[[str], None]] = None


def _log(severity: str, message: str) -> None:
    print(f"{severity}: {_action_name}: {clean_message(message)}", file=sys.stderr, flush=True)


def log_info(message: str) -> None:
    """``INFO: <action>: message`` on stderr."""
    _log("INFO", message)


def log_warn(message: str) -> None:
    """``WARN: <action>: message`` on stderr (OpenNebula 7 logs it as a warning)."""
    _log("WARN", message)


def log_error(message: str) -> None:
    """``ERROR: <action>: message`` on stderr."""
    _log("ERROR", message)


def log_debug(message: str) -> None:
    """``DEBUG: <action>: message`` on stderr."""
    _log("DEBUG", message)


def debug_event(message: str) -> None:
    """Append ``message`` to the debug log, if one is configured (masked, one line)."""
    if _debug_log is not None:
        _debug_log(clean_message(message))


def record_cli_command(command: str, duration: float, error: Optional[str]) -> None:
    """The Group CLI client's ``command_log`` hook: one debug-log entry per command (its
    masked text, duration in seconds, None or an error description)."""
    outcome = "ok" if error is None else "failed"
    debug_event(f"cli {outcome} {duration:.3f}s: {command}" + (f": {error}" if error else ""))


def _open_debug_log(target: Optional[str]) -> Optional[Callable[[str], None]]:
    """A writer for ``EQL_DEBUG_LOG``: ``syslog``, a file path, or None (no debug log)."""
    if target is None:
        return None
    if target == "syslog":
        syslog.openlog("eqliscsi", syslog.LOG_PID, syslog.LOG_DAEMON)
        return lambda line: syslog.syslog(syslog.LOG_DEBUG, f"{_action_name}: {line}")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        log_warn(f"cannot open the debug log {target}: {exc.strerror}")
        return None

    def write(line: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"{stamp} {_action_name}[{os.getpid()}]: {line}\n".encode())

    return write


# --- invocation --------------------------------------------------------------------------

@dataclass(frozen=True)
class DsInvocation:
    """A DS action's object id (image, datastore or request id) and decoded action XML."""

    object_id: int
    xml: bytes

    @classmethod
    def parse(cls, args: Sequence[str], stdin: BinaryIO) -> DsInvocation:
        """Detect the invocation form from ``args`` and decode the base64 action data."""
        if len(args) == 1:
            object_id, encoded = args[0], stdin.read().decode("ascii", "replace")
        elif len(args) == 2 and args[0] == "-":
            object_id, encoded = args[1], stdin.read().decode("ascii", "replace")
        elif len(args) == 2:
            object_id, encoded = args[1], args[0]
        else:
            raise InputError(
                f"expected '<id>' (action data on stdin), '- <id>' or '<base64> <id>', "
                f"got {len(args)} arguments"
            )
        return cls(_object_id(object_id), decode_base64(encoded, "action data"))


def _object_id(text: str) -> int:
    if not re.fullmatch(r"-?\d{1,18}", text):
        raise InputError(f"invalid object id {text[:40]!r}: expected an integer")
    return int(text)


def decode_base64(encoded: str, what: str) -> bytes:
    """Strictly decode one base64 block (surrounding whitespace allowed, nothing else)."""
    text = encoded.strip()
    if not text:
        raise InputError(f"no {what}: expected base64 text")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"invalid {what}: not valid base64") from None
    if not data:
        raise InputError(f"no {what}: the base64 text decodes to nothing")
    return data


# --- running an action -------------------------------------------------------------------

@dataclass(frozen=True)
class Action:
    """What an action function gets: its arguments, stdin, environment and the conf file."""

    name: str
    args: Tuple[str, ...]
    stdin: BinaryIO
    environ: Mapping[str, str]
    remotes_dir: Path
    conf: ConfFile

    def ds_invocation(self) -> DsInvocation:
        """The DS invocation (object id + decoded action XML) of this run."""
        return DsInvocation.parse(self.args, self.stdin)


ActionFunction = Callable[[Action], Optional[str]]


def remotes_dir_of(script: str) -> Path:
    """The remotes root of an action script: two directories above the script's own."""
    return Path(os.path.abspath(script)).parent.parent.parent


def run_action(name: str, func: ActionFunction) -> NoReturn:
    """Run ``func`` as action ``name`` under the oned contract and exit with its status.

    The process ends with ``os._exit`` once stdout and stderr are flushed, skipping the
    interpreter's teardown (~20 ms after paramiko: module and object clean-up, a tenth of a
    short action).  Nothing is lost: every file, session, subprocess and staging directory
    of the action is closed by its ``with`` block before ``execute_action`` returns, and the
    debug log is written unbuffered.  A result that cannot be flushed fails the action."""
    status = execute_action(name, func, sys.argv, sys.stdin.buffer, os.environ)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        status = status or 1
    os._exit(status)


def execute_action(name: str, func: ActionFunction, argv: Sequence[str], stdin: BinaryIO,
                   environ: Mapping[str, str]) -> int:
    """``run_action`` without the exit: returns the exit status."""
    from eqliscsi import config

    global _action_name, _debug_log
    _action_name, _debug_log = name, None
    remotes_dir = remotes_dir_of(argv[0])
    debug = parse_bool(environ.get(DEBUG_ENV, "")) is True
    started = time.monotonic()
    try:
        conf = config.load_conf_file(config.find_conf_file(remotes_dir, environ))
        settings = config.resolve_config(conf)
        debug = debug or settings.debug
        _debug_log = _open_debug_log(settings.debug_log)
        debug_event(f"start: {_describe_args(argv[1:])}")
        action = Action(name, tuple(argv[1:]), stdin, environ, remotes_dir, conf)
        with contextlib.redirect_stdout(sys.stderr):
            result = func(action)
    except (Exception, KeyboardInterrupt) as exc:
        reason = failure_reason(exc)
        _report_failure(reason, exc if debug else None, _uses_error_markers(remotes_dir))
        debug_event(f"end: failed after {time.monotonic() - started:.3f}s: {reason}")
        return 1
    debug_event(f"end: ok after {time.monotonic() - started:.3f}s")
    if result is not None:
        sys.stdout.write(result + "\n")
        sys.stdout.flush()
    return 0


def parse_bool(text: str) -> Optional[bool]:
    """True/False for yes/no, true/false, on/off, 1/0 (any case); None otherwise."""
    word = text.strip().lower()
    return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None


def _describe_args(args: Sequence[str]) -> str:
    shown = [f"<{len(arg)} characters>" if len(arg) > LONG_ARGUMENT else arg for arg in args]
    return " ".join(shown) or "(no arguments)"


def failure_reason(exc: BaseException) -> str:
    """The single-line, masked reason reported to oned for ``exc``."""
    if isinstance(exc, KeyboardInterrupt):
        reason = "interrupted"
    elif isinstance(exc, DriverError) or _is_group_error(exc):
        reason = str(exc) or type(exc).__name__
    else:
        reason = f"internal error: {type(exc).__name__}: {exc}"
    reason = clean_message(reason)
    # oned reads a reason starting with "-" as "no detail"
    return f"error: {reason}" if reason.startswith("-") else reason


def _is_group_error(exc: BaseException) -> bool:
    from eqliscsi.errors import EqlError

    return isinstance(exc, EqlError)


def _report_failure(reason: str, debug_exc: Optional[BaseException], markers: bool) -> None:
    log_error(reason)
    if debug_exc is not None:
        for chunk in traceback.format_exception(type(debug_exc), debug_exc,
                                                debug_exc.__traceback__):
            for line in chunk.splitlines():
                log_debug(line)
    lines: List[str] = [ERROR_MARKER_START, reason, ERROR_MARKER_END] if markers else [reason]
    print("\n".join(lines), file=sys.stderr, flush=True)


def one_version(remotes_dir: Path) -> Optional[Tuple[int, int]]:
    """(major, minor) from ``<remotes>/VERSION``, or None when absent or unreadable."""
    try:
        text = (remotes_dir / "VERSION").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.match(r"\s*(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _uses_error_markers(remotes_dir: Path) -> bool:
    version = one_version(remotes_dir)
    return version is not None and version <= LAST_VERSION_WITH_MARKERS
