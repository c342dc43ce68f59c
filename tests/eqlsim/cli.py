"""The Group Manager command interpreter: one tokenizer, keyword tables, one dispatcher.

``Interpreter.execute(line)`` runs one command line against the shared group state and
returns a ``Result``: the lines to print, the error if any, whether the line was rejected as
bad input (to be reprinted), or a confirmation question to ask before running it again with
``confirmed=True``. It knows nothing about SSH or terminals.

Every text the simulator prints is in ``MESSAGES``; a JSON file given with ``--messages``
overrides entries, because the exact Dell wording of most of them is unverified ([M]).
All output formatting (sizes, ``Key: value`` blocks, section rules, tables) is in ``Output``.
"""

from __future__ import annotations

import json
import re
import string
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from tests.eqlsim.backend import FileBackend, Publication
from tests.eqlsim.state import (
    DEFAULT_POOL,
    AccessRecord,
    CliSettings,
    GroupError,
    GroupState,
    Snapshot,
    StateStore,
    Volume,
    check_ip_pattern,
    parse_size_mb,
    percent_mb,
)
from tests.eqlsim.terminal import TerminalSettings

MESSAGES: Dict[str, str] = {
    # Session texts.
    "banner": "\n           Welcome to Group Manager\n\n        Copyright 2001-2014 Dell Inc.\n",
    "event_login": (
        "netmgtd:{timestamp}:rcc_util.c:1024:INFO:25.2.9:CLI: "
        "Login to account {account} succeeded, using {via}."
    ),
    "prompt": "{group}> ",
    "prompt_volume": "{group}(volume_{volume})> ",
    "more": "Press any key to continue (Q to quit)",
    "confirm_delete_volume": (
        "Do you really want to delete the volume and destroy {size} of data? (y/n) [n]"
    ),
    "confirm_logout": "Do you really want to logout? (y/n) [n]",
    "session_limit": "% Error - Maximum number of CLI sessions reached.",
    # Success texts; an empty text prints nothing.
    "volume_created": "Volume creation succeeded.",
    "target_name": "iSCSI target name is {iqn}.",
    "volume_deleted": "Volume deletion succeeded.",
    "snapshot_created": "Snapshot creation succeeded.",
    "snapshot_name": "Snapshot name is {name}",
    "snapshot_deleted": "Snapshot deletion succeeded.",
    "access_created": "Access control record created with ID {id}.",
    "chapuser_created": "CHAP user creation succeeded.",
    "chapuser_password": "Password is {password}",
    "chapuser_deleted": "CHAP user deletion succeeded.",
    # Rejected input ("Error:" form; the rejected line is reprinted).
    "unknown_command": 'Error: Bad command "{token}".',
    "ambiguous_command": 'Error: Ambiguous command "{token}".',
    "missing_argument": "Error: Missing argument: {what}.",
    "unclosed_quote": "Error: Missing closing quote.",
    # Refused operations ("% Error -" form).
    "volume_not_found": "% Error - Volume does not exist.",
    "snapshot_not_found": "% Error - Snapshot does not exist.",
    "pool_not_found": "% Error - Pool does not exist.",
    "access_not_found": "% Error - Access control record does not exist.",
    "chapuser_not_found": "% Error - CHAP user does not exist.",
    "volume_exists": "% Error - Volume name already exists.",
    "snapshot_exists": "% Error - Snapshot name already exists.",
    "chapuser_exists": "% Error - CHAP user already exists.",
    "no_space": "% Error - Not enough free space in the pool to complete the operation.",
    "delete_online": "% Error - Volume must be offline before it can be deleted.",
    "restore_online": "% Error - Volume must be offline before a snapshot can be restored.",
    "snapshot_online": "% Error - Snapshot is online. Set it offline first.",
    "too_many_access": (
        "% Error - The volume already has the maximum number of access control records ({limit})."
    ),
    "shrink_refused": "% Error - Volume size cannot be decreased.",
    "invalid_name": '% Error - Invalid name "{name}".',
    "invalid_size": '% Error - Invalid size "{size}".',
    "bad_argument": '% Error - Invalid argument "{token}".',
    "backend_failure": "% Error - Internal error: {reason}",
    "injected_error": "% Error - Injected failure.",
}

HEADER_WIDTH = 83  # the "____ Volume Information ____" rule of the reference transcript
SETTINGS_KEYWORDS = {
    "events": "events",
    "paging": "paging",
    "confirmation": "confirmation",
    "formatoutput": "formatoutput",
    "displayinMB": "display_in_mb",
    "reprintBadInput": "reprint_bad_input",
    "idlelogout": "idlelogout",
}


def load_messages(path: Path) -> Dict[str, str]:
    """``MESSAGES`` with the overrides of a JSON file; unknown keys and bad texts are refused."""
    overrides = json.loads(Path(path).read_text())
    if not isinstance(overrides, dict):
        raise ValueError(f"{path}: expected a JSON object of message texts")
    messages = dict(MESSAGES)
    for key, text in overrides.items():
        if key not in MESSAGES or not isinstance(text, str):
            raise ValueError(f"{path}: unknown message {key!r} or text not a string")
        list(string.Formatter().parse(text))  # raises ValueError on a malformed {field}
        messages[key] = text
    return messages


class _Fields(Dict[str, object]):
    """Message fields; one a text asks for but does not get stays as written: {name}."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


@dataclass
class CliConfig:
    """Interpreter settings fixed at start-up."""

    messages: Dict[str, str] = field(default_factory=lambda: dict(MESSAGES))
    max_access_records: int = 16

    def text(self, key: str, **params: object) -> str:
        """A message with its fields filled in. Besides those in the default text, errors
        get the object's ``name`` (or ``token``, ``size``, ``id``, ``limit``, ``pool``)."""
        return self.messages[key].format_map(_Fields(params))


@dataclass
class Session:
    """What belongs to one CLI session rather than to the account."""

    account: str
    terminal: TerminalSettings = field(default_factory=TerminalSettings)
    interactive: bool = True  # False for SSH exec: no confirmations
    context: Optional[str] = None  # obj_id of the volume selected with "volume select NAME"


@dataclass
class Result:
    """The outcome of one command line, for the terminal (or exec) to print."""

    lines: List[str]
    prompt: str
    settings: CliSettings
    error: Optional[str] = None
    bad_input: bool = False  # rejected by the parser: the line is reprinted for editing
    question: Optional[str] = None  # ask this, then execute again with confirmed=True
    end_session: bool = False


class BadInput(Exception):
    """The parser rejected the line (``Error:`` form)."""

    def __init__(self, key: str, **params: object) -> None:
        super().__init__(key)
        self.key = key
        self.params = params


class ConfirmationNeeded(Exception):
    """The command must be confirmed with a (y/n) answer before it runs."""

    def __init__(self, question: str) -> None:
        super().__init__(question)
        self.question = question


# ---- tokens --------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\"([^\"]*)(\"?)|'([^']*)('?)|(\S+)")


@dataclass(frozen=True)
class Token:
    text: str
    start: int
    end: int
    quoted: bool = False
    closed: bool = True


def tokenize(line: str) -> List[Token]:
    """Split at blanks; "..." and '...' make one word; an unquoted word starting with # ends
    the line (a comment)."""
    tokens = []
    for match in _TOKEN_RE.finditer(line):
        word = match.group(5)
        if word is not None:
            if word.startswith("#"):
                break
            tokens.append(Token(word, match.start(), match.end()))
        elif match.group(1) is not None:
            closed = match.group(2) == '"'
            tokens.append(Token(match.group(1), match.start(), match.end(), True, closed))
        else:
            closed = match.group(4) == "'"
            tokens.append(Token(match.group(3), match.start(), match.end(), True, closed))
    return tokens


def mask_secrets(line: str) -> str:
    """The line with the word after any (abbreviated) ``password`` keyword replaced by ***."""
    tokens = tokenize(line)
    masked = line
    for keyword, secret in reversed(list(zip(tokens, tokens[1:]))):
        if not keyword.quoted and "password".startswith(keyword.text.lower()):
            masked = masked[: secret.start] + "***" + masked[secret.end :]
    return masked


def match_keyword(word: str, keywords: Iterable[str]) -> str:
    """The keyword ``word`` names: an exact match or an unambiguous prefix, any case."""
    lowered = word.lower()
    candidates = [k for k in keywords if k.lower().startswith(lowered)]
    exact = [k for k in candidates if k.lower() == lowered]
    if exact:
        return exact[0]
    if len(candidates) == 1:
        return candidates[0]
    raise BadInput("ambiguous_command" if candidates else "unknown_command", token=word)


# ---- output --------------------------------------------------------------------------------


def format_size(size_mb: int, in_mb: bool = False) -> str:
    """Binary units glued to the number, up to 2 decimals: 0MB, 1GB, 1.01GB, 5.21TB."""
    if in_mb or size_mb < 1024:
        return f"{size_mb}MB"
    value, unit = (size_mb / 1024, "GB") if size_mb < 1024**2 else (size_mb / 1024**2, "TB")
    return f"{value:.2f}".rstrip("0").rstrip(".") + unit


@dataclass(frozen=True)
class Column:
    header: str
    width: int


def _wrap_cell(text: str, width: int) -> List[str]:
    """A cell wider than its column continues on following lines, indented by 2 spaces."""
    if len(text) <= width or width <= 2:
        return [text]
    rest = text[width:]
    step = width - 2
    return [text[:width]] + ["  " + rest[i : i + step] for i in range(0, len(rest), step)]


class Output:
    """The lines of one reply, and every rule about how they look."""

    def __init__(self, config: CliConfig, settings: CliSettings, terminal: TerminalSettings):
        self.lines: List[str] = []
        self._config = config
        self._in_mb = settings.display_in_mb
        self._width = min(HEADER_WIDTH, terminal.columns) if terminal.hardwrap else HEADER_WIDTH

    def say(self, key: str, **params: object) -> None:
        text = self._config.text(key, **params)
        if text:
            self.lines.extend(text.split("\n"))

    def size(self, size_mb: int) -> str:
        return format_size(size_mb, self._in_mb)

    def section(self, title: str) -> None:
        """A rule like ``____ Volume Information ____`` across the screen."""
        fill = max(self._width - len(title) - 2, 2)
        self.lines.append(f"{'_' * (fill // 2)} {title} {'_' * (fill - fill // 2)}")

    def fields(self, pairs: Sequence[Tuple[str, str]]) -> None:
        self.lines.extend(f"{key}: {value}" for key, value in pairs)

    def table(self, columns: Sequence[Column], rows: Iterable[Sequence[str]]) -> None:
        self.lines.append(" ".join(c.header.ljust(c.width) for c in columns).rstrip())
        self.lines.append(" ".join("-" * c.width for c in columns))
        for row in rows:
            cells = [_wrap_cell(text, c.width) for text, c in zip(row, columns)]
            for i in range(max(len(cell) for cell in cells)):
                parts = [
                    (cell[i] if i < len(cell) else "").ljust(c.width)
                    for cell, c in zip(cells, columns)
                ]
                self.lines.append(" ".join(parts).rstrip())


VOLUME_COLUMNS = (
    Column("Name", 15),
    Column("Size", 10),
    Column("SnapShots", 9),
    Column("Status", 14),
    Column("Permission", 10),
    Column("Connections", 11),
    Column("T", 1),
)
ACCESS_COLUMNS = (
    Column("ID", 3),
    Column("Initiator", 29),
    Column("Ipaddress", 15),
    Column("AuthMethod", 10),
    Column("UserName", 10),
    Column("Apply-To", 8),
)
SNAPSHOT_COLUMNS = (
    Column("Name", 25),
    Column("Permission", 10),
    Column("Status", 14),
    Column("Connections", 11),
)
POOL_COLUMNS = (
    Column("Name", 20),
    Column("Default", 7),
    Column("Members", 7),
    Column("Volumes", 7),
    Column("Capacity", 10),
    Column("FreeSpace", 10),
)
CONNECTION_COLUMNS = (
    Column("Initiator", 28),
    Column("Ipaddress", 15),
    Column("MinutesConnected", 16),
    Column("MB Read", 7),
    Column("MB Written", 10),
)
CHAPUSER_COLUMNS = (Column("Name", 32), Column("Password", 32), Column("Enabled", 8))


# ---- one command being run -----------------------------------------------------------------

Handler = Callable[["Run"], None]


@dataclass(frozen=True)
class Option:
    """An optional keyword: stores ``value`` under ``dest``, or the next word when None."""

    dest: str
    value: Optional[str] = None


class Run:
    """One command line being executed: the words still to read, the state and the reply."""

    def __init__(
        self,
        words: List[str],
        state: GroupState,
        session: Session,
        config: CliConfig,
        backend: FileBackend,
        confirmed: bool,
    ) -> None:
        self.words = words
        self.pos = 0
        self.state = state
        self.session = session
        self.config = config
        self.backend = backend
        self.confirmed = confirmed
        self.settings = state.settings_for(session.account)
        self.out = Output(config, self.settings, session.terminal)
        self.volume: Optional[Volume] = None  # set by "volume select NAME" or the context
        self.snapshot: Optional[Snapshot] = None
        self.end_session = False

    def more(self) -> bool:
        return self.pos < len(self.words)

    def value(self, what: str) -> str:
        if not self.more():
            raise BadInput("missing_argument", what=what)
        self.pos += 1
        return self.words[self.pos - 1]

    def keyword(self, keywords: Iterable[str], what: str) -> str:
        return match_keyword(self.value(what), keywords)

    def finish(self) -> None:
        """No words may be left."""
        if self.more():
            raise BadInput("unknown_command", token=self.words[self.pos])

    def dispatch(self, table: Mapping[str, Handler], what: str) -> None:
        table[self.keyword(table, what)](self)

    def options(self, spec: Mapping[str, Option]) -> Dict[str, str]:
        """Read the remaining words as optional keywords, in any order."""
        found: Dict[str, str] = {}
        while self.more():
            keyword = self.keyword(spec, "option")
            option = spec[keyword]
            found[option.dest] = option.value if option.value is not None else self.value(keyword)
        return found

    def confirm(self, key: str, **params: object) -> None:
        """Stop here with a (y/n) question unless confirmations are off or already given."""
        if self.session.interactive and self.settings.confirmation and not self.confirmed:
            raise ConfirmationNeeded(self.config.text(key, **params))

    def selected_volume(self) -> Volume:
        assert self.volume is not None, "table used outside a volume selection"
        return self.volume

    def selected_snapshot(self) -> Snapshot:
        assert self.snapshot is not None, "table used outside a snapshot selection"
        return self.snapshot

    def connection_count(self, obj_id: str) -> str:
        return str(len(self.backend.connections(obj_id)))


def _percent(text: str, maximum: int = 100) -> int:
    match = re.fullmatch(r"(\d{1,5})%?", text)
    if not match or int(match.group(1)) > maximum:
        raise GroupError("bad_argument", token=text)
    return int(match.group(1))


def _number(text: str, low: int, high: int) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise GroupError("bad_argument", token=text)
    return int(text)


def _on_off(run: Run, what: str) -> bool:
    value = run.keyword(("on", "off"), what)
    run.finish()
    return value == "on"


def _enabled(flag: bool) -> str:
    return "enabled" if flag else "disabled"


# ---- volumes -------------------------------------------------------------------------------

_STATUS_OPTIONS = {
    "online": Option("status", "online"),
    "offline": Option("status", "offline"),
    "read-write": Option("permission", "read-write"),
    "read-only": Option("permission", "read-only"),
}
CLONE_OPTIONS = {
    **_STATUS_OPTIONS,
    "description": Option("description"),
    "unrestricted": Option("unrestricted", "yes"),
    "snap-reserve": Option("snap_reserve"),
    "iscsi-alias": Option("iscsi_alias"),
}
CREATE_OPTIONS = {
    **CLONE_OPTIONS,
    "pool": Option("pool"),
    "thin-provision": Option("thin", "yes"),
    "thin-min-reserve": Option("thin_min_reserve"),
    "thin-growth-warn": Option("thin_growth_warn"),
    "thin-growth-max": Option("thin_growth_max"),
    "snap-warn": Option("snap_warn"),
    "snap-depletion": Option("snap_depletion"),
    "sectorsize": Option("sector_size"),
}


def _apply_volume_options(volume: Volume, options: Mapping[str, str]) -> None:
    """Copy parsed create/clone options onto a volume template."""
    for dest, value in options.items():
        if dest in ("status", "permission", "description", "iscsi_alias", "pool"):
            setattr(volume, dest, value)
        elif dest in ("thin", "unrestricted"):
            setattr(volume, dest, True)
        elif dest == "snap_reserve":
            volume.snap_reserve = _percent(value, maximum=10000)
        elif dest == "snap_depletion":
            volume.snap_depletion = match_keyword(value, ("delete-oldest", "volume-offline"))
        elif dest == "sector_size":
            volume.sector_size = int(match_keyword(value, ("512", "4096")))
        else:
            setattr(volume, dest, _percent(value))


def _volume_create(run: Run) -> None:
    name = run.value("volume name")
    size_mb = parse_size_mb(run.value("size"))
    volume = Volume(name=name, size_mb=size_mb, pool=DEFAULT_POOL)
    _apply_volume_options(volume, run.options(CREATE_OPTIONS))
    run.state.add_volume(volume)
    run.out.say("volume_created")
    run.out.say("target_name", iqn=volume.iqn)


def _volume_delete(run: Run) -> None:
    volume = run.state.volume(run.value("volume name"))
    run.finish()
    run.state.delete_volume(volume)
    # Asking after the checks: an unanswered question aborts the (unsaved) transaction.
    run.confirm("confirm_delete_volume", size=run.out.size(volume.size_mb))
    run.out.say("volume_deleted")


def _volume_rename(run: Run) -> None:
    volume = run.state.volume(run.value("volume name"))
    new_name = run.value("new volume name")
    run.finish()
    run.state.rename_volume(volume, new_name)


def _volume_show(run: Run) -> None:
    if run.more():
        run.volume = run.state.volume(run.value("volume name"))
        _volume_detail(run)
        return
    _volume_table(run, list(run.state.volumes.values()))


def _volume_table(run: Run, volumes: Sequence[Volume]) -> None:
    rows = [
        [
            v.name,
            run.out.size(v.size_mb),
            str(len(v.snapshots)),
            v.status,
            v.permission,
            run.connection_count(v.obj_id),
            "Y" if v.thin else "N",
        ]
        for v in volumes
    ]
    run.out.table(VOLUME_COLUMNS, rows)


def _volume_select(run: Run) -> None:
    volume = run.state.volume(run.value("volume name"))
    if not run.more():
        run.session.context = volume.obj_id
        return
    run.volume = volume
    run.dispatch(VOLUME_COMMANDS, "volume command")


def _volume_detail(run: Run) -> None:
    run.finish()
    volume, out = run.selected_volume(), run.out
    connections = run.backend.connections(volume.obj_id)
    alloc = volume.allocated_mb

    def share(percent: int) -> str:
        return f"{percent}% ({out.size(percent_mb(alloc, percent))})"

    out.section("Volume Information")
    out.fields(
        [
            ("Name", volume.name),
            ("Size", out.size(volume.size_mb)),
            ("VolReserve", out.size(volume.reserve_mb)),
            ("VolReserveInUse", out.size(0)),
            ("ReplReserveInUse", out.size(0)),
            ("iSCSI Alias", volume.iscsi_alias),
            ("iSCSI Name", volume.iqn),
            ("ActualMembers", "1"),
            ("Snap-Warn", f"{volume.snap_warn}%"),
            ("Snap-Depletion", volume.snap_depletion),
            ("Description", volume.description),
            ("Snap-Reserve", f"{volume.snap_reserve}%"),
            (
                "Snap-Reserve-Avail",
                f"{100 if volume.snap_reserve_mb else 0}% ({out.size(volume.snap_reserve_mb)})",
            ),
            ("Permission", volume.permission),
            ("DesiredStatus", volume.status),
            ("Status", volume.status),
            ("Connections", str(len(connections))),
            ("Snapshots", str(len(volume.snapshots))),
            ("Bind", ""),
            ("Type", "not-replicated"),
            ("ReplicationReserveSpace", out.size(0)),
            ("Replicas", "0"),
            ("ReplicationPartner", ""),
            ("Pool", volume.pool),
            ("Thin-Provision", _enabled(volume.thin)),
            ("Thin-Min-Reserve", share(volume.thin_min_reserve)),
            ("Thin-Growth-Warn", share(volume.thin_growth_warn)),
            ("Thin-Growth-Max", share(volume.thin_growth_max)),
            ("ReplicationTxData", out.size(0)),
            ("MultiHostAccess", _enabled(volume.multihost)),
            ("iSNS-Discovery", "disabled"),
            ("Thin-Clone", "N"),
            ("Template", "no"),
            ("Administrator", ""),
            ("SectorSize", str(volume.sector_size)),
        ]
    )
    out.section("iSCSI Connections")
    rows = [[c.initiator, c.ipaddress, "0", "0MB", "0MB"] for c in connections]
    out.table(CONNECTION_COLUMNS, rows)


def _set_volume(attribute: str, value: object) -> Handler:
    """A handler for a bare keyword that sets one attribute of the selected volume."""

    def handler(run: Run) -> None:
        run.finish()
        setattr(run.selected_volume(), attribute, value)

    return handler


def _set_thin(thin: bool) -> Handler:
    def handler(run: Run) -> None:
        run.finish()
        run.state.set_thin(run.selected_volume(), thin)

    return handler


def _volume_description(run: Run) -> None:
    text = run.value("description")
    run.finish()
    run.selected_volume().description = text


def _volume_alias(run: Run) -> None:
    alias = run.value("alias")
    run.finish()
    run.selected_volume().iscsi_alias = alias


def _volume_size(run: Run) -> None:
    size_mb = parse_size_mb(run.value("size"))
    options = run.options({"no-snap": Option("no_snap", "yes")})
    run.state.resize_volume(run.selected_volume(), size_mb, snapshot_first="no_snap" not in options)


def _volume_multihost(run: Run) -> None:
    value = run.keyword(("enable", "disable"), "enable or disable")
    run.finish()
    run.selected_volume().multihost = value == "enable"


def _volume_clone(run: Run) -> None:
    source = run.selected_volume()
    clone = run.state.clone_template(source, run.value("volume name"), source.size_mb)
    _apply_volume_options(clone, run.options(CLONE_OPTIONS))
    run.state.add_volume(clone, copy_from=source.obj_id)
    run.out.say("volume_created")
    run.out.say("target_name", iqn=clone.iqn)


# ---- access control records ----------------------------------------------------------------

ACCESS_OPTIONS = {
    "initiator": Option("initiator"),
    "ipaddress": Option("ipaddress"),
    "username": Option("username"),
    "authmethod": Option("authmethod"),
    "apply-to": Option("apply_to"),
}


def _access_create(run: Run) -> None:
    options = run.options(ACCESS_OPTIONS)
    if not {"initiator", "ipaddress", "username"} & options.keys():
        raise BadInput("missing_argument", what="initiator, ipaddress or username")
    if "ipaddress" in options:
        check_ip_pattern(options["ipaddress"])
    default_method = "chap" if "username" in options else "none"
    record = AccessRecord(
        id=0,
        initiator=options.get("initiator", ""),
        ipaddress=options.get("ipaddress", ""),
        username=options.get("username", ""),
        authmethod=match_keyword(options.get("authmethod", default_method), ("chap", "none")),
        apply_to=match_keyword(options.get("apply_to", "both"), ("volume", "snapshot", "both")),
    )
    run.state.add_access(run.selected_volume(), record, run.config.max_access_records)
    run.out.say("access_created", id=record.id)


def _access_id(run: Run) -> AccessRecord:
    return run.selected_volume().access_record(_number(run.value("record ID"), 1, 1 << 30))


def _access_show(run: Run) -> None:
    run.finish()
    rows = [
        [str(r.id), r.initiator, r.ipaddress, r.authmethod, r.username, r.apply_to]
        for r in run.selected_volume().access
    ]
    run.out.table(ACCESS_COLUMNS, rows)


def _access_select(run: Run) -> None:
    record = _access_id(run)
    run.keyword(("show",), "access command")
    run.finish()
    run.out.section("Access Control Record Information")
    run.out.fields(
        [
            ("ID", str(record.id)),
            ("Initiator", record.initiator),
            ("Ipaddress", record.ipaddress),
            ("AuthMethod", record.authmethod),
            ("UserName", record.username),
            ("Apply-To", record.apply_to),
        ]
    )


def _access_delete(run: Run) -> None:
    record = _access_id(run)
    run.finish()
    run.selected_volume().access.remove(record)


# ---- snapshots -----------------------------------------------------------------------------

SNAPSHOT_CREATE_OPTIONS = {**_STATUS_OPTIONS, "description": Option("description")}


def _snapshot_create(run: Run) -> None:
    options = run.options(SNAPSHOT_CREATE_OPTIONS)
    snap = run.state.create_snapshot(
        run.selected_volume(),
        description=options.get("description", ""),
        status=options.get("status", "offline"),
        permission=options.get("permission", "read-write"),
    )
    run.out.say("snapshot_created")
    run.out.say("snapshot_name", name=snap.name)


def _snapshot_rename(run: Run) -> None:
    volume = run.selected_volume()
    snap = volume.snapshot(run.value("snapshot name"))
    new_name = run.value("new snapshot name")
    run.finish()
    run.state.rename_snapshot(volume, snap, new_name)


def _snapshot_show(run: Run) -> None:
    run.finish()
    rows = [
        [s.name, s.permission, s.status, run.connection_count(s.obj_id)]
        for s in run.selected_volume().snapshots
    ]
    run.out.table(SNAPSHOT_COLUMNS, rows)


def _snapshot_delete(run: Run) -> None:
    volume = run.selected_volume()
    snap = volume.snapshot(run.value("snapshot name"))
    run.finish()
    run.state.delete_snapshot(volume, snap)
    run.out.say("snapshot_deleted")


def _snapshot_select(run: Run) -> None:
    run.snapshot = run.selected_volume().snapshot(run.value("snapshot name"))
    run.dispatch(SNAPSHOT_COMMANDS, "snapshot command")


def _snapshot_detail(run: Run) -> None:
    run.finish()
    snap, out = run.selected_snapshot(), run.out
    out.section("Snapshot Information")
    out.fields(
        [
            ("Name", snap.name),
            ("iSCSI Name", snap.iqn),
            ("TimeStamp", time.strftime("%Y-%m-%d:%H:%M:%S", time.localtime(snap.created))),
            ("Size", out.size(snap.size_mb)),
            ("Status", snap.status),
            ("Permission", snap.permission),
            ("Connections", run.connection_count(snap.obj_id)),
            ("Description", snap.description),
        ]
    )


def _set_snapshot_status(status: str) -> Handler:
    def handler(run: Run) -> None:
        run.finish()
        run.selected_snapshot().status = status

    return handler


def _snapshot_clone(run: Run) -> None:
    snap = run.selected_snapshot()
    clone = run.state.clone_template(run.selected_volume(), run.value("volume name"), snap.size_mb)
    _apply_volume_options(clone, run.options(CLONE_OPTIONS))
    run.state.add_volume(clone, copy_from=snap.obj_id)
    run.out.say("volume_created")
    run.out.say("target_name", iqn=clone.iqn)


def _snapshot_restore(run: Run) -> None:
    run.finish()
    run.state.restore_snapshot(run.selected_volume(), run.selected_snapshot())


# ---- pools, group, CHAP users --------------------------------------------------------------


def _pool_show(run: Run) -> None:
    if run.more():
        _pool_detail(run, run.value("pool name"))
        return
    rows = []
    for pool in run.state.pools.values():
        rows.append(
            [
                pool.name,
                str(pool.name == DEFAULT_POOL).lower(),
                "1",
                str(len(run.state.pool_volumes(pool.name))),
                run.out.size(pool.capacity_mb),
                run.out.size(run.state.free_mb(pool.name)),
            ]
        )
    run.out.table(POOL_COLUMNS, rows)


def _pool_select(run: Run) -> None:
    name = run.value("pool name")
    run.state.pool(name)
    run.keyword(("show",), "pool command")
    _pool_detail(run, name)


def _pool_detail(run: Run, name: str) -> None:
    run.finish()
    pool, out = run.state.pool(name), run.out
    volumes = run.state.pool_volumes(name)
    out.section("Pool Information")
    out.fields(
        [
            ("Name", pool.name),
            ("Default", str(pool.name == DEFAULT_POOL).lower()),
            ("Description", pool.description),
            ("Members", "1"),
            ("TotalCapacity", out.size(pool.capacity_mb)),
            ("FreeSpace", out.size(run.state.free_mb(name))),
            ("VolumeReserve", out.size(sum(v.reserve_mb for v in volumes))),
            ("VolumeReportedSpace", out.size(sum(v.size_mb for v in volumes))),
            ("TotalVolumes", str(len(volumes))),
            ("ThinProvisionedVolumes", str(sum(1 for v in volumes if v.thin))),
            ("SnapReserve", out.size(sum(v.snap_reserve_mb for v in volumes))),
            ("SnapReserveInUse", out.size(0)),
            ("ReplicationReserve", out.size(0)),
            ("DelegatedSpace", out.size(0)),
        ]
    )
    out.section("Volumes")
    _volume_table(run, volumes)


def _group_fields(state: GroupState) -> List[Tuple[str, str]]:
    return [
        ("Group-Name", state.group.name),
        ("Group-Ipaddress", state.group.ipaddress),
        ("Def-Snap-Reserve", "100%"),
        ("Def-Snap-Warn", "10%"),
        ("Def-Snap-Depletion", "delete-oldest"),
        ("Def-Thin-Growth-Warn", "60%"),
        ("Def-Thin-Growth-Max", "100%"),
        ("Def-Iscsi-Prefix", state.group.iscsi_prefix),
        ("Def-Iscsi-Alias", "yes"),
        ("Info-Messages", "enabled"),
        ("Description", state.group.description),
        ("Location", state.group.location),
        ("Webaccess", "enabled"),
        ("Telnet", "disabled"),
        ("Ssh", "enabled"),
    ]


def _grpparams_show(run: Run) -> None:
    run.finish()
    run.out.section("Group Information")
    run.out.fields(_group_fields(run.state))


def _show(run: Run) -> None:
    """``show`` alone: a group summary; ``show OBJECT ...``: the object's show command."""
    if run.more():
        run.dispatch(SHOW_COMMANDS, "object")
        return
    _grpparams_show(run)
    run.out.section("Pools")
    _pool_show(run)
    run.out.section("Volumes")
    _volume_show(run)


def _chapuser_create(run: Run) -> None:
    name = run.value("CHAP user name")
    options = run.options(
        {
            "password": Option("password"),
            "enable": Option("enabled", "yes"),
            "disable": Option("enabled", "no"),
        }
    )
    given = options.get("password")
    user = run.state.create_chap_user(name, given, options.get("enabled", "yes") == "yes")
    run.out.say("chapuser_created")
    if given is None:
        run.out.say("chapuser_password", password=user.password)


def _chapuser_show(run: Run) -> None:
    if run.more():
        user = run.state.chap_user(run.value("CHAP user name"))
        run.finish()
        run.out.section("CHAP User Information")
        run.out.fields(
            [("Name", user.name), ("Password", user.password), ("Enabled", _enabled(user.enabled))]
        )
        return
    rows = [[u.name, u.password, _enabled(u.enabled)] for u in run.state.chap_users.values()]
    run.out.table(CHAPUSER_COLUMNS, rows)


def _chapuser_delete(run: Run) -> None:
    user = run.state.chap_user(run.value("CHAP user name"))
    run.finish()
    del run.state.chap_users[user.name]
    run.out.say("chapuser_deleted")


# ---- session commands ----------------------------------------------------------------------


def _cli_settings(run: Run) -> None:
    keyword = run.keyword(("show", *SETTINGS_KEYWORDS), "setting")
    if keyword == "show":
        _settings_show(run)
        return
    setattr(run.settings, SETTINGS_KEYWORDS[keyword], _on_off(run, keyword))


def _settings_show(run: Run) -> None:
    run.finish()
    run.out.section("CLI Settings")
    run.out.fields(
        [
            (keyword, "on" if getattr(run.settings, attribute) else "off")
            for keyword, attribute in SETTINGS_KEYWORDS.items()
        ]
    )


def _stty(run: Run) -> None:
    terminal = run.session.terminal
    if not run.more():
        run.out.fields(
            [
                ("columns", str(terminal.columns)),
                ("rows", str(terminal.rows)),
                ("hardwrap", "on" if terminal.hardwrap else "off"),
            ]
        )
        return
    keyword = run.keyword(("columns", "rows", "hardwrap"), "stty setting")
    if keyword == "hardwrap":
        terminal.hardwrap = _on_off(run, keyword)
        return
    number = _number(run.value(keyword), 10, 9999)
    run.finish()
    setattr(terminal, keyword, number)


def _whoami(run: Run) -> None:
    run.finish()
    run.out.lines.append(run.session.account)


def _exit(run: Run) -> None:
    """Leave the volume context, or at top level end the session (no question asked)."""
    run.finish()
    if run.session.context is not None:
        run.session.context = None
    else:
        run.end_session = True


def _logout(run: Run) -> None:
    run.finish()
    run.confirm("confirm_logout")
    run.end_session = True


# ---- keyword tables ------------------------------------------------------------------------

ACCESS_COMMANDS: Dict[str, Handler] = {
    "create": _access_create,
    "show": _access_show,
    "select": _access_select,
    "delete": _access_delete,
}
SNAPSHOT_COMMANDS: Dict[str, Handler] = {
    "show": _snapshot_detail,
    "online": _set_snapshot_status("online"),
    "offline": _set_snapshot_status("offline"),
    "clone": _snapshot_clone,
    "restore": _snapshot_restore,
}
SNAPSHOTS_COMMANDS: Dict[str, Handler] = {
    "create-now": _snapshot_create,
    "rename": _snapshot_rename,
    "show": _snapshot_show,
    "select": _snapshot_select,
    "delete": _snapshot_delete,
}
VOLUME_COMMANDS: Dict[str, Handler] = {
    "show": _volume_detail,
    "online": _set_volume("status", "online"),
    "offline": _set_volume("status", "offline"),
    "read-only": _set_volume("permission", "read-only"),
    "read-write": _set_volume("permission", "read-write"),
    "thin-provision": _set_thin(True),
    "no-thin-provision": _set_thin(False),
    "description": _volume_description,
    "iscsi-alias": _volume_alias,
    "size": _volume_size,
    "multihost-access": _volume_multihost,
    "clone": _volume_clone,
    "access": lambda run: run.dispatch(ACCESS_COMMANDS, "access command"),
    "snapshot": lambda run: run.dispatch(SNAPSHOTS_COMMANDS, "snapshot command"),
}
VOLUMES_COMMANDS: Dict[str, Handler] = {
    "create": _volume_create,
    "delete": _volume_delete,
    "rename": _volume_rename,
    "select": _volume_select,
    "show": _volume_show,
}
POOL_COMMANDS: Dict[str, Handler] = {"show": _pool_show, "select": _pool_select}
CHAPUSER_COMMANDS: Dict[str, Handler] = {
    "create": _chapuser_create,
    "show": _chapuser_show,
    "delete": _chapuser_delete,
}
SHOW_COMMANDS: Dict[str, Handler] = {
    "volume": _volume_show,
    "pool": _pool_show,
    "chapuser": _chapuser_show,
    "grpparams": _grpparams_show,
    "cli-settings": _settings_show,
}
TOP_COMMANDS: Dict[str, Handler] = {
    "volume": lambda run: run.dispatch(VOLUMES_COMMANDS, "volume command"),
    "pool": lambda run: run.dispatch(POOL_COMMANDS, "pool command"),
    "grpparams": lambda run: run.dispatch({"show": _grpparams_show}, "grpparams command"),
    "chapuser": lambda run: run.dispatch(CHAPUSER_COMMANDS, "chapuser command"),
    "cli-settings": _cli_settings,
    "stty": _stty,
    "whoami": _whoami,
    "show": _show,
    "exit": _exit,
    "logout": _logout,
}
# Inside "volume select NAME": the volume's commands first, then everything else.
CONTEXT_COMMANDS: Dict[str, Handler] = {**TOP_COMMANDS, **VOLUME_COMMANDS}


# ---- the interpreter -----------------------------------------------------------------------


class Interpreter:
    """Runs command lines for one session against the shared state and the backend."""

    def __init__(
        self, store: StateStore, backend: FileBackend, config: CliConfig, session: Session
    ) -> None:
        self.store = store
        self.backend = backend
        self.config = config
        self.session = session

    def login(self) -> Result:
        """The banner, the login event (when events are on) and the first prompt."""
        with self.store.transaction() as state:
            settings = state.settings_for(self.session.account)
            lines = self.config.text("banner").split("\n")
            if settings.events:
                event = self.config.text(
                    "event_login",
                    timestamp=f"{time.time():.2f}",
                    account=self.session.account,
                    via="ssh",
                )
                lines.append(event)
            return self._result(state, lines)

    def execute(self, line: str, confirmed: bool = False) -> Result:
        """Run one command line; nothing is saved unless it succeeds completely."""
        try:
            tokens = tokenize(line)
            if any(not t.closed for t in tokens):
                raise BadInput("unclosed_quote")
            with self.store.transaction() as state:
                before = state.publications()
                words = [t.text for t in tokens]
                run = Run(words, state, self.session, self.config, self.backend, confirmed)
                if tokens:
                    run.dispatch(self._commands(run), "command")
                self._sync_backend(state, before)
                return self._result(state, run.out.lines, end_session=run.end_session)
        except BadInput as exc:
            error, bad_input, question = self.config.text(exc.key, **exc.params), True, None
        except GroupError as exc:
            error, bad_input, question = self.config.text(exc.key, **exc.params), False, None
        except ConfirmationNeeded as exc:
            error, bad_input, question = None, False, exc.question
        result = self._result(self.store.load(), [error] if error else [])
        result.error, result.bad_input, result.question = error, bad_input, question
        return result

    def reply_error(self, message: str) -> Result:
        """A reply made of one error line, e.g. an injected failure."""
        result = self._result(self.store.load(), [message])
        result.error = message
        return result

    def _commands(self, run: Run) -> Mapping[str, Handler]:
        """The keyword table for the session's current context."""
        context = self.session.context
        if context is not None and context in run.state.volumes:
            run.volume = run.state.volumes[context]
            return CONTEXT_COMMANDS
        self.session.context = None
        return TOP_COMMANDS

    def _result(self, state: GroupState, lines: List[str], end_session: bool = False) -> Result:
        volume = state.volumes.get(self.session.context or "")
        if volume is None:
            prompt = self.config.text("prompt", group=state.group.name)
        else:
            prompt = self.config.text("prompt_volume", group=state.group.name, volume=volume.name)
        settings = state.settings_for(self.session.account)
        return Result(lines, prompt, settings, end_session=end_session)

    def _sync_backend(self, state: GroupState, before: Dict[str, Publication]) -> None:
        """Make the backend follow the command: data changes, then what the portal shows."""
        after = state.publications()
        try:
            for obj_id in before.keys() - after.keys():
                self.backend.unpublish(obj_id)
            for op in state.data_ops:
                if op.kind == "create":
                    self.backend.create(op.obj_id, op.size_bytes)
                elif op.kind == "copy":
                    self.backend.copy(op.source_id, op.obj_id)
                elif op.kind == "resize":
                    self.backend.resize(op.obj_id, op.size_bytes)
                else:
                    self.backend.delete(op.obj_id)
            for obj_id, publication in after.items():
                if before.get(obj_id) != publication:
                    self.backend.publish(obj_id, publication)
        except Exception as exc:  # the backend runs tools and touches files: report, don't die
            raise GroupError("backend_failure", reason=str(exc) or type(exc).__name__) from exc
