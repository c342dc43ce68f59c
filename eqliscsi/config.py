"""Driver settings: the ``eqliscsi.conf`` file, datastore and image template attributes.

The conf file keeps the 2014 format (``KEY="value"``, ``KEY='value'``, ``KEY=value``,
``export KEY=...``, ``#`` comments) but is **parsed, never executed**: values are taken
literally (no ``$VAR``, ``$(...)`` or backtick expansion; the 2014 sample uses none);
inside double quotes ``\\"``, ``\\\\``, ``\\$`` and ``\\``` are unescaped as bash does;
unquoted shell syntax (``; & | < > ( )`` and backticks) is rejected.  Unknown keys are
reported once with a ``WARN`` line; ``EQLADM`` (2014: the CLI helper) is accepted and
ignored.

Where the file is (``find_conf_file``), first match wins:

1. ``$EQLISCSI_CONF`` (must exist);
2. ``<remotes>/etc/datastore/eqliscsi/eqliscsi.conf`` (OpenNebula's convention for driver
   conf files);
3. ``<remotes>/datastore/eqliscsi/eqliscsi.conf`` (where the 2014 add-on kept it).

``<remotes>`` is the remotes root of the running action (``oned.remotes_dir_of``), so
self-contained installs (``ONE_LOCATION``) work.  Without a file every key has its default.

Precedence, per key: conf < datastore template < image template, each only where the
table allows it (a key at a level it is not allowed at is ignored with a ``WARN`` line).
An attribute present but **empty** at a higher level either *clears* the key (it means
"none/off/default", e.g. ``EQL_THINPROVISION=""`` on a datastore makes thick volumes even
if the conf says thin — unlike the 2014 ``${X:-}`` logic) or is *ignored* (the lower level
applies) for keys where empty is not a valid value, like ``EQL_HOST``.

======================= ===== ===== ===== ======= =========================================
key                     conf  ds    image empty   default
======================= ===== ===== ===== ======= =========================================
EQL_HOST                yes   yes   -     ignored (required by actions that use the group)
EQL_PORT                yes   yes   -     ignored 22
EQL_USER                yes   yes   -     ignored (required by actions that use the group)
EQL_PASS                yes   yes   -     ignored (required by actions that use the group)
EQL_KNOWN_HOSTS         yes   yes   -     ignored ``~/.ssh/eqliscsi_known_hosts``
EQL_HOST_KEY_POLICY     yes   yes   -     ignored ``strict`` (or ``accept-new``)
EQL_POOL                yes   yes   -     ignored ``default``
EQL_MULTIHOST           yes   yes   yes   ignored ``enable`` (or ``disable``)
EQL_SECURITY_ACCESS     yes   yes   yes   clears  none
EQL_THINPROVISION       yes   yes   yes   clears  none (thick volumes)
EQL_SNAP_RESERVE        yes   yes   yes   clears  the group's default
EQL_ACCESS_MODE         yes   yes   -     ignored ``initiator`` (or ``static``)
EQL_CHAP_USER           yes   yes   -     clears  none (no CHAP)
EQL_CHAP_PASS           yes   yes   -     clears  none (no CHAP)
EQL_PORTAL              yes   yes   -     clears  group IP (``grpparams show``), port 3260
EQL_LUN                 yes   yes   -     ignored 0
EQL_IFACE               yes   yes   -     ignored ``default``
EQL_BASE_DEVICE         yes   yes   -     ignored ``/dev/iscsi``
NO_ISCSI                yes   yes   -     clears  none
EQL_WAIT_TIME           yes   -     -     ignored 30 (seconds; values below 10 count as 10)
EQL_MAX_SESSIONS        yes   -     -     ignored 5
EQL_SLOT_DIR            yes   -     -     ignored ``/var/lib/one/.eqliscsi-slots``
EQL_SLOT_WAIT           yes   -     -     ignored 120 (seconds)
EQL_CONNECT_TIMEOUT     yes   -     -     ignored 10 (seconds)
EQL_COMMAND_TIMEOUT     yes   -     -     ignored 60 (seconds; slow commands get 600)
EQL_DEBUG               yes   -     -     ignored ``no``
EQL_DEBUG_LOG           yes   -     -     clears  none (no debug log)
EQL_FRONTEND_INITIATOR  yes   -     -     ignored ``InitiatorName=`` of the front-end's
                                                  /etc/iscsi/initiatorname.iscsi, else
                                                  ``iqn.2026-11.org.opennebula.eqliscsi:<host>``
EQL_STAGING_DIR         yes   -     -     ignored ``/var/tmp`` (cp/mkfs staging files)
EQL_VERIFY              yes   yes   -     ignored ``sample`` (or ``full``, ``off``)
EQL_FORCE_DELETE        -     yes   yes   ignored ``NO`` (``YES``: rm deletes volumes in use
                                                  or owned by another image)
======================= ===== ===== ===== ======= =========================================

Secrets: EQL_PASS and EQL_CHAP_PASS come from the conf file (a ``WARN`` line is written when
the file is group/other-readable) or the datastore template (store them encrypted with
``DATASTORE_ENCRYPTED_ATTR = "EQL_PASS"`` in oned.conf; oned decrypts them before the driver
sees them).  Every value read for them is registered with ``oned.register_secret`` before it
is validated, so no message, log line or debug log entry can show it.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
import stat
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Callable,
    Dict,
    FrozenSet,
    List,
    Mapping,
    Optional,
    Tuple,
    TypeVar,
)

from eqliscsi import cli_commands, session_slots
from eqliscsi.errors import InvalidValue
from eqliscsi.oned import ConfigError, log_warn, parse_bool, register_secret

if TYPE_CHECKING:
    from eqliscsi.group import GroupSettings

CONF_ENV = "EQLISCSI_CONF"
CONF_NAME = "eqliscsi.conf"
LEGACY_KEYS = frozenset({"EQLADM"})
SECRET_KEYS = frozenset({"EQL_PASS", "EQL_CHAP_PASS"})
HOST_KEY_POLICIES = ("strict", "accept-new")
ACCESS_MODES = ("initiator", "static")
VERIFY_MODES = ("sample", "full", "off")
MAX_SECONDS = 86400.0
MIN_WAIT_TIME = 10.0  # the 2014 driver polled 10 s for devices (its sample 1 s was a sleep)

_T = TypeVar("_T")


class Level(Enum):
    """Where a setting comes from, lowest precedence first."""

    CONF = "eqliscsi.conf"
    DATASTORE = "the datastore template"
    IMAGE = "the image template"


_CD = frozenset({Level.CONF, Level.DATASTORE})
_CDI = frozenset({Level.CONF, Level.DATASTORE, Level.IMAGE})
_C = frozenset({Level.CONF})
_DI = frozenset({Level.DATASTORE, Level.IMAGE})


@dataclass(frozen=True)
class KeySpec:
    """The levels a key may be set at, and whether an empty value clears it."""

    levels: FrozenSet[Level]
    empty_clears: bool = False


KEYS: Dict[str, KeySpec] = {
    "EQL_HOST": KeySpec(_CD),
    "EQL_PORT": KeySpec(_CD),
    "EQL_USER": KeySpec(_CD),
    "EQL_PASS": KeySpec(_CD),
    "EQL_KNOWN_HOSTS": KeySpec(_CD),
    "EQL_HOST_KEY_POLICY": KeySpec(_CD),
    "EQL_POOL": KeySpec(_CD),
    "EQL_MULTIHOST": KeySpec(_CDI),
    "EQL_SECURITY_ACCESS": KeySpec(_CDI, empty_clears=True),
    "EQL_THINPROVISION": KeySpec(_CDI, empty_clears=True),
    "EQL_SNAP_RESERVE": KeySpec(_CDI, empty_clears=True),
    "EQL_ACCESS_MODE": KeySpec(_CD),
    "EQL_CHAP_USER": KeySpec(_CD, empty_clears=True),
    "EQL_CHAP_PASS": KeySpec(_CD, empty_clears=True),
    "EQL_PORTAL": KeySpec(_CD, empty_clears=True),
    "EQL_LUN": KeySpec(_CD),
    "EQL_IFACE": KeySpec(_CD),
    "EQL_BASE_DEVICE": KeySpec(_CD),
    "NO_ISCSI": KeySpec(_CD, empty_clears=True),
    "EQL_WAIT_TIME": KeySpec(_C),
    "EQL_MAX_SESSIONS": KeySpec(_C),
    "EQL_SLOT_DIR": KeySpec(_C),
    "EQL_SLOT_WAIT": KeySpec(_C),
    "EQL_CONNECT_TIMEOUT": KeySpec(_C),
    "EQL_COMMAND_TIMEOUT": KeySpec(_C),
    "EQL_DEBUG": KeySpec(_C),
    "EQL_DEBUG_LOG": KeySpec(_C, empty_clears=True),
    "EQL_FRONTEND_INITIATOR": KeySpec(_C),
    "EQL_STAGING_DIR": KeySpec(_C),
    "EQL_VERIFY": KeySpec(_CD),
    "EQL_FORCE_DELETE": KeySpec(_DI),
}
"""Every setting; the module docstring's table in data form."""


# --- typed values ------------------------------------------------------------------------

@dataclass(frozen=True)
class Portal:
    """An iSCSI portal, ``host[:port]`` (IPv6 as ``[addr]:port``)."""

    host: str
    port: int = 3260

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ThinProvisioning:
    """EQL_THINPROVISION: the keywords of ``cli_commands.volume_create`` it stands for."""

    thin: bool = False
    thin_min_reserve: Optional[int] = None
    thin_growth_warn: Optional[int] = None
    thin_growth_max: Optional[int] = None


@dataclass(frozen=True)
class AccessRecord:
    """EQL_SECURITY_ACCESS: the arguments of ``cli_commands.access_create`` it stands for."""

    initiator: Optional[str] = None
    ipaddress: Optional[str] = None
    chap_user: Optional[str] = None
    authmethod: Optional[str] = None
    apply_to: Optional[str] = None


@dataclass(frozen=True)
class DriverConfig:
    """All settings, validated and typed (see the module docstring for meaning/defaults)."""

    conf_path: Optional[Path] = None
    host: Optional[str] = None
    port: int = 22
    user: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    known_hosts: Path = field(default_factory=lambda: _expand_home("~/.ssh/eqliscsi_known_hosts"))
    host_key_policy: str = "strict"
    pool: str = "default"
    multihost: bool = True
    security_access: Optional[AccessRecord] = None
    thin_provisioning: ThinProvisioning = ThinProvisioning()
    snap_reserve: Optional[int] = None
    access_mode: str = "initiator"
    chap_user: Optional[str] = None
    chap_password: Optional[str] = field(default=None, repr=False)
    portal: Optional[Portal] = None
    lun: int = 0
    iface: str = "default"
    base_device: Path = Path("/dev/iscsi")
    no_iscsi: FrozenSet[str] = frozenset()
    wait_time: float = 30.0
    max_sessions: int = session_slots.DEFAULT_SLOTS
    slot_dir: Path = Path(session_slots.DEFAULT_SLOT_DIR)
    slot_wait: float = 120.0
    connect_timeout: float = 10.0
    command_timeout: float = 60.0
    debug: bool = False
    debug_log: Optional[str] = None
    frontend_initiator: Optional[str] = None  # None: read from the front-end when needed
    staging_dir: Path = Path("/var/tmp")  # noqa: S108 (private mkdtemp directories in it)
    verify: str = "sample"
    force_delete: bool = False

    def group_settings(self) -> GroupSettings:
        """The Group CLI client's settings; ConfigError naming every missing key."""
        from eqliscsi.group import GroupSettings

        if self.host is None or self.user is None or self.password is None:
            missing = [key for key, value in (("EQL_HOST", self.host), ("EQL_USER", self.user),
                                              ("EQL_PASS", self.password)) if value is None]
            where = self.conf_path or f"{CONF_NAME} (none found)"
            raise ConfigError(f"{', '.join(missing)} not set: set it in {where} "
                              "or in the datastore template")
        return GroupSettings(
            host=self.host, user=self.user, password=self.password, port=self.port,
            known_hosts=str(self.known_hosts), host_key_policy=self.host_key_policy,
            connect_timeout=self.connect_timeout, command_timeout=self.command_timeout,
            slot_dir=str(self.slot_dir), max_sessions=self.max_sessions,
            slot_wait=self.slot_wait)

    def uses_iscsi_on(self, host: str) -> bool:
        """False for hosts listed in NO_ISCSI (exact host name match)."""
        return host not in self.no_iscsi


# --- the conf file -----------------------------------------------------------------------

@dataclass(frozen=True)
class ConfFile:
    """The parsed conf file: raw ``values`` as written (``path`` None: no file found)."""

    path: Optional[Path] = None
    values: Mapping[str, str] = field(default_factory=dict)


def find_conf_file(remotes_dir: Path, environ: Mapping[str, str]) -> Optional[Path]:
    """The conf file to use (module docstring), or None if there is none."""
    explicit = environ.get(CONF_ENV, "")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{CONF_ENV}={explicit}: no such file")
        return path
    modern = remotes_dir / "etc" / "datastore" / "eqliscsi" / CONF_NAME
    legacy = remotes_dir / "datastore" / "eqliscsi" / CONF_NAME
    if modern.is_file():
        if legacy.is_file():
            log_warn(f"using {modern}; the 2014 location {legacy} is ignored")
        return modern
    return legacy if legacy.is_file() else None


def load_conf_file(path: Optional[Path]) -> ConfFile:
    """Read and parse ``path`` (None: an empty conf); warns about unknown keys and modes."""
    if path is None:
        return ConfFile()
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    values = parse_conf_text(text, str(path))
    unknown = sorted(set(values) - set(KEYS) - LEGACY_KEYS)
    if unknown:
        log_warn(f"{path}: unknown keys ignored: {', '.join(unknown)}")
    if values.get("EQL_PASS") and mode & (stat.S_IRGRP | stat.S_IROTH):
        log_warn(f"{path} holds EQL_PASS but is readable by group/others "
                 f"(mode {stat.S_IMODE(mode):04o}): chmod 600 it")
    return ConfFile(path, values)


_ASSIGNMENT = re.compile(r"(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)")
_UNQUOTED_SHELL_SYNTAX = frozenset(";&|<>()`")
_DOUBLE_QUOTE_ESCAPES = frozenset('"\\$`')


def parse_conf_text(text: str, origin: str) -> Dict[str, str]:
    """``KEY -> value`` from conf-file text (last assignment wins); ConfigError on bad lines."""
    values: Dict[str, str] = {}
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        match = _ASSIGNMENT.fullmatch(line)
        if match is None:
            raise ConfigError(f"{origin} line {number}: expected KEY=value")
        key, rest = match.groups()
        try:
            value = _shell_word(rest)
        except ValueError as exc:
            raise ConfigError(f"{origin} line {number} ({key}): {exc}") from None
        if key in SECRET_KEYS:
            register_secret(value)
        values[key] = value
    return values


def _shell_word(text: str) -> str:
    """The value of one shell word (quotes removed, no expansion), then only a comment."""
    word: List[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char in " \t":
            rest = text[index:].strip()
            if rest and not rest.startswith("#"):
                raise ValueError("unexpected text after the value (quote values with spaces)")
            break
        if char == "#" and index == 0:
            break
        if char == "'":
            end = text.find("'", index + 1)
            if end < 0:
                raise ValueError("unterminated single quote")
            word.append(text[index + 1:end])
            index = end + 1
        elif char == '"':
            index = _double_quoted(text, index + 1, word)
        elif char == "\\":
            word.append(text[index + 1:index + 2])
            index += 2
        elif char in _UNQUOTED_SHELL_SYNTAX:
            raise ValueError(f"shell syntax {char!r} is not supported (quote the value)")
        else:
            word.append(char)
            index += 1
    return "".join(word)


def _double_quoted(text: str, index: int, word: List[str]) -> int:
    """Append the body of a double-quoted string starting at ``index``; return the end."""
    while index < len(text):
        char = text[index]
        if char == '"':
            return index + 1
        if char == "\\" and text[index + 1:index + 2] in _DOUBLE_QUOTE_ESCAPES:
            word.append(text[index + 1])
            index += 2
        else:
            word.append(char)
            index += 1
    raise ValueError("unterminated double quote")


# --- resolution --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Setting:
    key: str
    value: str
    where: str


class _Layers:
    """The three levels of raw values, with the precedence and empty-value rules."""

    def __init__(self, conf: ConfFile, datastore: Mapping[str, str],
                 image: Mapping[str, str]) -> None:
        self._conf_where = str(conf.path) if conf.path else CONF_NAME
        self._levels: List[Tuple[Level, Mapping[str, str]]] = [
            (Level.IMAGE, image), (Level.DATASTORE, datastore), (Level.CONF, conf.values)]
        for level, values in self._levels:
            for key, value in values.items():
                if key in SECRET_KEYS:
                    register_secret(value)
                if level is not Level.CONF or key in KEYS:  # unknown conf keys: load_conf_file
                    self._check_allowed(key, level)

    @staticmethod
    def _check_allowed(key: str, level: Level) -> None:
        spec = KEYS.get(key)
        if spec is None:
            if key.startswith("EQL_"):
                log_warn(f"unknown attribute {key} in {level.value} ignored")
        elif level not in spec.levels:
            allowed = ", ".join(lv.value for lv in Level if lv in spec.levels)
            log_warn(f"{key} in {level.value} ignored (allowed in: {allowed})")

    def get(self, key: str) -> Optional[_Setting]:
        """The effective raw setting, or None for "use the default"."""
        spec = KEYS[key]
        for level, values in self._levels:
            if level not in spec.levels or key not in values:
                continue
            value = values[key].strip()
            if value or spec.empty_clears:
                where = self._conf_where if level is Level.CONF else level.value
                return _Setting(key, value, where)
        return None


def resolve_config(conf: ConfFile, datastore: Optional[Mapping[str, str]] = None,
                   image: Optional[Mapping[str, str]] = None) -> DriverConfig:
    """The effective settings for one action: conf < datastore template < image template.

    ``datastore`` and ``image`` are the TEMPLATE attributes of the datastore and image
    (``action_xml`` gives them as mappings).  ConfigError names the key and where it was.
    """
    layers = _Layers(conf, datastore or {}, image or {})
    defaults = DriverConfig()

    def typed(key: str, parse: Callable[[str], _T], default: _T) -> _T:
        setting = layers.get(key)
        if setting is None:
            return default
        try:
            return parse(setting.value)
        except (ValueError, InvalidValue) as exc:
            problem = "invalid value" if key in SECRET_KEYS else str(exc)
            raise ConfigError(f"{key} in {setting.where}: {problem}") from None

    chap_user = typed("EQL_CHAP_USER", _optional(cli_commands.chap_user_name), None)
    chap_password = typed("EQL_CHAP_PASS", _optional(cli_commands.chap_secret), None)
    if (chap_user is None) != (chap_password is None):
        raise ConfigError("EQL_CHAP_USER and EQL_CHAP_PASS must be set together")
    return DriverConfig(
        conf_path=conf.path,
        host=typed("EQL_HOST", _host, None),
        port=typed("EQL_PORT", _port, defaults.port),
        user=typed("EQL_USER", _user, None),
        password=typed("EQL_PASS", _password, None),
        known_hosts=typed("EQL_KNOWN_HOSTS", _absolute_path, defaults.known_hosts),
        host_key_policy=typed("EQL_HOST_KEY_POLICY", _choice(HOST_KEY_POLICIES),
                              defaults.host_key_policy),
        pool=typed("EQL_POOL", _pool, defaults.pool),
        multihost=typed("EQL_MULTIHOST", _enable_disable, defaults.multihost),
        security_access=typed("EQL_SECURITY_ACCESS", parse_security_access, None),
        thin_provisioning=typed("EQL_THINPROVISION", parse_thin_provisioning,
                                defaults.thin_provisioning),
        snap_reserve=typed("EQL_SNAP_RESERVE", _optional(_percent), None),
        access_mode=typed("EQL_ACCESS_MODE", _choice(ACCESS_MODES), defaults.access_mode),
        chap_user=chap_user,
        chap_password=chap_password,
        portal=typed("EQL_PORTAL", _optional(parse_portal), None),
        lun=typed("EQL_LUN", _bounded_int(0, 16383), defaults.lun),
        iface=typed("EQL_IFACE", _iface, defaults.iface),
        base_device=typed("EQL_BASE_DEVICE", _absolute_path, defaults.base_device),
        no_iscsi=typed("NO_ISCSI", _host_list, defaults.no_iscsi),
        wait_time=typed("EQL_WAIT_TIME", _wait_time, defaults.wait_time),
        max_sessions=typed("EQL_MAX_SESSIONS", _bounded_int(1, 32), defaults.max_sessions),
        slot_dir=typed("EQL_SLOT_DIR", _absolute_path, defaults.slot_dir),
        slot_wait=typed("EQL_SLOT_WAIT", _seconds, defaults.slot_wait),
        connect_timeout=typed("EQL_CONNECT_TIMEOUT", _seconds, defaults.connect_timeout),
        command_timeout=typed("EQL_COMMAND_TIMEOUT", _seconds, defaults.command_timeout),
        debug=typed("EQL_DEBUG", _bool, defaults.debug),
        debug_log=typed("EQL_DEBUG_LOG", _optional(_debug_log_target), None),
        frontend_initiator=typed("EQL_FRONTEND_INITIATOR",
                                 _optional(cli_commands.initiator_name), None),
        staging_dir=typed("EQL_STAGING_DIR", _absolute_path, defaults.staging_dir),
        verify=typed("EQL_VERIFY", _choice(VERIFY_MODES), defaults.verify),
        force_delete=typed("EQL_FORCE_DELETE", _bool, defaults.force_delete),
    )


# --- value parsers (raise ValueError or InvalidValue with a message naming the problem) --

def parse_security_access(text: str) -> Optional[AccessRecord]:
    """EQL_SECURITY_ACCESS, the 2014 tail of ``access create``: ``[apply-to volume|snapshot|
    both] [authmethod chap|none] [username U] [ipaddress IP] [initiator IQN]`` in any order,
    each at most once, at least one of username/ipaddress/initiator; empty = no record."""
    words = text.split()
    if not words:
        return None
    validators: Dict[str, Tuple[str, Callable[[str], str]]] = {
        "apply-to": ("apply_to", _choice(cli_commands.APPLY_TO)),
        "authmethod": ("authmethod", _choice(cli_commands.AUTH_METHODS)),
        "username": ("chap_user", cli_commands.chap_user_name),
        "ipaddress": ("ipaddress", cli_commands.ip_pattern),
        "initiator": ("initiator", cli_commands.initiator_name),
    }
    fields = _keyword_values(words, validators)
    if not {"chap_user", "ipaddress", "initiator"} & set(fields):
        raise ValueError("needs at least one of username, ipaddress, initiator")
    return AccessRecord(**fields)


def parse_thin_provisioning(text: str) -> ThinProvisioning:
    """EQL_THINPROVISION, the 2014 extra words of ``volume create``: ``thin-provision
    [thin-min-reserve N%] [thin-growth-warn N%] [thin-growth-max N%]``; empty = thick."""
    words = text.split()
    if not words:
        return ThinProvisioning()
    if words[0] != "thin-provision":
        raise ValueError(f"must start with thin-provision, got {words[0]!r}")
    validators: Dict[str, Tuple[str, Callable[[str], int]]] = {
        keyword: (keyword, _percent)
        for keyword in ("thin-min-reserve", "thin-growth-warn", "thin-growth-max")
    }
    fields = _keyword_values(words[1:], validators)
    return ThinProvisioning(thin=True, thin_min_reserve=fields.get("thin-min-reserve"),
                            thin_growth_warn=fields.get("thin-growth-warn"),
                            thin_growth_max=fields.get("thin-growth-max"))


def _keyword_values(words: List[str],
                    validators: Mapping[str, Tuple[str, Callable[[str], _T]]]) -> Dict[str, _T]:
    """``keyword value`` pairs -> {field: validated value}; unknown/duplicate/missing fail."""
    fields: Dict[str, _T] = {}
    for index in range(0, len(words), 2):
        keyword = words[index]
        if keyword not in validators:
            raise ValueError(f"unknown keyword {keyword!r} (allowed: {', '.join(validators)})")
        if index + 1 >= len(words):
            raise ValueError(f"{keyword} needs a value")
        name, validate = validators[keyword]
        if name in fields:
            raise ValueError(f"{keyword} given twice")
        fields[name] = validate(words[index + 1])
    return fields


def parse_portal(text: str) -> Portal:
    """``host``, ``host:port``, ``[v6addr]`` or ``[v6addr]:port``."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", text)
    if match is None:
        raise ValueError(f"expected host[:port], got {text!r}")
    v6host, v6port, host, port = match.groups()
    if v6host is not None:
        ipaddress.IPv6Address(v6host)
    port_text = v6port or port
    return Portal(v6host or _host(host), _port(port_text) if port_text else 3260)


_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


def _host(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        if _HOSTNAME.fullmatch(text):
            return text
    raise ValueError(f"not an IP address or host name: {text!r}")


def _host_list(text: str) -> FrozenSet[str]:
    return frozenset(_host(word) for word in text.split())


def _port(text: str) -> int:
    return _bounded_int(1, 65535)(text)


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"\d{1,6}", text) or not low <= int(text) <= high:
            raise ValueError(f"expected an integer {low}-{high}, got {text!r}")
        return int(text)
    return parse


def _seconds(text: str) -> float:
    if not re.fullmatch(r"\d{1,6}(?:\.\d{1,3})?", text) or not 0 < float(text) <= MAX_SECONDS:
        raise ValueError(f"expected seconds (0-{MAX_SECONDS:g}, e.g. 30 or 2.5), got {text!r}")
    return float(text)


def _wait_time(text: str) -> float:
    return max(MIN_WAIT_TIME, _seconds(text))


def _percent(text: str) -> int:
    number = text[:-1] if text.endswith("%") else text
    if not re.fullmatch(r"\d{1,3}", number) or int(number) > 100:
        raise ValueError(f"expected a percentage 0-100 (e.g. 50%), got {text!r}")
    return int(number)


def _bool(text: str) -> bool:
    value = parse_bool(text)
    if value is None:
        raise ValueError(f"expected yes or no, got {text!r}")
    return value


def _enable_disable(text: str) -> bool:
    return _choice(("enable", "disable"))(text.lower()) == "enable"


def _choice(allowed: Tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return text.lower()
    return parse


def _optional(parse: Callable[[str], _T]) -> Callable[[str], Optional[_T]]:
    """For keys whose empty value clears them: "" -> None."""
    return lambda text: parse(text) if text else None


def _user(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._@-]{1,64}", text):
        raise ValueError(f"expected 1-64 characters from A-Z a-z 0-9 . _ @ -, got {text!r}")
    return text


def _password(text: str) -> str:
    if any(ord(char) < 32 for char in text):
        raise ValueError("contains control characters")
    return text


def _pool(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", text):
        raise ValueError(f"expected 1-63 characters from A-Z a-z 0-9 _ . -, got {text!r}")
    return text


def _iface(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", text):
        raise ValueError(f"expected an open-iscsi iface name, got {text!r}")
    return text


def _expand_home(text: str) -> Path:
    return Path(os.path.expanduser(text))


def _absolute_path(text: str) -> Path:
    expanded = os.path.expanduser(text)
    parts = expanded.split("/")
    if not expanded.startswith("/") or ".." in parts or any(c.isspace() for c in expanded):
        raise ValueError(f"expected an absolute path without '..' or spaces, got {text!r}")
    return Path(posixpath.normpath(expanded))


def _debug_log_target(text: str) -> str:
    return text if text == "syslog" else str(_absolute_path(text))
