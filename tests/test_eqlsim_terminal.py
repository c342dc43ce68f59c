"""The simulator's line discipline, on a scripted port: echo, Enter, editing, wrap, paging."""

from __future__ import annotations

from typing import List, Optional, Tuple

import pytest

from tests.eqlsim.terminal import SessionClosed, Terminal, TerminalSettings

MORE = "Press any key to continue (Q to quit)"


class ScriptedPort:
    """Gives the scripted input chunks one per read, then end of input; records output."""

    def __init__(self, *chunks: str) -> None:
        self.chunks: List[bytes] = [c.encode() for c in chunks]
        self.output = b""

    def read(self, timeout: float) -> Optional[bytes]:
        return self.chunks.pop(0) if self.chunks else b""

    def write(self, data: bytes) -> None:
        self.output += data

    @property
    def text(self) -> str:
        return self.output.decode()


def terminal(*chunks: str, **settings) -> Tuple[Terminal, ScriptedPort]:
    port = ScriptedPort(*chunks)
    return Terminal(port, TerminalSettings(**settings), lambda: True), port


@pytest.mark.parametrize("enter", ["\r", "\n", "\r\n"])
def test_every_enter_style_ends_one_line(enter):
    term, port = terminal(f"first{enter}second{enter}")
    assert [term.read_line(), term.read_line()] == ["first", "second"]
    assert port.text == "first\r\nsecond\r\n"
    with pytest.raises(SessionClosed):
        term.read_line()


def test_crlf_split_across_packets_is_one_enter():
    term, _ = terminal("a\r", "\nb\r", "\n")
    assert [term.read_line(), term.read_line()] == ["a", "b"]
    with pytest.raises(SessionClosed):
        term.read_line()


def test_lf_after_lf_is_an_empty_line():
    term, _ = terminal("a\n\n")
    assert [term.read_line(), term.read_line()] == ["a", ""]


def test_editing_keys():
    term, port = terminal("abX\x7fc\r", "junk\x15ok\r", "drop\x03")
    assert term.read_line() == "abc"
    assert port.text == "abX\b \bc\r\n"
    assert term.read_line() == "ok"
    assert term.read_line() == ""
    assert port.text.endswith("drop^C\r\n")


def test_initial_text_is_kept_for_editing():
    term, port = terminal("\x7fz\r")
    assert term.read_line(initial="volm") == "volz"
    assert port.text == "\b \bz\r\n"


def test_lines_wrap_at_80_columns_unless_hardwrap_is_off():
    long = "x" * 170
    term, port = terminal()
    term.write_lines([long, "short"])
    assert port.text == "x" * 80 + "\r\n" + "x" * 80 + "\r\n" + "x" * 10 + "\r\nshort\r\n"
    term, port = terminal(columns=255)
    term.write_lines([long])
    assert port.text == long + "\r\n"
    term, port = terminal(hardwrap=False)
    term.write_lines([long])
    assert port.text == long + "\r\n"


def test_paging_stops_after_a_screenful():
    lines = [f"line {i}" for i in range(30)]
    term, port = terminal(" ")
    term.write_lines(lines, MORE)
    first, rest = port.text.split(MORE + "\r\n")
    assert first.split("\r\n")[:-1] == lines[:23]
    assert rest.split("\r\n")[:-1] == lines[23:]


def test_paging_q_drops_the_rest_and_small_output_never_pauses():
    term, port = terminal("q")
    term.write_lines([f"line {i}" for i in range(60)], MORE)
    assert port.text.count(MORE) == 1
    assert port.text.endswith(MORE + "\r\n")
    assert "line 23" not in port.text
    term, port = terminal()
    term.write_lines(["a"] * 23, MORE)
    assert MORE not in port.text


def test_paging_counts_wrapped_lines_and_rows():
    term, port = terminal(" ", rows=5)
    term.write_lines(["y" * 100, "z" * 100, "end"], MORE)
    assert port.text.split("\r\n").index(MORE) == 4


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("y\r", True), ("YES\r", True), ("n\r", False), ("\r", False), ("maybe\r", False)],
)
def test_ask(answer, expected):
    term, port = terminal(answer)
    assert term.ask("Really? (y/n) [n]") is expected
    assert port.text.startswith("Really? (y/n) [n] ")


def test_idle_timeout_and_stop_end_the_session():
    class SilentPort(ScriptedPort):
        def read(self, timeout):
            return None

    term = Terminal(SilentPort(), TerminalSettings(), lambda: True, idle_timeout=0.0)
    with pytest.raises(SessionClosed, match="idle"):
        term.read_line()
    stopping = Terminal(SilentPort(), TerminalSettings(), lambda: False)
    with pytest.raises(SessionClosed, match="stopping"):
        stopping.read_key()


def test_write_to_a_closed_port_ends_the_session():
    class ClosedPort(ScriptedPort):
        def write(self, data):
            raise OSError("Socket is closed")

    term = Terminal(ClosedPort(), TerminalSettings(), lambda: True)
    with pytest.raises(SessionClosed):
        term.write("x")
