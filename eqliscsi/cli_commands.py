"""Every Group CLI command the driver sends is built here, from validated values.

A ``CliCommand`` is a tuple of words joined by single spaces.  Each builder validates
its values and raises ``InvalidValue`` before anything is sent; ``CliCommand`` itself
re-checks every word, so nothing unvalidated can reach the CLI.

Quoting rule: free text (descriptions) is always sent in double quotes, ``description
"TEXT"``, which the CLI accepts for values with spaces (Cinder's manage used
``description "OpenStack Managed"``).  The CLI has no escape syntax, so characters that
cannot be represented inside the quotes are rejected: ``"``, ``\\``, ``#`` (starts a
comment: the rest of the line would be dropped), and control characters or newlines
(would end the command line).  Only printable ASCII is accepted, at most 127 characters.
``sanitize_description`` turns arbitrary text into an acceptable description.

Secret words (CHAP secrets) are marked in the command and shown as ``***`` by ``str()``
and ``masked``, which is what logs and exceptions use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import FrozenSet, List, Optional, Tuple, Union

from eqliscsi.errors import InvalidValue
from eqliscsi.units import size_argument

NAME_MAX = 64
GROUP_SNAPSHOT_NAME_MAX = 127
DESCRIPTION_MAX = 127
SECRET_MASK = "***"  # noqa: S105 (the mask, not a secret)

_NAME_CHARS = re.compile(r"[A-Za-z0-9.:-]+")
_IQN = re.compile(
    r"iqn\.\d{4}-\d{2}\.[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[A-Za-z0-9.:_-]+)?"
    r"|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16}(?:[0-9A-Fa-f]{16})?",
    re.IGNORECASE,  # iSCSI names compare case-insensitively
)
_IQN_MAX = 223
_IP_OCTET = re.compile(r"\*|25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d")
_CHAP_USER = re.compile(r"[A-Za-z0-9._:@-]{1,63}")
_CHAP_SECRET = re.compile(r"[A-Za-z0-9!$%&()*+,./:;<=>?@\[\]^_`{|}~-]{12,16}")
_DESCRIPTION_CHARS = re.compile(r"[ !$-\[\]-~]*")  # printable ASCII except " # \
_SAFE_WORD = re.compile(r'[!$-~]+|"[ !$-\[\]-~]*"')  # no space, control, # or stray "

AUTH_METHODS = ("chap", "none")
APPLY_TO = ("volume", "snapshot", "both")


@dataclass(frozen=True, repr=False)
class CliCommand:
    """One CLI command line.

    ``read_only`` commands change nothing and may be re-sent after a lost connection;
    ``slow`` ones get the long timeout; ``confirm`` tells the session to answer ``y`` if
    the group asks for a confirmation anyway; ``secret`` holds the indexes of masked words.
    """

    words: Tuple[str, ...]
    read_only: bool = False
    slow: bool = False
    confirm: bool = False
    secret: FrozenSet[int] = frozenset()

    def __post_init__(self) -> None:
        if not self.words:
            raise InvalidValue("empty command")
        for index, word in enumerate(self.words):
            if not _SAFE_WORD.fullmatch(word):
                shown = SECRET_MASK if index in self.secret else repr(word)
                raise InvalidValue(f"unsafe word {shown} in CLI command")

    @property
    def text(self) -> str:
        """The line sent to the CLI (may contain secrets: never log it)."""
        return " ".join(self.words)

    @property
    def masked(self) -> str:
        """The line with secret words replaced by ``***``, for logs and errors."""
        return " ".join(SECRET_MASK if i in self.secret else w for i, w in enumerate(self.words))

    def __str__(self) -> str:
        return self.masked

    def __repr__(self) -> str:
        return f"CliCommand({self.masked!r})"


# --- value validation --------------------------------------------------------------------

def volume_name(value: str) -> str:
    """A volume (or pool) name: 1-64 characters from ``A-Z a-z 0-9 . - :``."""
    return _name(value, "volume name", NAME_MAX)


def pool_name(value: str) -> str:
    """A storage pool name (same rule as volume names)."""
    return _name(value, "pool name", NAME_MAX)


def snapshot_name(value: str, *, from_group: bool = False) -> str:
    """A snapshot name: 1-64 characters like a volume name.

    Names the group generated (``<volume>-YYYY-MM-DD-hh:mm:ss.n``) are accepted up to 127
    characters with ``from_group=True``: they add 22 characters to the volume name.
    """
    limit = GROUP_SNAPSHOT_NAME_MAX if from_group else NAME_MAX
    return _name(value, "snapshot name", limit)


def _name(value: str, what: str, limit: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit or not _NAME_CHARS.fullmatch(
        value
    ):
        raise InvalidValue(
            f"invalid {what} {value!r}: use 1-{limit} characters from A-Z a-z 0-9 . - :"
        )
    return value


def initiator_name(value: str) -> str:
    """An iSCSI initiator name (``iqn.YYYY-MM.domain[:suffix]``, ``eui.``, ``naa.``)."""
    if not isinstance(value, str) or len(value) > _IQN_MAX or not _IQN.fullmatch(value):
        raise InvalidValue(f"invalid iSCSI initiator name {value!r}")
    return value


def ip_pattern(value: str) -> str:
    """An IPv4 address in which any octet may be ``*`` (``10.1.1.*``, ``*.*.*.*``)."""
    octets = value.split(".") if isinstance(value, str) else []
    if len(octets) != 4 or not all(_IP_OCTET.fullmatch(octet) for octet in octets):
        raise InvalidValue(f"invalid IP address pattern {value!r}")
    return value


def chap_user_name(value: str) -> str:
    """A CHAP user name: 1-63 characters from ``A-Z a-z 0-9 . _ : @ -``."""
    if not isinstance(value, str) or not _CHAP_USER.fullmatch(value):
        raise InvalidValue(f"invalid CHAP user name {value!r}")
    return value


def chap_secret(value: str) -> str:
    """A CHAP secret: 12-16 printable ASCII characters without quotes, ``\\`` or ``#``."""
    if not isinstance(value, str) or not _CHAP_SECRET.fullmatch(value):
        raise InvalidValue("invalid CHAP secret: use 12-16 printable ASCII characters "
                           "without spaces, quotes, backslash or #")
    return value


def percent(value: int, what: str = "percentage") -> str:
    """An integer percentage 0-100 as the CLI writes it (``50%``)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise InvalidValue(f"invalid {what} {value!r}: expected an integer 0-100")
    return f"{value}%"


def record_id(value: int) -> str:
    """An access control record ID (a positive integer)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidValue(f"invalid access record ID {value!r}")
    return str(value)


def quoted_description(value: str) -> str:
    """``value`` in double quotes, after checking it fits the quoting rule (module doc)."""
    if not isinstance(value, str) or len(value) > DESCRIPTION_MAX or not (
        _DESCRIPTION_CHARS.fullmatch(value)
    ):
        raise InvalidValue(
            f"invalid description {value!r}: at most {DESCRIPTION_MAX} printable ASCII "
            'characters without " \\ # or line breaks (see sanitize_description)'
        )
    return f'"{value}"'


def sanitize_description(text: str) -> str:
    """Make any text a valid description: ``"`` becomes ``'``, ``\\`` becomes ``/``,
    ``#``, control characters and line breaks become spaces, other non-ASCII characters
    ``?``; runs of spaces are collapsed and the result is cut to 127 characters."""
    replaced = []
    for char in text:
        if char == '"':
            replaced.append("'")
        elif char == "\\":
            replaced.append("/")
        elif char == "#" or char.isspace() or ord(char) < 32 or ord(char) == 127:
            replaced.append(" ")
        elif ord(char) > 126:
            replaced.append("?")
        else:
            replaced.append(char)
    return " ".join("".join(replaced).split())[:DESCRIPTION_MAX].rstrip()


def _choice(value: str, allowed: Tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InvalidValue(f"invalid {what} {value!r}: expected one of {', '.join(allowed)}")
    return value


# --- session set-up ----------------------------------------------------------------------

SESSION_SETUP: Tuple[CliCommand, ...] = (
    CliCommand(("stty", "hardwrap", "off"), read_only=True),
    CliCommand(("stty", "columns", "255"), read_only=True),
    CliCommand(("cli-settings", "paging", "off"), read_only=True),
    CliCommand(("cli-settings", "confirmation", "off"), read_only=True),
    CliCommand(("cli-settings", "events", "off"), read_only=True),
    CliCommand(("cli-settings", "reprintBadInput", "off"), read_only=True),
)
"""Sent at the start of every CLI session: no wrapping, no pauses, no prompts, no
asynchronous event lines, no reprinted bad input.  The ``cli-settings`` values persist
per account on a real group, so use an account dedicated to the driver."""


# --- volumes -----------------------------------------------------------------------------

def volume_create(
    name: str,
    size: Union[int, str],
    *,
    pool: Optional[str] = None,
    thin: bool = False,
    thin_min_reserve: Optional[int] = None,
    thin_growth_warn: Optional[int] = None,
    thin_growth_max: Optional[int] = None,
    description: Optional[str] = None,
    online: bool = True,
    snap_reserve: Optional[int] = None,
) -> CliCommand:
    """``volume create NAME SIZE [pool P] [description "D"] online|offline
    [snap-reserve N%] [thin-provision [thin-min-reserve N%] [thin-growth-warn N%]
    [thin-growth-max N%]]``; a bare ``int`` size is MB."""
    words = ["volume", "create", volume_name(name), size_argument(size)]
    if pool is not None:
        words += ["pool", pool_name(pool)]
    if description is not None:
        words += ["description", quoted_description(description)]
    words.append("online" if online else "offline")
    if snap_reserve is not None:
        words += ["snap-reserve", percent(snap_reserve, "snapshot reserve")]
    thin_options = (("thin-min-reserve", thin_min_reserve),
                    ("thin-growth-warn", thin_growth_warn),
                    ("thin-growth-max", thin_growth_max))
    if thin:
        words.append("thin-provision")
    for keyword, value in thin_options:
        if value is not None:
            if not thin:
                raise InvalidValue(f"{keyword} needs a thin-provisioned volume")
            words += [keyword, percent(value, keyword)]
    return CliCommand(tuple(words))


def volume_show(name: str) -> CliCommand:
    """``volume select NAME show``: the volume's fields."""
    return CliCommand(("volume", "select", volume_name(name), "show"), read_only=True)


def volume_list() -> CliCommand:
    """``volume show``: a table of all volumes."""
    return CliCommand(("volume", "show"), read_only=True, slow=True)


def volume_clone(
    source: str,
    name: str,
    *,
    description: Optional[str] = None,
    online: bool = True,
    snap_reserve: Optional[int] = None,
) -> CliCommand:
    """``volume select SRC clone NEW [description "D"] online|offline [snap-reserve N%]``."""
    words = ["volume", "select", volume_name(source), "clone", volume_name(name)]
    if description is not None:
        words += ["description", quoted_description(description)]
    words.append("online" if online else "offline")
    if snap_reserve is not None:
        words += ["snap-reserve", percent(snap_reserve, "snapshot reserve")]
    return CliCommand(tuple(words), slow=True)


def volume_delete(name: str) -> CliCommand:
    """``volume delete NAME`` (the volume must be offline)."""
    return CliCommand(("volume", "delete", volume_name(name)), confirm=True)


def volume_rename(old: str, new: str) -> CliCommand:
    """``volume rename OLD NEW``."""
    return CliCommand(("volume", "rename", volume_name(old), volume_name(new)))


def volume_description(name: str, description: str) -> CliCommand:
    """``volume select NAME description "TEXT"``."""
    return CliCommand(
        ("volume", "select", volume_name(name), "description", quoted_description(description))
    )


def volume_size(name: str, size: Union[int, str]) -> CliCommand:
    """``volume select NAME size SIZE no-snap`` (no automatic snapshot before resizing)."""
    return CliCommand(
        ("volume", "select", volume_name(name), "size", size_argument(size), "no-snap")
    )


def volume_online(name: str, online: bool) -> CliCommand:
    """``volume select NAME online`` or ``offline``."""
    return CliCommand(
        ("volume", "select", volume_name(name), "online" if online else "offline")
    )


def volume_multihost(name: str, enabled: bool) -> CliCommand:
    """``volume select NAME multihost-access enable|disable``."""
    return CliCommand(("volume", "select", volume_name(name), "multihost-access",
                       "enable" if enabled else "disable"))


# --- access control records --------------------------------------------------------------

def access_create(
    volume: str,
    *,
    initiator: Optional[str] = None,
    ipaddress: Optional[str] = None,
    chap_user: Optional[str] = None,
    authmethod: Optional[str] = None,
    apply_to: Optional[str] = None,
) -> CliCommand:
    """``volume select V access create [initiator IQN] [ipaddress IP] [username U]
    [authmethod chap|none] [apply-to volume|snapshot|both]``; at least one of initiator,
    ipaddress and chap_user is required."""
    words = ["volume", "select", volume_name(volume), "access", "create"]
    if initiator is None and ipaddress is None and chap_user is None:
        raise InvalidValue("an access record needs an initiator, an IP address or a CHAP user")
    if initiator is not None:
        words += ["initiator", initiator_name(initiator)]
    if ipaddress is not None:
        words += ["ipaddress", ip_pattern(ipaddress)]
    if chap_user is not None:
        words += ["username", chap_user_name(chap_user)]
    if authmethod is not None:
        words += ["authmethod", _choice(authmethod, AUTH_METHODS, "authmethod")]
    if apply_to is not None:
        words += ["apply-to", _choice(apply_to, APPLY_TO, "apply-to")]
    return CliCommand(tuple(words))


def access_show(volume: str) -> CliCommand:
    """``volume select V access show``: the table of access records."""
    return CliCommand(("volume", "select", volume_name(volume), "access", "show"),
                      read_only=True)


def access_delete(volume: str, record: int) -> CliCommand:
    """``volume select V access delete ID``."""
    return CliCommand(
        ("volume", "select", volume_name(volume), "access", "delete", record_id(record))
    )


# --- snapshots ---------------------------------------------------------------------------

def snapshot_create(volume: str, *, description: Optional[str] = None) -> CliCommand:
    """``volume select V snapshot create-now [description "D"]`` (the group names it)."""
    words = ["volume", "select", volume_name(volume), "snapshot", "create-now"]
    if description is not None:
        words += ["description", quoted_description(description)]
    return CliCommand(tuple(words))


def snapshot_rename(volume: str, old: str, new: str) -> CliCommand:
    """``volume select V snapshot rename OLD NEW``."""
    return CliCommand(("volume", "select", volume_name(volume), "snapshot", "rename",
                       snapshot_name(old, from_group=True), snapshot_name(new)))


def snapshot_list(volume: str) -> CliCommand:
    """``volume select V snapshot show``: the table of the volume's snapshots."""
    return CliCommand(("volume", "select", volume_name(volume), "snapshot", "show"),
                      read_only=True)


def snapshot_show(volume: str, snapshot: str) -> CliCommand:
    """``volume select V snapshot select S show``: the snapshot's fields."""
    return CliCommand(("volume", "select", volume_name(volume), "snapshot", "select",
                       snapshot_name(snapshot, from_group=True), "show"), read_only=True)


def snapshot_online(volume: str, snapshot: str, online: bool) -> CliCommand:
    """``volume select V snapshot select S online|offline``."""
    return CliCommand(("volume", "select", volume_name(volume), "snapshot", "select",
                       snapshot_name(snapshot, from_group=True),
                       "online" if online else "offline"))


def snapshot_restore(volume: str, snapshot: str) -> CliCommand:
    """``volume select V snapshot select S restore`` (volume offline; the group first
    snapshots the volume's current state)."""
    return CliCommand(("volume", "select", volume_name(volume), "snapshot", "select",
                       snapshot_name(snapshot, from_group=True), "restore"), slow=True)


def snapshot_delete(volume: str, snapshot: str) -> CliCommand:
    """``volume select V snapshot delete S`` (the snapshot must be offline)."""
    return CliCommand(("volume", "select", volume_name(volume), "snapshot", "delete",
                       snapshot_name(snapshot, from_group=True)), confirm=True)


def snapshot_clone(volume: str, snapshot: str, name: str,
                   *, description: Optional[str] = None) -> CliCommand:
    """``volume select V snapshot select S clone NEW [description "D"]``."""
    words = ["volume", "select", volume_name(volume), "snapshot", "select",
             snapshot_name(snapshot, from_group=True), "clone", volume_name(name)]
    if description is not None:
        words += ["description", quoted_description(description)]
    return CliCommand(tuple(words), slow=True)


# --- pools, group, CHAP users ------------------------------------------------------------

def pool_show(pool: str) -> CliCommand:
    """``pool select P show``: capacity fields (the output also lists the pool's volumes)."""
    return CliCommand(("pool", "select", pool_name(pool), "show"), read_only=True, slow=True)


def grpparams_show() -> CliCommand:
    """``grpparams show``: the group's parameters (``Group-Ipaddress:`` ...)."""
    return CliCommand(("grpparams", "show"), read_only=True)


def chapuser_create(name: str, password: Optional[str] = None) -> CliCommand:
    """``chapuser create NAME [password SECRET]``; without a secret the group makes one."""
    words: List[str] = ["chapuser", "create", chap_user_name(name)]
    secret: FrozenSet[int] = frozenset()
    if password is not None:
        words += ["password", chap_secret(password)]
        secret = frozenset({len(words) - 1})
    return CliCommand(tuple(words), secret=secret)


def chapuser_show(name: str) -> CliCommand:
    """``chapuser show NAME``: the account's fields, including its secret."""
    return CliCommand(("chapuser", "show", chap_user_name(name)), read_only=True)
