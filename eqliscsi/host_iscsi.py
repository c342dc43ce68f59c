"""Host-side iSCSI: log a hypervisor host in to volumes, link them, log out, rescan.

Every action on a host is ONE ``ssh <host> bash --norc --noprofile -s`` call (OpenSSH as
the front-end's user, honouring its ssh config, with ``BatchMode=yes``, a ConnectTimeout
and an overall timeout).  The command is a bash script generated here and written to
ssh's **stdin**, never to argv.  Every value in it is validated in Python (IQN, portal,
LUN, CHAP, paths: absolute, no ``..``, no control characters; disk links must be named
``disk.<N>``) and then shell-quoted.  Commands that need root run as ``sudo -n`` (see
``sudoers/eqliscsi`` for the exact list), each under ``timeout EQL_COMMAND_TIMEOUT``.

Serialisation: ``Host`` holds ``fcntl.flock`` on ``<lock_dir>/host-<name>.lock`` around
every ssh call that changes the host (bounded wait), and the script takes ``flock`` on
``eqliscsi-host.lock`` in the first writable directory of ``HostLayout.lock_dirs`` on the
host (``/var/lock/one``, ``/run/lock``, then oneadmin's home: ``/run/lock`` is only
root-writable on RHEL-like systems), so parallel actions of one or several front-ends
never interleave logins and logouts on one host.

``attach`` (exit codes in ``EXIT_*``):

1. when ``ensure_access`` is given: compare the host's ``InitiatorName`` with the cached
   one (``EXIT_INITIATOR`` before anything changed; ``Host`` then refreshes its cache,
   calls ``ensure_access`` with the new name and retries once);
2. take the host lock; ``mkdir -p`` the ``make_dirs``;
3. per target not yet logged in (``iscsiadm -m session`` lists no session for IQN+portal):
   ``iscsiadm -m node -o new -T IQN -p IP:PORT,1 [-I EQL_IFACE]``, ``node.startup
   manual``, with CHAP ``authmethod CHAP`` and ``username`` (``-o update``) and the secret
   (see below), then ``--login`` (rc 15, "already logged in", is accepted);
4. wait (polling, at most ``EQL_WAIT_TIME`` for all targets together) until every
   ``/dev/disk/by-path/ip-<ip>:<port>-iscsi-<iqn>-lun-<lun>`` is a block device, then
   verify it: it resolves to a block device (a stale link to something else fails), a
   session for IQN+portal exists, and that device is one of the session's disks
   (``iscsiadm -m session -r SID -P 3``);
5. ``ln -sfn <by-path link> <path>`` for every link: disks are linked to the stable
   by-path name (it names the target, exists without extra udev rules, and the udev
   alias of ``udev/`` is for people; several sessions to one volume would fight over it);
6. print ``EQLISCSI-DEVICE <link index> <device>``.

Any failure rolls back what this call did: links it made are removed, targets it logged
in to are logged out, node records it created are deleted; a retry then starts clean.

``detach``: take the host lock; refuse (``EXIT_BUSY``, nothing changed) when a path to
remove is not a symlink, or when a disk of a target's session (or a partition of it) has
holders (``/sys/class/block/<dev>/holders``), is mounted (``/proc/self/mountinfo``) or is
open by a process (``sudo fuser``, when installed); then remove the links, ``blockdev
--flushbufs`` each disk, log out (rc 21, "not logged in", is accepted), delete the node
record (missing is fine) and check that the session is gone; a record that cannot be
deleted fails the detach (``EXIT_NODE``) only after every target is logged out.  A
failure puts back the links it removed whose disk is still there (a logout that failed),
so a re-run (or the VM directory's ``delete``, which logs out the disks still linked)
finds them again.

``rescan``: ``iscsiadm -m node -T IQN -p PORTAL -R`` of a logged-in target, verify the
device as in attach step 4, report ``/sys/class/block/<dev>/size`` * 512 (what
``blockdev --getsize64`` says, without root).

CHAP secrets: never in any argv, log line or exception text (``Chap`` registers the
secret with ``oned.register_secret``, so every message masks it).  On the host the script
appends ``node.session.auth.password = <secret>`` to the node record file with ``sudo
tee -a <record>`` fed by bash's builtin ``printf``, so no process's command line holds it
and sudo logs only the file name; ``iscsiadm -o update -v <secret>`` would show it in
``/proc/*/cmdline`` and in sudo's log.  iscsiadm keeps the last value of a key, rewrites
the record cleanly on its next update, and ``-o show`` (masked) verifies the secret
arrived.  The price: the driver knows open-iscsi's record layout
(``<db>/<iqn>/<ip>,<port>,<tpgt>/<iface>`` with ``<db>`` = ``/etc/iscsi/nodes`` or
``/var/lib/iscsi/nodes``, open-iscsi 2.0.870 and later), and sudoers must allow ``tee
-a`` on exactly those paths (a regular expression, sudo >= 1.9.10).  The secret still
lies in the record file (root-only), as with any open-iscsi CHAP setup.

Without CHAP the node record keeps the host's ``iscsid.conf`` defaults.  Targets use
portal group tag 1 (``NODE_TPGT``; the group IP of a PS Series group answers with it).
"""

from __future__ import annotations

import fcntl
import ipaddress
import math
import os
import posixpath
import re
import shlex
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from eqliscsi import cli_commands
from eqliscsi.config import DriverConfig
from eqliscsi.errors import InvalidValue
from eqliscsi.oned import DriverError, clean_message, register_secret

DEFAULT_LOCK_DIR = "/var/lib/one/.eqliscsi-locks"
DEFAULT_LOCK_WAIT = 300.0  # seconds to wait for the front-end's lock on one host
LOCK_POLL = 0.05
NODE_TPGT = 1
MAX_LUN = 16383
RESULT_PREFIX = "EQLISCSI-"

EXIT_LOCK = 80  # the host-side lock was not free in time
EXIT_INITIATOR = 81  # the host's initiator name differs from the expected one (no change)
EXIT_INITIATOR_READ = 82  # the initiator name could not be read
EXIT_SESSION = 83  # iscsiadm -m session failed
EXIT_NODE = 84  # creating, updating or deleting a node record failed (detach: logged out)
EXIT_LOGIN = 85  # iscsiadm --login failed
EXIT_DEVICE = 86  # the by-path device did not appear or is not the target's disk
EXIT_LINK = 87  # a directory or link could not be made or removed
EXIT_BUSY = 88  # a disk is in use (or that cannot be checked): nothing was logged out
EXIT_LOGOUT = 89  # flush or logout failed, or the session survived the logout
EXIT_RESCAN = 90  # not logged in, or iscsiadm -R failed
EXIT_SIGNAL = 91  # the script was interrupted (after rolling back)
EXIT_CODES = {
    "EXIT_LOCK": EXIT_LOCK, "EXIT_INITIATOR": EXIT_INITIATOR,
    "EXIT_INITIATOR_READ": EXIT_INITIATOR_READ, "EXIT_SESSION": EXIT_SESSION,
    "EXIT_NODE": EXIT_NODE, "EXIT_LOGIN": EXIT_LOGIN, "EXIT_DEVICE": EXIT_DEVICE,
    "EXIT_LINK": EXIT_LINK, "EXIT_BUSY": EXIT_BUSY, "EXIT_LOGOUT": EXIT_LOGOUT,
    "EXIT_RESCAN": EXIT_RESCAN, "EXIT_SIGNAL": EXIT_SIGNAL,
}
SSH_FAILED = 255  # OpenSSH's own exit status for connection and authentication errors

_DISK_FILE = re.compile(r"disk\.\d{1,6}")
_DEVICE_LINE = re.compile(r"(\d{1,6}) (/dev/\S+)")
_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}")
_IFACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


class HostError(DriverError):
    """An action on a host failed; the message names the host and the step (one line).

    ``exit_code`` is the script's (``EXIT_*``), ssh's 255, or None (timeout, lock, input).
    """

    def __init__(self, host: str, step: str, detail: str,
                 exit_code: Optional[int] = None) -> None:
        self.host = host
        self.step = step
        self.exit_code = exit_code
        super().__init__(clean_message(f"host {host}: {step}: {detail}"))


class HostBusy(HostError):
    """Detach refused: a disk is held, mounted or open; nothing was logged out."""


class InitiatorChanged(HostError):
    """The host's initiator name is not the cached one; ``initiator`` is the new name."""

    def __init__(self, host: str, step: str, detail: str, initiator: str) -> None:
        self.initiator = initiator
        super().__init__(host, step, detail, EXIT_INITIATOR)


@dataclass(frozen=True)
class Chap:
    """CHAP credentials of a volume target (the secret is registered for masking)."""

    user: str
    secret: str = field(repr=False)

    def __post_init__(self) -> None:
        register_secret(self.secret)


@dataclass(frozen=True)
class VolumeTarget:
    """One volume as a host logs in to it: target IQN, portal ``ip:port``, LUN."""

    iqn: str
    portal: str
    lun: int
    chap: Optional[Chap] = None


@dataclass(frozen=True)
class DiskLink:
    """``path`` (absolute ``<system_ds>/<vmid>/disk.N`` on the host) -> ``target``."""

    target: VolumeTarget
    path: str


@dataclass(frozen=True)
class HostLayout:
    """Where things are on a host; the defaults are the standard Linux locations."""

    by_path_dir: str = "/dev/disk/by-path"
    node_dbs: Tuple[str, ...] = ("/etc/iscsi/nodes", "/var/lib/iscsi/nodes")
    initiator_file: str = "/etc/iscsi/initiatorname.iscsi"
    lock_dirs: Tuple[str, ...] = ("/var/lock/one", "/run/lock", "~")  # "~": $HOME
    sys_block: str = "/sys/class/block"


@dataclass(frozen=True)
class ScriptResult:
    """A script that exited 0: its ``EQLISCSI-`` result lines (prefix removed)."""

    lines: Tuple[str, ...]

    def values(self, kind: str) -> List[str]:
        """The rest of every result line ``EQLISCSI-<kind> ...``."""
        return [line[len(kind) + 1:] for line in self.lines if line.startswith(kind + " ")]


@dataclass(frozen=True)
class _Target:
    """A validated target with the names derived from it."""

    iqn: str
    ip: str
    port: int
    lun: int
    chap: Optional[Chap]

    @property
    def portal(self) -> str:
        """The portal as iscsiadm and ``iscsiadm -m session`` write it."""
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


def _by_path(target: _Target, by_path_dir: str) -> str:
    return (f"{by_path_dir}/ip-{target.ip}:{target.port}-iscsi-{target.iqn}"
            f"-lun-{target.lun}")


class Host:
    """One hypervisor host, reached as the front-end's user with OpenSSH.

    ``ssh_command`` is the ssh client argv prefix (e.g. ``("ssh", "-F", config)``);
    ``lock_dir`` holds the per-host lock files and initiator-name caches (created 0700).
    """

    def __init__(self, name: str, config: DriverConfig, ssh_command: Sequence[str] = ("ssh",),
                 lock_dir: Optional[str] = None, *, lock_wait: float = DEFAULT_LOCK_WAIT,
                 layout: HostLayout = HostLayout()) -> None:
        if not _HOST_NAME.fullmatch(name):
            raise HostError(name[:64], "setup", "invalid host name")
        if not _IFACE.fullmatch(config.iface):
            raise HostError(name, "setup", f"invalid EQL_IFACE {config.iface!r}")
        self.name = name
        self.config = config
        self.ssh_command = tuple(ssh_command)
        self.lock_dir = lock_dir or DEFAULT_LOCK_DIR
        self.lock_wait = lock_wait
        self.layout = layout

    # --- public actions -----------------------------------------------------------------

    def by_path_link(self, target: VolumeTarget) -> str:
        """The udev by-path link of ``target``'s LUN on this host (what disk links name)."""
        return _by_path(_check_target(self.name, "by-path", target), self.layout.by_path_dir)

    def initiator_name(self) -> str:
        """The host's iSCSI initiator name: from the front-end cache, else one ssh call."""
        cached = self._read_cache()
        if cached is not None:
            return cached
        script = self._script("initiator", [], expected_initiator="")
        result = self.run_script("initiator", script, self._timeout(0), lock=False)
        return self._remember_initiator("initiator", result)

    def attach(self, links: Sequence[DiskLink], make_dirs: Sequence[str] = (),
               ensure_access: Optional[Callable[[str], None]] = None) -> Dict[str, str]:
        """Log in to the links' targets, link them; link path -> kernel device path.

        With ``ensure_access``, it is called with the host's (cached) initiator name before
        the ssh call (to create access records for it), and the host checks that name:
        if the host's name changed, the cache is refreshed, ``ensure_access`` is called
        with the new name and the attach runs once more.  Without it nothing is checked
        (for access by IP address or CHAP only).
        """
        if not links:
            raise HostError(self.name, "attach", "no disk links given")
        targets: List[_Target] = []
        link_targets: List[int] = []
        for link in links:
            target = _check_target(self.name, "attach", link.target)
            if target not in targets:
                targets.append(target)
            link_targets.append(targets.index(target))
        paths = [self._disk_path("attach", link.path) for link in links]
        dirs = [self._absolute_path("attach", path) for path in make_dirs]
        expected = ""
        if ensure_access is not None:
            expected = self.initiator_name()
            ensure_access(expected)
        try:
            result = self._attach(targets, paths, link_targets, dirs, expected)
        except InitiatorChanged as changed:
            if ensure_access is None:
                raise
            self._write_cache(changed.initiator)
            ensure_access(changed.initiator)
            result = self._attach(targets, paths, link_targets, dirs, changed.initiator)
        devices: Dict[str, str] = {}
        for value in result.values("DEVICE"):
            match = _DEVICE_LINE.fullmatch(value)
            if match is not None and int(match.group(1)) < len(paths):
                devices[paths[int(match.group(1))]] = match.group(2)
        if len(devices) != len(set(paths)):
            raise HostError(self.name, "attach", f"incomplete result {result.lines!r}")
        return devices

    def detach(self, targets: Sequence[VolumeTarget], remove_paths: Sequence[str] = ()) -> None:
        """Remove the links, flush and log out of the targets, delete their node records.

        Raises HostBusy, with nothing changed, when a disk is still in use.
        """
        checked: List[_Target] = []
        for target in targets:
            item = _check_target(self.name, "detach", target)
            if item not in checked:
                checked.append(item)
        paths = [self._disk_path("detach", path) for path in remove_paths]
        if not checked and not paths:
            raise HostError(self.name, "detach", "no targets or paths given")
        script = self._script("detach", checked, remove_paths=paths)
        self.run_script("detach", script, self._timeout(len(checked)))

    def rescan(self, target: VolumeTarget) -> int:
        """Rescan a logged-in target; its size in bytes as the host now sees it."""
        checked = _check_target(self.name, "rescan", target)
        script = self._script("rescan", [checked])
        result = self.run_script("rescan", script, self._timeout(1))
        sizes = result.values("SIZE")
        if len(sizes) != 1 or not sizes[0].isdigit():
            raise HostError(self.name, "rescan", f"no size in the result {result.lines!r}")
        return int(sizes[0])

    def ssh_argv(self, command: str) -> List[str]:
        """ssh running ``command`` on the host: no tty, no password prompt, the connect
        timeout (EQL_CONNECT_TIMEOUT) and the front-end's ssh config."""
        return [*self.ssh_command, "-T", "-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={max(1, math.ceil(self.config.connect_timeout))}",
                "--", self.name, command]

    def run_script(self, step: str, script: str, timeout: float, *,
                   lock: bool = True) -> ScriptResult:
        """Run ``script`` on the host (one ssh call, script on stdin, under the front-end's
        lock for this host unless ``lock`` is False); HostError unless it exits 0."""
        argv = self.ssh_argv("bash --norc --noprofile -s")
        with self._host_lock(step) if lock else _no_lock():
            try:
                done = subprocess.run(argv, input=script.encode(), capture_output=True,
                                      timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                raise HostError(self.name, step, f"no answer within {timeout:.0f}s "
                                "(ssh stopped)") from None
            except OSError as exc:
                raise HostError(self.name, step, f"cannot run {argv[0]}: {exc}") from None
        stdout = done.stdout.decode("utf-8", "replace")
        stderr = done.stderr.decode("utf-8", "replace")
        lines = tuple(line[len(RESULT_PREFIX):] for line in stdout.splitlines()
                      if line.startswith(RESULT_PREFIX))
        if done.returncode == 0:
            return ScriptResult(lines)
        raise self._failure(step, done.returncode, lines, stderr)

    # --- internals ----------------------------------------------------------------------

    def _attach(self, targets: List[_Target], paths: List[str], link_targets: List[int],
                dirs: List[str], expected: str) -> ScriptResult:
        script = self._script("attach", targets, links=list(zip(paths, link_targets)),
                              make_dirs=dirs, expected_initiator=expected)
        return self.run_script("attach", script, self._timeout(len(targets)))

    def _failure(self, step: str, code: int, lines: Tuple[str, ...], stderr: str) -> HostError:
        errors = [line[len("ERROR "):] for line in lines if line.startswith("ERROR ")]
        if errors:
            _, _, detail = errors[-1].partition(" ")
        elif code == SSH_FAILED:
            detail = f"ssh failed: {_tail(stderr) or 'no message'}"
        else:
            detail = f"the host script failed (exit {code}): {_tail(stderr) or 'no message'}"
        if code == EXIT_INITIATOR:
            found = [line[len("INITIATOR "):] for line in lines
                     if line.startswith("INITIATOR ")]
            if found:
                return InitiatorChanged(self.name, step, detail,
                                        _check_initiator(self.name, step, found[-1]))
        if code == EXIT_BUSY:
            return HostBusy(self.name, step, detail, code)
        return HostError(self.name, step, detail, code)

    def _remember_initiator(self, step: str, result: ScriptResult) -> str:
        found = result.values("INITIATOR")
        if len(found) != 1:
            raise HostError(self.name, step, f"no initiator name in {result.lines!r}")
        name = _check_initiator(self.name, step, found[0])
        self._write_cache(name)
        return name

    def _timeout(self, targets: int) -> float:
        """The overall bound of one ssh call: connect, host lock, device wait, commands."""
        config = self.config
        return (config.connect_timeout + config.command_timeout + config.wait_time
                + config.command_timeout * (2 + 2 * targets))

    def _script(self, action: str, targets: Sequence[_Target], *,
                links: Sequence[Tuple[str, int]] = (), make_dirs: Sequence[str] = (),
                remove_paths: Sequence[str] = (), expected_initiator: str = "") -> str:
        """The complete script for ``action``: settings, data, library, main call."""
        layout, config = self.layout, self.config
        settings = {
            "EXPECTED_INITIATOR": expected_initiator,
            "IFACE": config.iface,
            "TPGT": str(NODE_TPGT),
            "WAIT": str(math.ceil(config.wait_time)),
            "WAIT_TENTHS": str(math.ceil(config.wait_time * 10)),
            "CMD_TIMEOUT": str(math.ceil(config.command_timeout)),
            "LOCK_WAIT": str(math.ceil(config.command_timeout)),
            "INITIATOR_FILE": layout.initiator_file,
            "SYS_BLOCK": layout.sys_block,
        }
        settings.update({name: str(value) for name, value in EXIT_CODES.items()})
        arrays: Dict[str, Sequence[str]] = {
            "NODE_DBS": layout.node_dbs,
            "LOCK_DIRS": layout.lock_dirs,
            "T_IQN": [t.iqn for t in targets],
            "T_PORTAL": [t.portal for t in targets],
            "T_IP": [t.ip for t in targets],
            "T_PORT": [str(t.port) for t in targets],
            "T_LINK": [_by_path(t, layout.by_path_dir) for t in targets],
            "T_CHAP_USER": [t.chap.user if t.chap else "" for t in targets],
            "T_CHAP_SECRET": [t.chap.secret if t.chap else "" for t in targets],
            "L_PATH": [path for path, _ in links],
            "L_TARGET": [str(index) for _, index in links],
            "MAKE_DIRS": make_dirs,
            "R_PATH": remove_paths,
        }
        lines = ["#!/bin/bash", "# eqliscsi host script (generated)", "main() {"]
        lines += [f"{name}={shlex.quote(value)}" for name, value in settings.items()]
        lines += [f"{name}=({' '.join(shlex.quote(v) for v in values)})"
                  for name, values in arrays.items()]
        lines += [_LIBRARY, f"{action}_main", "}", "main </dev/null", ""]
        return "\n".join(lines)

    def _disk_path(self, step: str, path: str) -> str:
        normalized = self._absolute_path(step, path)
        if not _DISK_FILE.fullmatch(posixpath.basename(normalized)):
            raise HostError(self.name, step, f"not a disk.<N> path: {path!r}")
        return normalized

    def _absolute_path(self, step: str, path: str) -> str:
        if (not path.startswith("/") or any(ord(c) < 32 or ord(c) == 127 for c in path)
                or ".." in path.split("/") or len(path) > 1024):
            raise HostError(self.name, step, f"invalid path {path!r}: expected an absolute "
                            "path without '..' or control characters")
        normalized = posixpath.normpath(path)
        return "/" + normalized.lstrip("/")

    @contextmanager
    def _host_lock(self, step: str) -> Iterator[None]:
        """The front-end's exclusive lock on this host (waits at most ``lock_wait``)."""
        path = os.path.join(self._ensure_lock_dir(step), f"host-{self.name}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + self.lock_wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise HostError(self.name, step, f"another action on this host holds "
                                        f"{path} for more than {self.lock_wait:g}s") from None
                    time.sleep(LOCK_POLL)
            yield
        finally:
            os.close(fd)

    def _ensure_lock_dir(self, step: str) -> str:
        try:
            os.makedirs(self.lock_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise HostError(self.name, step, f"cannot create {self.lock_dir}: "
                            f"{exc.strerror}") from None
        return self.lock_dir

    def _cache_path(self) -> str:
        return os.path.join(self.lock_dir, f"initiator-{self.name}")

    def _read_cache(self) -> Optional[str]:
        try:
            with open(self._cache_path(), encoding="ascii") as cache:
                text = cache.read().strip()
        except (OSError, UnicodeDecodeError):
            return None
        try:
            return cli_commands.initiator_name(text)
        except InvalidValue:
            return None

    def _write_cache(self, name: str) -> None:
        self._ensure_lock_dir("initiator")
        path = self._cache_path()
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="ascii") as cache:
            cache.write(name + "\n")
        os.replace(temporary, path)


@contextmanager
def _no_lock() -> Iterator[None]:
    yield


def _tail(text: str) -> str:
    """The last non-empty lines of a command's stderr, for a one-line message."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " / ".join(lines[-3:])[-500:]


def _check_initiator(host: str, step: str, name: str) -> str:
    try:
        return cli_commands.initiator_name(name)
    except InvalidValue:
        raise HostError(host, step, f"the host reports an invalid initiator name "
                        f"{name[:240]!r}") from None


def _check_target(host: str, step: str, target: VolumeTarget) -> _Target:
    """Validate ``target`` (HostError naming what is wrong, never the secret)."""
    try:
        iqn = cli_commands.initiator_name(target.iqn)  # the same rules as for target names
    except InvalidValue:
        raise HostError(host, step, f"invalid target IQN {target.iqn!r}") from None
    ip, port = _parse_portal(host, step, target.portal)
    if isinstance(target.lun, bool) or not isinstance(target.lun, int) \
            or not 0 <= target.lun <= MAX_LUN:
        raise HostError(host, step, f"invalid LUN {target.lun!r} for {iqn}")
    if target.chap is not None:
        try:
            cli_commands.chap_user_name(target.chap.user)
            cli_commands.chap_secret(target.chap.secret)
        except InvalidValue as exc:
            raise HostError(host, step, f"CHAP for {iqn}: {exc}") from None
    return _Target(iqn, ip, port, target.lun, target.chap)


def _parse_portal(host: str, step: str, portal: str) -> Tuple[str, int]:
    """``a.b.c.d:port`` or ``[v6]:port`` -> (address without brackets, port)."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})", portal)
    problem = f"invalid portal {portal!r}: expected an IP address and port (ip:port)"
    if match is None:
        raise HostError(host, step, problem)
    address, port_text = (match.group(1), match.group(2)) if match.group(1) \
        else (match.group(3), match.group(4))
    try:
        ip = str(ipaddress.ip_address(address))
    except ValueError:
        raise HostError(host, step, problem) from None
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise HostError(host, step, problem)
    return ip, port


# The static part of every host script.  It runs inside main() (so bash has read the whole
# script before anything runs, and commands cannot eat the script from stdin); settings and
# data arrays come first.  Output: EQLISCSI-<KIND> lines on stdout; failure: one
# "EQLISCSI-ERROR <code> <message>" line and that exit code.
_LIBRARY = r"""
export LC_ALL=C
LINKS_MADE=(); LINKS_REMOVED=(); LINKS_OLD=(); LOGGED_IN=(); RECORDS_MADE=()
T_DEV=(); T_SID=(); T_DISKS=(); TMP_ERR=
trap 'die "$EXIT_SIGNAL" "interrupted by a signal"' HUP INT TERM
trap 'rollback; exit "$EXIT_SIGNAL"' PIPE

say() { printf 'EQLISCSI-%s\n' "$*"; }
flat() { printf '%s' "$*" | tr -s '\n\r\t' '   ' | cut -c 1-600; }
rc_text() {
  if [ "$RC" -eq 124 ]; then printf 'timed out after %ss' "$CMD_TIMEOUT"
  else printf 'rc %s' "$RC"; fi
}
die() {
  local code=$1; shift
  trap '' PIPE HUP INT TERM
  say "ERROR $code $(flat "$*")"
  rollback
  [ -z "$TMP_ERR" ] || rm -f -- "$TMP_ERR"
  exit "$code"
}
brief() {  # iscsiadm's own reason ("reported error (N - why)"), else all it said
  local why
  why=$(printf '%s\n' "$1" | sed -n 's/.*reported error ([0-9]* - \(.*\))[[:space:]]*$/\1/p' |
    tail -n 1)
  printf '%s' "${why:-$1}"
}
need_ok() { [ "$RC" -eq 0 ] || die "$1" "$2 failed ($(rc_text)): $(brief "$OUT")"; }
rollback() {
  trap '' PIPE HUP INT TERM
  local p i
  for p in "${LINKS_MADE[@]}"; do [ -L "$p" ] && rm -f -- "$p"; done
  for i in "${!LINKS_REMOVED[@]}"; do  # put back the links of disks still there
    p=${LINKS_REMOVED[$i]}
    [ -e "$p" ] || [ -L "$p" ] || [ ! -b "${LINKS_OLD[$i]}" ] ||
      ln -s -- "${LINKS_OLD[$i]}" "$p" 2>/dev/null
  done
  for i in "${LOGGED_IN[@]}"; do
    node_args "$i"; root iscsiadm -m node "${NODE[@]}" --logout >/dev/null 2>&1
  done
  for i in "${RECORDS_MADE[@]}"; do
    node_args "$i"; root iscsiadm -m node "${NODE[@]}" -o delete >/dev/null 2>&1
  done
  LINKS_MADE=(); LINKS_REMOVED=(); LINKS_OLD=(); LOGGED_IN=(); RECORDS_MADE=()
}
root() { timeout -k 5 "$CMD_TIMEOUT" sudo -n "$@" </dev/null 9>&-; }
run() { OUT=$(root "$@" 2>&1); RC=$?; }
node_args() {
  NODE=(-T "${T_IQN[$1]}" -p "${T_PORTAL[$1]}")
  [ "$IFACE" = default ] || NODE+=(-I "$IFACE")
}
describe() { printf '%s at %s' "${T_IQN[$1]}" "${T_PORTAL[$1]}"; }

take_lock() {
  local dir file=
  for dir in "${LOCK_DIRS[@]}"; do
    [ "$dir" = "~" ] && dir=${HOME:-}
    if [ -n "$dir" ] && [ -d "$dir" ] && [ -w "$dir" ]; then
      file=$dir/eqliscsi-host.lock
      break
    fi
  done
  [ -n "$file" ] || die "$EXIT_LOCK" "no writable directory for the lock: ${LOCK_DIRS[*]}"
  if [ -e "$file" ] && [ ! -w "$file" ]; then die "$EXIT_LOCK" "$file is not writable"; fi
  exec 9>>"$file" || die "$EXIT_LOCK" "cannot open the host lock $file"
  flock -w "$LOCK_WAIT" 9 || die "$EXIT_LOCK" "$file is still locked after ${LOCK_WAIT}s"
}

read_initiator() {
  local text
  if [ -r "$INITIATOR_FILE" ]; then
    text=$(cat -- "$INITIATOR_FILE" 2>&1) ||
      die "$EXIT_INITIATOR_READ" "cannot read $INITIATOR_FILE: $text"
  else
    run cat "$INITIATOR_FILE"
    need_ok "$EXIT_INITIATOR_READ" "sudo cat $INITIATOR_FILE"
    text=$OUT
  fi
  HOST_INITIATOR=$(printf '%s\n' "$text" |
    sed -n 's/^[[:space:]]*InitiatorName[[:space:]]*=[[:space:]]*\([^[:space:]]*\).*$/\1/p' |
    head -n 1)
  [ -n "$HOST_INITIATOR" ] ||
    die "$EXIT_INITIATOR_READ" "no InitiatorName= line in $INITIATOR_FILE"
  say "INITIATOR $HOST_INITIATOR"
}
check_initiator() {
  [ -n "$EXPECTED_INITIATOR" ] || return 0
  read_initiator
  [ "$HOST_INITIATOR" = "$EXPECTED_INITIATOR" ] || die "$EXIT_INITIATOR" \
    "the host's initiator name is $HOST_INITIATOR, not $EXPECTED_INITIATOR"
}

find_session() {
  SID=
  run iscsiadm -m session
  case $RC in
    0) SID=$(printf '%s\n' "$OUT" | awk -v p="${T_PORTAL[$1]}," -v t="${T_IQN[$1]}" '
         index($3, p) == 1 && $4 == t {
           s = $2; sub(/^\[/, "", s); sub(/\]$/, "", s); print s; exit
         }') ;;
    21) ;;
    *) need_ok "$EXIT_SESSION" "iscsiadm -m session" ;;
  esac
}
session_disks() {
  run iscsiadm -m session -r "$1" -P 3
  need_ok "$EXIT_SESSION" "iscsiadm -m session -r $1 -P 3"
  DISKS=$(printf '%s\n' "$OUT" |
    awk '$1 == "Attached" && $2 == "scsi" && $3 == "disk" { print "/dev/" $4 }' | tr '\n' ' ')
}

set_node() {
  node_args "$1"
  run iscsiadm -m node "${NODE[@]}" -o update -n "$2" -v "$3"
  need_ok "$EXIT_NODE" "setting $2 in the node record of $(describe "$1")"
}
store_secret() {
  local i=$1 db= dir record
  for dir in "${NODE_DBS[@]}"; do if [ -d "$dir" ]; then db=$dir; break; fi; done
  [ -n "$db" ] || die "$EXIT_NODE" "no open-iscsi node database: ${NODE_DBS[*]}"
  record="$db/${T_IQN[$i]}/${T_IP[$i]},${T_PORT[$i]},$TPGT/$IFACE"
  # printf is a builtin: the secret reaches tee's stdin without being on any command line.
  OUT=$(printf 'node.session.auth.password = %s\n' "${T_CHAP_SECRET[$i]}" |
    timeout -k 5 "$CMD_TIMEOUT" sudo -n tee -a "$record" 2>&1 >/dev/null 9>&-)
  RC=$?
  need_ok "$EXIT_NODE" "storing the CHAP secret in $record"
  node_args "$i"
  run iscsiadm -m node "${NODE[@]}" -o show
  if [ "$RC" -ne 0 ] ||
      ! printf '%s\n' "$OUT" | grep -qx 'node.session.auth.password = \*\{1,\}'; then
    die "$EXIT_NODE" "the CHAP secret is not in the node record of $(describe "$i") ($record)"
  fi
}
login_target() {
  local i=$1
  find_session "$i"
  [ -z "$SID" ] || return 0
  local new=(-T "${T_IQN[$i]}" -p "${T_PORTAL[$i]},$TPGT")
  [ "$IFACE" = default ] || new+=(-I "$IFACE")
  run iscsiadm -m node -o new "${new[@]}"
  need_ok "$EXIT_NODE" "creating the node record of $(describe "$i")"
  RECORDS_MADE+=("$i")
  set_node "$i" node.startup manual
  if [ -n "${T_CHAP_USER[$i]}" ]; then
    set_node "$i" node.session.auth.authmethod CHAP
    set_node "$i" node.session.auth.username "${T_CHAP_USER[$i]}"
    store_secret "$i"
  fi
  node_args "$i"
  run iscsiadm -m node "${NODE[@]}" --login
  case $RC in
    0) LOGGED_IN+=("$i") ;;
    15) ;;
    *) need_ok "$EXIT_LOGIN" "login to $(describe "$i")" ;;
  esac
}
wait_devices() {
  local polls=$WAIT_TENTHS i pending
  while :; do
    pending=0
    for i in "${!T_IQN[@]}"; do [ -b "${T_LINK[$i]}" ] || pending=1; done
    [ "$pending" -eq 0 ] && return 0
    [ "$polls" -gt 0 ] || return 0
    sleep 0.1
    polls=$((polls - 1))
  done
}
verify_target() {
  local i=$1 link=${T_LINK[$1]} dev
  if [ ! -b "$link" ]; then
    if [ -L "$link" ] || [ -e "$link" ]; then
      die "$EXIT_DEVICE" "$link is not a block device (stale: '$(readlink -- "$link")')"
    fi
    die "$EXIT_DEVICE" "$link did not appear within ${WAIT}s (login to $(describe "$i"))"
  fi
  dev=$(readlink -f -- "$link")
  find_session "$i"
  [ -n "$SID" ] || die "$EXIT_DEVICE" "$link exists but $(describe "$i") has no session"
  session_disks "$SID"
  case " $DISKS " in
    *" $dev "*) ;;
    *) die "$EXIT_DEVICE" "$link points to $dev, not to a disk of session $SID" \
         "($(describe "$i"): ${DISKS:-no disks})" ;;
  esac
  T_DEV[$i]=$dev
}
make_link() {
  local path=${L_PATH[$1]} i=${L_TARGET[$1]} out
  out=$(mkdir -p -- "${path%/*}" 2>&1) || die "$EXIT_LINK" "cannot create ${path%/*}: $out"
  [ "$(readlink -- "$path")" = "${T_LINK[$i]}" ] && return 0
  if [ -d "$path" ] && [ ! -L "$path" ]; then
    die "$EXIT_LINK" "$path is a directory, not a disk link"
  fi
  out=$(ln -sfn -- "${T_LINK[$i]}" "$path" 2>&1) ||
    die "$EXIT_LINK" "cannot link $path to ${T_LINK[$i]}: $out"
  LINKS_MADE+=("$path")
}

check_free() {
  local i=$2 name=${1##*/} part dev holders majmin pids
  for part in "$SYS_BLOCK/$name" "$SYS_BLOCK/$name/$name"*; do
    [ -r "$part/dev" ] || continue
    dev=/dev/${part##*/}
    holders=$(ls -A -- "$part/holders" 2>/dev/null | tr '\n' ' ')
    [ -z "${holders// /}" ] ||
      die "$EXIT_BUSY" "$dev ($(describe "$i")) is held by ${holders% }; not logging out"
    majmin=$(cat -- "$part/dev")
    if awk -v d="$majmin" '$3 == d { f = 1 } END { exit !f }' /proc/self/mountinfo; then
      die "$EXIT_BUSY" "$dev ($(describe "$i")) is mounted; not logging out"
    fi
    command -v fuser >/dev/null 2>&1 || continue
    [ -n "$TMP_ERR" ] || TMP_ERR=$(mktemp) || die "$EXIT_BUSY" "cannot create a temporary file"
    pids=$(timeout -k 5 "$CMD_TIMEOUT" sudo -n fuser "$dev" 2>"$TMP_ERR" </dev/null 9>&-)
    if [ -n "${pids//[[:space:]]/}" ]; then
      pids=$(echo $pids | tr ' ' ',')
      die "$EXIT_BUSY" "$dev ($(describe "$i")) is open by" \
        "$(ps -o pid=,comm= -p "$pids" 2>/dev/null || echo "pid $pids"); not logging out"
    fi
    if grep -q '^sudo:' "$TMP_ERR"; then
      die "$EXIT_BUSY" "cannot check whether $dev is in use: $(grep -m 1 '^sudo:' "$TMP_ERR")"
    fi
  done
}

initiator_main() {
  read_initiator
}
attach_main() {
  local i k dir out
  check_initiator
  take_lock
  for dir in "${MAKE_DIRS[@]}"; do
    out=$(mkdir -p -- "$dir" 2>&1) || die "$EXIT_LINK" "cannot create $dir: $out"
  done
  for i in "${!T_IQN[@]}"; do login_target "$i"; done
  wait_devices
  for i in "${!T_IQN[@]}"; do verify_target "$i"; done
  for k in "${!L_PATH[@]}"; do make_link "$k"; done
  for k in "${!L_PATH[@]}"; do say "DEVICE $k ${T_DEV[${L_TARGET[$k]}]}"; done
}
detach_main() {
  local i p d out left=()
  take_lock
  for p in "${R_PATH[@]}"; do
    if [ -e "$p" ] && [ ! -L "$p" ]; then
      die "$EXIT_LINK" "$p is not a symbolic link; not removed"
    fi
  done
  for i in "${!T_IQN[@]}"; do
    find_session "$i"
    T_SID[$i]=$SID
    T_DISKS[$i]=
    if [ -n "$SID" ]; then
      session_disks "$SID"
      T_DISKS[$i]=$DISKS
      for d in $DISKS; do check_free "$d" "$i"; done
    fi
  done
  for p in "${R_PATH[@]}"; do
    [ -L "$p" ] || continue
    LINKS_OLD+=("$(readlink -- "$p")")
    LINKS_REMOVED+=("$p")
    out=$(rm -f -- "$p" 2>&1) || die "$EXIT_LINK" "cannot remove $p: $out"
  done
  for i in "${!T_IQN[@]}"; do
    node_args "$i"
    for d in ${T_DISKS[$i]}; do
      [ -b "$d" ] || continue
      run blockdev --flushbufs "$d"
      need_ok "$EXIT_LOGOUT" "flushing $d ($(describe "$i"))"
    done
    if [ -n "${T_SID[$i]}" ]; then
      run iscsiadm -m node "${NODE[@]}" --logout
      [ "$RC" -eq 21 ] || need_ok "$EXIT_LOGOUT" "logout from $(describe "$i")"
    fi
    run iscsiadm -m node "${NODE[@]}" -o delete
    [ "$RC" -eq 0 ] || [ "$RC" -eq 21 ] ||
      left+=("$(describe "$i") ($(rc_text)): $OUT")
    find_session "$i"
    [ -z "$SID" ] ||
      die "$EXIT_LOGOUT" "still logged in to $(describe "$i") (session $SID) after logout"
  done
  [ "${#left[@]}" -eq 0 ] ||
    die "$EXIT_NODE" "logged out, but deleting the node record failed: ${left[*]}"
  [ -z "$TMP_ERR" ] || rm -f -- "$TMP_ERR"
}
rescan_main() {
  local name size
  take_lock
  find_session 0
  [ -n "$SID" ] || die "$EXIT_RESCAN" "not logged in to $(describe 0)"
  node_args 0
  run iscsiadm -m node "${NODE[@]}" --rescan
  need_ok "$EXIT_RESCAN" "rescanning $(describe 0)"
  wait_devices
  verify_target 0
  name=${T_DEV[0]##*/}
  size=$(cat -- "$SYS_BLOCK/$name/size" 2>/dev/null)
  case $size in
    ''|*[!0-9]*) die "$EXIT_RESCAN" "cannot read the size of ${T_DEV[0]} ($SYS_BLOCK/$name)" ;;
  esac
  say "SIZE $((size * 512))"
}
""".strip("\n")
