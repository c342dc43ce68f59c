"""The simulated group's state: data model, the rules that change it, and its JSON store.

Everything the group remembers lives in ``<state-dir>/state.json``, read and written under an
``fcntl`` lock, so several simulator processes (and restarts) share one group. Rule violations
raise ``GroupError`` carrying a message key; the message texts live in cli.py.

Choices not backed by a verified source ([M] in the reference) are marked "[M]" below.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import secrets
import string
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from tests.eqlsim.backend import AccessRule, Publication

PAGE_MB = 15
DEFAULT_POOL = "default"
DEFAULT_POOL_MB = 10 * 1024 * 1024  # 10TB [M]
DEFAULT_GROUP_NAME = "group-0"
IQN_PREFIX = "iqn.2001-05.com.equallogic"

_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)(M|MB|G|GB|T|TB)?$", re.IGNORECASE)
_UNIT_MB = {"": 1, "M": 1, "MB": 1, "G": 1024, "GB": 1024, "T": 1024**2, "TB": 1024**2}
_VOLUME_NAME_RE = re.compile(r"^[A-Za-z0-9.:-]{1,64}$")
_SNAPSHOT_NAME_RE = re.compile(r"^[A-Za-z0-9.:-]{1,127}$")  # length [M]
_CHAP_NAME_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,63}$")  # [M]
_IP_PATTERN_RE = re.compile(r"^(\d{1,3}|\*)(\.(\d{1,3}|\*)){3}$")


class GroupError(Exception):
    """The group refused an operation; ``key`` names the message, ``params`` fill it in."""

    def __init__(self, key: str, **params: object) -> None:
        super().__init__(key)
        self.key = key
        self.params = params


def parse_size_mb(text: str) -> int:
    """Parse a CLI size (bare number = MB) into whole MB, rounded up."""
    match = _SIZE_RE.match(text)
    if not match:
        raise GroupError("invalid_size", size=text)
    unit = _UNIT_MB[(match.group(2) or "").upper()]
    size_mb = math.ceil(Decimal(match.group(1)) * unit)
    if size_mb <= 0:
        raise GroupError("invalid_size", size=text)
    return int(size_mb)


def pages_mb(size_mb: int) -> int:
    """Round up to whole 15 MB allocation pages."""
    return -(-size_mb // PAGE_MB) * PAGE_MB


def percent_mb(size_mb: int, percent: int) -> int:
    """``percent`` of ``size_mb``, rounded up to whole pages."""
    return pages_mb(math.ceil(size_mb * percent / 100))


def check_volume_name(name: str) -> None:
    if not _VOLUME_NAME_RE.match(name):
        raise GroupError("invalid_name", name=name)


def check_ip_pattern(text: str) -> None:
    """An access-record address: four octets, each a number or ``*``."""
    match = _IP_PATTERN_RE.match(text)
    if not match or any(part != "*" and int(part) > 255 for part in text.split(".")):
        raise GroupError("bad_argument", token=text)


@dataclass
class CliSettings:
    """Per-account ``cli-settings``; a fresh account starts with everything a client dislikes."""

    events: bool = True
    paging: bool = True
    confirmation: bool = True
    formatoutput: bool = True  # stored and shown; output is the same either way [M]
    display_in_mb: bool = False
    reprint_bad_input: bool = True
    idlelogout: bool = True  # stored and shown; idle sessions are never logged out [M]


@dataclass
class AccessRecord:
    id: int
    initiator: str = ""
    ipaddress: str = ""
    username: str = ""
    authmethod: str = "none"
    apply_to: str = "both"  # default [M]

    def rule(self) -> AccessRule:
        return AccessRule(
            initiator=self.initiator or None,
            ipaddress=self.ipaddress or None,
            chap_user=self.username if self.authmethod == "chap" and self.username else None,
        )


@dataclass
class Snapshot:
    name: str
    obj_id: str
    iqn: str
    size_mb: int
    created: float
    description: str = ""
    status: str = "offline"
    permission: str = "read-write"


@dataclass
class Volume:
    name: str
    size_mb: int  # the size asked for and shown as ``Size:``; the LUN holds whole pages
    pool: str = DEFAULT_POOL
    obj_id: str = ""
    iqn: str = ""
    created: float = 0.0
    thin: bool = False
    thin_min_reserve: int = 10
    thin_growth_warn: int = 60
    thin_growth_max: int = 100
    snap_reserve: int = 100
    snap_warn: int = 10
    snap_depletion: str = "delete-oldest"
    description: str = ""
    iscsi_alias: str = ""
    status: str = "online"
    permission: str = "read-write"
    multihost: bool = False
    unrestricted: bool = False  # an implicit allow-all access rule [M]
    sector_size: int = 512
    access: List[AccessRecord] = field(default_factory=list)
    snapshots: List[Snapshot] = field(default_factory=list)
    snapshot_seq: int = 0

    @property
    def allocated_mb(self) -> int:
        """What the LUN exposes: the size rounded up to 15 MB pages (1GB -> 1035MB)."""
        return pages_mb(self.size_mb)

    @property
    def reserve_mb(self) -> int:
        """Pool space held for the volume itself (``VolReserve``)."""
        if self.thin:
            return percent_mb(self.allocated_mb, self.thin_min_reserve)
        return self.allocated_mb

    @property
    def snap_reserve_mb(self) -> int:
        return percent_mb(self.reserve_mb, self.snap_reserve)

    @property
    def pool_usage_mb(self) -> int:
        return self.reserve_mb + self.snap_reserve_mb

    def find_snapshot(self, name: str) -> Optional[Snapshot]:
        return next((s for s in self.snapshots if s.name.lower() == name.lower()), None)

    def snapshot(self, name: str) -> Snapshot:
        found = self.find_snapshot(name)
        if found is None:
            raise GroupError("snapshot_not_found", name=name)
        return found

    def access_record(self, record_id: int) -> AccessRecord:
        found = next((r for r in self.access if r.id == record_id), None)
        if found is None:
            raise GroupError("access_not_found", id=record_id)
        return found


@dataclass
class Pool:
    name: str
    capacity_mb: int
    description: str = ""


@dataclass
class ChapUser:
    name: str
    password: str
    enabled: bool = True


@dataclass
class GroupParams:
    name: str = DEFAULT_GROUP_NAME
    ipaddress: str = "127.0.0.1"
    iscsi_prefix: str = IQN_PREFIX
    iqn_serial: str = ""  # 5 hex digits shared by every IQN of the group
    description: str = ""
    location: str = "default"


@dataclass(frozen=True)
class DataOp:
    """A change the backend must make to stored data once the command succeeds."""

    kind: str  # create | copy | resize | delete
    obj_id: str
    size_bytes: int = 0  # create, resize
    source_id: str = ""  # copy: the new data of obj_id is a copy of source_id


@dataclass
class GroupState:
    group: GroupParams = field(default_factory=GroupParams)
    pools: Dict[str, Pool] = field(default_factory=dict)
    volumes: Dict[str, Volume] = field(default_factory=dict)  # obj_id -> volume, creation order
    chap_users: Dict[str, ChapUser] = field(default_factory=dict)
    accounts: Dict[str, CliSettings] = field(default_factory=dict)
    counters: Dict[str, int] = field(default_factory=dict)
    data_ops: List[DataOp] = field(default_factory=list)  # not persisted

    # ---- serialisation ----------------------------------------------------------------------

    def to_json(self) -> Dict[str, Any]:
        return {
            "version": 1,
            "group": asdict(self.group),
            "pools": {k: asdict(v) for k, v in self.pools.items()},
            "volumes": {k: asdict(v) for k, v in self.volumes.items()},
            "chap_users": {k: asdict(v) for k, v in self.chap_users.items()},
            "accounts": {k: asdict(v) for k, v in self.accounts.items()},
            "counters": dict(self.counters),
        }

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> GroupState:
        volumes = {}
        for obj_id, raw in data["volumes"].items():
            fields = dict(raw)
            fields["access"] = [AccessRecord(**a) for a in raw["access"]]
            fields["snapshots"] = [Snapshot(**s) for s in raw["snapshots"]]
            volumes[obj_id] = Volume(**fields)
        return cls(
            group=GroupParams(**data["group"]),
            pools={k: Pool(**v) for k, v in data["pools"].items()},
            volumes=volumes,
            chap_users={k: ChapUser(**v) for k, v in data["chap_users"].items()},
            accounts={k: CliSettings(**v) for k, v in data["accounts"].items()},
            counters=dict(data["counters"]),
        )

    # ---- lookups ----------------------------------------------------------------------------

    def find_volume(self, name: str) -> Optional[Volume]:
        """Volume names are case-insensitive [M]."""
        return next((v for v in self.volumes.values() if v.name.lower() == name.lower()), None)

    def volume(self, name: str) -> Volume:
        found = self.find_volume(name)
        if found is None:
            raise GroupError("volume_not_found", name=name)
        return found

    def pool(self, name: str) -> Pool:
        found = self.pools.get(name)
        if found is None:
            raise GroupError("pool_not_found", name=name)
        return found

    def pool_volumes(self, pool: str) -> List[Volume]:
        return [v for v in self.volumes.values() if v.pool == pool]

    def free_mb(self, pool: str, ignoring: Optional[Volume] = None) -> int:
        used = sum(v.pool_usage_mb for v in self.pool_volumes(pool) if v is not ignoring)
        return self.pool(pool).capacity_mb - used

    def settings_for(self, account: str) -> CliSettings:
        return self.accounts.setdefault(account, CliSettings())

    def next_counter(self, name: str) -> int:
        self.counters[name] = self.counters.get(name, 0) + 1
        return self.counters[name]

    def _require_space(self, volume: Volume, replacing: Optional[Volume] = None) -> None:
        """Fail unless ``volume`` fits in its pool (``replacing`` = its current usage)."""
        if volume.pool_usage_mb > self.free_mb(volume.pool, ignoring=replacing):
            raise GroupError("no_space", pool=volume.pool)

    def _new_object(self, prefix: str, name: str) -> Tuple[str, str]:
        """A fresh immutable object id and an EqualLogic-shaped IQN for ``name``."""
        obj_id = f"{prefix}{self.next_counter('object')}"
        iqn = (
            f"{self.group.iscsi_prefix}:0-8a0906-{secrets.token_hex(2)}{self.group.iqn_serial}"
            f"-{secrets.token_hex(8)}-{name.lower()}"
        )
        return obj_id, iqn

    # ---- volumes ----------------------------------------------------------------------------

    def add_volume(self, volume: Volume, copy_from: Optional[str] = None) -> Volume:
        """Create ``volume`` (a filled-in template), empty or as a copy of object ``copy_from``."""
        check_volume_name(volume.name)
        if self.find_volume(volume.name) is not None:
            raise GroupError("volume_exists", name=volume.name)
        self.pool(volume.pool)
        self._require_space(volume)
        volume.obj_id, volume.iqn = self._new_object("v", volume.name)
        volume.created = time.time()
        volume.iscsi_alias = volume.iscsi_alias or volume.name
        self.volumes[volume.obj_id] = volume
        if copy_from is None:
            self.data_ops.append(DataOp("create", volume.obj_id, volume.allocated_mb << 20))
        else:
            self.data_ops.append(DataOp("copy", volume.obj_id, source_id=copy_from))
        return volume

    @staticmethod
    def clone_template(source: Volume, name: str, size_mb: int) -> Volume:
        """A new volume like ``source``: same pool and thin settings, nothing else shared [M]."""
        return Volume(
            name=name,
            size_mb=size_mb,
            pool=source.pool,
            thin=source.thin,
            thin_min_reserve=source.thin_min_reserve,
            thin_growth_warn=source.thin_growth_warn,
            thin_growth_max=source.thin_growth_max,
        )

    def delete_volume(self, volume: Volume) -> None:
        if volume.status != "offline":
            raise GroupError("delete_online", name=volume.name)
        for snap in volume.snapshots:
            self.data_ops.append(DataOp("delete", snap.obj_id))
        self.data_ops.append(DataOp("delete", volume.obj_id))
        del self.volumes[volume.obj_id]

    def rename_volume(self, volume: Volume, new_name: str) -> None:
        """Rename; the IQN and the stored data stay as they are."""
        check_volume_name(new_name)
        other = self.find_volume(new_name)
        if other is not None and other is not volume:
            raise GroupError("volume_exists", name=new_name)
        volume.name = new_name

    def resize_volume(self, volume: Volume, size_mb: int, snapshot_first: bool) -> None:
        """Grow a volume; shrinking is refused [M]. Without ``no-snap`` a snapshot comes first."""
        if size_mb < volume.size_mb:
            raise GroupError("shrink_refused", name=volume.name)
        self._require_space(replace(volume, size_mb=size_mb), replacing=volume)
        if snapshot_first:
            self.create_snapshot(volume)
        volume.size_mb = size_mb
        self.data_ops.append(DataOp("resize", volume.obj_id, volume.allocated_mb << 20))

    def set_thin(self, volume: Volume, thin: bool) -> None:
        self._require_space(replace(volume, thin=thin), replacing=volume)
        volume.thin = thin

    # ---- snapshots --------------------------------------------------------------------------

    def create_snapshot(
        self,
        volume: Volume,
        description: str = "",
        status: str = "offline",
        permission: str = "read-write",
    ) -> Snapshot:
        """Snapshot named ``<volume>-YYYY-MM-DD-hh:mm:ss.<n>`` (n counts per volume)."""
        volume.snapshot_seq += 1
        now = time.time()
        stamp = time.strftime("%Y-%m-%d-%H:%M:%S", time.localtime(now))
        name = f"{volume.name}-{stamp}.{volume.snapshot_seq}"
        obj_id, iqn = self._new_object("s", name)
        snap = Snapshot(name, obj_id, iqn, volume.size_mb, now, description, status, permission)
        volume.snapshots.append(snap)
        self.data_ops.append(DataOp("copy", obj_id, source_id=volume.obj_id))
        return snap

    def rename_snapshot(self, volume: Volume, snap: Snapshot, new_name: str) -> None:
        if not _SNAPSHOT_NAME_RE.match(new_name):
            raise GroupError("invalid_name", name=new_name)
        other = volume.find_snapshot(new_name)
        if other is not None and other is not snap:
            raise GroupError("snapshot_exists", name=new_name)
        snap.name = new_name

    def delete_snapshot(self, volume: Volume, snap: Snapshot) -> None:
        if snap.status != "offline":
            raise GroupError("snapshot_online", name=snap.name)
        volume.snapshots.remove(snap)
        self.data_ops.append(DataOp("delete", snap.obj_id))

    def restore_snapshot(self, volume: Volume, snap: Snapshot) -> Snapshot:
        """Roll the volume back to ``snap``; its current state is kept as a new snapshot first."""
        if volume.status != "offline":
            raise GroupError("restore_online", name=volume.name)
        if snap.status != "offline":
            raise GroupError("snapshot_online", name=snap.name)
        saved = self.create_snapshot(volume)
        volume.size_mb = snap.size_mb
        self.data_ops.append(DataOp("copy", volume.obj_id, source_id=snap.obj_id))
        return saved

    # ---- access control and CHAP ------------------------------------------------------------

    def add_access(self, volume: Volume, record: AccessRecord, limit: int) -> AccessRecord:
        """Add a record with the lowest free ID from 1 [M: the reuse of freed IDs]."""
        if len(volume.access) >= limit:
            raise GroupError("too_many_access", name=volume.name, limit=limit)
        used = {r.id for r in volume.access}
        record.id = next(i for i in range(1, limit + 2) if i not in used)
        volume.access.append(record)
        volume.access.sort(key=lambda r: r.id)
        return record

    def create_chap_user(self, name: str, password: Optional[str], enabled: bool) -> ChapUser:
        if not _CHAP_NAME_RE.match(name):
            raise GroupError("invalid_name", name=name)
        if name in self.chap_users:
            raise GroupError("chapuser_exists", name=name)
        alphabet = string.ascii_letters + string.digits
        secret = password or "".join(secrets.choice(alphabet) for _ in range(16))  # [M]
        user = ChapUser(name, secret, enabled)
        self.chap_users[name] = user
        return user

    def chap_user(self, name: str) -> ChapUser:
        found = self.chap_users.get(name)
        if found is None:
            raise GroupError("chapuser_not_found", name=name)
        return found

    # ---- what the iSCSI portal should show --------------------------------------------------

    def publications(self) -> Dict[str, Publication]:
        """Every online volume and snapshot, keyed by object id, as the backend must expose it."""
        result: Dict[str, Publication] = {}
        for volume in self.volumes.values():
            if volume.status == "online":
                result[volume.obj_id] = self._publication(
                    volume, volume.iqn, "volume", volume.permission
                )
            for snap in volume.snapshots:
                if snap.status == "online":
                    result[snap.obj_id] = self._publication(
                        volume, snap.iqn, "snapshot", snap.permission
                    )
        return result

    def _publication(self, volume: Volume, iqn: str, kind: str, permission: str) -> Publication:
        records = [r for r in volume.access if r.apply_to in (kind, "both")]
        rules = tuple(r.rule() for r in records)
        secrets_by_user = {
            rule.chap_user: self.chap_users[rule.chap_user].password
            for rule in rules
            if rule.chap_user in self.chap_users and self.chap_users[rule.chap_user].enabled
        }
        return Publication(
            iqn=iqn,
            unrestricted=volume.unrestricted,
            rules=rules,
            chap_secrets=secrets_by_user,
            read_only=permission == "read-only",
        )


class StateStore:
    """``state.json`` in the state directory, shared by threads and processes via ``flock``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / "state.json"
        self.lock_path = self.state_dir / "state.lock"

    @contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, mode)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> Tuple[GroupState, str]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return GroupState(), ""
        return GroupState.from_json(json.loads(text)), text

    def load(self) -> GroupState:
        """A consistent read-only snapshot of the group."""
        with self._locked(fcntl.LOCK_SH):
            return self._read()[0]

    @contextmanager
    def transaction(self) -> Iterator[GroupState]:
        """Read-modify-write under an exclusive lock; nothing is written if the body raises."""
        with self._locked(fcntl.LOCK_EX):
            state, old_text = self._read()
            yield state
            new_text = json.dumps(state.to_json(), indent=1, sort_keys=True)
            if new_text != old_text:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(new_text)
                os.replace(tmp, self.path)

    def initialize(
        self, group_name: Optional[str], group_ip: str, pool_size_mb: Optional[int]
    ) -> None:
        """Create the group on first use; apply the start-up options every time."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.transaction() as state:
            if not state.group.iqn_serial:
                state.group.iqn_serial = secrets.token_hex(3)[:5]
            if group_name is not None:
                state.group.name = group_name
            state.group.ipaddress = group_ip
            if DEFAULT_POOL not in state.pools:
                state.pools[DEFAULT_POOL] = Pool(DEFAULT_POOL, pool_size_mb or DEFAULT_POOL_MB)
            elif pool_size_mb is not None:
                state.pools[DEFAULT_POOL].capacity_mb = pool_size_mb

    def set_pool_size(self, pool: str, size_mb: int) -> None:
        """Set a pool's capacity, creating the pool if it does not exist yet."""
        with self.transaction() as state:
            state.pools.setdefault(pool, Pool(pool, size_mb)).capacity_mb = size_mb
