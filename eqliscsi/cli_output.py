"""Every Group CLI output is interpreted here: line clean-up, error detection, parsers.

Output shapes (see the group-cli notes):

* ``Key: value`` blocks, split on the first ``": "``; a line without a key right after a
  field is that field's hard-wrapped continuation and is joined to it without a space.
* Tables: a header line, a line of dash groups that gives the column positions, then rows.
  A row starts at column 0; a line starting with spaces continues the row above, each
  token being the wrapped rest of the cell it sits under (``volume show`` wraps names
  onto lines indented by two spaces, ``access show`` wraps initiator names).
* Sentences: ``iSCSI target name is <iqn>.``, ``Snapshot name is <name>``,
  ``Access control record created with ID N.``, ``Password is <secret>``.

Errors are lines starting with ``% Error`` or ``Error:``; ``raise_for_errors`` maps them
to typed exceptions.  Parsers raise ``ValueError`` when a required piece is missing; the
client turns that into ``UnexpectedOutput`` naming the command.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple, Type

from eqliscsi.cli_commands import SECRET_MASK, CliCommand
from eqliscsi.errors import (
    AlreadyExists,
    Busy,
    CliError,
    InvalidInput,
    NoSpace,
    NotFound,
)
from eqliscsi.units import parse_size_mb

# --- line clean-up -----------------------------------------------------------------------

_EVENT_LINE = re.compile(r"[A-Za-z][\w-]*:\d+\.\d+:[^:\s]+:\d+:[A-Z]+:")
_SECTION = re.compile(r"_{3,}.*")
_DASH_LINE = re.compile(r"-+(?: +-+)*")


def split_lines(text: str) -> List[str]:
    """Lines of terminal output: CRLF or LF ends a line; see ``overlay`` for lone CRs.
    Trailing spaces are kept: a hard wrap may fall right after a space."""
    return [overlay(raw) for raw in text.replace("\r\n", "\n").split("\n")]


def overlay(raw_line: str) -> str:
    """What a terminal shows for one line: after a CR, text overwrites the line start."""
    line = ""
    for segment in raw_line.split("\r"):
        line = segment + line[len(segment):]
    return line


def is_event_line(line: str) -> bool:
    """An asynchronous event message (``netmgtd:1700722419.77:rcc_util.c:1024:INFO:...``)."""
    return _EVENT_LINE.match(line) is not None


def strip_echo(lines: Sequence[str], command_text: str) -> List[str]:
    """``lines`` without the echo of ``command_text`` at the top (joined if it wrapped)."""
    wanted = "".join(command_text.split())
    echoed = ""
    for count, line in enumerate(lines[:8], start=1):
        echoed += "".join(line.split())
        if echoed == wanted:
            return list(lines[count:])
        if not wanted.startswith(echoed):
            break
    return list(lines)


# --- errors ------------------------------------------------------------------------------

_ERROR_CLASSES: Tuple[Tuple[Tuple[str, ...], Type[CliError]], ...] = (
    (("does not exist", "not found"), NotFound),
    (("already exists",), AlreadyExists),
    (("free space", "space"), NoSpace),
    (("online", "offline", "connection", "in use", "busy"), Busy),
    (("syntax", "invalid", "unrecognized", "unknown", "incomplete", "bad"), InvalidInput),
)


def is_error_line(line: str) -> bool:
    """Lines the group uses for errors: ``% Error - ...`` or ``Error: ...``."""
    stripped = line.lstrip()
    return stripped.startswith("% Error") or stripped.startswith("Error:")


def raise_for_errors(command: CliCommand, lines: Sequence[str]) -> None:
    """Raise the typed ``CliError`` for the error lines in ``lines``, if there are any.

    Classified by case-insensitive substrings, first match wins: NotFound (does not exist),
    AlreadyExists, NoSpace (free space, space), Busy (online, offline, connection, in use),
    InvalidInput (syntax, invalid, ...; also any parser ``Error:`` line), else CliError.
    Quoted parts (``Bad command "onlin"``) echo our input and are not looked at.
    Secret words of the command are masked if the group echoed them.
    """
    errors = [_mask_secrets(command, line.strip()) for line in lines if is_error_line(line)]
    if not errors:
        return
    text = re.sub(r'"[^"]*"', "", " ".join(errors)).lower()
    for needles, error_class in _ERROR_CLASSES:
        if any(needle in text for needle in needles):
            raise error_class(command.masked, errors)
    if any(line.startswith("Error:") for line in errors):
        raise InvalidInput(command.masked, errors)
    raise CliError(command.masked, errors)


def _mask_secrets(command: CliCommand, line: str) -> str:
    for index in command.secret:
        line = line.replace(command.words[index], SECRET_MASK)
    return line


# --- generic shapes ----------------------------------------------------------------------

_FIELD = re.compile(r"([A-Za-z][A-Za-z0-9 ._()/-]{0,48}?):(?: (.*))?")
_DASH_GROUP = re.compile(r"-+")
_TOKEN = re.compile(r"\S+")
_NOT_KEY_CHAR = re.compile(r"[^a-z0-9]")


def parse_fields(lines: Sequence[str]) -> Dict[str, str]:
    """``Key: value`` fields of the first block (up to the next ``____ Title ____``
    section); continuation lines are joined, the first occurrence of a key wins."""
    fields: Dict[str, str] = {}
    current: Optional[str] = None
    for line in lines:
        stripped = line.strip()
        if not stripped or _SECTION.fullmatch(stripped) or _DASH_LINE.fullmatch(stripped):
            if fields and _SECTION.fullmatch(stripped):
                break
            current = None
            continue
        match = _FIELD.fullmatch(line.lstrip())
        if match is not None:
            key = match.group(1).strip()
            current = key if key not in fields else None
            if current is not None:
                fields[key] = match.group(2) or ""
        elif current is not None:
            fields[current] += line
    return {key: value.strip() for key, value in fields.items()}


def field_value(fields: Dict[str, str], name: str) -> Optional[str]:
    """A field looked up ignoring case, spaces, dashes and underscores (firmware versions
    differ: ``MultiHostAccess`` / ``Multihost-Access``)."""
    wanted = _normal_key(name)
    for key, value in fields.items():
        if _normal_key(key) == wanted:
            return value
    return None


@lru_cache(maxsize=512)
def _normal_key(key: str) -> str:
    """Cached: a table of N rows looks every column title up N times."""
    return _NOT_KEY_CHAR.sub("", key.lower())


def parse_table(lines: Sequence[str]) -> List[Dict[str, str]]:
    """Rows of the first table in ``lines`` as dicts keyed by column title.

    Column positions come from the dash line under the titles; a token belongs to the
    column it starts in.  Tokens of a row line sharing a column are joined with a space;
    tokens of an indented continuation line are appended to their cell without one.
    """
    for index in range(1, len(lines)):
        if _DASH_LINE.fullmatch(lines[index].strip()) and lines[index - 1].strip():
            break
    else:
        return []
    starts = [m.start() for m in _DASH_GROUP.finditer(lines[index])]
    header = lines[index - 1]
    bounds = zip(starts, [*starts[1:], len(header) + 1])
    titles = [header[start:end].strip() or f"column{n}" for n, (start, end) in
              enumerate(bounds)]
    column_starts = [0, *starts[1:]]
    rows: List[List[str]] = []
    for line in lines[index + 1:]:
        stripped = line.strip()
        if not stripped:
            continue
        if _SECTION.fullmatch(stripped) or _DASH_LINE.fullmatch(stripped):
            break
        continuation = line[0].isspace()
        if not continuation:
            rows.append([""] * len(titles))
        elif not rows:
            continue
        cells = rows[-1]
        for token in _TOKEN.finditer(line):
            column = bisect_right(column_starts, token.start()) - 1
            if continuation or not cells[column]:
                cells[column] += token.group()
            else:
                cells[column] += " " + token.group()
    return [dict(zip(titles, cells)) for cells in rows]


def _sentence(lines: Sequence[str], prefix: str) -> Optional[Tuple[int, str]]:
    """Index and rest of the first line starting with ``prefix`` (case-insensitive)."""
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.lower().startswith(prefix.lower()):
            return index, stripped[len(prefix):].strip()
    return None


# --- sentences ---------------------------------------------------------------------------

_IQN_PART = re.compile(r"[A-Za-z0-9.:-]+")
WRAP_COLUMNS = 80


def parse_target_iqn(lines: Sequence[str]) -> str:
    """The IQN from ``iSCSI target name is <iqn>.`` (create, clone): wrapped parts joined
    until the closing period, which is dropped."""
    found = _sentence(lines, "iSCSI target name is ")
    if found is None:
        raise ValueError("no 'iSCSI target name is' line")
    index, iqn = found
    for line in lines[index + 1:index + 4]:
        if iqn.endswith(".") or not _IQN_PART.fullmatch(line.strip()):
            break
        iqn += line.strip()
    iqn = iqn[:-1] if iqn.endswith(".") else iqn
    if not iqn.startswith(("iqn.", "eui.", "naa.")) or not _IQN_PART.fullmatch(iqn):
        raise ValueError(f"not an iSCSI name: {iqn!r}")
    return iqn


def parse_snapshot_name(lines: Sequence[str]) -> str:
    """The name from ``Snapshot name is <name>`` (no trailing period); a single-token
    next line is joined when the line filled the 80-column terminal (hard wrap)."""
    found = _sentence(lines, "Snapshot name is ")
    if found is None:
        raise ValueError("no 'Snapshot name is' line")
    index, name = found
    if len(lines[index]) >= WRAP_COLUMNS and index + 1 < len(lines):
        rest = lines[index + 1].strip()
        if _IQN_PART.fullmatch(rest):
            name += rest
    if not name or len(name.split()) != 1:
        raise ValueError(f"not a snapshot name: {name!r}")
    return name


def parse_access_record_id(lines: Sequence[str]) -> Optional[int]:
    """N from ``Access control record created with ID N.``; None if the line is absent."""
    for line in lines:
        match = re.search(r"created with ID (\d+)", line, re.IGNORECASE)
        if match:
            return int(match.group(1))
    return None


def parse_chap_password(lines: Sequence[str]) -> Optional[str]:
    """The secret from ``Password is <secret>``; None if the line is absent."""
    found = _sentence(lines, "Password is ")
    if found is None or not found[1]:
        return None
    return found[1]


# --- typed results -----------------------------------------------------------------------

@dataclass(frozen=True)
class VolumeInfo:
    """``volume select NAME show``; ``fields`` holds every field as printed."""

    name: str
    size_mb: int
    iqn: str
    status: str
    description: str
    thin: bool
    multihost: bool
    pool: str
    connections: int
    snapshots: int
    fields: Dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class VolumeSummary:
    """One row of ``volume show``."""

    name: str
    size_mb: int
    snapshots: int
    status: str
    permission: str
    connections: int
    thin: bool


@dataclass(frozen=True)
class AccessRecord:
    """One access control record; empty strings for criteria that are not set."""

    id: int
    initiator: str
    ipaddress: str
    authmethod: str
    username: str
    apply_to: str


@dataclass(frozen=True)
class SnapshotSummary:
    """One row of ``volume select V snapshot show``."""

    name: str
    status: str
    permission: str
    connections: int


@dataclass(frozen=True)
class SnapshotInfo:
    """``volume select V snapshot select S show``."""

    name: str
    iqn: str
    status: str
    permission: str
    size_mb: Optional[int]
    fields: Dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class PoolCapacity:
    """``pool select P show``: sizes in MB (rounded up).

    ``used_mb`` is total - free; ``reserved_mb`` is the volumes' physical reserve,
    ``reported_mb`` the sum of their reported (logical) sizes; firmware that lacks a field
    gives None.
    """

    total_mb: int
    free_mb: int
    used_mb: int
    reserved_mb: Optional[int]
    reported_mb: Optional[int]
    volumes: Optional[int]


@dataclass(frozen=True)
class ChapUser:
    """``chapuser show NAME``."""

    name: str
    password: str = field(repr=False)
    enabled: bool
    fields: Dict[str, str] = field(default_factory=dict, compare=False, repr=False)


_ENABLED = ("enabled", "enable", "yes", "true", "on", "y")


def _required(fields: Dict[str, str], name: str) -> str:
    value = field_value(fields, name)
    if not value:
        raise ValueError(f"no {name!r} field")
    return value


def _count(value: Optional[str]) -> int:
    return int(value) if value and value.isdigit() else 0


def _cell(row: Dict[str, str], *titles: str) -> str:
    for title in titles:
        value = field_value(row, title)
        if value is not None:
            return value
    return ""


def parse_volume_info(lines: Sequence[str]) -> VolumeInfo:
    """A ``VolumeInfo`` from ``volume select NAME show`` output."""
    fields = parse_fields(lines)
    return VolumeInfo(
        name=_required(fields, "Name"),
        size_mb=parse_size_mb(_required(fields, "Size")),
        iqn=_required(fields, "iSCSI Name"),
        status=_required(fields, "Status"),
        description=field_value(fields, "Description") or "",
        thin=(field_value(fields, "Thin-Provision") or "").lower() in _ENABLED,
        multihost=(field_value(fields, "MultiHostAccess") or "").lower() in _ENABLED,
        pool=field_value(fields, "Pool") or "",
        connections=_count(field_value(fields, "Connections")),
        snapshots=_count(field_value(fields, "Snapshots")),
        fields=fields,
    )


def parse_volume_list(lines: Sequence[str]) -> List[VolumeSummary]:
    """``VolumeSummary`` rows from the ``volume show`` table."""
    return [
        VolumeSummary(
            name=_cell(row, "Name"),
            size_mb=parse_size_mb(_cell(row, "Size") or "0"),
            snapshots=_count(_cell(row, "SnapShots")),
            status=_cell(row, "Status"),
            permission=_cell(row, "Permission"),
            connections=_count(_cell(row, "Connections")),
            thin=_cell(row, "T", "Thin").lower() in _ENABLED,
        )
        for row in parse_table(lines)
    ]


def parse_access_records(lines: Sequence[str]) -> List[AccessRecord]:
    """``AccessRecord`` rows from the ``access show`` table (wrapped cells joined)."""
    records = []
    for row in parse_table(lines):
        record_id = _cell(row, "ID")
        if not record_id.isdigit():
            raise ValueError(f"access record without a numeric ID: {row!r}")
        records.append(AccessRecord(
            id=int(record_id),
            initiator=_cell(row, "Initiator"),
            ipaddress=_cell(row, "Ipaddress", "IP Address"),
            authmethod=_cell(row, "AuthMethod"),
            username=_cell(row, "UserName"),
            apply_to=_cell(row, "Apply-To"),
        ))
    return records


def parse_snapshot_list(lines: Sequence[str]) -> List[SnapshotSummary]:
    """``SnapshotSummary`` rows from the ``snapshot show`` table."""
    return [
        SnapshotSummary(
            name=_cell(row, "Name"),
            status=_cell(row, "Status"),
            permission=_cell(row, "Permission"),
            connections=_count(_cell(row, "Connections")),
        )
        for row in parse_table(lines)
    ]


def parse_snapshot_info(lines: Sequence[str]) -> SnapshotInfo:
    """A ``SnapshotInfo`` from ``snapshot select S show`` output."""
    fields = parse_fields(lines)
    size = field_value(fields, "Size")
    return SnapshotInfo(
        name=_required(fields, "Name"),
        iqn=_required(fields, "iSCSI Name"),
        status=_required(fields, "Status"),
        permission=field_value(fields, "Permission") or "",
        size_mb=parse_size_mb(size) if size else None,
        fields=fields,
    )


def parse_pool_capacity(lines: Sequence[str]) -> PoolCapacity:
    """A ``PoolCapacity`` from ``pool select P show`` output."""
    fields = parse_fields(lines)
    total = parse_size_mb(_required(fields, "TotalCapacity"))
    free = parse_size_mb(_required(fields, "FreeSpace"))
    reserved = field_value(fields, "VolumeReserve")
    reported = field_value(fields, "VolumeReportedSpace")
    volumes = field_value(fields, "TotalVolumes")
    return PoolCapacity(
        total_mb=total,
        free_mb=free,
        used_mb=max(total - free, 0),
        reserved_mb=parse_size_mb(reserved) if reserved else None,
        reported_mb=parse_size_mb(reported) if reported else None,
        volumes=int(volumes) if volumes and volumes.isdigit() else None,
    )


def parse_chap_user(lines: Sequence[str]) -> ChapUser:
    """A ``ChapUser`` from ``chapuser show NAME`` output."""
    fields = parse_fields(lines)
    status = field_value(fields, "Status") or field_value(fields, "Enabled") or "enabled"
    return ChapUser(
        name=_required(fields, "Name"),
        password=_required(fields, "Password"),
        enabled=status.lower() in _ENABLED,
        fields=fields,
    )
