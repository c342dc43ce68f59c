"""Hypervisor hosts for tests: real sshd, sudo and block devices, one mount namespace each.

``HostWorld`` starts N hosts.  Host *i* (1-based) is called ``host<i>`` and is reached at
``127.0.0.<10+i>`` (port 22, or a free port on that address when 22 is taken, e.g. by a
parallel test run) with the real OpenSSH client through a generated ``ssh_config``, as
user ``oneadmin`` with the front-end's key, like OpenNebula's front-end reaches its hosts
(``ControlMaster``/``ControlPersist`` as in OpenNebula's own ssh config, unless
``multiplex=False``).  ``bin_dir`` holds ``ssh``/``scp`` wrappers with that config, for
code that calls plain ``ssh host1``.

What is real on a host: the mount and UTS namespaces (``unshare``), OpenSSH ``sshd`` (key
authentication only, ``UsePAM no``), ``sudo`` with the project's ``sudoers/eqliscsi``
(or the files given), oneadmin's membership of ``disk`` (as OpenNebula's packages set
it), bash, the kernel's loop block devices, the open-iscsi node database (the real
``iscsiadm`` binary), and the iSCSI connections to the simulated group's tgtd (libiscsi,
with the host's own IQN and CHAP).  All hosts share the machine's network namespace, so
the group sees every host's connections coming from 127.0.0.1: access records must tell
hosts apart by initiator name (and CHAP), not by address.

What stands in for the missing kernel SCSI/iSCSI initiator: ``/usr/sbin/iscsiadm`` inside
the namespace is ``tests/hosts/iscsiadm`` (see ``tests/hosts/initiator.py``), which builds
each logged-in LUN as qemu-nbd -> nbdfuse -> loop device and creates the
``/dev/disk/by-path`` link and device permissions udev would.  Bytes written to that
device land in the group's volume.  ``IscsidStub`` answers the real binary's calls to
the absent iscsid at once (it would otherwise wait a second per new record).

Private to each host (bind mounts or tmpfs in its namespace; the machine's own files are
untouched): ``/etc/iscsi`` (own ``initiatorname.iscsi``, e.g.
``iqn.2024-01.org.example:host1``), ``/dev/disk`` (tmpfs), ``/run/lock`` (tmpfs),
``/etc/sudoers.d``, ``/etc/passwd``/``group``/``shadow`` (with ``oneadmin``, uid 9869
unless the machine already has a oneadmin), ``/etc/hosts``/``hostname`` (host name via
the UTS namespace), ``/var/lib/one`` (oneadmin's home with ``.ssh`` and ``datastores``;
``shared_datastores=True`` bind-mounts one directory as every host's
``/var/lib/one/datastores``, like an NFS-shared system datastore) and
``/run/eqlsim-iscsi`` (the stand-in's sessions and logs).  The empty mount point
directories ``/dev/disk``, ``/var/lib/one``, ``/run/eqlsim-iscsi`` and ``/run/sshd`` are
created on the machine if missing and left there.  Host names other than the hosts' own
resolve, in the ssh config, to an address nothing listens on, so a stray ``ssh`` never
leaves the machine.

Faults for tests: ``Host.set_faults`` makes the host's ``iscsiadm`` fail (login, logout,
rescan, node records) or its disks not appear, per target (see ``tests/hosts/initiator.py``);
``HostWorld.set_reachable(name, False)`` cuts a host off (ssh: "Connection refused", as
when its sshd is down) until ``set_reachable(name, True)``.

Every host's first process is ``hostinit.py`` (namespace holder, subreaper, sshd
supervisor), a direct child of the harness; it also tears its host down when the harness
dies.  ``stop()`` lets it log out every session and stop everything; whatever survives is
killed by namespace membership, loop devices left behind are detached, and
``leftovers()`` reports anything still there.
"""

from __future__ import annotations

import fcntl
import grp
import json
import os
import pwd
import secrets
import select
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tests.hosts.initiator import FAULTS, FAULTS_LOCK, check_faults

HOST_USER = "oneadmin"
ONEADMIN_ID = 9869  # OpenNebula packages' uid/gid for oneadmin
IQN_PREFIX = "iqn.2024-01.org.example"
FIRST_HOST_OCTET = 11
UNROUTED_ADDRESS = "127.255.255.254"  # nothing listens here: unknown ssh names end here
REAL_ISCSIADM = "/usr/sbin/iscsiadm"
ISCSI_RUN = "/run/eqlsim-iscsi"
HOSTS_PACKAGE = Path(__file__).resolve().parent
PROJECT_ROOT = HOSTS_PACKAGE.parent.parent
PROJECT_SUDOERS = PROJECT_ROOT / "sudoers" / "eqliscsi"  # what production hosts install
REQUIRED_TOOLS = (
    "unshare nsenter ssh ssh-keygen sudo qemu-nbd nbdfuse fusermount3 losetup blockdev "
    f"iscsi-ls iscsi-inq /usr/sbin/sshd {REAL_ISCSIADM}"
).split()
PACKAGES = "openssh-server openssh-client sudo open-iscsi libiscsi-bin qemu-utils libnbd-bin fuse3"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0
MOUNTPOINTS = ("/dev/disk", "/var/lib/one", ISCSI_RUN, "/run/sshd")


class HostWorldError(RuntimeError):
    """A host could not be started or a harness command failed."""


def missing_requirements() -> Optional[str]:
    """Why test hosts cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "test hosts need root (namespaces, mounts, loop devices)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (packages: {PACKAGES})"
    if not Path("/dev/fuse").exists() or not Path("/dev/loop-control").exists():
        return "no /dev/fuse or /dev/loop-control"
    return None


def _run(
    argv: Sequence[str],
    timeout: float = COMMAND_TIMEOUT,
    check: bool = True,
    input: Optional[str] = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout; stdin is ``input`` or nothing."""
    try:
        result = subprocess.run(
            list(argv),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise HostWorldError(f"{argv[0]} timed out after {timeout}s") from None
    if check and result.returncode != 0:
        raise HostWorldError(
            f"{' '.join(argv)} failed (rc {result.returncode}): {result.stderr.strip()}"
        )
    return result


def generate_key(path: Path, comment: str) -> Path:
    """An Ed25519 key pair without passphrase at ``path`` (and ``path.pub``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path


def port_is_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _mnt_namespace(pid: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _pids() -> List[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _identity() -> Tuple[int, int]:
    """oneadmin's uid and gid: the machine's own oneadmin, else 9869 or the next free ids."""
    try:
        entry = pwd.getpwnam(HOST_USER)
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        pass
    uid = ONEADMIN_ID
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            break
        uid += 1
    gid = ONEADMIN_ID
    while True:
        try:
            grp.getgrgid(gid)
        except KeyError:
            break
        gid += 1
    return uid, gid


@dataclass
class Host:
    """One running test host, as tests see it."""

    name: str
    address: str
    port: int
    iqn: str
    state_dir: Path
    ssh_config: Path
    proc: Optional[subprocess.Popen[str]] = field(default=None, repr=False)
    namespace: Optional[str] = field(default=None, repr=False)
    exit_status: Optional[int] = None  # of hostinit: 0 after a clean teardown
    unreachable_port: Optional[int] = None  # set: ssh goes to this closed port instead

    @property
    def pid(self) -> int:
        """The host's init process (holder of its namespaces)."""
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    @property
    def run_dir(self) -> Path:
        """The host's ``/run/eqlsim-iscsi``, seen from outside."""
        return self.state_dir / "run"

    def ssh(
        self, command: str, input: Optional[str] = None, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """``ssh -F <config> <host> <command>`` as oneadmin: (rc, stdout, stderr)."""
        return _run(
            ["ssh", "-F", str(self.ssh_config), self.name, command],
            timeout=timeout,
            check=False,
            input=input,
        )

    def root(
        self, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as root inside the host's namespaces (for checks, not for drivers)."""
        return _run(
            ["nsenter", f"--target={self.pid}", "--mount", "--uts", "--", *argv],
            timeout=timeout,
            check=False,
        )

    def path(self, inside: str) -> Path:
        """A path of the host's mount namespace, reachable from outside."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def by_path(self) -> Dict[str, str]:
        """The host's ``/dev/disk/by-path`` links: name -> target."""
        directory = self.path("/dev/disk/by-path")
        if not directory.is_dir():
            return {}
        return {link.name: os.readlink(link) for link in directory.iterdir()}

    def sessions(self) -> List[Dict[str, Any]]:
        """The stand-in's session records (sid, target, portal, devices with loop/link)."""
        directory = self.run_dir / "sessions"
        files = (
            sorted(directory.glob("*.json"), key=lambda p: int(p.stem))
            if directory.is_dir()
            else []
        )
        return [json.loads(path.read_text()) for path in files]

    def set_faults(self, entries: Sequence[Dict[str, Any]]) -> None:
        """Replace the faults the host's ``iscsiadm`` injects (entries as documented in
        ``tests/hosts/initiator.py``; validated first)."""
        check_faults(list(entries))
        with open(self.run_dir / FAULTS_LOCK.name, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            tmp = self.run_dir / f"{FAULTS.name}.new"
            tmp.write_text(json.dumps(list(entries), indent=1))
            tmp.replace(self.run_dir / FAULTS.name)

    def faults(self) -> List[Dict[str, Any]]:
        """The injected faults as they are now (``times`` counted down by use)."""
        path = self.run_dir / FAULTS.name
        return list(json.loads(path.read_text())) if path.exists() else []

    def iscsiadm_calls(self) -> List[Dict[str, Any]]:
        """Every iscsiadm call made on the host: argv, uid, sudo_user, rc, details."""
        log = self.run_dir / "iscsiadm.log"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


class HostWorld:
    """N test hosts with their ssh client configuration; ``start()`` then ``stop()``."""

    def __init__(
        self,
        base_dir: Path,
        count: int = 2,
        *,
        client_key: Optional[Path] = None,
        shared_datastores: bool = False,
        sudoers: Sequence[Path] = (PROJECT_SUDOERS,),
        multiplex: bool = True,
    ) -> None:
        if not 1 <= count <= 9:
            raise ValueError("1 to 9 hosts (127.0.0.11 ... 127.0.0.19)")
        self.base_dir = Path(base_dir)
        self.count = count
        self.shared_datastores = shared_datastores
        self.sudoers = [Path(path) for path in sudoers]
        self.multiplex = multiplex
        self._control_dir = ""  # short /tmp path: a ControlPath must fit a socket address
        self.client_key = client_key or self.base_dir / "client" / "id_ed25519"
        self.ssh_config = self.base_dir / "client" / "ssh_config"
        self.known_hosts = self.base_dir / "client" / "known_hosts"
        self.bin_dir = self.base_dir / "client" / "bin"
        self.hosts: List[Host] = []
        self._uid, self._gid = _identity()
        self._iscsid_stub = IscsidStub()

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    @property
    def names(self) -> List[str]:
        return [host.name for host in self.hosts]

    def ssh_argv(self, host: str, command: str) -> List[str]:
        """The argv a front-end runs to execute ``command`` on ``host``."""
        return ["ssh", "-F", str(self.ssh_config), host, command]

    # ---- start -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start every host; on failure stop what was started and raise HostWorldError."""
        try:
            self._iscsid_stub.start()
            self._prepare_client()
            for mountpoint in MOUNTPOINTS:  # left in place: another world may mount on them
                os.makedirs(mountpoint, mode=0o755, exist_ok=True)
            self.hosts = [self._new_host(index) for index in range(1, self.count + 1)]
            for host in self.hosts:
                self._launch(host)
            self._write_client_config()
        except BaseException:
            self.stop()
            raise

    def _prepare_client(self) -> None:
        if self.multiplex:
            self._control_dir = tempfile.mkdtemp(prefix="eqlh-")
        if not self.client_key.exists():
            generate_key(self.client_key, "eqliscsi-tests-frontend")
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        for tool in ("ssh", "scp"):
            wrapper = self.bin_dir / tool
            wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/{tool} -F "{self.ssh_config}" "$@"\n')
            wrapper.chmod(0o755)
        if self.shared_datastores:
            shared = self.base_dir / "shared-datastores"
            shared.mkdir(parents=True, exist_ok=True)
            os.chown(shared, self._uid, self._gid)
            shared.chmod(0o750)

    def _new_host(self, index: int) -> Host:
        name = f"host{index}"
        address = f"127.0.0.{FIRST_HOST_OCTET + index - 1}"
        port = 22 if port_is_free(address, 22) else free_port(address)
        state_dir = self.base_dir / name
        return Host(name, address, port, f"{IQN_PREFIX}:{name}", state_dir, self.ssh_config)

    def _write_client_config(self) -> None:
        lines = []
        known = []
        for host in self.hosts:
            kind, blob = (
                (host.state_dir / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
            )
            known.append(f"{host.name} {kind} {blob}")
            lines += [
                f"Host {host.name} {host.address}",
                f"    HostName {host.address}",
                f"    Port {host.unreachable_port or host.port}",
                f"    HostKeyAlias {host.name}",
                "",
            ]
        lines += [
            "Host *",
            f"    HostName {UNROUTED_ADDRESS}",
            f"    User {HOST_USER}",
            f"    IdentityFile {self.client_key}",
            "    IdentitiesOnly yes",
            "    IdentityAgent none",
            f"    UserKnownHostsFile {self.known_hosts}",
            "    GlobalKnownHostsFile /dev/null",
            "    StrictHostKeyChecking yes",
            "    BatchMode yes",
            "    KexAlgorithms curve25519-sha256",
            "    ConnectTimeout 5",
            "    ServerAliveInterval 5",
            "    LogLevel ERROR",
        ]
        if self.multiplex:
            lines += [
                "    ControlMaster auto",
                f"    ControlPath {self._control_dir}/%C",
                "    ControlPersist 60",
            ]
        self.ssh_config.write_text("\n".join(lines) + "\n")
        self.known_hosts.write_text("\n".join(known) + "\n")

    def _launch(self, host: Host) -> None:
        """Start the host's init; when another world took its sshd port meanwhile, retry
        on a free port."""
        for _ in range(3):
            plan = self._prepare_host(host)
            argv = [
                "unshare",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "--",
                sys.executable,
                str(HOSTS_PACKAGE / "hostinit.py"),
                str(plan),
            ]
            host.exit_status = None
            with open(host.state_dir / "hostinit.log", "ab") as log:
                host.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True
                )
            assert host.proc.stdout is not None
            ready, _, _ = select.select([host.proc.stdout], [], [], START_TIMEOUT)
            line = host.proc.stdout.readline().strip() if ready else ""
            if line != "ready":
                log_text = (host.state_dir / "hostinit.log").read_text(errors="replace").strip()
                raise HostWorldError(f"{host.name} did not start: {log_text or 'no output'}")
            host.namespace = _mnt_namespace(host.pid)
            if self._sshd_listens(host):
                return
            host.proc.send_signal(signal.SIGTERM)
            self._wait_host(host)
            host.port = free_port(host.address)
        raise HostWorldError(f"no free port for the sshd of {host.name} on {host.address}")

    def _sshd_listens(self, host: Host) -> bool:
        """True once our sshd says it listens; False when its port was taken."""
        log = host.state_dir / "sshd.log"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            text = log.read_text(errors="replace")
            if f"Server listening on {host.address} port {host.port}." in text:
                return True
            assert host.proc is not None
            if host.proc.poll() is not None or time.monotonic() > deadline:
                if "Address already in use" in text:
                    return False
                raise HostWorldError(f"sshd of {host.name} does not listen: {text.strip()}")
            time.sleep(0.01)

    def _prepare_host(self, host: Host) -> Path:
        """Write the host's private files and return its hostinit plan."""
        state = host.state_dir
        etc, iscsi, sudoers, home, run = (
            state / "etc",
            state / "etc-iscsi",
            state / "sudoers.d",
            state / "one",
            state / "run",
        )
        for directory in (etc, iscsi, sudoers, home / ".ssh", home / "datastores", run):
            directory.mkdir(parents=True, exist_ok=True)
        (iscsi / "initiatorname.iscsi").write_text(f"InitiatorName={host.iqn}\n")
        (iscsi / "iscsid.conf").write_text(self._iscsid_conf())
        (iscsi / "iscsid.conf").chmod(0o600)
        self._write_accounts(etc)
        names = "\n".join(f"{h.address}\t{h.name}" for h in self.hosts)
        (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n{names}\n")
        (etc / "hostname").write_text(f"{host.name}\n")
        for source in self.sudoers:
            rule = sudoers / source.name
            shutil.copyfile(source, rule)
            rule.chmod(0o440)
        authorized = home / ".ssh" / "authorized_keys"
        authorized.write_text(Path(f"{self.client_key}.pub").read_text())
        for path, mode in (
            (home, 0o750),
            (home / ".ssh", 0o700),
            (authorized, 0o600),
            (home / "datastores", 0o750),
        ):
            os.chown(path, self._uid, self._gid)
            path.chmod(mode)
        (run / "host.json").write_text(
            json.dumps(
                {
                    "pythonpath": str(PROJECT_ROOT),
                    "real_iscsiadm": f"{ISCSI_RUN}/iscsiadm.real",
                    "instance": f"{host.name}-{secrets.token_hex(4)}",
                }
            )
        )
        (run / "iscsiadm.real").touch()
        (run / "dev").mkdir(exist_ok=True)
        ssh = state / "ssh"
        if not (ssh / "ssh_host_ed25519_key").exists():
            generate_key(ssh / "ssh_host_ed25519_key", host.name)
        (state / "sshd.log").write_text("")  # also when relaunched on another port
        (run / "iscsiadm.log").write_text("")
        template = string.Template((HOSTS_PACKAGE / "sshd_config.in").read_text())
        (ssh / "sshd_config").write_text(
            template.substitute(
                address=host.address,
                port=host.port,
                host_key=ssh / "ssh_host_ed25519_key",
                pid_file=ssh / "sshd.pid",
                user=HOST_USER,
            )
        )
        binds = [
            (etc / "passwd", "/etc/passwd"),
            (etc / "group", "/etc/group"),
            (etc / "shadow", "/etc/shadow"),
            (etc / "hosts", "/etc/hosts"),
            (etc / "hostname", "/etc/hostname"),
            (iscsi, "/etc/iscsi"),
            (sudoers, "/etc/sudoers.d"),
            (home, "/var/lib/one"),
            (run, ISCSI_RUN),
            (Path(REAL_ISCSIADM), f"{ISCSI_RUN}/iscsiadm.real"),
            (HOSTS_PACKAGE / "iscsiadm", REAL_ISCSIADM),
        ]
        if self.shared_datastores:
            binds.append((self.base_dir / "shared-datastores", "/var/lib/one/datastores"))
        setup = [
            ["mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "eqlsim-dev-disk", "/dev/disk"],
            ["mkdir", "/dev/disk/by-path"],
            ["mount", "-t", "tmpfs", "-o", "mode=1777,size=4m", "eqlsim-lock", "/run/lock"],
            *(["mount", "--bind", str(source), target] for source, target in binds),
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                "mode=0755,size=64k",
                "eqlsim-nodes",
                f"{ISCSI_RUN}/dev",
            ],
        ]
        plan = state / "plan.json"
        plan.write_text(
            json.dumps(
                {
                    "hostname": host.name,
                    "parent": os.getpid(),
                    "setup": setup,
                    "daemon": ["/usr/sbin/sshd", "-D", "-e", "-f", str(ssh / "sshd_config")],
                    "daemon_log": str(state / "sshd.log"),
                    "teardown": [
                        {"command": [REAL_ISCSIADM, "-m", "session", "-u"], "allowed_rc": [0, 21]}
                    ],
                },
                indent=1,
            )
        )
        return plan

    def _iscsid_conf(self) -> str:
        """The machine's iscsid.conf without iscsid auto-start (no iscsid can run here)."""
        source = Path("/etc/iscsi/iscsid.conf")
        text = source.read_text() if source.exists() else ""
        kept = [line for line in text.splitlines() if not line.startswith("iscsid.startup")]
        return "\n".join([*kept, "iscsid.startup = /bin/true", ""])

    def _write_accounts(self, etc: Path) -> None:
        """passwd/group/shadow copies with oneadmin: home /var/lib/one, no password, member
        of ``disk`` as OpenNebula's packages make it (qemu opens the VMs' block devices)."""
        uid, gid = self._uid, self._gid
        for name, entry in (
            ("passwd", f"{HOST_USER}:x:{uid}:{gid}:OpenNebula:/var/lib/one:/bin/bash"),
            ("group", f"{HOST_USER}:x:{gid}:"),
            ("shadow", f"{HOST_USER}:*:19000:0:99999:7:::"),  # "*": no password, not locked
        ):
            source = Path("/etc") / name
            lines = [
                _with_member(line, HOST_USER)
                if name == "group" and line.startswith("disk:")
                else line
                for line in source.read_text().splitlines()
                if not line.startswith(f"{HOST_USER}:")
            ]
            target = etc / name
            target.write_text("\n".join([*lines, entry, ""]))
            info = source.stat()
            os.chown(target, info.st_uid, info.st_gid)
            target.chmod(info.st_mode & 0o777)

    def set_reachable(self, name: str, reachable: bool) -> None:
        """Cut host ``name`` off the front-end or reconnect it: its ssh config entry names a
        port nothing listens on (its multiplexed connection is closed first)."""
        host = self.host(name)
        if self._control_dir:
            _run(["ssh", "-F", str(self.ssh_config), "-O", "exit", name], timeout=5,
                 check=False)
        host.unreachable_port = None if reachable else free_port(host.address)
        self._write_client_config()

    # ---- stop ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Log out everything and stop every host; kill and detach whatever survives."""
        if self._control_dir:
            for host in self.hosts:
                if host.proc is not None and self.ssh_config.exists():
                    _run(
                        ["ssh", "-F", str(self.ssh_config), "-O", "exit", host.name],
                        timeout=5,
                        check=False,
                    )
            shutil.rmtree(self._control_dir, ignore_errors=True)
            self._control_dir = ""
        for host in self.hosts:  # a teardown must not meet an injected fault
            (host.run_dir / FAULTS.name).unlink(missing_ok=True)
        for host in self.hosts:  # all at once: they log out in parallel
            if host.proc is not None and host.proc.poll() is None:
                host.proc.send_signal(signal.SIGTERM)
        for host in self.hosts:
            self._wait_host(host)
        self._kill_namespace_members()
        self._detach_loops()
        self._iscsid_stub.stop()

    def _wait_host(self, host: Host) -> None:
        """Wait for the host's init to end (after one SIGTERM: it logs out and empties its
        namespace; a second signal could hit its exit); SIGKILL it after STOP_TIMEOUT."""
        if host.proc is None:
            return
        try:
            host.exit_status = host.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            host.proc.kill()
            host.exit_status = host.proc.wait(STOP_TIMEOUT)
        if host.proc.stdout is not None:
            host.proc.stdout.close()

    def _members(self) -> List[int]:
        """Live processes in the hosts' mount namespaces.  A namespace id can be reused
        once its namespace is gone, so a process counts only when its mounts are ours."""
        namespaces = {h.namespace for h in self.hosts if h.namespace}
        members = []
        for pid in _pids():
            if _mnt_namespace(pid) not in namespaces or not _alive(pid):
                continue
            try:
                if str(self.base_dir) in Path(f"/proc/{pid}/mountinfo").read_text():
                    members.append(pid)
            except OSError:
                continue
        return members

    def _kill_namespace_members(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            members = self._members()
            for pid in members:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + STOP_TIMEOUT
            while any(_alive(pid) for pid in members) and time.monotonic() < deadline:
                time.sleep(0.01)

    def _stack_files(self) -> Dict[str, str]:
        """Loop device -> backing file, for every device the hosts' sessions recorded."""
        devices: Dict[str, str] = {}
        for host in self.hosts:
            for session in host.sessions():
                for device in session["devices"]:
                    devices[device["loop"]] = f"{device['stack']}/mnt/disk"
        return devices

    def _detach_loops(self) -> None:
        for loop, backing in self._stack_files().items():
            if _loop_backing(loop) == backing:
                _run(["losetup", "--detach", loop], check=False)

    def leftovers(self) -> List[str]:
        """What the hosts left behind: processes, loop devices, mounts (empty when clean)."""
        found = []
        for host in self.hosts:
            if host.exit_status:
                log = (host.state_dir / "hostinit.log").read_text(errors="replace").strip()
                found.append(f"{host.name}: unclean teardown (rc {host.exit_status}): {log}")
        for pid in self._members():
            found.append(f"process {pid}: {Path(f'/proc/{pid}/cmdline').read_text()!r}")
        for loop, backing in self._stack_files().items():
            if _loop_backing(loop) == backing:
                found.append(f"loop device {loop} on {backing}")
        for line in Path("/proc/mounts").read_text().splitlines():
            if str(self.base_dir) in line or ISCSI_RUN in line:
                found.append(f"mount {line}")
        return found


class IscsidStub:
    """Hangs up on the real iscsiadm's requests to iscsid once each request has arrived.

    Before it creates a node or discovery record, iscsiadm asks iscsid (abstract socket
    ``@ISCSIADM_ABSTRACT_NAMESPACE``, one per network namespace) for its config file; when
    nothing listens it tries to start iscsid and sleeps a second.  The stub reads the
    request and closes, so iscsiadm reads ``/etc/iscsi/iscsid.conf`` itself at once (the
    same file).  When the name is taken (another world's stub) this one stays idle.

    iscsiadm writes its request after ``connect`` returns, and a busy machine may run it
    much later: each connection is answered by its own thread, which waits up to
    ``REQUEST_TIMEOUT`` for the request's first bytes.  Closing earlier would kill
    iscsiadm with SIGPIPE when it writes (it keeps SIGPIPE's default action), which the
    hosts' ``iscsiadm`` reported as exit code 243 (-13).
    """

    NAME = b"\0ISCSIADM_ABSTRACT_NAMESPACE"
    REQUEST_TIMEOUT = 30.0  # for the first bytes of a request after connect
    IDLE = 0.02  # then the request is complete when no byte comes for this long

    def __init__(self, name: bytes = NAME) -> None:
        self.name = name
        self._socket: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.name)
        except OSError:
            sock.close()
            return
        sock.listen(16)
        self._socket = sock
        self._thread = threading.Thread(target=self._serve, name="iscsid-stub", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._socket is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([self._socket], [], [], 0.1)
            if not ready:
                continue
            conn, _ = self._socket.accept()
            threading.Thread(
                target=self._answer, args=(conn,), name="iscsid-stub-request", daemon=True
            ).start()

    def _answer(self, conn: socket.socket) -> None:
        """Read one request (or the client's hang-up), then close."""
        with conn:
            try:
                conn.settimeout(self.REQUEST_TIMEOUT)
                if not conn.recv(65536):
                    return
                conn.settimeout(self.IDLE)
                while conn.recv(65536):
                    pass
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._socket is not None:
            self._socket.close()
        self._socket = self._thread = None


def _with_member(group_line: str, user: str) -> str:
    """An /etc/group line with ``user`` added to its members."""
    members = [m for m in group_line.split(":")[3].split(",") if m and m != user]
    return ":".join([*group_line.split(":")[:3], ",".join([*members, user])])


def _loop_backing(loop: str) -> Optional[str]:
    try:
        return Path(f"/sys/block/{os.path.basename(loop)}/loop/backing_file").read_text().strip()
    except OSError:
        return None
