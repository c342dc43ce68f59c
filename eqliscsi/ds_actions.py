"""The datastore actions that use the group: cp, mkfs, clone, rm, monitor, snap_*.

Each action opens one ``GroupClient`` (one SSH login, ``oned.record_cli_command`` as its
command log) and prints only its protocol result; failures follow the ``oned`` contract.

What each action does on the group:

* ``cp``: fetch, check and stage the image first (``image_copy``; a refused PATH or a
  bad checksum sends no CLI command at all), then ``volume create`` (pool, size =
  max(IMAGE/SIZE, the image's virtual size in MB), thin provisioning, snap reserve,
  description), ``multihost-access``, the static access record in ``static`` mode, an
  access record for the front-end's initiator (with CHAP when EQL_CHAP_USER is set),
  write and verify through qemu's iSCSI initiator, delete the front-end's record.
  Prints ``<volume> raw``.
* ``mkfs``: FORMAT/FS ``save_as`` only reserves the name (prints it, creates nothing).
  Otherwise a volume of IMAGE/SIZE MB set up like cp's; with FS (FSTYPE before
  OpenNebula 6.0) the filesystem is built in a sparse staging file of that size and
  copied in like cp's image.  Prints ``<volume>``.  No partition table: the filesystem
  spans the whole volume, as OpenNebula's own datablocks do (the 2014 driver's GPT with
  one partition made disks that contextualised VMs could not use as plain filesystems).
* ``clone``: ``volume select SRC clone NEW`` of the volume of IMAGE/PATH (the source
  image's SOURCE), named for the new image; access records the clone may have inherited
  are removed, then multihost, the static record and, if IMAGE/SIZE is larger, ``size
  ... no-snap``.  Prints ``<volume> raw``.
* ``rm``: delete the snapshots, offline, delete the volume of IMAGE/SOURCE.  A volume
  that is gone is success; one with iSCSI connections, or whose description names
  another image, is refused unless EQL_FORCE_DELETE=YES.
* ``monitor``: ``pool select EQL_POOL show`` -> ``USED_MB``, ``TOTAL_MB``, ``FREE_MB``
  in whole MB as ``GroupClient.pool_capacity`` gives them (the group's GB/TB values
  with two decimals, rounded up), USED_MB = TOTAL_MB - FREE_MB.
* ``snap_delete``, ``snap_revert``, ``snap_flatten``: image snapshots, mapped to group
  snapshots by ``snapshot_name``.  A restore's automatic snapshot of the state before is
  renamed ``pre_restore_snapshot_name`` and deleted; one left by a failure is deleted by
  the volume's next revert or flatten.

Any failure after ``cp``, ``mkfs`` or ``clone`` made a volume deletes it; the first
failure is what oned reports (cleanup problems are logged as ``ERROR:`` lines).  SIGTERM
becomes a failure, so the cleanup runs then too.  When the ``volume create`` or clone
itself fails without a clear answer (no answer within EQL_COMMAND_TIMEOUT, connection
lost after sending, SIGTERM), the group may still make the volume: the cleanup waits up
to EQL_COMMAND_TIMEOUT more for it (``delete_if_made_late``) and deletes it if it has
this action's description.  Likewise an ``access create`` with an unknown outcome (the
front-end's record here, a host's in the TM actions): the cleanup waits for a record of
that initiator that was not there before and deletes it (``revoke_if_granted_late``).
A re-run after a crash replaces a
volume of the same name whose description names the same image id and which has no
iSCSI connections; any other existing volume is refused.

Volume descriptions are ``OpenNebula image <id> (<image name>)`` made acceptable to the
CLI by ``cli_commands.sanitize_description`` (printable ASCII without ``" \\ #``, at most
127 characters).  ``description_owner`` reads the id back.

Settings (EQL_FRONTEND_INITIATOR, EQL_STAGING_DIR, EQL_VERIFY, EQL_FORCE_DELETE among
them) are ``config``'s: see its table for levels and defaults.
"""

from __future__ import annotations

import base64
import re
import signal
import socket
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Callable, FrozenSet, Iterator, Optional

from eqliscsi import cli_commands
from eqliscsi.action_xml import DatastoreInfo, ImageInfo, ds_request, parse_action_data
from eqliscsi.config import AccessRecord as AccessSetting
from eqliscsi.config import DriverConfig, Portal, resolve_config
from eqliscsi.errors import CliError, ConnectionLost, EqlError, GroupTimeout, InvalidValue
from eqliscsi.group import GroupClient
from eqliscsi.image_copy import (
    FILESYSTEMS,
    MIB,
    FetchOptions,
    ImageVerifier,
    LunTarget,
    SourceImage,
    build_filesystem,
    fetch_image,
    inspect_image,
    private_file,
    staging_area,
    write_image,
)
from eqliscsi.image_source import PathPolicy
from eqliscsi.naming import image_volume_name, volume_from_source
from eqliscsi.oned import (
    Action,
    ConfigError,
    DriverError,
    InputError,
    failure_reason,
    log_error,
    log_info,
    log_warn,
    record_cli_command,
)

FRONTEND_IQN_PREFIX = "iqn.2026-11.org.opennebula.eqliscsi"
INITIATOR_NAME_FILE = Path("/etc/iscsi/initiatorname.iscsi")
ANY_ADDRESS = "*.*.*.*"
SAVE_AS = "save_as"
SNAPSHOT_NAME_MAX = 64
PRE_RESTORE_SUFFIX = "-eqliscsi-pre-restore"

_OWNER = re.compile(r"OpenNebula image (\d{1,10})(?: |$)")
_SNAPSHOT = re.compile(r"(.*)-snap(\d{1,10})", re.IGNORECASE)


# --- settings ----------------------------------------------------------------------------

def action_config(action: Action, datastore: DatastoreInfo,
                  image: Optional[ImageInfo] = None) -> DriverConfig:
    """The settings for one action: conf < datastore template < image template."""
    return resolve_config(action.conf, datastore.template,
                          image.template if image is not None else {})


def frontend_iqn(config: DriverConfig) -> str:
    """EQL_FRONTEND_INITIATOR, or the default read from the front-end."""
    return config.frontend_initiator or default_frontend_initiator()


def default_frontend_initiator(path: Path = INITIATOR_NAME_FILE,
                               hostname: Optional[str] = None) -> str:
    """``InitiatorName=`` from ``path`` (open-iscsi's file), else a name made from the
    host name: ``iqn.2026-11.org.opennebula.eqliscsi:<hostname>``."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, sep, name = line.strip().partition("=")
        if sep and key.strip() == "InitiatorName" and name.strip():
            try:
                return cli_commands.initiator_name(name.strip())
            except InvalidValue:
                raise ConfigError(f"InitiatorName in {path} is not a valid iSCSI name: "
                                  "set EQL_FRONTEND_INITIATOR") from None
    host = re.sub(r"[^a-z0-9.-]+", "-", (hostname or socket.gethostname()).lower())
    return f"{FRONTEND_IQN_PREFIX}:{host.strip('.-') or 'frontend'}"


# --- names and descriptions --------------------------------------------------------------

def image_description(image_id: int, image_name: str) -> str:
    """The description of an image's volume: ``OpenNebula image <id> (<name>)``."""
    return cli_commands.sanitize_description(f"OpenNebula image {image_id} ({image_name})")


def description_owner(description: str) -> Optional[int]:
    """The image id an ``image_description`` names, or None for any other text."""
    match = _OWNER.match(description)
    return int(match.group(1)) if match else None


def snapshot_name(volume: str, snap_id: int) -> str:
    """The group snapshot of OpenNebula image snapshot ``snap_id`` of ``volume``.

    ``<volume>-snap<id>``, the volume part cut so that the name has at most 64
    characters (snapshot names are per volume, so the cut cannot make two equal).
    Group-made snapshot names (``<volume>-YYYY-MM-DD-hh:mm:ss.n``) never look like this.
    """
    if snap_id < 0:
        raise InputError(f"invalid image snapshot id {snap_id}")
    suffix = f"-snap{snap_id}"
    return cli_commands.snapshot_name(volume[:SNAPSHOT_NAME_MAX - len(suffix)] + suffix)


def snapshot_id(volume: str, name: str) -> Optional[int]:
    """The image snapshot id ``name`` stands for on ``volume`` (``snapshot_name``'s
    inverse), or None for a snapshot OpenNebula did not make."""
    match = _SNAPSHOT.fullmatch(name)
    if match is None:
        return None
    snap_id = int(match.group(2))
    return snap_id if snapshot_name(volume, snap_id).lower() == name.lower() else None


# --- group helpers -----------------------------------------------------------------------

@contextmanager
def group_client(config: DriverConfig) -> Iterator[GroupClient]:
    with GroupClient(config.group_settings(), command_log=record_cli_command) as group:
        yield group


def undo_logged(what: str, undo: Callable[[], object]) -> None:
    """Run ``undo`` after a failure; its own failure is logged, never raised."""
    try:
        undo()
    except Exception as exc:
        log_error(f"cleanup: could not {what}: {failure_reason(exc)}")


@contextmanager
def delete_on_failure(group: GroupClient, volume: str) -> Iterator[None]:
    """Delete ``volume`` (just made by this action) if the body fails."""
    try:
        yield
    except BaseException:
        log_warn(f"deleting volume {volume} after the failure")
        undo_logged(f"delete volume {volume}", lambda: delete_with_snapshots(group, volume))
        raise


@contextmanager
def delete_if_made_late(group: GroupClient, volume: str, description: str) -> Iterator[None]:
    """Around the command that makes ``volume`` with ``description`` (create or clone): if
    it fails, delete the volume should the group have made it anyway (``late_change_wait``
    says how long to wait for it); a volume with another description is left alone."""
    try:
        yield
    except BaseException as exc:
        wait = late_change_wait(exc, group.settings.command_timeout)
        if wait is not None:
            undo_logged(f"delete volume {volume} if the group made it after all",
                        lambda: _delete_late_volume(group, volume, description, wait))
        raise


def late_change_wait(exc: BaseException, bound: float) -> Optional[float]:
    """How long to wait for the change of a command that failed with ``exc``: 0 (look
    once) when the group answered, ``bound`` (EQL_COMMAND_TIMEOUT) when the outcome is
    unknown (no answer in time, connection lost after sending, SIGTERM), None when it
    never ran."""
    if isinstance(exc, CliError):
        return 0.0
    if isinstance(exc, GroupTimeout):
        return None if exc.retryable else bound  # retryable: while logging in
    if isinstance(exc, ConnectionLost):
        return bound if exc.command_sent else None
    return None if isinstance(exc, EqlError) else bound


def _delete_late_volume(group: GroupClient, volume: str, description: str,
                        wait: float) -> None:
    if wait:
        group.close()  # the failed command may have left its session mid-answer
    info = group.await_volume(volume, wait)
    if info is None:
        if wait:
            log_warn(f"volume {volume} did not appear within {wait:g} s after the failure; "
                     "if the group still makes it, the next attempt replaces it")
        return
    if info.description != description:
        log_warn(f"volume {volume} exists but was not made by this action (description "
                 f"{info.description!r}): left alone")
        return
    log_warn(f"deleting volume {volume}, made by the group although the command failed")
    delete_with_snapshots(group, volume)


@contextmanager
def revoke_if_granted_late(group: GroupClient, volume: str,
                           initiator: str) -> Iterator[FrozenSet[int]]:
    """Around the command that adds ``initiator``'s access record to ``volume``; yields
    the ids of the volume's records before it.  If the command fails with an unknown
    outcome (``late_change_wait``; an error answer added nothing), wait up to
    EQL_COMMAND_TIMEOUT for a record of ``initiator`` that was not there before and
    delete it; records that were there are never touched."""
    before = frozenset(record.id for record in group.list_access(volume))
    try:
        yield before
    except BaseException as exc:
        wait = late_change_wait(exc, group.settings.command_timeout)
        if wait:
            undo_logged(f"remove the access record of {initiator} from {volume} if the "
                        "group added it after all",
                        lambda: _revoke_late_records(group, volume, initiator, before, wait))
        raise


def _revoke_late_records(group: GroupClient, volume: str, initiator: str,
                         before: FrozenSet[int], wait: float) -> None:
    group.close()  # the failed command may have left its session mid-answer
    late = group.await_access(volume, initiator, before, wait)
    if not late:
        log_warn(f"no access record of {initiator} appeared on {volume} within {wait:g} s "
                 "after the failure; if the group still adds it, the next detach or "
                 "delete removes it")
    for record in late:
        log_warn(f"removing access record {record.id} ({initiator}) from {volume}, added "
                 "by the group although the command failed")
        group.delete_access(volume, record.id)


def delete_with_snapshots(group: GroupClient, volume: str) -> None:
    """Delete the volume's snapshots, then the volume (offline first)."""
    for snapshot in group.list_snapshots(volume):
        group.delete_snapshot(volume, snapshot.name)
    group.delete_volume(volume)


def replace_leftover(group: GroupClient, volume: str, image_id: int) -> None:
    """Delete ``volume`` if an earlier failed run for this image left it; refuse if the
    name is taken by anything else."""
    existing = group.find_volume(volume)
    if existing is None:
        return
    if description_owner(existing.description) != image_id:
        raise DriverError(f"volume {volume} already exists and is not a leftover of image "
                          f"{image_id} (description {existing.description!r}): "
                          "refusing to replace it")
    if existing.connections:
        raise DriverError(f"volume {volume}, left by an earlier attempt for image "
                          f"{image_id}, has {existing.connections} iSCSI connection(s): "
                          "refusing to replace it")
    log_info(f"deleting volume {volume} left by an earlier attempt for image {image_id}")
    delete_with_snapshots(group, volume)


def new_volume(group: GroupClient, config: DriverConfig, volume: str, size_mb: int,
                description: str, image_id: int) -> str:
    """Replace a leftover, ``volume create`` with the settings for new volumes and set the
    volume up (deleted again if that fails); returns the IQN."""
    replace_leftover(group, volume, image_id)
    thin = config.thin_provisioning
    log_info(f"creating volume {volume} ({size_mb} MB) in pool {config.pool}"
             + (" (thin)" if thin.thin else ""))
    with delete_if_made_late(group, volume, description):
        iqn = group.create_volume(
            volume, size_mb, pool=config.pool, thin=thin.thin,
            thin_min_reserve=thin.thin_min_reserve, thin_growth_warn=thin.thin_growth_warn,
            thin_growth_max=thin.thin_growth_max, description=description, online=True,
            snap_reserve=config.snap_reserve)
    with delete_on_failure(group, volume):
        _set_up_volume(group, config, volume)
    return iqn


def _set_up_volume(group: GroupClient, config: DriverConfig, volume: str) -> None:
    """Multihost access and, in ``static`` mode, the EQL_SECURITY_ACCESS record (an
    ``ipaddress *.*.*.*`` record - what ``unrestricted`` makes - when it is empty)."""
    group.set_multihost(volume, config.multihost)
    if config.access_mode != "static":
        return
    record = config.security_access or AccessSetting(ipaddress=ANY_ADDRESS)
    log_info(f"adding the static access record to {volume}")
    group.create_access(volume, initiator=record.initiator, ipaddress=record.ipaddress,
                        chap_user=record.chap_user, authmethod=record.authmethod,
                        apply_to=record.apply_to)


@contextmanager
def _frontend_access(group: GroupClient, config: DriverConfig, volume: str, iqn: str,
                     stage: Path) -> Iterator[LunTarget]:
    """An access record for the front-end's initiator while the body writes the volume;
    removed afterwards (a failure to remove it after a success is a failure)."""
    initiator = frontend_iqn(config)
    portal = config.portal or Portal(group.group_ip())
    log_info(f"granting the front-end ({initiator}) access to {volume}")
    with revoke_if_granted_late(group, volume, initiator):
        record = group.create_access(volume, initiator=initiator, chap_user=config.chap_user,
                                     authmethod="chap" if config.chap_user else None)
    try:
        secret = (private_file(stage / "chap-secret", config.chap_password.encode())
                  if config.chap_password else None)
        yield LunTarget(str(portal), iqn, config.lun, initiator, config.chap_user, secret)
    except BaseException:
        undo_logged(f"remove the front-end's access record from {volume}",
                 lambda: group.delete_access(volume, record))
        raise
    log_info(f"removing the front-end's access record from {volume}")
    group.delete_access(volume, record)


def write_volume(group: GroupClient, config: DriverConfig, volume: str, iqn: str,
                  source: SourceImage, verifier: ImageVerifier, stage: Path) -> None:
    """Write and verify the new ``volume`` through the front-end's own access record;
    the volume is deleted if that fails."""
    with delete_on_failure(group, volume), \
            _frontend_access(group, config, volume, iqn, stage) as target:
        write_image(source, target)
        verifier.verify(target)


class Terminated(DriverError):
    """The action got SIGTERM (oned's action timeout): it fails after its cleanup."""


@contextmanager
def sigterm_fails() -> Iterator[None]:
    """Turn the first SIGTERM into ``Terminated`` (later ones are ignored during cleanup)."""
    def terminate(signum: int, frame: Optional[FrameType]) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated("terminated by SIGTERM")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- the actions -------------------------------------------------------------------------

def ds_cp(action: Action) -> str:
    """DS ``cp``: copy the file or URL at IMAGE/PATH into a new volume."""
    invocation = action.ds_invocation()
    data = parse_action_data(invocation.xml)
    image, datastore = data.image, data.datastore
    image_id = invocation.object_id
    config = action_config(action, datastore, image)
    volume = image_volume_name(image.name, image_id)
    declared_mb = _declared_size_mb(image)
    options = FetchOptions(md5=image.md5, sha1=image.sha1,
                           decompress=not datastore.no_decompress,
                           limit_bw=datastore.limit_transfer_bw,
                           size_hint_bytes=declared_mb * MIB)
    downloader = action.remotes_dir / "datastore" / "downloader.sh"
    environ = {**action.environ, "DRV_ACTION": base64.b64encode(invocation.xml).decode()}
    with sigterm_fails(), staging_area(config.staging_dir) as stage:
        fetched = fetch_image(image.path, PathPolicy.for_datastore(datastore, action.environ),
                              stage, options, downloader if downloader.is_file() else None,
                              environ)
        source = inspect_image(fetched)
        size_mb = max(declared_mb, source.size_mb)
        with ImageVerifier(source, config.verify, stage) as verifier, \
                group_client(config) as group:
            iqn = new_volume(group, config, volume, size_mb,
                              image_description(image_id, image.name), image_id)
            write_volume(group, config, volume, iqn, source, verifier, stage)
    return f"{volume} raw"


def _declared_size_mb(image: ImageInfo) -> int:
    """IMAGE/SIZE (what ``stat`` said), 0 when oned sent none."""
    return image.size_mb if image.text("SIZE") else 0


def ds_mkfs(action: Action) -> str:
    """DS ``mkfs``: a new empty (or formatted) datablock volume of IMAGE/SIZE MB."""
    request = ds_request(action)
    image, datastore = request.data.image, request.data.datastore
    image_id = request.object_id
    volume = image_volume_name(image.name, image_id)
    fs = mkfs_filesystem(image)
    if fs == SAVE_AS:
        log_info(f"disk-saveas: reserving the name {volume} (the volume is made later)")
        return volume
    config = action_config(action, datastore, image)
    size_mb = image.size_mb
    if size_mb <= 0:
        raise InputError(f"invalid datablock SIZE {size_mb} MB")
    cli_commands.volume_size(volume, size_mb)  # InvalidValue when too large for the group
    description = image_description(image_id, image.name)
    with sigterm_fails():
        if fs is None:
            with group_client(config) as group:
                new_volume(group, config, volume, size_mb, description, image_id)
            return volume
        with staging_area(config.staging_dir) as stage:
            source = build_filesystem(fs, stage / "filesystem", size_mb * MIB)
            with ImageVerifier(source, config.verify, stage) as verifier, \
                    group_client(config) as group:
                iqn = new_volume(group, config, volume, size_mb, description, image_id)
                write_volume(group, config, volume, iqn, source, verifier, stage)
    return volume


def mkfs_filesystem(image: ImageInfo) -> Optional[str]:
    """``save_as``, a filesystem of ``image_copy.FILESYSTEMS``, or None (plain volume)."""
    image_format = image.format.strip().lower()
    fs = image.fs.strip().lower()
    if SAVE_AS in (image_format, fs):
        return SAVE_AS
    if image_format not in ("", "raw"):
        raise InputError(f"FORMAT {image_format} is not supported: eqliscsi volumes are raw")
    if fs in ("", "raw"):
        return None
    if fs not in FILESYSTEMS:
        raise InputError(f"unsupported filesystem {fs!r} (FS): use one of "
                         f"{', '.join(sorted(FILESYSTEMS))} or raw")
    return fs


def ds_clone(action: Action) -> str:
    """DS ``clone``: an array-side clone of the source image's volume for the new image."""
    request = ds_request(action)
    image, datastore = request.data.image, request.data.datastore
    image_id = request.object_id
    config = action_config(action, datastore, image)
    source = volume_from_source(image.path)
    volume = image_volume_name(image.name, image_id)
    size_mb = image.size_mb  # checked before the group is contacted
    if size_mb < 1:
        raise InputError(f"invalid image SIZE {size_mb} MB")
    cli_commands.volume_size(volume, size_mb)  # InvalidValue when too large for the group
    with sigterm_fails(), group_client(config) as group:
        replace_leftover(group, volume, image_id)
        log_info(f"cloning volume {source} (image {image.text('CLONING_ID', '?')}) "
                 f"to {volume}")
        description = image_description(image_id, image.name)
        with delete_if_made_late(group, volume, description):
            group.clone_volume(source, volume, description=description, online=True,
                               snap_reserve=config.snap_reserve)
        with delete_on_failure(group, volume):
            prepare_clone(group, config, volume, size_mb)
    return f"{volume} raw"


def prepare_clone(group: GroupClient, config: DriverConfig, volume: str, size_mb: int) -> None:
    """Set up a new clone: drop the access records it may have inherited, multihost and
    the static record (``_set_up_volume``), extend it (no-snap) to ``size_mb`` if larger."""
    for inherited in group.list_access(volume):
        group.delete_access(volume, inherited.id)
    _set_up_volume(group, config, volume)
    current_mb = group.show_volume(volume).size_mb
    if size_mb > current_mb:
        log_info(f"extending volume {volume} from {current_mb} to {size_mb} MB")
        group.extend_volume(volume, size_mb)


def ds_rm(action: Action) -> None:
    """DS ``rm``: delete the volume of IMAGE/SOURCE with its snapshots."""
    request = ds_request(action)
    image, datastore = request.data.image, request.data.datastore
    image_id = request.object_id
    config = action_config(action, datastore, image)
    volume = volume_from_source(image.source)
    force = config.force_delete
    with group_client(config) as group:
        info = group.find_volume(volume)
        if info is None:
            log_info(f"volume {volume} does not exist (already deleted)")
            return None
        owner = description_owner(info.description)
        if owner is not None and owner != image_id:
            problem = f"volume {volume} belongs to image {owner}, not to image {image_id}"
            if not force:
                raise DriverError(f"{problem}: refusing to delete it "
                                  "(EQL_FORCE_DELETE=YES overrides)")
            log_warn(f"{problem}; deleting it anyway (EQL_FORCE_DELETE)")
        if info.connections:
            problem = f"volume {volume} has {info.connections} iSCSI connection(s)"
            if not force:
                raise DriverError(f"{problem}, it is still in use: refusing to delete it "
                                  "(EQL_FORCE_DELETE=YES overrides)")
            log_warn(f"{problem}; deleting it anyway (EQL_FORCE_DELETE)")
        log_info(f"deleting volume {volume} and its {info.snapshots} snapshot(s)")
        delete_with_snapshots(group, volume)
    return None


def ds_monitor(action: Action) -> str:
    """DS ``monitor``: the capacity of EQL_POOL (the argv id is the datastore's)."""
    request = ds_request(action)
    config = action_config(action, request.data.datastore)
    with group_client(config) as group:
        capacity = group.pool_capacity(config.pool)
    return (f"USED_MB={capacity.used_mb}\nTOTAL_MB={capacity.total_mb}\n"
            f"FREE_MB={capacity.free_mb}")


def ds_snap_delete(action: Action) -> None:
    """DS ``snap_delete``: delete the group snapshot of IMAGE/TARGET_SNAPSHOT."""
    request = ds_request(action)
    image = request.data.image
    config = action_config(action, request.data.datastore, image)
    volume = volume_from_source(image.source)
    name = snapshot_name(volume, image.target_snapshot)
    with group_client(config) as group:
        if group.delete_snapshot(volume, name):
            log_info(f"deleted snapshot {name} of volume {volume}")
        else:
            log_info(f"snapshot {name} of volume {volume} does not exist (already deleted)")
    return None


def ds_snap_revert(action: Action) -> None:
    """DS ``snap_revert``: restore the volume from IMAGE/TARGET_SNAPSHOT's snapshot."""
    request = ds_request(action)
    image = request.data.image
    config = action_config(action, request.data.datastore, image)
    volume = volume_from_source(image.source)
    with sigterm_fails(), group_client(config) as group:
        revert_to_snapshot(group, volume, image.target_snapshot)
    return None


def ds_snap_flatten(action: Action) -> None:
    """DS ``snap_flatten``: revert to IMAGE/TARGET_SNAPSHOT, then delete every snapshot
    OpenNebula made of the volume (the image is left with no snapshots)."""
    request = ds_request(action)
    image = request.data.image
    config = action_config(action, request.data.datastore, image)
    volume = volume_from_source(image.source)
    with sigterm_fails(), group_client(config) as group:
        revert_to_snapshot(group, volume, image.target_snapshot)
        target = snapshot_name(volume, image.target_snapshot)
        ours = [snapshot.name for snapshot in group.list_snapshots(volume)
                if snapshot_id(volume, snapshot.name) is not None]
        # the target last: until it is gone, a flatten that failed half-way can be re-run
        for name in sorted(ours, key=lambda name: name == target):
            log_info(f"deleting snapshot {name} of volume {volume}")
            group.delete_snapshot(volume, name)
    return None


def revert_to_snapshot(group: GroupClient, volume: str, snap_id: int) -> None:
    """Offline, restore from the image snapshot, drop the group's automatic snapshot of
    the state before, online again; refused while the volume has iSCSI connections.
    Automatic snapshots an earlier restore marked but could not delete go first."""
    name = snapshot_name(volume, snap_id)
    connections = group.show_volume(volume).connections
    if connections:
        raise DriverError(f"volume {volume} has {connections} iSCSI connection(s): it "
                          f"cannot be reverted to snapshot {snap_id} while it is in use")
    snapshots = {s.name.lower(): s for s in group.list_snapshots(volume)}
    marked = pre_restore_snapshot_name(volume)
    if marked.lower() in snapshots:
        log_info(f"deleting {marked}, the state before an earlier restore")
        group.delete_snapshot(volume, snapshots[marked.lower()].name)
    snapshot = snapshots.get(name.lower())
    if snapshot is None:
        raise DriverError(f"image snapshot {snap_id}: volume {volume} has no snapshot {name}")
    if not snapshot.status.lower().startswith("offline"):
        group.set_snapshot_online(volume, name, False)
    log_info(f"setting volume {volume} offline to restore snapshot {name}")
    group.set_online(volume, False)
    try:
        automatic = group.restore_snapshot(volume, name)
        if automatic is not None:
            _drop_pre_restore_snapshot(group, volume, automatic, marked)
    except BaseException:
        undo_logged(f"set volume {volume} online again", lambda: group.set_online(volume, True))
        raise
    log_info(f"setting volume {volume} online")
    group.set_online(volume, True)


def pre_restore_snapshot_name(volume: str) -> str:
    """The name the driver gives the group's automatic snapshot of the state before a
    restore before deleting it: ``<volume>-eqliscsi-pre-restore`` (the volume part cut
    to fit 64 characters).  Neither the group (``<volume>-<time>``) nor ``snapshot_name``
    (``-snap<id>``) make such names, so a snapshot left under it is the driver's."""
    return cli_commands.snapshot_name(
        volume[:SNAPSHOT_NAME_MAX - len(PRE_RESTORE_SUFFIX)] + PRE_RESTORE_SUFFIX)


def _drop_pre_restore_snapshot(group: GroupClient, volume: str, automatic: str,
                               marked: str) -> None:
    """Rename the automatic snapshot to ``marked``, then delete it.  If that fails it is
    deleted once more under whichever name it has; should it stay even then, the
    volume's next revert deletes it (the group names its scheduled snapshots by time as
    well, so only the mark tells them apart)."""
    log_info(f"deleting {automatic}, the group's snapshot of the state before "
             f"(renamed {marked} first)")

    def delete_either() -> None:
        if not group.delete_snapshot(volume, automatic):
            group.delete_snapshot(volume, marked)

    try:
        group.rename_snapshot(volume, automatic, marked)
        group.delete_snapshot(volume, marked)
    except BaseException:
        undo_logged(f"delete snapshot {automatic} (the state before the restore)",
                    delete_either)
        raise
