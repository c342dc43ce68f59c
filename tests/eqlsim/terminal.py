"""The terminal side of an interactive CLI session: echo, line editing, wrapping, paging.

Input: every typed character is echoed; Enter is CR, LF or CRLF (a CRLF is one Enter, also
when split across packets); Backspace/DEL, Ctrl-U (kill line) and Ctrl-C (drop line) edit.
Output: lines end in CRLF, are hard-wrapped at ``columns`` unless ``hardwrap`` is off, and
pause after a screenful when paging is asked for.
"""

from __future__ import annotations

import codecs
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, List, Optional, Protocol, Sequence

MAX_LINE = 4096  # characters kept per input line; more are ignored
POLL_SECONDS = 1.0  # longest wait for input before re-checking that the session should go on


@dataclass
class TerminalSettings:
    """``stty`` values: they belong to one session."""

    columns: int = 80
    rows: int = 24
    hardwrap: bool = True


class Port(Protocol):
    """Where the bytes go: an SSH channel in the server, a fake in unit tests."""

    def read(self, timeout: float) -> Optional[bytes]:
        """Received bytes; None when nothing came within ``timeout``; b"" at end of input."""

    def write(self, data: bytes) -> None:
        """Send all of ``data``; raise OSError or EOFError when the peer is gone."""


class SessionClosed(Exception):
    """The client went away, stayed idle too long, or the server is stopping."""


class Terminal:
    """Line discipline for one session on top of a ``Port``."""

    def __init__(
        self,
        port: Port,
        settings: TerminalSettings,
        keep_going: Callable[[], bool],
        idle_timeout: Optional[float] = None,
    ) -> None:
        self.settings = settings
        self.idle_timeout = idle_timeout
        self._port = port
        self._keep_going = keep_going
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: Deque[str] = deque()
        self._echo: List[str] = []
        self._after_cr = False

    # ---- output -----------------------------------------------------------------------------

    def write(self, text: str) -> None:
        """Send text as it is (echo already pending goes first)."""
        self._send("".join(self._echo) + text)
        self._echo.clear()

    def _send(self, text: str) -> None:
        if not text:
            return
        try:
            self._port.write(text.encode("utf-8"))
        except (OSError, EOFError) as exc:
            raise SessionClosed(str(exc)) from exc

    def wrap(self, line: str) -> List[str]:
        """Cut a line into screen lines of ``columns`` characters when hardwrap is on."""
        width = self.settings.columns
        if not self.settings.hardwrap or len(line) <= width:
            return [line]
        return [line[i : i + width] for i in range(0, len(line), width)]

    def write_lines(self, lines: Sequence[str], more_prompt: Optional[str] = None) -> None:
        """Print lines; with ``more_prompt``, pause after each screenful until a key is pressed.

        Any key continues and Q (or q) drops the rest; the pause line then ends with CRLF.
        """
        screen = [piece for line in lines for piece in self.wrap(line)]
        page = len(screen) or 1
        if more_prompt is not None:
            page = max(self.settings.rows - 1, 1)
        for start in range(0, len(screen), page):
            if start and more_prompt is not None:
                self.write(more_prompt)
                key = self.read_key()
                self.write("\r\n")
                if key in ("q", "Q"):
                    return
            self.write("".join(f"{piece}\r\n" for piece in screen[start : start + page]))

    # ---- input ------------------------------------------------------------------------------

    def _next_char(self) -> str:
        """The next typed character; the LF of a CRLF is dropped here, once for everybody."""
        idle_since = time.monotonic()
        while True:
            while self._pending:
                char = self._pending.popleft()
                after_cr, self._after_cr = self._after_cr, char == "\r"
                if not (char == "\n" and after_cr):
                    return char
            self.write("")
            if not self._keep_going():
                raise SessionClosed("server stopping")
            if self.idle_timeout is not None and time.monotonic() - idle_since > self.idle_timeout:
                raise SessionClosed("idle logout")
            data = self._port.read(POLL_SECONDS)
            if data == b"":
                raise SessionClosed("end of input")
            if data:
                self._pending.extend(self._decoder.decode(data))

    def read_key(self) -> str:
        return self._next_char()

    def read_line(self, initial: str = "") -> str:
        """Read one line with echo; ``initial`` is already on screen and in the buffer."""
        buffer = list(initial)
        while True:
            char = self._next_char()
            if char in "\r\n":
                self.write("\r\n")
                return "".join(buffer)
            if char in "\x7f\x08":
                if buffer:
                    buffer.pop()
                    self._echo.append("\b \b")
            elif char == "\x15":
                self._echo.append("\b \b" * len(buffer))
                buffer.clear()
            elif char == "\x03":
                self.write("^C\r\n")
                return ""
            elif char >= " " and len(buffer) < MAX_LINE:
                buffer.append(char)
                self._echo.append(char)

    def ask(self, question: str) -> bool:
        """Ask a (y/n) question; only y or yes (any case) means yes."""
        self.write(question + " ")
        return self.read_line().strip().lower() in ("y", "yes")
