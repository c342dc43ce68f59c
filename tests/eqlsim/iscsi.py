"""Real iSCSI targets for the simulated group: one private tgtd per backend.

``TgtBackend`` keeps ``FileBackend``'s sparse files and publishes each online object as a
tgtd target on ``GROUP_IP:3260``, so initiators (qemu's libiscsi, iscsi-ls) log in for real.

How the EqualLogic model maps onto tgt (1.0.85):

* One target per object, named with the publication's IQN.  The data LUN is **1**: tgt
  reserves LUN 0 for its controller device, whereas a real array serves the volume as LUN 0.
  SCSI identity: vendor ``EQLOGIC``, product ``100E-00``, revision ``10.0``; a per-object
  ``scsi_id``/``scsi_sn`` derived from the object id (``6090a028`` + 24 hex digits).
  Thin provisioning is on (UNMAP punches holes in the file); read-only objects get
  ``readonly=1``.
* Access control.  tgt lets an initiator in when **any** bound initiator name or address
  matches, and when at least one CHAP account is bound to a target it demands CHAP from
  **every** initiator of that target.  An EqualLogic access record ANDs its criteria
  (initiator, address, CHAP user), records are ORed.  The approximation used here:

  - unrestricted: address ``ALL`` and no CHAP, like a record that matches everyone;
  - a record with an initiator name binds that name (its address, if also set, is not
    bound: binding it too would let every initiator from that address in, which is
    broader than the record; name-only is the closest superset of "name AND address");
  - a record with only an address binds the address (``*.*.*.*`` -> ``ALL``,
    ``10.1.1.*`` -> ``10.1.1.0/24``, ``10.1.*.*`` -> ``10.1.0.0/16``, ...);
  - a record with only a CHAP user binds ``ALL`` and leaves the decision to CHAP;
  - CHAP is required target-wide as soon as any record names a CHAP user, so initiators
    admitted by a non-CHAP record of the same object must then also use CHAP;
  - a record whose CHAP user has no secret in the publication (unknown or disabled user)
    can never be satisfied and is left out.

  Removing access does not end existing sessions (the array behaves the same way);
  ``unpublish`` (offline, delete) does.
* CHAP accounts are global in tgtd.  An account is created when a publication first needs
  it, re-created when its secret changes (tgt then drops its bindings, which are restored
  for every published object using it) and deleted when no publication uses it.  tgtadm
  only takes the secret on its command line; the secret is never put into exceptions.
* Resize: tgt cannot resize a LU, so the file is truncated and LUN 1 deleted and re-added
  (retrying while tgt reports it "still active", i.e. commands are in flight).  Sessions
  stay logged in, as on the array; an initiator sees the new size after a new login or a
  capacity re-read.  Commands arriving in the few milliseconds between delete and re-add
  fail with LOGICAL UNIT NOT SUPPORTED, which a real array would not do.
* tgtd answers SendTargets with an error instead of an empty list when it has no target
  at all, so a placeholder target (tid 1, no LUN, no access: visible to nobody) always exists.
* tgtd runs in the foreground as a child process with its control socket in a private
  directory (``TGT_IPC_SOCKET``), so several backends and a system tgtd never meet.  tgtd
  ignores SIGTERM: ``stop`` deletes the targets, asks tgtd to exit, and only then kills.
  A tgtd left behind by a crashed simulator on the same state directory is killed by
  ``start`` (it is recognised by its pid file and its private control socket).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

from tests.eqlsim.backend import Connection, FileBackend, Publication

ISCSI_PORT = 3260
TGTADM_TIMEOUT = 10.0
START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0
LUN_IDLE_TIMEOUT = 5.0
GROUP_IP_RANGE = (20, 250)  # 127.0.0.N candidates for pick_free_group_ip
SCSI_ID_PREFIX = "6090a028"  # EqualLogic's NAA prefix
VENDOR_PARAMS = "vendor_id=EQLOGIC,product_id=100E-00,product_rev=10.0"
REQUIRED_TOOLS = ("tgtd", "tgtadm", "setpriv")
# Without any target tgtd fails SendTargets instead of answering with an empty list, so a
# target without LUN and without access (visible to nobody) always exists as tid 1.
PLACEHOLDER_IQN = "iqn.2001-05.com.equallogic:eqlsim-placeholder-never-visible"

Acl = Tuple[str, str]  # ("address" | "name", value as tgt shows it)


class BackendUnavailable(Exception):
    """tgtd cannot run here; the message is a one-line reason."""


class TgtadmError(RuntimeError):
    """A tgtadm call failed or timed out."""

    def __init__(self, args: Sequence[str], returncode: Optional[int], stderr: str) -> None:
        self.returncode = returncode
        self.stderr = stderr
        status = "timed out" if returncode is None else f"failed (rc {returncode})"
        super().__init__(f"tgtadm {' '.join(_masked(args))} {status}: {stderr}")


def _masked(args: Sequence[str]) -> List[str]:
    """The arguments with the value after ``--password`` hidden."""
    return ["***" if i > 0 and args[i - 1] == "--password" else a for i, a in enumerate(args)]


# ---- addresses ------------------------------------------------------------------------------


def port_is_free(ip: str, port: int = ISCSI_PORT) -> bool:
    """True when ``ip:port`` can be bound now (SO_REUSEADDR, as tgtd binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


def pick_free_group_ip() -> str:
    """A loopback address 127.0.0.N whose port 3260 is free, from a random starting N."""
    first, last = GROUP_IP_RANGE
    candidates = list(range(first, last + 1))
    start = random.randrange(len(candidates))
    for i in range(len(candidates)):
        ip = f"127.0.0.{candidates[(start + i) % len(candidates)]}"
        if port_is_free(ip):
            return ip
    raise BackendUnavailable(f"no 127.0.0.N (N {first}..{last}) has port {ISCSI_PORT} free")


def acl_address(pattern: str) -> str:
    """An EqualLogic address criterion as tgt binds it: ``ALL``, a network or an address.

    ``*.*.*.*`` -> ``ALL``, ``10.1.1.*`` -> ``10.1.1.0/24``, ``10.1.*.*`` -> ``10.1.0.0/16``;
    wildcards must be whole trailing octets.  Raises ValueError otherwise.
    """
    if pattern in ("*", "*.*.*.*"):
        return "ALL"
    if "/" in pattern:
        return str(ipaddress.ip_network(pattern, strict=False))
    octets = pattern.split(".")
    if "*" not in octets:
        return str(ipaddress.ip_address(pattern))
    fixed = octets.index("*")
    if len(octets) != 4 or any(o != "*" for o in octets[fixed:]):
        raise ValueError(f"unsupported address wildcard {pattern!r}")
    network = ".".join(octets[:fixed] + ["0"] * (4 - fixed)) + f"/{8 * fixed}"
    return str(ipaddress.ip_network(network))


def _acl_kind(entry: str) -> str:
    """Whether a tgt ACL entry is an address (``ALL``, IP, network) or an initiator name."""
    if entry == "ALL":
        return "address"
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return "name"
    return "address"


def _tgt_access(publication: Publication) -> Tuple[Set[Acl], Set[str]]:
    """The ACL entries and CHAP users tgt needs for a publication (see module docstring)."""
    if publication.unrestricted:
        return {("address", "ALL")}, set()
    acls: Set[Acl] = set()
    users: Set[str] = set()
    for rule in publication.rules:
        if rule.chap_user is not None:
            if rule.chap_user not in publication.chap_secrets:
                continue
            users.add(rule.chap_user)
        if rule.initiator:
            acls.add(("name", rule.initiator))
        elif rule.ipaddress:
            acls.add(("address", acl_address(rule.ipaddress)))
        else:
            acls.add(("address", "ALL"))
    return acls, users


def scsi_id(obj_id: str) -> str:
    """The stable SCSI id of an object (its serial number is the same, upper case)."""
    return SCSI_ID_PREFIX + hashlib.sha256(obj_id.encode()).hexdigest()[:24]


# ---- tgtadm --op show -------------------------------------------------------------------------


@dataclass
class Nexus:
    """One I_T nexus (session) and its connections as ``(cid, initiator address)``."""

    sid: int
    initiator: str = ""
    connections: List[Tuple[int, str]] = field(default_factory=list)


@dataclass
class TargetInfo:
    """One target of ``tgtadm --mode target --op show``."""

    tid: int
    name: str
    nexuses: List[Nexus] = field(default_factory=list)
    luns: Dict[int, Dict[str, str]] = field(default_factory=dict)
    accounts: Set[str] = field(default_factory=set)
    acls: Set[str] = field(default_factory=set)


_TARGET = re.compile(r"Target (\d+): (\S+)$")
_SECTIONS = {
    "System information:": "system",
    "I_T nexus information:": "nexus",
    "LUN information:": "lun",
    "Account information:": "account",
    "ACL information:": "acl",
}


def parse_target_show(text: str) -> Dict[int, TargetInfo]:
    """Parse ``tgtadm --lld iscsi --mode target --op show`` into targets by tid.

    Section headers and ``Key: value`` lines are recognised by their text, not by their
    indentation; unknown lines are ignored.
    """
    targets: Dict[int, TargetInfo] = {}
    target: Optional[TargetInfo] = None
    section = ""
    lun: Dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        match = _TARGET.match(line)
        if match:
            target = TargetInfo(int(match.group(1)), match.group(2))
            targets[target.tid] = target
            section = ""
        elif target is None or not line:
            continue
        elif line in _SECTIONS:
            section = _SECTIONS[line]
        elif section == "nexus":
            _parse_nexus_line(target, line)
        elif section == "lun":
            key, _, value = line.partition(":")
            if key == "LUN":
                lun = target.luns.setdefault(int(value), {})
            else:
                lun[key] = value.strip()
        elif section == "account":
            if not line.endswith("(outgoing)"):
                target.accounts.add(line)
        elif section == "acl":
            target.acls.add(line)
    return targets


def _parse_nexus_line(target: TargetInfo, line: str) -> None:
    key, _, value = line.partition(":")
    value = value.strip()
    if key == "I_T nexus":
        target.nexuses.append(Nexus(int(value)))
    elif not target.nexuses:
        return
    elif key == "Initiator":
        target.nexuses[-1].initiator = value.split()[0] if value else ""
    elif key == "Connection":
        target.nexuses[-1].connections.append((int(value), ""))
    elif key == "IP Address" and target.nexuses[-1].connections:
        cid, _ = target.nexuses[-1].connections[-1]
        target.nexuses[-1].connections[-1] = (cid, value)


# ---- the backend ------------------------------------------------------------------------------


class TgtBackend(FileBackend):
    """Sparse files published as real iSCSI targets by a private tgtd on ``group_ip:3260``."""

    data_lun = 1

    def __init__(self, state_dir: Path, group_ip: str) -> None:
        super().__init__(state_dir)
        if not ipaddress.IPv4Address(group_ip).is_loopback:
            raise ValueError(f"group IP {group_ip} is not an IPv4 loopback address")
        self.group_ip = group_ip
        self.tgt_dir = Path(state_dir) / "tgt"  # tgtd.log, tgtd.pid
        self._control_port = int(group_ip.rsplit(".", 1)[1])
        self._run_dir: Optional[Path] = None  # holds the control socket; short /tmp path
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._lock = threading.RLock()
        self._tids: Dict[str, int] = {}
        self._publications: Dict[str, Publication] = {}
        self._accounts: Dict[str, str] = {}  # CHAP user -> secret, as created in tgtd

    @property
    def portal(self) -> str:
        return f"{self.group_ip}:{ISCSI_PORT}"

    @property
    def log_path(self) -> Path:
        return self.tgt_dir / "tgtd.log"

    @property
    def pid_path(self) -> Path:
        return self.tgt_dir / "tgtd.pid"

    @property
    def socket_path(self) -> Optional[Path]:
        """tgtd's control socket while running."""
        if self._run_dir is None:
            return None
        return self._run_dir / f"ctl.{self._control_port}"

    @property
    def pid(self) -> Optional[int]:
        return None if self._proc is None else self._proc.pid

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Run a private tgtd on the portal; raise BackendUnavailable when it cannot run."""
        with self._lock:
            if self._proc is not None:
                return
            super().start()
            if os.geteuid() != 0:
                raise BackendUnavailable("tgtd needs root")
            missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
            if missing:
                raise BackendUnavailable(f"{', '.join(missing)} not installed (package tgt)")
            self.tgt_dir.mkdir(parents=True, exist_ok=True)
            self._kill_stale_tgtd()
            if not port_is_free(self.group_ip):
                raise BackendUnavailable(f"iSCSI portal {self.portal} is busy")
            self._run_dir = Path(tempfile.mkdtemp(prefix="eqlsim-tgt-"))
            # setpriv: tgtd dies with the process that started it, so a SIGKILLed simulator or
            # test run cannot leave it behind (setpriv sets the flag and execs: same PID).
            cmd = ["setpriv", "--pdeathsig", "KILL", "tgtd", "-f", "--iscsi",
                   f"portal={self.portal}", "-C", str(self._control_port)]
            try:
                with open(self.log_path, "ab") as log:
                    self._proc = subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=self._env(),
                        start_new_session=True,
                    )
                self.pid_path.write_text(
                    json.dumps({"pid": self._proc.pid, "run_dir": str(self._run_dir)})
                )
                self._wait_ready()
                self._iscsi("target", "new", "--tid", "1", "--targetname", PLACEHOLDER_IQN)
            except BaseException:
                self._kill()
                raise

    def stop(self) -> None:
        """Delete every target, make tgtd exit (SIGKILL as a last resort), remove its files."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                try:
                    for tid in self._show():
                        self._iscsi("target", "delete", "--force", "--tid", str(tid))
                    self._tgtadm("--op", "delete", "--mode", "system")
                    proc.wait(STOP_TIMEOUT)
                except (TgtadmError, subprocess.TimeoutExpired):
                    pass
            self._kill()

    def _kill(self) -> None:
        """SIGKILL tgtd if it still runs, reap it and forget everything about it."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
            if self._recorded_pid() == proc.pid:
                self.pid_path.unlink(missing_ok=True)
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        self._proc = None
        self._run_dir = None
        self._tids.clear()
        self._publications.clear()
        self._accounts.clear()

    def _wait_ready(self) -> None:
        """Wait until tgtd answers and check it listens on the portal and nowhere else."""
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise BackendUnavailable(
                    f"tgtd exited with {self._proc.returncode}: {self._log_tail()}"
                )
            try:
                self._tgtadm("--mode", "sys", "--op", "show", timeout=1.0)
                break
            except TgtadmError as exc:
                if time.monotonic() > deadline:
                    raise BackendUnavailable(
                        f"tgtd not ready after {START_TIMEOUT}s: {exc}"
                    ) from exc
            time.sleep(0.01)
        shown = self._iscsi("portal", "show")
        portals = re.findall(r"^Portal: (\S+),\d+$", shown, flags=re.MULTILINE)
        if portals != [self.portal]:
            # tgtd falls back to [::]:3260 when the portal cannot be bound: never keep that.
            raise BackendUnavailable(
                f"tgtd listens on {', '.join(portals) or 'nothing'} instead of {self.portal}"
            )

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        return " | ".join(lines[-3:])

    def _recorded_pid(self) -> Optional[int]:
        try:
            return int(json.loads(self.pid_path.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _kill_stale_tgtd(self) -> None:
        """Kill a tgtd that an earlier, crashed run on this state directory left behind."""
        try:
            record = json.loads(self.pid_path.read_text())
            pid, run_dir = int(record["pid"]), str(record["run_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        if _is_our_tgtd(pid, run_dir):
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + STOP_TIMEOUT
            while _process_running(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
        shutil.rmtree(run_dir, ignore_errors=True)
        self.pid_path.unlink(missing_ok=True)

    # ---- tgtadm -------------------------------------------------------------------------------

    def _env(self) -> Dict[str, str]:
        assert self._run_dir is not None
        return dict(os.environ, TGT_IPC_SOCKET=str(self._run_dir / "ctl"))

    def _tgtadm(self, *args: str, timeout: float = TGTADM_TIMEOUT) -> str:
        """Run tgtadm against this backend's tgtd; return stdout or raise TgtadmError."""
        cmd = ["tgtadm", "-C", str(self._control_port), *args]
        try:
            result = subprocess.run(
                cmd,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise TgtadmError(args, None, f"no answer within {timeout}s") from None
        if result.returncode != 0:
            raise TgtadmError(args, result.returncode, result.stderr.strip())
        return result.stdout

    def _iscsi(self, mode: str, op: str, *args: str) -> str:
        """``tgtadm --lld iscsi --mode MODE --op OP ARGS...``"""
        return self._tgtadm("--lld", "iscsi", "--mode", mode, "--op", op, *args)

    def _target_op(self, op: str, tid: int, *args: str) -> None:
        self._iscsi("target", op, "--tid", str(tid), *args)

    def _show(self) -> Dict[int, TargetInfo]:
        return parse_target_show(self._iscsi("target", "show"))

    # ---- data operations that touch published LUNs -------------------------------------------

    def copy(self, src_id: str, dst_id: str) -> None:
        """Copy like FileBackend; a published destination is re-opened on the new file."""
        with self._lock:
            super().copy(src_id, dst_id)
            if dst_id in self._tids:
                self._reload_lun(dst_id)

    def resize(self, obj_id: str, size_bytes: int) -> None:
        """Truncate the file; a published LUN is re-added so new logins see the new size."""
        with self._lock:
            super().resize(obj_id, size_bytes)
            if obj_id in self._tids:
                self._reload_lun(obj_id)

    # ---- publication --------------------------------------------------------------------------

    def publish(self, obj_id: str, publication: Publication) -> None:
        """Make tgtd show the object exactly as ``publication`` says (idempotent)."""
        acls, users = _tgt_access(publication)  # validates before changing anything
        with self._lock:
            if self._proc is None:
                raise RuntimeError("tgtd is not running: call start() first")
            self._backing_path(obj_id)
            for user in sorted(users):
                self._ensure_account(user, publication.chap_secrets[user], obj_id)
            targets = self._show()
            target = self._target_for(obj_id, publication.iqn, targets)
            self._sync_lun(obj_id, target, publication.read_only)
            for user in sorted(users - target.accounts):
                self._account_op("bind", user, target.tid)
            for user in sorted(target.accounts - users):
                self._account_op("unbind", user, target.tid)
            current = {(_acl_kind(entry), entry) for entry in target.acls}
            for kind, value in sorted(acls - current):
                self._target_op("bind", target.tid, f"--initiator-{kind}", value)
            for kind, value in sorted(current - acls):
                self._target_op("unbind", target.tid, f"--initiator-{kind}", value)
            self._publications[obj_id] = publication
            self._prune_accounts()

    def unpublish(self, obj_id: str) -> None:
        """Unbind all access, drop the sessions, delete the target (idempotent)."""
        with self._lock:
            tid = self._tids.pop(obj_id, None)
            self._publications.pop(obj_id, None)
            if tid is None or self._proc is None:
                return
            target = self._show().get(tid)
            if target is not None:
                self._remove_target(target)
            self._prune_accounts()

    def connections(self, obj_id: str) -> List[Connection]:
        """One entry per iSCSI connection to the object's target."""
        with self._lock:
            tid = self._tids.get(obj_id)
            if tid is None or self._proc is None:
                return []
            target = self._show().get(tid)
            if target is None:
                return []
            return [
                Connection(nexus.initiator, address)
                for nexus in target.nexuses
                for _, address in nexus.connections
            ]

    def _target_for(self, obj_id: str, iqn: str, targets: Dict[int, TargetInfo]) -> TargetInfo:
        """The object's target, created (or re-created under a new IQN) when needed."""
        tid = self._tids.get(obj_id)
        target = targets.get(tid) if tid is not None else None
        if target is not None and target.name == iqn:
            return target
        if target is not None:
            self._remove_target(target)
            del targets[target.tid]
        self._tids.pop(obj_id, None)
        used = set(targets) | set(self._tids.values())
        tid = next(n for n in range(1, len(used) + 2) if n not in used)
        self._iscsi("target", "new", "--tid", str(tid), "--targetname", iqn)
        self._tids[obj_id] = tid
        return TargetInfo(tid, iqn)

    def _remove_target(self, target: TargetInfo) -> None:
        """Unbind first (so initiators cannot log back in), close connections, delete."""
        for entry in sorted(target.acls):
            self._target_op("unbind", target.tid, f"--initiator-{_acl_kind(entry)}", entry)
        for user in sorted(target.accounts):
            self._account_op("unbind", user, target.tid)
        for nexus in target.nexuses:
            for cid, _ in nexus.connections:
                ids = ("--tid", str(target.tid), "--sid", str(nexus.sid), "--cid", str(cid))
                try:
                    self._iscsi("conn", "delete", *ids)
                except TgtadmError as exc:
                    if "can't find" not in exc.stderr:  # already gone: fine
                        raise
        self._target_op("delete", target.tid, "--force")

    def _sync_lun(self, obj_id: str, target: TargetInfo, read_only: bool) -> None:
        lun = target.luns.get(self.data_lun)
        path = self._backing_path(obj_id)
        if lun is None:
            self._add_lun(obj_id, target.tid, read_only)
        elif lun.get("Backing store path") != path:
            self._replace_lun(obj_id, target.tid, read_only)
        elif (lun.get("Readonly") == "Yes") != read_only:
            self._lun_op("update", target.tid, "--params", f"readonly={int(read_only)}")

    def _backing_path(self, obj_id: str) -> str:
        path = os.path.abspath(self.path(obj_id))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no data file for object {obj_id}: {path}")
        return path

    def _lun_op(self, op: str, tid: int, *args: str) -> None:
        self._iscsi("logicalunit", op, "--tid", str(tid), "--lun", str(self.data_lun), *args)

    def _add_lun(self, obj_id: str, tid: int, read_only: bool) -> None:
        self._lun_op("new", tid, "--backing-store", self._backing_path(obj_id), "--bstype", "rdwr")
        ident = scsi_id(obj_id)
        params = (
            f"{VENDOR_PARAMS},scsi_id={ident},scsi_sn={ident.upper()},"
            f"thin_provisioning=1,readonly={int(read_only)}"
        )
        self._lun_op("update", tid, "--params", params)

    def _replace_lun(self, obj_id: str, tid: int, read_only: bool) -> None:
        """Delete LUN 1 once no command is in flight and add it again on the object's file."""
        deadline = time.monotonic() + LUN_IDLE_TIMEOUT
        while True:
            try:
                self._lun_op("delete", tid)
                break
            except TgtadmError as exc:
                if "can't find" in exc.stderr:
                    break
                if "still active" not in exc.stderr or time.monotonic() > deadline:
                    raise
            time.sleep(0.002)
        self._add_lun(obj_id, tid, read_only)

    def _reload_lun(self, obj_id: str) -> None:
        publication = self._publications.get(obj_id)
        read_only = publication.read_only if publication is not None else False
        self._replace_lun(obj_id, self._tids[obj_id], read_only)

    # ---- CHAP accounts ------------------------------------------------------------------------

    def _account_op(self, op: str, user: str, tid: Optional[int] = None) -> None:
        tid_args = () if tid is None else ("--tid", str(tid))
        self._iscsi("account", op, "--user", user, *tid_args)

    def _ensure_account(self, user: str, secret: str, publishing: str) -> None:
        """Create the account, or re-create it with a new secret and restore its bindings."""
        known = self._accounts.get(user)
        if known == secret:
            return
        if known is not None:
            self._account_op("delete", user)  # also unbinds it from every target
            del self._accounts[user]
        self._iscsi("account", "new", "--user", user, "--password", secret)
        self._accounts[user] = secret
        if known is None:
            return
        for obj_id, publication in self._publications.items():
            if obj_id != publishing and user in _tgt_access(publication)[1]:
                self._account_op("bind", user, self._tids[obj_id])

    def _prune_accounts(self) -> None:
        """Delete accounts no published object uses any more."""
        in_use: Set[str] = set()
        for publication in self._publications.values():
            in_use |= _tgt_access(publication)[1]
        for user in sorted(set(self._accounts) - in_use):
            self._account_op("delete", user)
            del self._accounts[user]


def _process_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_our_tgtd(pid: int, run_dir: str) -> bool:
    """True when ``pid`` is a running tgtd whose control socket lives in ``run_dir``."""
    if not _process_running(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    wanted = f"TGT_IPC_SOCKET={run_dir}/ctl".encode()
    return os.path.basename(argv[0]) == b"tgtd" and wanted in environ
