"""The ``eqliscsi`` command (also ``python3 -m eqliscsi``): install, check, inspect.

* ``install`` / ``uninstall``: the driver in an OpenNebula remotes tree (``install.py``),
  optionally registered in a copy of oned.conf (``oned_conf.py``);
* ``check``: conf, settings, group reachable, host key, CLI login, pool, hosts;
* ``volumes``: every volume of the pool with the image or VM that owns it;
* ``orphans``: volumes no image or VM owns, host sessions no VM uses (``inventory.py``);
* ``demo``: the simulated group, an install and an image/VM lifecycle (``demo.py``).

Settings are the driver's: ``--conf``, else ``$EQLISCSI_CONF``, else the conf of the
remotes tree (``config.find_conf_file``), layered under a datastore's template with
``--datastore ID`` (``onedatastore show -x``) or ``--datastore-xml FILE``.  Tables go to
stdout (``--json``: one JSON document instead), progress and warnings to stderr.  Exit
status: 0, 1 when something failed, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Set, TextIO, Tuple

from eqliscsi import config as conf_module
from eqliscsi import install as installer
from eqliscsi import inventory, oned_conf
from eqliscsi.cli_output import PoolCapacity, VolumeInfo, VolumeSummary
from eqliscsi.config import DriverConfig
from eqliscsi.errors import EqlError, NotFound, TransportError
from eqliscsi.group import GroupClient, GroupSettings
from eqliscsi.oned import ConfigError, DriverError, failure_reason

if TYPE_CHECKING:
    from paramiko import PKey

PROGRESS_LINE_FROM = 10  # without a terminal, one progress line for this many items or more
ONE_CLI_TIMEOUT = 120.0
HOST_CHECK_SCRIPT = r"""
found=$(command -v iscsiadm || PATH=/usr/sbin:/sbin:$PATH command -v iscsiadm) \
    && echo "EQLISCSI-ISCSIADM $found"
name=$( (cat /etc/iscsi/initiatorname.iscsi || sudo -n cat /etc/iscsi/initiatorname.iscsi) \
    2>/dev/null | sed -n 's/^[[:space:]]*InitiatorName[[:space:]]*=[[:space:]]*//p' | head -n 1)
[ -n "$name" ] && echo "EQLISCSI-INITIATOR $name"
sudo_ok=no
sudo -n -l iscsiadm >/dev/null 2>&1 && sudo_ok=yes
echo "EQLISCSI-SUDO $sudo_ok"
exit 0
"""
SESSIONS_SCRIPT = r"""
out=$(sudo -n iscsiadm -m session 2>&1); rc=$?
[ "$rc" -eq 21 ] && exit 0
if [ "$rc" -ne 0 ]; then echo "$out" >&2; exit "$rc"; fi
printf '%s\n' "$out" | sed 's/^/EQLISCSI-SESSION /'
"""


class AdminError(Exception):
    """A command cannot go on; the message says why and what to do."""


# --- output helpers ----------------------------------------------------------------------

def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows under headers in aligned columns (the last column is not padded)."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def human_size(size_mb: int) -> str:
    """MB as the group shows sizes: ``500 MB``, ``10.00 GB``, ``2.50 TB``."""
    if size_mb >= 1024 * 1024:
        return f"{size_mb / 1024 / 1024:.2f} TB"
    if size_mb >= 1024:
        return f"{size_mb / 1024:.2f} GB"
    return f"{size_mb} MB"


def plural(count: int, noun: str) -> str:
    """``1 volume``, ``2 volumes``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


class Progress:
    """``<what> i/n <label>`` on one updated stderr line (a terminal), else one line at
    the start of a long run."""

    def __init__(self, what: str, total: int, stream: TextIO = sys.stderr) -> None:
        self.what = what
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self.width = 0
        if not self.tty and total >= PROGRESS_LINE_FROM:
            print(f"eqliscsi: {what}: {total} ...", file=stream, flush=True)

    def step(self, index: int, label: str) -> None:
        if self.tty:
            text = f"{self.what} {index}/{self.total} {label}"[:79]
            self.stream.write("\r" + text.ljust(self.width))
            self.stream.flush()
            self.width = len(text)

    def done(self) -> None:
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """``data`` as JSON with ``--json``, else ``text``."""
    print(json.dumps(data, indent=2) if args.json else text)


# --- settings ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """The resolved settings, where the conf came from, and the remotes tree."""

    config: DriverConfig
    conf_path: Optional[Path]
    remotes: Path


def find_conf(args: argparse.Namespace) -> Tuple[Optional[Path], Path]:
    """(the conf file to read or None, the remotes tree)."""
    remotes = Path(args.remotes) if args.remotes else installer.default_remotes(os.environ)
    environ = dict(os.environ)
    if args.conf:
        environ[conf_module.CONF_ENV] = args.conf
    return conf_module.find_conf_file(remotes, environ), remotes


def datastore_template(args: argparse.Namespace) -> Dict[str, str]:
    """The template of ``--datastore ID`` / ``--datastore-xml FILE`` (empty without)."""
    from eqliscsi.action_xml import DatastoreInfo, parse_xml

    if args.datastore_xml:
        try:
            data = Path(args.datastore_xml).read_bytes()
        except OSError as exc:
            raise AdminError(f"--datastore-xml: {exc}") from None
        return DatastoreInfo(parse_xml(data, "DATASTORE", args.datastore_xml)).template
    if args.datastore is not None:
        from eqliscsi.one_objects import OneObjects

        return OneObjects().datastore(args.datastore).template
    return {}


def load_settings(args: argparse.Namespace) -> Settings:
    """The driver's settings as an action on that datastore would see them."""
    path, remotes = find_conf(args)
    conf = conf_module.load_conf_file(path)
    config = conf_module.resolve_config(conf, datastore_template(args), {})
    return Settings(config, path, remotes)


# --- check -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """One line of ``check``: ``ok``, ``warn``, ``fail`` or ``skip``."""

    name: str
    status: str
    detail: str


def run_checks(args: argparse.Namespace) -> List[Check]:
    """Every check, in order; later ones are skipped when they cannot succeed."""
    checks: List[Check] = []
    remotes = Path(args.remotes) if args.remotes else installer.default_remotes(os.environ)
    checks.append(_check_install(remotes))
    try:
        path, remotes = find_conf(args)
        conf = conf_module.load_conf_file(path)
    except ConfigError as exc:
        return [*checks, Check("conf", "fail", str(exc))]
    checks.append(_check_conf_file(path))
    try:
        config = conf_module.resolve_config(conf, datastore_template(args), {})
        settings = config.group_settings()
    except (ConfigError, DriverError) as exc:
        return [*checks, Check("settings", "fail", failure_reason(exc))]
    checks.append(Check("settings", "ok", f"group {config.host}:{config.port}, account "
                        f"{config.user}, pool {config.pool}, access {config.access_mode}"))
    reachable, server_key = _probe(config)
    checks.append(reachable)
    key = _check_host_key(config, server_key)
    checks.append(key)
    if reachable.status == "fail" or key.status == "fail":
        checks.append(Check("group CLI", "skip", "needs the group reachable and its host key"))
    else:
        checks += _check_group(config, settings)
    hosts = args.host or one_hosts()
    for name in hosts:
        checks.append(_check_host(name, config))
    if not hosts:
        checks.append(Check("hosts", "skip", "no --host given and no onehost command"))
    checks += [Check(f"2014 leftover {note.path}", "warn", note.note)
               for note in installer.legacy_notes(remotes)] if remotes.is_dir() else []
    return checks


def _check_install(remotes: Path) -> Check:
    try:
        manifest = installer.Manifest.load(remotes)
    except installer.InstallError as exc:
        return Check("driver", "fail", str(exc))
    if manifest is None:
        return Check("driver", "warn", f"not installed in {remotes} (eqliscsi install "
                     "--remotes DIR)")
    missing = [path for path in manifest.files if not (remotes / path).is_file()]
    if missing:
        return Check("driver", "fail", f"{len(missing)} installed files are missing in "
                     f"{remotes}, e.g. {missing[0]}: run eqliscsi install again")
    return Check("driver", "ok", f"version {manifest.version} in {remotes}, actions run "
                 f"with {manifest.python}")


def _check_conf_file(path: Optional[Path]) -> Check:
    if path is None:
        return Check("conf", "warn", "no eqliscsi.conf found: settings come from the "
                     "datastore template only")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return Check("conf", "warn", f"{path} is readable by others (mode {mode:04o}): "
                     "chmod 600 it, it holds the group password")
    return Check("conf", "ok", f"{path} (mode {mode:04o})")


def _probe(config: DriverConfig) -> Tuple[Check, Optional[PKey]]:
    """Connect and do the SSH key exchange (like ssh-keyscan): reachable?, its host key."""
    import paramiko

    address = f"{config.host}:{config.port}"
    started = time.monotonic()
    try:
        sock = socket.create_connection((config.host or "", config.port),
                                        timeout=config.connect_timeout)
    except OSError as exc:
        return Check("group reachable", "fail", f"{address}: {exc.strerror or exc} (check "
                     "EQL_HOST/EQL_PORT and the network to the group's management "
                     "address)"), None
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=config.connect_timeout)
        key = transport.get_remote_server_key()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        return Check("group reachable", "fail", f"{address} answers, but not as an SSH "
                     f"server: {exc}"), None
    finally:
        transport.close()
    elapsed = (time.monotonic() - started) * 1000
    return Check("group reachable", "ok", f"{address} answers SSH ({elapsed:.0f} ms)"), key


def _check_host_key(config: DriverConfig, key: Optional[PKey]) -> Check:
    import paramiko

    name = config.host if config.port == 22 else f"[{config.host}]:{config.port}"
    known = config.known_hosts
    keys = paramiko.HostKeys()
    try:
        keys.load(str(known))
    except FileNotFoundError:
        pass
    except (OSError, paramiko.SSHException) as exc:
        return Check("host key", "fail", f"cannot read {known}: {exc}")
    entry = keys.lookup(str(name))
    if entry and key is not None and key.get_name() in entry \
            and entry[key.get_name()] != key:
        return Check("host key", "fail", f"the group's {key.get_name()} key differs from the "
                     f"one for {name} in {known}: if the group's key really changed, remove "
                     f"the old entry (ssh-keygen -R '{name}' -f {known}) and add the new one "
                     "after checking its fingerprint")
    if entry:
        return Check("host key", "ok", f"{name} is in {known}")
    scan = f"ssh-keyscan -p {config.port} {config.host} >> {known}"
    if config.host_key_policy == "accept-new":
        return Check("host key", "warn", f"{name} not in {known} yet; accept-new stores it "
                     f"at the first login (or add it now: {scan})")
    return Check("host key", "fail", f"{name} is not in {known}; add it after checking "
                 f"the fingerprint: {scan}")


def _check_group(config: DriverConfig, settings: GroupSettings) -> List[Check]:
    checks = []
    try:
        with GroupClient(settings) as group:
            group.connect()
            group_ip = group.group_ip()
            checks.append(Check("group CLI", "ok", f"logged in to group {group.group_name} "
                                f"as {config.user}; group IP {group_ip}"))
            try:
                capacity = group.pool_capacity(config.pool)
            except Exception as exc:
                checks.append(Check("pool", "fail", f"{config.pool}: {failure_reason(exc)}"))
                return checks
    except Exception as exc:
        return [*checks, Check("group CLI", "fail", failure_reason(exc))]
    free = capacity.free_mb / capacity.total_mb if capacity.total_mb else 0.0
    detail = (f"{config.pool}: {human_size(capacity.free_mb)} free of "
              f"{human_size(capacity.total_mb)} ({free:.0%})")
    status = "fail" if capacity.free_mb <= 0 else "warn" if free < 0.1 else "ok"
    checks.append(Check("pool", status, detail))
    return checks


def _check_host(name: str, config: DriverConfig) -> Check:
    from eqliscsi.host_iscsi import Host, HostError

    try:
        result = Host(name, config).run_script("check", HOST_CHECK_SCRIPT,
                                               config.connect_timeout + 30, lock=False)
    except HostError as exc:
        return Check(f"host {name}", "fail", f"{exc} (oneadmin's ssh to the host)")
    iscsiadm = result.values("ISCSIADM")
    initiator = result.values("INITIATOR")
    sudo = result.values("SUDO") == ["yes"]
    if not iscsiadm:
        return Check(f"host {name}", "fail", "no iscsiadm (install open-iscsi)")
    if not initiator:
        return Check(f"host {name}", "fail", "no InitiatorName in "
                     "/etc/iscsi/initiatorname.iscsi")
    detail = f"iscsiadm {iscsiadm[0]}, initiator {initiator[0]}"
    if not sudo:
        return Check(f"host {name}", "fail", f"{detail}; sudo -n iscsiadm is not allowed "
                     "(install sudoers/eqliscsi)")
    return Check(f"host {name}", "ok", f"{detail}, sudo ok")


def cmd_check(args: argparse.Namespace) -> int:
    checks = run_checks(args)
    failed = [c for c in checks if c.status == "fail"]
    data = {"ok": not failed, "checks": [c.__dict__ for c in checks]}
    counts = {status: sum(1 for c in checks if c.status == status)
              for status in ("ok", "warn", "fail", "skip")}
    summary = ", ".join(f"{count} {status}" for status, count in counts.items() if count)
    text = table(["CHECK", "RESULT", "DETAIL"],
                 [[c.name, c.status.upper(), c.detail] for c in checks])
    emit(args, data, f"{text}\n\n{summary}")
    return 1 if failed else 0


# --- OpenNebula's lists ------------------------------------------------------------------

def _one_cli(argv: List[str]) -> bytes:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=ONE_CLI_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AdminError(f"{' '.join(argv)}: {exc}") from None
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise AdminError(f"{' '.join(argv)} failed (exit {done.returncode}): {detail[0]}")
    return done.stdout


def one_hosts() -> List[str]:
    """The hosts of ``onehost list -x`` that are not offline (none without the command)."""
    from eqliscsi.action_xml import parse_xml, xpath_text

    if shutil.which("onehost") is None:
        return []
    pool = parse_xml(_one_cli(["onehost", "list", "-x"]), "HOST_POOL", "onehost list -x")
    return [xpath_text(node, "NAME") for node in pool.findall("HOST")
            if xpath_text(node, "STATE") != "8"]


def _read_list(path: Optional[str], command: List[str]) -> Tuple[bytes, bool]:
    """The XML of a file, else of the command; (data, from the command)."""
    if path:
        try:
            return Path(path).read_bytes(), False
        except OSError as exc:
            raise AdminError(f"cannot read {path}: {exc}") from None
    if shutil.which(command[0]) is None:
        raise AdminError(f"{command[0]} not found: run this on the front-end as oneadmin, "
                         "or give --images-xml and --vms-xml (oneimage/onevm list -x output)")
    return _one_cli(command), True


# --- volumes and orphans -----------------------------------------------------------------

DETAIL_SESSIONS = 4  # sessions reading volume details at once (at most EQL_MAX_SESSIONS - 1)
VOLUMES_PER_SESSION = 25  # one more such session for every this many volumes to read


@dataclass
class Listing:
    """The group's volumes (``volume show``), which of them are in ``home_pool`` if known,
    and the details (``volume select X show``) read so far: of every listed volume not in
    ``members`` (``read_volumes``)."""

    pool: Optional[str]  # the pool listed, None: every pool
    home_pool: str
    members: Optional[Set[str]]  # the volumes in home_pool, None: not known
    summaries: Dict[str, VolumeSummary]
    details: Dict[str, Optional[VolumeInfo]] = field(default_factory=dict)  # None: gone

    def listed(self) -> List[str]:
        """The volumes of the listed pool, as far as known without details."""
        return [name for name in sorted(self.summaries) if self.pool is None
                or self.members is None or name in self.members]

    def needs_details(self, name: str) -> bool:
        """Whether only the volume's details tell its pool or its owner."""
        return (self.members is None or name not in self.members
                or inventory.name_owner(name) is None)

    def read(self, group: GroupClient, names: Sequence[str]) -> None:
        """Read the details of those of ``names`` not read yet."""
        self.details.update(read_details(group, sorted(
            {name for name in names if name in self.summaries} - set(self.details))))

    @property
    def rows(self) -> List[inventory.VolumeRow]:
        """The volumes of the listed pool with their owners, by name."""
        rows = []
        for name in self.listed():
            if name not in self.details:
                summary = self.summaries[name]
                rows.append(inventory.VolumeRow(
                    name, summary.size_mb, self.home_pool, summary.status,
                    summary.connections, None, inventory.name_owner(name) or inventory.Owner()))
                continue
            info = self.details[name]
            if info is not None and self.pool in (None, info.pool):
                rows.append(inventory.VolumeRow(
                    name, info.size_mb, info.pool, info.status, info.connections,
                    info.description, inventory.volume_owner(name, info.description)))
        return rows

    @property
    def owners(self) -> Dict[str, inventory.Owner]:
        """The owner of every volume of the group, by name."""
        owners = {}
        for name in self.summaries:
            info = self.details.get(name)
            if info is not None:
                owners[name] = inventory.volume_owner(name, info.description)
            elif name not in self.details:
                owners[name] = inventory.name_owner(name) or inventory.Owner()
        return owners


def read_volumes(group: GroupClient, pool: Optional[str], home_pool: str,
                 details: bool) -> Listing:
    """The volumes of ``pool`` (every pool: None) from ``volume show`` and ``pool select P
    show`` (``pool``, else ``home_pool``), with the details of those whose name does not
    tell their owner or whose pool is not known (with ``details``: of all of them)."""
    summaries = {summary.name: summary for summary in group.list_volumes()}
    members: Optional[Set[str]] = None
    try:
        members = pool_members(*group.pool_volume_names(pool or home_pool), set(summaries))
    except NotFound:  # every pool listed, EQL_POOL gone: the details tell the pools
        if pool is not None:
            raise
    listing = Listing(pool, pool or home_pool, members, summaries)
    listing.read(group, [name for name in listing.listed()
                         if details or listing.needs_details(name)])
    return listing


def pool_members(capacity: PoolCapacity, listed: List[str],
                 names: Set[str]) -> Optional[Set[str]]:
    """The volumes of ``names`` (all of the group's) in a pool, None when its ``pool select
    P show`` (``capacity``, the names in its volume table) does not tell them for sure: the
    table must name TotalVolumes volumes, all in ``names``; without a table, only a pool
    holding every volume is sure."""
    members = set(listed)
    if len(members) == len(listed) == capacity.volumes and members <= names:
        return members
    if not listed and capacity.volumes == len(names):
        return set(names)
    return None


def read_details(group: GroupClient, names: Sequence[str]) -> Dict[str, Optional[VolumeInfo]]:
    """``volume select X show`` of every name (None: deleted since it was listed), over
    ``group``'s session and more that get a free session slot at once, without waiting:
    one per ``VOLUMES_PER_SESSION`` volumes, ``DETAIL_SESSIONS`` and EQL_MAX_SESSIONS - 1
    at most (a slot stays for the driver's actions)."""
    pending = list(reversed(names))
    found: Dict[str, Optional[VolumeInfo]] = {}
    lock = threading.Lock()
    stop = threading.Event()
    progress = Progress("reading volume details", len(names))
    sessions = min(DETAIL_SESSIONS, group.settings.max_sessions - 1,
                   -(-len(names) // VOLUMES_PER_SESSION))

    def work(client: GroupClient) -> None:
        try:
            while not stop.is_set():
                with lock:
                    if not pending:
                        return
                    name = pending.pop()
                    progress.step(len(names) - len(pending), name)
                info = client.find_volume(name)
                with lock:
                    found[name] = info
        except BaseException:
            stop.set()
            raise

    def work_in_another_session() -> None:
        with GroupClient(replace(group.settings, slot_wait=0.0)) as client:
            try:
                client.connect()
            except TransportError:
                return  # no free slot or no session now: the other sessions do the work
            work(client)

    workers = ThreadPoolExecutor(max(sessions - 1, 1))
    try:
        others = [workers.submit(work_in_another_session) for _ in range(sessions - 1)]
        work(group)
        for other in others:
            other.result()
    finally:
        stop.set()
        workers.shutdown()
        progress.done()
    return found


def cmd_volumes(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    pool = None if args.all_pools else args.pool or settings.config.pool
    with GroupClient(settings.config.group_settings()) as group:
        rows = read_volumes(group, pool, settings.config.pool, args.details).rows
    headers = ["VOLUME", "SIZE", "POOL", "STATUS", "CONN", "OWNER", "FROM"]
    text = table(headers, [[r.name, human_size(r.size_mb), r.pool, r.status,
                            str(r.connections), str(r.owner), r.owner.evidence or "-"]
                           for r in rows])
    owned = sum(1 for r in rows if r.owner.kind != inventory.NONE)
    where = "all pools" if pool is None else f"pool {pool}"
    summary = f"{plural(len(rows), 'volume')} in {where}, {owned} OpenNebula's"
    emit(args, {"pool": pool, "volumes": [r.to_dict() for r in rows]},
         f"{text}\n\n{summary}" if rows else summary)
    return 0


def _vms(args: argparse.Namespace, need_disks: bool) -> List[inventory.OneVm]:
    data, from_cli = _read_list(args.vms_xml, ["onevm", "list", "-x"])
    vms = inventory.parse_vms(data)
    if not (need_disks and from_cli):
        return vms
    from eqliscsi.action_xml import parse_xml

    result = []
    for vm in vms:
        if vm.on_host and not vm.has_disks:
            node = parse_xml(_one_cli(["onevm", "show", "-x", str(vm.id)]), "VM",
                             "onevm show -x")
            vm = inventory.parse_vm_node(node)
        result.append(vm)
    return result


def host_sessions(names: Sequence[str], config: DriverConfig) -> Iterator[
        Tuple[str, Optional[List[inventory.Session]], str]]:
    """(host, its sessions or None, the error) for every host, one ssh call each."""
    from eqliscsi.host_iscsi import Host, HostError

    progress = Progress("reading host sessions", len(names))
    try:
        for index, name in enumerate(names, start=1):
            progress.step(index, name)
            try:
                result = Host(name, config).run_script(
                    "sessions", SESSIONS_SCRIPT, config.connect_timeout + 60, lock=False)
            except HostError as exc:
                yield name, None, str(exc)
                continue
            yield name, inventory.parse_sessions(name, "\n".join(result.values("SESSION"))), ""
    finally:
        progress.done()


def find_orphans(group: GroupClient, listing: Listing, images: Sequence[inventory.OneImage],
                 vms: Sequence[inventory.OneVm], sessions: Sequence[inventory.Session],
                 portals: Set[str]) -> Tuple[List[inventory.VolumeRow],
                                             List[inventory.Session]]:
    """The orphaned volumes and sessions (``inventory``), each verdict made with the
    volume's description: read now where the name told the owner."""
    def verdicts() -> Tuple[List[inventory.VolumeRow], List[inventory.Session]]:
        return (inventory.orphan_volumes(listing.rows, images, vms),
                inventory.orphan_sessions(sessions, portals, listing.owners, vms))

    volumes, orphaned = verdicts()
    listing.read(group, [row.name for row in volumes]
                 + [session.volume or "" for session in orphaned])
    return verdicts()


def cmd_orphans(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    config = settings.config
    pool = None if args.all_pools else args.pool or config.pool
    images_data, _ = _read_list(args.images_xml, ["oneimage", "list", "-x"])
    images = inventory.parse_images(images_data)
    hosts = args.host or ([] if args.vms_xml else one_hosts())
    vms = _vms(args, need_disks=bool(hosts))
    found: List[inventory.Session] = []
    unreachable: List[Dict[str, str]] = []
    for name, sessions_of_host, error in host_sessions(hosts, config):
        if sessions_of_host is None:
            unreachable.append({"host": name, "error": error})
        else:
            found += sessions_of_host
    with GroupClient(config.group_settings()) as group:
        listing = read_volumes(group, pool, config.pool, details=False)
        portals = {str(config.portal)} if config.portal else {f"{group.group_ip()}:3260"}
        volumes, sessions = find_orphans(group, listing, images, vms, found, portals)
    unrecognised = sum(1 for r in listing.rows if r.owner.kind == inventory.NONE)
    where = "all pools" if pool is None else f"pool {pool}"
    parts = [f"Volumes no image or VM owns ({where}):"]
    parts.append(table(["VOLUME", "SIZE", "OWNER", "WHY"],
                       [[r.name, human_size(r.size_mb), str(r.owner), r.why]
                        for r in volumes]) if volumes else "  none")
    if hosts:
        parts.append(f"\nHost sessions to volumes no VM uses ({', '.join(hosts)}):")
        parts.append(table(["HOST", "VOLUME", "PORTAL", "WHY"],
                           [[s.host, s.volume or s.target, s.portal, s.why]
                            for s in sessions]) if sessions else "  none")
    else:
        parts.append("\nHost sessions: not checked (no --host, no onehost command)")
    parts += [f"host {u['host']}: not checked: {u['error']}" for u in unreachable]
    parts.append(f"\n{plural(len(volumes), 'orphaned volume')}, "
                 f"{plural(len(sessions), 'orphaned session')}"
                 + (f"; {plural(unrecognised, 'volume')} not recognised as OpenNebula's "
                    "left out (eqliscsi volumes lists them)" if unrecognised else ""))
    data = {"pool": pool, "volumes": [r.to_dict() for r in volumes],
            "sessions": [s.to_dict() for s in sessions], "hosts_not_checked": unreachable,
            "unrecognised_volumes": unrecognised}
    emit(args, data, "\n".join(parts))
    return 1 if unreachable else 0


# --- install, uninstall ------------------------------------------------------------------

def cmd_install(args: argparse.Namespace) -> int:
    remotes = Path(args.remotes) if args.remotes else installer.default_remotes(os.environ)
    options = installer.InstallOptions(remotes, args.python or sys.executable, args.owner,
                                       args.dry_run)
    source = installer.SourceTree.find()
    if args.oned_conf and not Path(args.oned_conf).is_file():
        raise AdminError(f"--oned-conf {args.oned_conf}: no such file")
    print(f"{'Would install' if args.dry_run else 'Installing'} eqliscsi into {remotes} "
          f"(actions run with {options.python})")
    report = installer.install(options, source)
    installer.print_report(report, print, args.verbose)
    applied = False
    if args.oned_conf:
        result = oned_conf.apply_file(Path(args.oned_conf), args.dry_run)
        print(f"\n{args.oned_conf}:")
        for note in result.notes:
            print(f"  {note}")
        if result.backup is not None:
            print(f"  saved the previous file as {result.backup}")
        elif not result.changed:
            print("  unchanged")
        applied = True
    conf = remotes / installer.CONF_PATH
    if not conf.exists() and (remotes / installer.LEGACY_CONF_PATH).exists():
        conf = remotes / installer.LEGACY_CONF_PATH
    print("\nNext steps:\n" + oned_conf.next_steps(remotes, source.share, conf, applied))
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    remotes = Path(args.remotes) if args.remotes else installer.default_remotes(os.environ)
    report = installer.uninstall(remotes, args.dry_run)
    installer.print_report(report, print, verbose=True)
    print("The conf, backups and files edited since the install were kept. Remove eqliscsi "
          "from oned.conf only after its datastores are gone.")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from eqliscsi import demo

    return demo.main(args)


# --- argument parsing --------------------------------------------------------------------

def _settings_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--remotes", metavar="DIR", help="OpenNebula remotes tree (default: "
                        "$ONE_LOCATION/var/remotes or /var/lib/one/remotes)")
    parser.add_argument("--conf", metavar="FILE", help="eqliscsi.conf to use (default: "
                        "$EQLISCSI_CONF, else the remotes tree's)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--datastore", type=int, metavar="ID",
                        help="layer this datastore's template over the conf")
    source.add_argument("--datastore-xml", metavar="FILE",
                        help="the same from a file (onedatastore show -x ID output)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _pool_options(parser: argparse.ArgumentParser) -> None:
    pools = parser.add_mutually_exclusive_group()
    pools.add_argument("--pool", help="the pool to list (default: EQL_POOL)")
    pools.add_argument("--all-pools", action="store_true", help="every pool of the group")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eqliscsi", description="OpenNebula storage driver for Dell EqualLogic PS "
        "Series: install it, check it, find what it left behind.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub = commands.add_parser("install", help="install the driver into a remotes tree")
    sub.add_argument("--remotes", metavar="DIR", help="OpenNebula remotes tree (default: "
                     "$ONE_LOCATION/var/remotes or /var/lib/one/remotes)")
    sub.add_argument("--owner", metavar="USER", help="owner of the installed files "
                     "(default: oneadmin when run as root)")
    sub.add_argument("--python", metavar="PATH", help="interpreter of the action scripts, "
                     f"with paramiko and lxml (default: {sys.executable})")
    sub.add_argument("--oned-conf", metavar="FILE", help="also register the driver in this "
                     "oned.conf (a backup copy is kept)")
    sub.add_argument("--dry-run", action="store_true", help="show what would change")
    sub.add_argument("-v", "--verbose", action="store_true", help="list unchanged files too")
    sub.set_defaults(func=cmd_install)

    sub = commands.add_parser("uninstall", help="remove what install put there")
    sub.add_argument("--remotes", metavar="DIR", help="OpenNebula remotes tree")
    sub.add_argument("--dry-run", action="store_true", help="show what would be removed")
    sub.set_defaults(func=cmd_uninstall)

    sub = commands.add_parser("check", help="check the conf, the group, the pool and hosts")
    _settings_options(sub)
    sub.add_argument("--host", action="append", metavar="NAME",
                     help="hypervisor host to check over ssh (repeatable; default: "
                     "onehost list)")
    sub.set_defaults(func=cmd_check)

    sub = commands.add_parser("volumes", help="the pool's volumes and who owns them")
    _settings_options(sub)
    _pool_options(sub)
    sub.add_argument("--details", action="store_true", help="read every volume's "
                     "description (one command per volume), not only of those whose "
                     "name does not tell the owner")
    sub.set_defaults(func=cmd_volumes)

    sub = commands.add_parser("orphans", help="volumes and host sessions nothing uses")
    _settings_options(sub)
    _pool_options(sub)
    sub.add_argument("--images-xml", metavar="FILE", help="oneimage list -x output "
                     "(default: run it)")
    sub.add_argument("--vms-xml", metavar="FILE", help="onevm list -x output (default: run "
                     "it)")
    sub.add_argument("--host", action="append", metavar="NAME", help="host whose iSCSI "
                     "sessions to check (repeatable; default: onehost list, unless "
                     "--vms-xml is given)")
    sub.set_defaults(func=cmd_orphans)

    sub = commands.add_parser("demo", help="run the driver against the simulated group "
                              "(from a checkout)")
    sub.add_argument("--keep", action="store_true", help="keep the work directory")
    sub.add_argument("-v", "--verbose", action="store_true",
                     help="show the actions' log lines")
    sub.add_argument("--no-hosts", action="store_true", help="skip the VM lifecycle")
    sub.add_argument("--no-iscsi", action="store_true", help="skip the iSCSI data path "
                     "(what a machine without root gets)")
    sub.set_defaults(func=cmd_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``)."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (AdminError, installer.InstallError, oned_conf.OnedConfError) as exc:
        out_err(f"eqliscsi {args.command}: {exc}")
        return 1
    except (DriverError, EqlError) as exc:
        out_err(f"eqliscsi {args.command}: {failure_reason(exc)}")
        return 1
    except KeyboardInterrupt:
        out_err(f"eqliscsi {args.command}: interrupted")
        return 130
    return code


def out_err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
