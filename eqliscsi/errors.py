"""Exceptions raised by the Group CLI client.

Two families:

* ``CliError`` and its subclasses: the group answered a command with an error line
  (``% Error - ...`` or ``Error: ...``), or with output the client cannot use.
* ``TransportError`` and its subclasses: the group could not be reached, refused the login
  or the session, or stopped answering.  ``retryable`` says whether trying again later can
  help (a wrong password or host key cannot).

``InvalidValue`` is raised before anything is sent: a value cannot be put on a CLI line.

Messages name the command (with secrets masked) and never contain a password.
"""

from __future__ import annotations

from typing import Sequence, Tuple


class EqlError(Exception):
    """Base class of every error raised by this package."""


class InvalidValue(EqlError, ValueError):
    """A value given to the client cannot be sent to the CLI (raised before connecting)."""


class CliError(EqlError):
    """The group answered ``command`` with an error.

    ``command`` is the masked command text; ``lines`` are the error lines the group printed.
    """

    def __init__(self, command: str, lines: Sequence[str] = (), message: str = "") -> None:
        self.command = command
        self.lines: Tuple[str, ...] = tuple(lines)
        detail = message or " / ".join(line.strip() for line in self.lines) or "failed"
        super().__init__(f"`{command}`: {detail}")


class NotFound(CliError):
    """The volume, snapshot, record or account does not exist."""


class AlreadyExists(CliError):
    """An object with that name already exists."""


class NoSpace(CliError):
    """The pool has not enough free space."""


class Busy(CliError):
    """The object is online, connected or in use."""


class InvalidInput(CliError):
    """The group rejected the command's syntax or one of its values."""


class UnexpectedOutput(CliError):
    """The command succeeded but its output lacks what the client needs (e.g. the IQN)."""


class StateUnknown(CliError):
    """A change was sent, the connection was lost, and its effect cannot be verified."""


class TransportError(EqlError):
    """The SSH connection or CLI session failed; ``retryable`` tells whether to try again."""

    retryable = True


class GroupUnreachable(TransportError):
    """The TCP connection or the SSH handshake failed."""


class ConnectionLost(TransportError):
    """The group closed the connection or the session.

    ``command_sent`` is False when the loss was noticed before the command went out, so
    the command certainly did not run.
    """

    def __init__(self, message: str, command_sent: bool = True) -> None:
        super().__init__(message)
        self.command_sent = command_sent


class SessionRefused(TransportError):
    """The group accepted the login but closed the session before its first prompt
    (typically its limit of concurrent CLI sessions)."""


class GroupTimeout(TransportError):
    """The group did not answer in time; the session was closed.

    A command that timed out may still complete on the group, so the client never re-sends
    it; ``retryable`` is True only when the timeout happened while logging in.
    """

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class AuthenticationFailed(TransportError):
    """The group rejected the user name or password."""

    retryable = False


class HostKeyRejected(TransportError):
    """The group's SSH host key is unknown or differs from the known_hosts entry."""

    retryable = False


class SlotTimeout(TransportError):
    """No local CLI session slot became free in time (other processes hold them all)."""

    retryable = False
