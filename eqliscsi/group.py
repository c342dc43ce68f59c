"""``GroupClient``: the driver's operations on a PS Series group, over one CLI session.

A client opens one SSH connection and one CLI shell on first use (holding one of the
local session slots while it is open) and runs all its commands on it; close it, or use
it as a context manager::

    with GroupClient(settings) as group:
        iqn = group.create_volume("one-42", 10240, pool="default", thin=True)
        group.set_multihost("one-42", True)

Values are validated before anything is sent (``InvalidValue``).  Commands are built in
``cli_commands`` and their outputs parsed in ``cli_output``.

Retries (bounded by ``retries`` and ``retry_time``, with exponential back-off):

* failures before a command was sent (connect, handshake, session refused, login
  timeout) are retried;
* read-only commands are re-sent after a lost connection;
* a change whose connection was lost after sending is never re-sent blindly: the
  operation's ``verify`` reads the group's state on a new session; if the change is there
  its result is returned, if it is verifiably absent the command is sent again, and if it
  cannot be verified (``snapshot create-now``) ``StateUnknown`` is raised;
* command timeouts, CLI errors, bad passwords and host keys are not retried.
"""

from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    AbstractSet,
    Callable,
    Dict,
    List,
    Optional,
    Tuple,
    Type,
    TypeVar,
)

from eqliscsi import cli_commands as cmd
from eqliscsi.cli_output import (
    AccessRecord,
    ChapUser,
    PoolCapacity,
    SnapshotInfo,
    SnapshotSummary,
    VolumeInfo,
    VolumeSummary,
    field_value,
    parse_access_record_id,
    parse_access_records,
    parse_chap_password,
    parse_chap_user,
    parse_fields,
    parse_pool_capacity,
    parse_snapshot_info,
    parse_snapshot_list,
    parse_snapshot_name,
    parse_table,
    parse_target_iqn,
    parse_volume_info,
    parse_volume_list,
)
from eqliscsi.errors import (
    CliError,
    ConnectionLost,
    InvalidValue,
    NotFound,
    StateUnknown,
    TransportError,
    UnexpectedOutput,
)
from eqliscsi.session_slots import DEFAULT_SLOT_DIR, DEFAULT_SLOTS, SessionSlots, SlotLease

if TYPE_CHECKING:
    from eqliscsi.cli_session import CliSession, CommandLogHook

__all__ = [
    "AccessRecord", "ChapUser", "GroupClient", "GroupSettings", "PoolCapacity",
    "SnapshotInfo", "SnapshotSummary", "VolumeInfo", "VolumeSummary",
]

T = TypeVar("T")
HOST_KEY_POLICIES = ("strict", "accept-new")
ANY_ADDRESS = "*.*.*.*"
MAX_BACKOFF = 10.0
POLL_DELAY = 0.5  # first pause of ``poll``


@dataclass(frozen=True)
class GroupSettings:
    """How to reach and use one group.  Times are seconds.

    ``slow_command_timeout`` applies to clone, restore, volume list and pool show;
    ``max_sessions`` slots in ``slot_dir`` cap the concurrent CLI sessions of all local
    processes (``slot_wait`` is the longest wait for one); ``retries`` and ``retry_time``
    bound the retries of one command.
    """

    host: str
    user: str
    password: str = field(repr=False)
    port: int = 22
    known_hosts: str = "~/.ssh/known_hosts"
    host_key_policy: str = "strict"
    connect_timeout: float = 10.0
    login_timeout: float = 30.0
    command_timeout: float = 60.0
    slow_command_timeout: float = 600.0
    slot_dir: str = DEFAULT_SLOT_DIR
    max_sessions: int = DEFAULT_SLOTS
    slot_wait: float = 120.0
    retries: int = 3
    retry_delay: float = 1.0
    retry_time: float = 60.0

    def __post_init__(self) -> None:
        if not self.host or any(char.isspace() for char in self.host):
            raise InvalidValue(f"invalid group host {self.host!r}")
        if not self.user or any(char.isspace() for char in self.user):
            raise InvalidValue(f"invalid group user {self.user!r}")
        if not self.password:
            raise InvalidValue("the group password is empty")
        if not 0 < self.port < 65536:
            raise InvalidValue(f"invalid SSH port {self.port!r}")
        if self.host_key_policy not in HOST_KEY_POLICIES:
            raise InvalidValue(f"invalid host_key_policy {self.host_key_policy!r}: "
                               "expected strict or accept-new")
        for name in ("connect_timeout", "login_timeout", "command_timeout",
                     "slow_command_timeout", "retry_time"):
            if not getattr(self, name) > 0:
                raise InvalidValue(f"{name} must be positive")
        if self.slot_wait < 0 or self.retry_delay < 0:
            raise InvalidValue("slot_wait and retry_delay must not be negative")
        if self.max_sessions < 1 or self.retries < 0:
            raise InvalidValue("max_sessions must be at least 1 and retries at least 0")


def _done(lines: List[str]) -> bool:
    """Parser of commands whose only result is success."""
    return True


def poll(find: Callable[[], Optional[T]], timeout: float) -> Optional[T]:
    """``find()`` until it is not None, with back-off from ``POLL_DELAY``, for up to
    ``timeout`` seconds (once when it is 0); its last result."""
    deadline = time.monotonic() + timeout
    delay = POLL_DELAY
    while True:
        found = find()
        remaining = deadline - time.monotonic()
        if found is not None or remaining <= 0:
            return found
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, MAX_BACKOFF)


def _once(condition: Callable[[], bool]) -> Callable[[], Optional[bool]]:
    """``verify`` of a change without a result: True once ``condition`` holds, else None."""
    return lambda: True if condition() else None


class GroupClient:
    """Operations on one group over one CLI session (not thread-safe).

    ``command_log``, if given, is called after every CLI command with the command text
    (secrets masked), its duration in seconds and None or an error description.
    """

    def __init__(self, settings: GroupSettings,
                 command_log: Optional[CommandLogHook] = None) -> None:
        self.settings = settings
        self._command_log = command_log
        self._slots = SessionSlots(settings.slot_dir, settings.max_sessions)
        self._slot: Optional[SlotLease] = None
        self._session: Optional[CliSession] = None
        self.group_name: Optional[str] = None

    def __enter__(self) -> GroupClient:
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.close()

    def connect(self) -> None:
        """Open the session now (commands otherwise open it on first use)."""
        self._retrying(self._open_session)

    def close(self) -> None:
        """Close the session and give back its slot (idempotent)."""
        session, self._session = self._session, None
        try:
            if session is not None:
                session.close()
        finally:
            slot, self._slot = self._slot, None
            if slot is not None:
                slot.release()

    # --- volumes -------------------------------------------------------------------------

    def create_volume(
        self,
        name: str,
        size_mb: int,
        *,
        pool: Optional[str] = None,
        thin: bool = False,
        thin_min_reserve: Optional[int] = None,
        thin_growth_warn: Optional[int] = None,
        thin_growth_max: Optional[int] = None,
        description: Optional[str] = None,
        online: bool = True,
        snap_reserve: Optional[int] = None,
    ) -> str:
        """Create a volume of ``size_mb`` MB and return its IQN (thin-* values are %)."""
        command = cmd.volume_create(
            name, size_mb, pool=pool, thin=thin, thin_min_reserve=thin_min_reserve,
            thin_growth_warn=thin_growth_warn, thin_growth_max=thin_growth_max,
            description=description, online=online, snap_reserve=snap_reserve)
        return self._run(command, parse_target_iqn, verify=lambda: self._iqn_if_exists(name))

    def show_volume(self, name: str) -> VolumeInfo:
        """The volume's details (``NotFound`` if it does not exist)."""
        return self._run(cmd.volume_show(name), parse_volume_info)

    def find_volume(self, name: str) -> Optional[VolumeInfo]:
        """The volume's details, or None if it does not exist."""
        try:
            return self.show_volume(name)
        except NotFound:
            return None

    def volume_exists(self, name: str) -> bool:
        """Whether a volume of that name exists."""
        return self.find_volume(name) is not None

    def await_volume(self, name: str, timeout: float) -> Optional[VolumeInfo]:
        """The volume's details once it exists, looking again with back-off (from
        ``POLL_DELAY``) for up to ``timeout`` seconds; None if it did not appear.

        For a volume whose ``create`` or ``clone`` timed out: the group may still make it.
        Looks once when ``timeout`` is 0.
        """
        return poll(lambda: self.find_volume(name), timeout)

    def list_volumes(self) -> List[VolumeSummary]:
        """All volumes of the group (``volume show``)."""
        return self._run(cmd.volume_list(), parse_volume_list)

    def clone_volume(
        self,
        source: str,
        name: str,
        *,
        description: Optional[str] = None,
        online: bool = True,
        snap_reserve: Optional[int] = None,
    ) -> str:
        """Clone ``source`` (same size and pool) as ``name``; return the clone's IQN."""
        command = cmd.volume_clone(source, name, description=description, online=online,
                                   snap_reserve=snap_reserve)
        return self._run(command, parse_target_iqn, verify=lambda: self._iqn_if_exists(name))

    def delete_volume(self, name: str) -> bool:
        """Set the volume offline and delete it; False if it did not exist."""
        try:
            self.set_online(name, False)
            self._run(cmd.volume_delete(name), _done,
                      verify=_once(lambda: not self.volume_exists(name)))
        except NotFound:
            return False
        return True

    def rename_volume(self, name: str, new_name: str) -> None:
        """Rename a volume (its IQN does not change)."""
        self._run(cmd.volume_rename(name, new_name), _done, verify=_once(
            lambda: self.volume_exists(new_name) and not self.volume_exists(name)))

    def set_description(self, name: str, description: str) -> None:
        """Replace the volume's description (see ``cli_commands`` for allowed text)."""
        self._run(cmd.volume_description(name, description), _done, verify=_once(
            lambda: self.show_volume(name).description == description))

    def extend_volume(self, name: str, size_mb: int) -> None:
        """Grow the volume to ``size_mb`` MB without the automatic snapshot (``no-snap``).

        Never shrinks: when the volume already has at least that size nothing is sent.
        """
        command = cmd.volume_size(name, size_mb)  # validated before the show
        if self.show_volume(name).size_mb >= size_mb:
            return
        self._run(command, _done, verify=_once(
            lambda: self.show_volume(name).size_mb >= size_mb))

    def set_online(self, name: str, online: bool) -> None:
        """Set the volume online or offline (offline ends its iSCSI connections)."""
        wanted = "online" if online else "offline"
        self._run(cmd.volume_online(name, online), _done, verify=_once(
            lambda: self.show_volume(name).status.lower().startswith(wanted)))

    def set_multihost(self, name: str, enabled: bool) -> None:
        """Allow or forbid several initiators at once (needed for live migration)."""
        self._run(cmd.volume_multihost(name, enabled), _done, verify=_once(
            lambda: self.show_volume(name).multihost == enabled))

    def _iqn_if_exists(self, name: str) -> Optional[str]:
        volume = self.find_volume(name)
        return volume.iqn if volume is not None else None

    # --- access control records ----------------------------------------------------------

    def create_access(
        self,
        volume: str,
        *,
        initiator: Optional[str] = None,
        ipaddress: Optional[str] = None,
        chap_user: Optional[str] = None,
        authmethod: Optional[str] = None,
        apply_to: Optional[str] = None,
    ) -> int:
        """Add an access control record to the volume and return its ID."""
        return self._add_access(
            volume, _AccessCriteria(initiator, ipaddress, chap_user, authmethod, apply_to),
            reuse_equal=False)

    def ensure_access(
        self,
        volume: str,
        *,
        initiator: Optional[str] = None,
        ipaddress: Optional[str] = None,
        chap_user: Optional[str] = None,
        authmethod: Optional[str] = None,
        apply_to: Optional[str] = None,
    ) -> int:
        """The ID of an equal access record, creating it only if there is none (so a
        live migration does not stack duplicate records: Cinder bug 1726591)."""
        return self._add_access(
            volume, _AccessCriteria(initiator, ipaddress, chap_user, authmethod, apply_to),
            reuse_equal=True)

    def _add_access(self, volume: str, criteria: _AccessCriteria, reuse_equal: bool) -> int:
        command = cmd.access_create(  # validated before any round trip
            volume, initiator=criteria.initiator, ipaddress=criteria.ipaddress,
            chap_user=criteria.chap_user, authmethod=criteria.authmethod,
            apply_to=criteria.apply_to)
        if reuse_equal:
            existing = self._find_access(volume, criteria)
            if existing is not None:
                return existing

        def record_id(lines: List[str]) -> int:
            created = parse_access_record_id(lines)
            if created is not None:
                return created
            found = self._find_access(volume, criteria)
            if found is None:
                raise ValueError("the new access record is neither reported nor listed")
            return found

        return self._run(command, record_id, verify=lambda: self._find_access(volume, criteria))

    def list_access(self, volume: str) -> List[AccessRecord]:
        """The volume's access control records."""
        return self._run(cmd.access_show(volume), parse_access_records)

    def delete_access(self, volume: str, record_id: int) -> bool:
        """Delete one access control record; False if it (or the volume) did not exist."""
        def gone() -> bool:
            return all(r.id != record_id for r in self.list_access(volume))

        try:
            self._run(cmd.access_delete(volume, record_id), _done, verify=_once(gone))
        except NotFound:
            return False
        return True

    def await_access(self, volume: str, initiator: str, known: AbstractSet[int],
                     timeout: float) -> List[AccessRecord]:
        """The volume's records of ``initiator`` whose ids are not in ``known``, looking
        again with back-off (from ``POLL_DELAY``) for up to ``timeout`` seconds until
        there is one; empty if none appeared.

        For an access record whose ``create`` timed out: the group may still add it.
        """
        def added() -> Optional[List[AccessRecord]]:
            records = [r for r in self.list_access(volume)
                       if r.initiator.lower() == initiator.lower() and r.id not in known]
            return records or None

        return poll(added, timeout) or []

    def _find_access(self, volume: str, criteria: _AccessCriteria) -> Optional[int]:
        matching = [r.id for r in self.list_access(volume) if criteria.matches(r)]
        return max(matching) if matching else None

    # --- snapshots -----------------------------------------------------------------------

    def create_snapshot(self, volume: str, name: Optional[str] = None,
                        *, description: Optional[str] = None) -> str:
        """Snapshot the volume now and return the snapshot's name.

        The group names snapshots itself; with ``name`` the new snapshot is renamed (and
        deleted again if the rename fails).  A lost connection during ``create-now``
        raises ``StateUnknown``: the new snapshot cannot be told apart from others.
        """
        if name is not None:
            cmd.snapshot_name(name)  # validated before anything is sent
        created = self._run(cmd.snapshot_create(volume, description=description),
                            parse_snapshot_name)
        if name is None or name == created:
            return created
        try:
            self.rename_snapshot(volume, created, name)
        except CliError:
            self.delete_snapshot(volume, created)
            raise
        return name

    def rename_snapshot(self, volume: str, snapshot: str, new_name: str) -> None:
        """Rename one of the volume's snapshots."""
        self._run(cmd.snapshot_rename(volume, snapshot, new_name), _done, verify=_once(
            lambda: self.find_snapshot(volume, new_name) is not None))

    def list_snapshots(self, volume: str) -> List[SnapshotSummary]:
        """The volume's snapshots."""
        return self._run(cmd.snapshot_list(volume), parse_snapshot_list)

    def show_snapshot(self, volume: str, snapshot: str) -> SnapshotInfo:
        """One snapshot's details (``NotFound`` if it does not exist)."""
        return self._run(cmd.snapshot_show(volume, snapshot), parse_snapshot_info)

    def find_snapshot(self, volume: str, snapshot: str) -> Optional[SnapshotInfo]:
        """One snapshot's details, or None if it does not exist."""
        try:
            return self.show_snapshot(volume, snapshot)
        except NotFound:
            return None

    def restore_snapshot(self, volume: str, snapshot: str) -> Optional[str]:
        """Restore a volume from one of its snapshots (both must be offline).

        The group first snapshots the volume's current state; the name of that automatic
        snapshot is returned (found by comparing the snapshot lists before and after),
        or None if none appeared.  Deleting it is the caller's choice.
        """
        command = cmd.snapshot_restore(volume, snapshot)
        before = {s.name for s in self.list_snapshots(volume)}

        def added() -> List[str]:
            return sorted({s.name for s in self.list_snapshots(volume)} - before)

        self._run(command, _done, verify=_once(lambda: bool(added())))
        try:
            new = added()
        except (CliError, TransportError):
            # the restore is done: look once more (on a new session if need be), or its
            # automatic snapshot would be left behind for good
            new = added()
        return new[-1] if new else None

    def delete_snapshot(self, volume: str, snapshot: str) -> bool:
        """Set the snapshot offline and delete it; False if it did not exist."""
        try:
            self.set_snapshot_online(volume, snapshot, False)
            self._run(cmd.snapshot_delete(volume, snapshot), _done, verify=_once(
                lambda: self.find_snapshot(volume, snapshot) is None))
        except NotFound:
            return False
        return True

    def clone_snapshot(self, volume: str, snapshot: str, name: str,
                       *, description: Optional[str] = None) -> str:
        """Create volume ``name`` from a snapshot (the snapshot's size); return its IQN."""
        command = cmd.snapshot_clone(volume, snapshot, name, description=description)
        return self._run(command, parse_target_iqn, verify=lambda: self._iqn_if_exists(name))

    def set_snapshot_online(self, volume: str, snapshot: str, online: bool) -> None:
        """Set a snapshot online (its own iSCSI target) or offline."""
        wanted = "online" if online else "offline"
        self._run(cmd.snapshot_online(volume, snapshot, online), _done, verify=_once(
            lambda: self.show_snapshot(volume, snapshot).status.lower().startswith(wanted)))

    # --- pools, group, CHAP users --------------------------------------------------------

    def pool_capacity(self, pool: str) -> PoolCapacity:
        """Capacity of a storage pool in MB."""
        return self._run(cmd.pool_show(pool), parse_pool_capacity)

    def pool_volume_names(self, pool: str) -> Tuple[PoolCapacity, List[str]]:
        """``pool select P show``: the pool's capacity and the names in the volume table
        its output lists (empty without a table)."""
        return self._run(cmd.pool_show(pool), lambda lines: (
            parse_pool_capacity(lines), [row.get("Name", "") for row in parse_table(lines)]))

    def group_params(self) -> Dict[str, str]:
        """The ``grpparams show`` fields."""
        return self._run(cmd.grpparams_show(), parse_fields)

    def group_ip(self) -> str:
        """The group IP address (the iSCSI discovery portal, port 3260)."""
        def group_address(lines: List[str]) -> str:
            value = field_value(parse_fields(lines), "Group-Ipaddress") or ""
            try:
                return str(ipaddress.ip_address(value))
            except ValueError:
                raise ValueError(f"no valid Group-Ipaddress field: {value!r}") from None

        return self._run(cmd.grpparams_show(), group_address)

    def create_chap_user(self, name: str, password: Optional[str] = None) -> str:
        """Create a local CHAP account and return its secret (generated by the group
        when ``password`` is None)."""
        command = cmd.chapuser_create(name, password)

        def secret(lines: List[str]) -> str:
            return parse_chap_password(lines) or password or self.show_chap_user(name).password

        def existing() -> Optional[str]:
            try:
                return self.show_chap_user(name).password
            except NotFound:
                return None

        return self._run(command, secret, verify=existing)

    def show_chap_user(self, name: str) -> ChapUser:
        """A local CHAP account, including its secret."""
        return self._run(cmd.chapuser_show(name), parse_chap_user)

    # --- running commands ----------------------------------------------------------------

    def _run(self, command: cmd.CliCommand, parse: Callable[[List[str]], T],
             verify: Optional[Callable[[], Optional[T]]] = None) -> T:
        """Run ``command`` with the retry rules of the module doc and parse its output.

        ``verify`` reads the group's state after a lost connection: the operation's result
        if the change is there, None if it verifiably is not.
        """
        def attempt() -> T:
            session = self._ready_session()
            timeout = (self.settings.slow_command_timeout if command.slow
                       else self.settings.command_timeout)
            lines = session.run(command, timeout)
            try:
                return parse(lines)
            except ValueError as exc:
                raise UnexpectedOutput(command.masked, message=str(exc)) from None

        def recover(exc: TransportError) -> Optional[T]:
            unsent = not isinstance(exc, ConnectionLost) or not exc.command_sent
            if unsent or command.read_only:
                return None
            if verify is None:
                raise StateUnknown(command.masked, message=(
                    f"connection lost after sending ({exc}); whether the group did it "
                    "cannot be checked")) from exc
            return verify()

        return self._retrying(attempt, recover)

    def _retrying(self, attempt: Callable[[], T],
                  recover: Optional[Callable[[TransportError], Optional[T]]] = None) -> T:
        """Call ``attempt`` until it succeeds or fails for good.  After a retryable
        transport error and the back-off, ``recover`` may return a result (or raise)
        instead of another attempt."""
        started = time.monotonic()
        number = 0
        while True:
            number += 1
            try:
                return attempt()
            except TransportError as exc:
                self.close()
                if not exc.retryable:
                    raise
                delay = min(self.settings.retry_delay * 2 ** (number - 1), MAX_BACKOFF)
                delay *= random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not security)
                again = (number <= self.settings.retries
                         and time.monotonic() - started + delay <= self.settings.retry_time)
                if again:
                    time.sleep(delay)
                recovered = recover(exc) if recover is not None else None
                if recovered is not None:
                    return recovered
                if not again:
                    raise

    def _ready_session(self) -> CliSession:
        if self._session is None:
            self._open_session()
        assert self._session is not None
        return self._session

    def _open_session(self) -> None:
        from eqliscsi.cli_session import CliSession  # paramiko costs ~0.2 s to import

        if self._session is not None:
            return
        settings = self.settings
        self._slot = self._slots.acquire(settings.slot_wait)
        session = CliSession(
            settings.host, settings.port, settings.user, settings.password,
            known_hosts=settings.known_hosts, host_key_policy=settings.host_key_policy,
            connect_timeout=settings.connect_timeout, login_timeout=settings.login_timeout,
            command_log=self._command_log)
        try:
            session.open()
        except BaseException:
            self.close()
            raise
        self._session = session
        self.group_name = session.group_name


@dataclass(frozen=True)
class _AccessCriteria:
    """What an access record was asked for; ``matches`` compares it with a listed record
    (no initiator / address / user equals an empty cell, no address equals ``*.*.*.*``;
    authmethod and apply-to are compared only when given)."""

    initiator: Optional[str]
    ipaddress: Optional[str]
    chap_user: Optional[str]
    authmethod: Optional[str]
    apply_to: Optional[str]

    def matches(self, record: AccessRecord) -> bool:
        return (
            (self.initiator or "").lower() == record.initiator.lower()
            and (self.ipaddress or ANY_ADDRESS) == (record.ipaddress or ANY_ADDRESS)
            and (self.chap_user or "") == record.username
            and self.authmethod in (None, record.authmethod or "none")
            and self.apply_to in (None, record.apply_to or "both")
        )

