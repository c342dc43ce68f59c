"""``iscsiadm`` on the test hosts: the real tool's interface over a userspace initiator.

This machine's kernel has no SCSI subsystem, so open-iscsi's kernel initiator can never log
in.  Inside each test host's mount namespace, ``/usr/sbin/iscsiadm`` is this stand-in (run
as root through ``sudo``, exactly as a driver calls the real tool).  It keeps the real
tool's command line, output and exit codes for the subset below and does the work with
real components:

* **node database**: the REAL open-iscsi ``iscsiadm`` binary (reachable as
  ``/run/eqlsim-iscsi/iscsiadm.real``) on the host's private ``/etc/iscsi``; its
  database modes work without iscsid.  Its complaints about the missing iscsid are
  dropped from stderr (a real host runs iscsid; see ``IscsidStub`` in ``world.py``).
* **SendTargets discovery**: libiscsi's ``iscsi-ls`` with the host's initiator name and
  the discovery record's CHAP settings; the results become node records through the real
  binary (``-o new``), so records look "static" in ``-S`` output instead of
  ``send_targets``.  Which records came from which discovery portal is kept in
  ``/etc/iscsi/eqlsim-send_targets.json`` (for ``-o delete``).
* **login**: a real iSCSI login (libiscsi, the host's IQN, CHAP from the node record)
  that stays open: ``qemu-nbd`` (with ``--image-opts driver=iscsi``; the CHAP secret goes
  through a 0600 file, never argv) serves each disk LUN, ``nbdfuse`` turns it into a file,
  and ``losetup --direct-io=on`` makes a real kernel block device ``/dev/loopN`` of it,
  which the host sees as root:disk 0660 (udev's block device permissions; its own device
  node bind-mounted over the shared one, which stays root-only).
  LUNs are found by INQUIRY (``iscsi-inq``) of LUN 0, 1, ... up to the first unsupported
  one (at most 8): every DIRECT_ACCESS LUN gets a device, as sd does; other LUNs (tgt's
  LUN 0 controller) are listed in ``-P 3`` without a disk, as the kernel shows them.
  **This stand-in creates the udev link** ``/dev/disk/by-path/ip-<ip>:<port>-iscsi-<iqn>-lun-<N>
  -> ../../loopN`` itself (a systemd-udevd per namespace would receive every host's loop
  events, so each host would link every other host's devices).
  The group sees one iSCSI connection per disk LUN (qemu-nbd's) for the whole session,
  plus short INQUIRY logins while logging in; its source address is 127.0.0.1 for every
  host (they share the network namespace), so access is decided by IQN and CHAP.
* **sessions** are recorded in ``/run/eqlsim-iscsi/sessions/<sid>.json`` (session ids
  count from 1 per host; the SCSI host number shown is the session id); ``--logout``
  flushes (``blockdev --flushbufs``), removes the link, detaches the loop device, unmounts
  the FUSE file and stops qemu-nbd.  The daemons are re-parented to the host's init
  (``hostinit.py``), which reaps them.
* **rescan** starts a new qemu-nbd/nbdfuse pair; when the size changed, the loop device is
  re-attached (same ``/dev/loopN`` when possible) to the new file.  A process holding the
  device open across a resize keeps the old, stopped stack (I/O errors), unlike sd.

Implemented subset (what a host-side driver calls; see the 2014 add-on's commands in
``tests/test_hosts.py``):

* ``-m discovery -t st|sendtargets -p IP[:PORT] [-I IFACE]... [-o new|delete|update|
  nonpersistent]... [-l]`` (no ``-o``: new+delete+update, as the real tool; CHAP from
  ``iscsid.conf`` defaults, the discovery record is written unless nonpersistent);
  ``-m discoverydb -t st -p ... --discover [...]`` (CHAP from the discovery record).
  Other discovery/discoverydb operations go to the real binary.
* ``-m node`` listing, ``-o new|update|show|delete`` with ``-n NAME -v VALUE`` and ``-S``:
  real binary; ``-o delete`` is refused (rc 15) while a session uses the record.
* ``-m node [-T IQN] [-p IP[:PORT][,TPGT]] [-I IFACE] -l|--login``, ``-u|--logout``,
  ``-R|--rescan``.
* ``-m session [-P 0|1|2|3]``, ``-m session -r SID [-P N|-u|-R]``, ``-m session -u``,
  ``-m session -R``.  ``-P 2/3`` print timeouts and CHAP user from the node record and
  no negotiated parameters (unknown here); ``-r SID`` without ``-P`` shows the node
  record, as the real tool does.  Listing works without root, like reading sysfs.
* ``-m iface``, ``-V``, ``-h``: real binary.  Not implemented: ``--loginall``,
  ``--logoutall``, ``-s`` (stats), ``-m host``, ``-m fw``, iSNS, mutual (target) CHAP.

Exit codes (open-iscsi ``include/iscsi_err.h``, semantics from ``usr/iscsiadm.c``,
``usr/session_mgmt.c``, ``usr/initiator.c``, ``usr/discovery.c`` of 2.1.8):

* 0 success; 7 ISCSI_ERR_INVAL (bad arguments, unreadable iface); 27
  ISCSI_ERR_OP_NOT_SUPP for what the stand-in does not implement;
* 15 ISCSI_ERR_SESS_EXISTS: login while logged in ("1 session requested, but 1 already
  present."), or deleting a record in use;
* 21 ISCSI_ERR_NO_OBJS_FOUND: "No records found", "No matching sessions found" (logout
  when not logged in), "No session found." (rescan), "No active sessions.", "No portals
  found" (discovery saw no target);
* 24 ISCSI_ERR_LOGIN_AUTH_FAILED: the target answered login status 02/01 or 02/02 (CHAP
  failure, forbidden), in login and discovery;
* 19 ISCSI_ERR_FATAL_LOGIN: any other initiator-error status, e.g. 02/03 "target not
  found", which is what tgt (and an EqualLogic) answers an initiator without access;
* 5 ISCSI_ERR_LOGIN: target-error status (class 3), or the stack could not be built;
* 8 ISCSI_ERR_TRANS_TIMEOUT: login could not connect (the real tool retries until the
  connection timer expires; this one does not wait); 4 ISCSI_ERR_TRANS: discovery could
  not connect;
* 22 ISCSI_ERR_SYSFS_LOOKUP: ``-r SID`` of an unknown session, a failed rescan;
* 13 ISCSI_ERR_ACCESS: session operations without root ("daemon access denied");
* 9 ISCSI_ERR_INTERNAL: the stand-in itself failed (traceback in the call log), or the
  real binary was killed by a signal (named in the call log).

Every call is appended to ``/run/eqlsim-iscsi/iscsiadm.log`` (argv, caller, rc, and the
libiscsi/qemu details a real host would find in iscsid's syslog).  Every tool runs with a
timeout, and a login that fails half-way tears down what it started.

Injected faults (set by tests with ``Host.set_faults`` of ``world.py``):
``/run/eqlsim-iscsi/faults.json`` holds a JSON list of entries ``{"op": OP, "target":
"<regex searched in the target IQN>" (optional: any target), "rc": N (optional), "times":
N (default 1; -1 forever; counted down in the file)}``; the first entry of the op that
matches the target is used.  OP is one of:

* ``login``: the login fails like a rejected one (rc 24 by default; 8 timeout, 19 fatal
  login, 5 ...), nothing is set up;
* ``logout``: the logout fails (rc 10 ISCSI_ERR_LOGOUT by default, e.g. 28 busy): "Could
  not logout of [sid: ...]", and the session, its devices and links stay;
* ``rescan``: ``-R`` fails (rc 22 by default), nothing changes;
* ``node-new``, ``node-delete``: ``-m node -o new|delete`` fails (rc 6 ISCSI_ERR_IDBM by
  default) without touching the database;
* ``no-device``: the login succeeds but no disk appears (no loop device, no by-path link;
  ``-P 3`` lists the LUNs without "Attached scsi disk"), as when sd never attaches;
* ``no-link``: the login succeeds and the disk appears, but udev makes no by-path link.

Each fault used is noted in the call log.
"""

from __future__ import annotations

import dataclasses
import fcntl
import getopt
import grp
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

RUN_DIR = Path("/run/eqlsim-iscsi")
CONFIG = RUN_DIR / "host.json"
SESSION_DIR = RUN_DIR / "sessions"
LOG = RUN_DIR / "iscsiadm.log"
LOCK = RUN_DIR / "lock"
ISCSI_DIR = Path("/etc/iscsi")
IFACE_DIR = ISCSI_DIR / "ifaces"
INITIATOR_FILE = ISCSI_DIR / "initiatorname.iscsi"
ISCSID_CONF = ISCSI_DIR / "iscsid.conf"
DISCOVERED = ISCSI_DIR / "eqlsim-send_targets.json"
BY_PATH = Path("/dev/disk/by-path")
DEVICE_NODES = RUN_DIR / "dev"  # a tmpfs of the host's own device nodes

VERSION = "2.1.8"
TRANSPORT_CLASS_VERSION = "2.0-870"
ISCSI_PORT = 3260
MAX_LUNS = 8
TOOL_TIMEOUT = 20.0
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 2.0  # qemu-nbd ignores SIGTERM while libiscsi reconnects to a vanished target
LOCK_TIMEOUT = 60.0
UNKNOWN = "<empty>"

OK = 0
ERR_TRANS = 4
ERR_LOGIN = 5
ERR_IDBM = 6
ERR_INVAL = 7
ERR_TRANS_TIMEOUT = 8
ERR_INTERNAL = 9
ERR_LOGOUT = 10
ERR_ACCESS = 13
ERR_SESS_EXISTS = 15
ERR_FATAL_LOGIN = 19
ERR_NO_OBJS_FOUND = 21
ERR_SYSFS_LOOKUP = 22
ERR_LOGIN_AUTH_FAILED = 24
ERR_OP_NOT_SUPP = 27
ERR_BUSY = 28
ERROR_TEXT = {
    ERR_TRANS: "encountered connection failure",
    ERR_LOGIN: "encountered iSCSI login failure",
    ERR_IDBM: "encountered iSCSI database failure",
    ERR_INVAL: "invalid parameter",
    ERR_TRANS_TIMEOUT: "connection timed out",
    ERR_LOGOUT: "encountered iSCSI logout failure",
    ERR_ACCESS: "daemon access denied",
    ERR_SESS_EXISTS: "session exists",
    ERR_FATAL_LOGIN: "encountered non-retryable iSCSI login failure",
    ERR_NO_OBJS_FOUND: "no objects found",
    ERR_SYSFS_LOOKUP: "sysfs lookup failure",
    ERR_LOGIN_AUTH_FAILED: "iSCSI login failed due to authorization failure",
    ERR_OP_NOT_SUPP: "operation not supported",
    ERR_BUSY: "device or resource in use",
}
FAULTS = RUN_DIR / "faults.json"
FAULTS_LOCK = RUN_DIR / "faults.lock"
FAULT_OPS = {  # op -> default exit code
    "login": ERR_LOGIN_AUTH_FAILED,
    "logout": ERR_LOGOUT,
    "rescan": ERR_SYSFS_LOOKUP,
    "node-new": ERR_IDBM,
    "node-delete": ERR_IDBM,
    "no-device": OK,
    "no-link": OK,
}

SHORT_OPTIONS = "RlDVhm:a:b:c:C:p:P:T:H:i:I:U:k:L:d:r:n:v:o:sSt:ux:A:W"
# long option -> short option (":" takes an argument), as iscsiadm.c's long_options
LONG_OPTIONS = dict(
    item.split("/")
    for item in (
        "mode/m: portal/p: targetname/T: interface/I: op/o: type/t: name/n: value/v: host/H: "
        "sid/r: rescan/R print/P: discover/D login/l loginall/L: logout/u logoutall/U: stats/s "
        "killiscsid/k: debug/d: show/S version/V help/h submode/C: ip/a: packetsize/b: "
        "count/c: interval/i: index/x: portal_type/A: no_wait/W"
    ).split()
)
SWITCHES = {"-l": "login", "-u": "logout", "-R": "rescan", "-D": "discover"}
UNSUPPORTED = ("-L", "-U", "-s", "-k", "-H", "-C")
OPS = ("new", "delete", "update", "show", "nonpersistent")
DAEMON_NOISE = re.compile(
    r"can not connect to iSCSI daemon|iscsid is not running|"
    r"can't open iscsid\.startup configuration file|daemon died\?"
)
LIBISCSI_STATUS = re.compile(r"Status: [^()]*\((\d+)\)")  # login status, class << 8 | detail


# ---- output and errors -------------------------------------------------------------------


def info(message: str) -> None:
    print(message, flush=True)


def error(message: str) -> None:
    print(f"iscsiadm: {message}", file=sys.stderr, flush=True)


class Failure(Exception):
    """A failed step: its exit code and, for the log, what the tools said."""

    def __init__(self, rc: int, detail: str = "") -> None:
        super().__init__(detail or ERROR_TEXT.get(rc, "error"))
        self.rc = rc
        self.detail = detail


_details: List[str] = []


def note(detail: str) -> None:
    """Keep a detail for the call log (where a real host's iscsid would syslog it)."""
    _details.append(detail)


# ---- injected faults -----------------------------------------------------------------------


def check_faults(entries: object) -> List[Dict[str, object]]:
    """The fault entries, validated (ValueError naming the bad entry)."""
    if not isinstance(entries, list):
        raise ValueError("faults: expected a list of entries")
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) - {"op", "target", "rc", "times"}:
            raise ValueError(f"bad fault {entry!r}: keys are op, target, rc, times")
        if entry.get("op") not in FAULT_OPS:
            raise ValueError(f"bad fault {entry!r}: op is one of {sorted(FAULT_OPS)}")
        if entry.get("rc", ERR_LOGIN) not in ERROR_TEXT or not isinstance(
                entry.get("times", 1), int):
            raise ValueError(f"bad fault {entry!r}: rc must be an iscsiadm error code, "
                             "times a number")
        re.compile(str(entry.get("target", "")))
    return entries


def take_fault(op: str, target: str) -> Optional[int]:
    """The exit code of the fault injected for ``op`` on ``target``, using up one of its
    ``times``; None when there is none."""
    if not FAULTS.exists():
        return None
    with open(FAULTS_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = check_faults(json.loads(FAULTS.read_text() or "[]"))
        for entry in entries:
            times = int(str(entry.get("times", 1)))
            if entry["op"] != op or times == 0 or not re.search(
                    str(entry.get("target", "")), target):
                continue
            if times > 0:
                entry["times"] = times - 1
                tmp = FAULTS.with_suffix(".tmp")
                tmp.write_text(json.dumps(entries, indent=1))
                tmp.replace(FAULTS)
            note(f"injected fault: {op} of {target}")
            return int(str(entry.get("rc", FAULT_OPS[op])))
    return None


# ---- arguments ---------------------------------------------------------------------------


@dataclass
class Request:
    """What a command line asks for (empty fields: not given)."""

    mode: str = ""
    type: str = ""
    ip: str = ""
    port: int = -1
    target: str = ""
    ifaces: List[str] = field(default_factory=list)
    ops: Set[str] = field(default_factory=set)
    sid: int = -1
    print_level: int = -1
    login: bool = False
    logout: bool = False
    rescan: bool = False
    discover: bool = False
    unsupported: List[str] = field(default_factory=list)


def parse(argv: Sequence[str]) -> Request:
    """The request an argument list makes (the real tool's getopt_long rules); ``-n``,
    ``-v`` and ``-S`` only matter to the real binary, which gets the same arguments."""
    long_options = [
        f"{name}=" if short.endswith(":") else name for name, short in LONG_OPTIONS.items()
    ]
    try:
        options, _ = getopt.gnu_getopt(list(argv), SHORT_OPTIONS, long_options)
    except getopt.GetoptError as exc:
        error(str(exc))
        raise Failure(ERR_INVAL) from None
    req = Request()
    for option, arg in options:
        flag = f"-{LONG_OPTIONS[option[2:]][0]}" if option.startswith("--") else option
        if flag == "-m":
            req.mode = arg
        elif flag == "-t":
            req.type = {"st": "sendtargets"}.get(arg, arg)
        elif flag == "-p":
            req.ip, req.port, _ = parse_portal(arg)
        elif flag == "-T":
            req.target = arg
        elif flag == "-I":
            req.ifaces.append(arg)
        elif flag == "-o":
            if arg not in OPS:
                error(f"can not recognize operation: '{arg}'")
                raise Failure(ERR_INVAL)
            req.ops.add(arg)
        elif flag == "-r":
            if not arg.isdigit():
                error(f"invalid sid '{arg}'")
                raise Failure(ERR_INVAL)
            req.sid = int(arg)
        elif flag == "-P":
            req.print_level = int(arg) if re.fullmatch(r"-?\d+", arg) else 0
        elif flag in SWITCHES:
            setattr(req, SWITCHES[flag], True)
        elif flag in UNSUPPORTED:
            req.unsupported.append(option)
    return req


def parse_portal(text: str) -> Tuple[str, int, int]:
    """``IP[:PORT][,TPGT]`` -> (ip, port or -1, tpgt or -1)."""
    address, _, tpgt = text.partition(",")
    ip, _, port = address.partition(":")
    try:
        return ip, int(port) if port else -1, int(tpgt) if tpgt else -1
    except ValueError:
        error(f"invalid portal '{text}'")
        raise Failure(ERR_INVAL) from None


# ---- the real binary (node database) ------------------------------------------------------


def real_binary() -> str:
    return str(json.loads(CONFIG.read_text())["real_iscsiadm"])


def session_dir(sid: int) -> Path:
    """Where a session's stacks live: named with the host instance, so the paths that
    ``losetup -a`` and ``ps`` show outside the namespace belong to one host of one world."""
    return RUN_DIR / f"{json.loads(CONFIG.read_text())['instance']}.session{sid}"


def real(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run the real iscsiadm (database modes only); its iscsid noise is dropped."""
    try:
        result = subprocess.run(
            [real_binary(), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        error(f"timed out after {TOOL_TIMEOUT}s")
        raise Failure(ERR_TRANS_TIMEOUT) from None
    if result.returncode < 0:  # a signal is none of iscsiadm's answers: the stand-in failed
        killed = f"the real iscsiadm was killed by {signal.Signals(-result.returncode).name}"
        error(f"internal error of the test hosts' iscsiadm stand-in: {killed}")
        note(killed)
        raise Failure(ERR_INTERNAL)
    stderr = "".join(
        line for line in result.stderr.splitlines(keepends=True) if not DAEMON_NOISE.search(line)
    )
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout, stderr)


def passthrough(args: Sequence[str]) -> int:
    result = real(args)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


@dataclass(frozen=True)
class Node:
    """One node record's key."""

    target: str
    ip: str
    port: int
    tpgt: int
    iface: str

    @property
    def portal(self) -> str:
        return f"{self.ip}:{self.port}"

    def describe(self) -> str:
        return f"[iface: {self.iface}, target: {self.target}, portal: {self.ip},{self.port}]"


def node_records() -> List[Node]:
    """Every node record, from the real binary's ``-m node -P 1`` tree."""
    result = real(["-m", "node", "-P", "1"])
    nodes: List[Node] = []
    target = ""
    portal: Tuple[str, int, int] = ("", -1, -1)
    for line in result.stdout.splitlines():
        key, _, value = line.strip().partition(": ")
        if key == "Target":
            target = value
        elif key == "Portal":
            address, _, tpgt = value.rpartition(",")
            ip, _, port = address.rpartition(":")
            portal = (ip, int(port), int(tpgt))
        elif key == "Iface Name":
            nodes.append(Node(target, portal[0], portal[1], portal[2], value))
    return nodes


def read_record(args: Sequence[str], tpgt_key: str = "", tpgt: int = -1) -> Dict[str, str]:
    """``key = value`` settings of the first record the real binary shows (``-S``)."""
    result = real([*args, "-S"])
    records: List[Dict[str, str]] = []
    for line in result.stdout.splitlines():
        if line.startswith("# BEGIN RECORD") or not records:
            records.append({})
        key, sep, value = line.partition(" = ")
        if sep:
            records[-1][key.strip()] = "" if value.strip() == UNKNOWN else value.strip()
    records = [r for r in records if r]
    if tpgt_key:
        records = [r for r in records if r.get(tpgt_key) == str(tpgt)] or records
    return records[0] if records else {}


def node_settings(node: Node) -> Dict[str, str]:
    args = ["-m", "node", "-T", node.target, "-p", node.portal, "-I", node.iface]
    return read_record(args, "node.tpgt", node.tpgt)


def matching(nodes: Sequence[Node], req: Request) -> List[Node]:
    return [n for n in nodes if pattern_matches(req, n.target, n.ip, n.port, n.iface)]


def pattern_matches(req: Request, target: str, ip: str, port: int, iface: str) -> bool:
    """open-iscsi's __iscsi_match_session: empty fields match anything."""
    return (
        (not req.target or req.target == target)
        and (not req.ip or req.ip == ip)
        and (req.port == -1 or req.port == port)
        and (not req.ifaces or req.ifaces[0] == iface)
    )


# ---- sessions ------------------------------------------------------------------------------


@dataclass
class Device:
    """A disk LUN of a session as a loop device over nbdfuse over qemu-nbd."""

    lun: int
    loop: str
    link: str
    stack: str
    qemu_pid: int
    fuse_pid: int
    size: int


@dataclass
class Session:
    sid: int
    target: str
    ip: str
    port: int
    tpgt: int
    iface: str
    initiator: str
    local_ip: str
    username: str
    luns: List[Tuple[int, str]]
    devices: List[Device]

    @property
    def node(self) -> Node:
        return Node(self.target, self.ip, self.port, self.tpgt, self.iface)

    @property
    def path(self) -> Path:
        return SESSION_DIR / f"{self.sid}.json"

    def save(self) -> None:
        SESSION_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=1))
        tmp.chmod(0o644)
        tmp.replace(self.path)

    def describe(self) -> str:
        return f"[sid: {self.sid}, target: {self.target}, portal: {self.ip},{self.port}]"


def load_sessions() -> List[Session]:
    sessions = []
    for path in sorted(SESSION_DIR.glob("*.json"), key=lambda p: int(p.stem)):
        data = json.loads(path.read_text())
        data["luns"] = [tuple(lun) for lun in data["luns"]]
        data["devices"] = [Device(**device) for device in data["devices"]]
        sessions.append(Session(**data))
    return sessions


def session_matches(req: Request, session: Session) -> bool:
    if req.sid >= 0 and req.sid != session.sid:
        return False
    return pattern_matches(req, session.target, session.ip, session.port, session.iface)


def next_id(name: str) -> int:
    """A per-host counter kept in the run directory (session ids, stack directories)."""
    path = RUN_DIR / name
    number = int(path.read_text()) if path.exists() else 1
    path.write_text(str(number + 1))
    return number


@contextmanager
def host_lock() -> Iterator[None]:
    """Serialise the stand-in's state changes on this host, as iscsid does (a caller
    without root can only read, and reads without the lock)."""
    if os.geteuid() != 0:
        yield
        return
    with open(LOCK, "a") as handle:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    error(f"lock {LOCK} busy for {LOCK_TIMEOUT}s")
                    raise Failure(ERR_TRANS_TIMEOUT) from None
                time.sleep(0.01)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---- tools ---------------------------------------------------------------------------------


def tool(
    args: Sequence[str], env: Optional[Dict[str, str]] = None
) -> subprocess.CompletedProcess[str]:
    """Run a helper with a timeout; a timeout counts as a failed run (rc -1)."""
    try:
        return subprocess.run(
            list(args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(args), -1, "", f"timed out after {TOOL_TIMEOUT}s")


@dataclass(frozen=True)
class Chap:
    user: str
    secret: str


def chap_of(settings: Dict[str, str], prefix: str) -> Optional[Chap]:
    if settings.get(f"{prefix}.authmethod", "None").upper() != "CHAP":
        return None
    return Chap(settings.get(f"{prefix}.username", ""), settings.get(f"{prefix}.password", ""))


def libiscsi_env(chap: Optional[Chap]) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBISCSI_CHAP_")}
    if chap is not None:
        env["LIBISCSI_CHAP_USERNAME"] = chap.user
        env["LIBISCSI_CHAP_PASSWORD"] = chap.secret
    return env


def login_status(text: str, unreachable: int) -> int:
    """The iscsiadm exit code for a libiscsi/qemu login error message."""
    match = LIBISCSI_STATUS.search(text)
    if match:
        status = int(match.group(1))
        if status >> 8 == 2:
            return ERR_LOGIN_AUTH_FAILED if status & 0xFF in (1, 2) else ERR_FATAL_LOGIN
        return ERR_LOGIN
    if re.search(r"connect|refused|unreachable|timed out|resolv", text, re.IGNORECASE):
        return unreachable
    return ERR_LOGIN


def initiator_name() -> str:
    for line in INITIATOR_FILE.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "InitiatorName":
            return value.strip()
    raise Failure(ERR_INVAL, f"no InitiatorName in {INITIATOR_FILE}")


def local_address(ip: str, port: int) -> str:
    """The source address the kernel picks towards the portal (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((ip, port))
        return str(probe.getsockname()[0])


def probe_luns(node: Node, chap: Optional[Chap], initiator: str) -> List[Tuple[int, str]]:
    """(LUN, peripheral device type) of each LUN, by INQUIRY, up to the first missing one."""
    found: List[Tuple[int, str]] = []
    for lun in range(MAX_LUNS):
        url = f"iscsi://{node.portal}/{node.target}/{lun}"
        result = tool(["iscsi-inq", "-i", initiator, url], env=libiscsi_env(chap))
        output = result.stdout + result.stderr
        if result.returncode == 0:
            kind = re.search(r"^Peripheral Device Type:(\S+)", result.stdout, re.MULTILINE)
            found.append((lun, kind.group(1) if kind else "UNKNOWN"))
        elif "LOGICAL_UNIT_NOT_SUPPORTED" in output:
            if found:
                break
        else:
            raise Failure(login_status(output, ERR_TRANS_TIMEOUT), f"LUN {lun}: {output.strip()}")
    return found


# ---- the block device stack ----------------------------------------------------------------


def _opt(value: object) -> str:
    return str(value).replace(",", ",,")


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def owned(pid: int, marker: str) -> bool:
    """True when ``pid`` runs and its command line mentions ``marker`` (no pid reuse)."""
    try:
        return process_alive(pid) and marker in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False


def stop_process(pid: int, marker: str) -> None:
    """SIGTERM, then SIGKILL; the host's init reaps it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not owned(pid, marker):
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.005)


def wait_for(condition_path: Path, pid: Optional[int] = None) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT
    while not (condition_path.exists() and condition_path.stat().st_size > 0):
        if time.monotonic() > deadline or (pid is not None and not process_alive(pid)):
            return False
        time.sleep(0.005)
    return True


def start_stack(
    node: Node, lun: int, chap: Optional[Chap], initiator: str, stack: Path
) -> Tuple[int, int]:
    """qemu-nbd logged in to the LUN and nbdfuse serving it as ``stack/mnt/disk``."""
    mnt = stack / "mnt"  # nbdfuse mounts here and serves the LUN as mnt/disk
    mnt.mkdir(parents=True)
    options: Dict[str, object] = {
        "driver": "raw",
        "file.driver": "iscsi",
        "file.transport": "tcp",
        "file.portal": node.portal,
        "file.target": node.target,
        "file.lun": lun,
        "file.initiator-name": initiator,
    }
    objects: List[str] = []
    if chap is not None:
        secret = stack / "chap-secret"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(chap.secret)
        objects = ["--object", f"secret,id=chap0,file={_opt(secret)}"]
        options["file.user"] = chap.user
        options["file.password-secret"] = "chap0"
    qemu_log = stack / "qemu-nbd.log"
    with open(qemu_log, "wb") as log:
        try:
            rc = subprocess.run(
                [
                    "qemu-nbd",
                    "--fork",
                    "--persistent",
                    "--socket",
                    str(stack / "nbd.sock"),
                    "--pid-file",
                    str(stack / "qemu-nbd.pid"),
                    *objects,
                    "--image-opts",
                    ",".join(f"{key}={_opt(value)}" for key, value in options.items()),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=TOOL_TIMEOUT,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    (stack / "chap-secret").unlink(missing_ok=True)  # qemu read it at start
    if rc != 0 or not wait_for(stack / "qemu-nbd.pid"):
        text = qemu_log.read_text(errors="replace").strip()
        raise Failure(login_status(text, ERR_TRANS_TIMEOUT), f"qemu-nbd: {text}")
    qemu_pid = int((stack / "qemu-nbd.pid").read_text())
    with open(stack / "nbdfuse.log", "wb") as log:
        fuse = subprocess.Popen(
            [
                "nbdfuse",
                "-P",
                str(stack / "nbdfuse.pid"),
                str(mnt / "disk"),
                "--unix",
                str(stack / "nbd.sock"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if not wait_for(stack / "nbdfuse.pid", fuse.pid):
        stop_stack(stack, qemu_pid, fuse.pid)
        raise Failure(ERR_LOGIN, f"nbdfuse: {(stack / 'nbdfuse.log').read_text().strip()}")
    return qemu_pid, fuse.pid


def stop_stack(stack: Path, qemu_pid: int, fuse_pid: int) -> None:
    """Unmount the FUSE file (lazily if a loop device still holds it), stop both daemons."""
    mnt = str(stack / "mnt")
    if tool(["fusermount3", "-u", mnt]).returncode != 0 and os.path.ismount(mnt):
        tool(["fusermount3", "-u", "-z", mnt])
    stop_process(qemu_pid, str(stack))
    deadline = time.monotonic() + STOP_TIMEOUT
    while owned(fuse_pid, str(stack)) and time.monotonic() < deadline:
        time.sleep(0.005)
    stop_process(fuse_pid, str(stack))
    if not os.path.ismount(mnt):
        shutil.rmtree(stack, ignore_errors=True)


def attach_loop(disk: Path, loop: Optional[str] = None) -> str:
    """A loop device on ``disk`` with direct I/O (``loop`` when it is free), its path."""
    if loop is not None:
        for _ in range(50):
            if tool(["losetup", "--direct-io=on", loop, str(disk)]).returncode == 0:
                return loop
            time.sleep(0.01)
    result = tool(["losetup", "--find", "--show", "--direct-io=on", str(disk)])
    if result.returncode != 0:
        raise Failure(ERR_LOGIN, f"losetup: {result.stderr.strip()}")
    return result.stdout.strip()


def detach_loop(loop: str, disk: Path) -> None:
    """Flush and detach ``loop`` if it is still attached to ``disk``."""
    name = os.path.basename(loop)
    try:
        backing = Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
    except OSError:
        return
    if backing != str(disk):
        return
    tool(["blockdev", "--flushbufs", loop])
    tool(["losetup", "--detach", loop])


def expose_device(loop: str) -> None:
    """Give this host its own ``/dev/loopN`` with udev's block device permissions
    (root:disk 0660): a node in the private ``/run/eqlsim-iscsi/dev`` tmpfs, bind-mounted
    over the shared devtmpfs node (which stays root-only, for the machine and other hosts)."""
    node = DEVICE_NODES / os.path.basename(loop)
    node.unlink(missing_ok=True)
    os.mknod(node, 0o660 | stat.S_IFBLK, os.stat(loop).st_rdev)
    os.chown(node, 0, grp.getgrnam("disk").gr_gid)
    node.chmod(0o660)
    if not os.path.ismount(loop):
        result = tool(["mount", "--bind", str(node), loop])
        if result.returncode != 0:
            raise Failure(ERR_LOGIN, f"mount --bind {node} {loop}: {result.stderr.strip()}")


def hide_device(loop: str) -> None:
    if os.path.ismount(loop):
        tool(["umount", loop])
    (DEVICE_NODES / os.path.basename(loop)).unlink(missing_ok=True)


def set_link(link: Path, loop: str) -> None:
    BY_PATH.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(f"../../{os.path.basename(loop)}")
    tmp.replace(link)


def attach_device(session: Session, lun: int, chap: Optional[Chap],
                  with_link: bool = True) -> Device:
    node = session.node
    stack = session_dir(session.sid) / f"lun{lun}.{next_id('next_stack')}"
    qemu_pid, fuse_pid = start_stack(node, lun, chap, session.initiator, stack)
    loop = ""
    try:
        loop = attach_loop(stack / "mnt" / "disk")
        expose_device(loop)
    except Failure:
        if loop:
            hide_device(loop)
            detach_loop(loop, stack / "mnt" / "disk")
        stop_stack(stack, qemu_pid, fuse_pid)
        raise
    link = BY_PATH / f"ip-{node.ip}:{node.port}-iscsi-{node.target}-lun-{lun}"
    if with_link:
        set_link(link, loop)
    size = (stack / "mnt" / "disk").stat().st_size
    return Device(lun, loop, str(link), str(stack), qemu_pid, fuse_pid, size)


def remove_device(device: Device) -> None:
    stack = Path(device.stack)
    link = Path(device.link)
    if link.is_symlink() and os.readlink(link) == f"../../{os.path.basename(device.loop)}":
        link.unlink()
    hide_device(device.loop)
    detach_loop(device.loop, stack / "mnt" / "disk")
    stop_stack(stack, device.qemu_pid, device.fuse_pid)


def rescan_device(session: Session, device: Device, chap: Optional[Chap]) -> Device:
    """Pick up a size change: a new stack, and the loop device moved onto it."""
    stack = session_dir(session.sid) / f"lun{device.lun}.{next_id('next_stack')}"
    qemu_pid, fuse_pid = start_stack(session.node, device.lun, chap, session.initiator, stack)
    disk = stack / "mnt" / "disk"
    size = disk.stat().st_size
    if size == device.size:
        stop_stack(stack, qemu_pid, fuse_pid)
        return device
    detach_loop(device.loop, Path(device.stack) / "mnt" / "disk")
    loop = attach_loop(disk, device.loop)
    if loop != device.loop:
        hide_device(device.loop)
        expose_device(loop)
    set_link(Path(device.link), loop)
    stop_stack(Path(device.stack), device.qemu_pid, device.fuse_pid)
    return Device(device.lun, loop, device.link, str(stack), qemu_pid, fuse_pid, size)


# ---- login, logout, rescan ---------------------------------------------------------------


def establish(node: Node, initiator: str) -> Session:
    """Log in to the node: probe its LUNs and build a device for every disk LUN."""
    rc = take_fault("login", node.target)
    if rc is not None:
        raise Failure(rc, "injected login fault")
    settings = node_settings(node)
    chap = chap_of(settings, "node.session.auth")
    luns = probe_luns(node, chap, initiator)
    session = Session(
        sid=next_id("next_sid"),
        target=node.target,
        ip=node.ip,
        port=node.port,
        tpgt=node.tpgt,
        iface=node.iface,
        initiator=initiator,
        local_ip=local_address(node.ip, node.port),
        username=chap.user if chap else "",
        luns=luns,
        devices=[],
    )
    no_device = take_fault("no-device", node.target) is not None
    with_link = no_device or take_fault("no-link", node.target) is None
    try:
        for lun, kind in luns:
            if kind == "DIRECT_ACCESS" and not no_device:
                session.devices.append(attach_device(session, lun, chap, with_link))
    except BaseException:
        for device in session.devices:
            remove_device(device)
        raise
    session.save()
    return session


def login(nodes: Sequence[Node]) -> int:
    """Log in to every record, the way iscsi_login_portals reports it."""
    initiator = initiator_name()
    sessions = load_sessions()
    rc = OK
    todo = []
    for node in nodes:
        present = [s for s in sessions if s.node == node]
        if present:
            error(f"{node.iface}: 1 session requested, but {len(present)} already present.")
            rc = rc or ERR_SESS_EXISTS
            continue
        info(f"Logging in to {node.describe()}")
        todo.append(node)
    for node in todo:
        try:
            establish(node, initiator)
        except Failure as failure:
            note(f"login {node.describe()}: {failure.detail}")
            error(f"Could not login to {node.describe()}.")
            error(f"initiator reported error ({failure.rc} - {ERROR_TEXT[failure.rc]})")
            rc = rc or failure.rc
            continue
        info(f"Login to {node.describe()} successful.")
    if rc:
        error("Could not log into all portals")
    return rc


def logout(sessions: Sequence[Session]) -> int:
    for session in sessions:
        info(f"Logging out of session {session.describe()}")
    failed = OK
    for session in sessions:
        rc = take_fault("logout", session.target)
        if rc is not None:
            error(f"Could not logout of {session.describe()}.")
            error(f"initiator reported error ({rc} - {ERROR_TEXT[rc]})")
            failed = failed or rc
            continue
        for device in session.devices:
            remove_device(device)
        directory = session_dir(session.sid)
        if directory.exists() and not any(directory.iterdir()):
            directory.rmdir()
        session.path.unlink()
        info(f"Logout of {session.describe()} successful.")
    if failed:
        error("Could not logout of all requested sessions")
    return failed


def rescan(sessions: Sequence[Session]) -> int:
    for session in sessions:
        info(f"Rescanning session {session.describe()}")
        injected = take_fault("rescan", session.target)
        if injected is not None:
            error(f"Could not rescan session sid {session.sid}.")
            return injected
        chap = chap_of(node_settings(session.node), "node.session.auth")
        for index, device in enumerate(session.devices):
            try:
                session.devices[index] = rescan_device(session, device, chap)
            except Failure as failure:
                note(f"rescan {session.describe()} LUN {device.lun}: {failure.detail}")
                error(f"Could not rescan session sid {session.sid}.")
                return ERR_SYSFS_LOOKUP
            finally:
                session.save()
    return OK


def record_in_use(node: Node) -> None:
    error(
        f"This command will remove the record {node.describe()}, but a session is using "
        "it. Logout session then rerun command to remove record."
    )


def require_root() -> None:
    if os.geteuid() != 0:
        error(f"initiator reported error ({ERR_ACCESS} - {ERROR_TEXT[ERR_ACCESS]})")
        raise Failure(ERR_ACCESS)


def node_mode(req: Request, argv: Sequence[str]) -> int:
    if req.ip and req.port == -1:
        req.port = ISCSI_PORT
    if not (req.login or req.logout or req.rescan):
        for op in ("new", "delete"):
            rc = take_fault(f"node-{op}", req.target) if op in req.ops else None
            if rc is not None:
                verb = "adding" if op == "new" else "deleting"
                error(f"Error while {verb} record: {ERROR_TEXT[rc]}")
                return rc
        if "delete" in req.ops:
            with host_lock():
                busy = [s for s in load_sessions() if session_matches(req, s)]
                if busy:
                    record_in_use(busy[0].node)
                    return ERR_SESS_EXISTS
                return passthrough(argv)
        return passthrough(argv)
    if req.login and req.logout:
        error("Invalid parameters. Both login and logout passed in")
        return ERR_INVAL
    require_root()
    with host_lock():
        if req.login:
            nodes = matching(node_records(), req)
            if not nodes:
                error("No records found")
                return ERR_NO_OBJS_FOUND
            return login(nodes)
        sessions = [s for s in load_sessions() if session_matches(req, s)]
        if req.logout:
            if not sessions:
                error("No matching sessions found")
                return ERR_NO_OBJS_FOUND
            return logout(sessions)
        if not sessions:
            error("No session found.")
            return ERR_NO_OBJS_FOUND
        return rescan(sessions)


# ---- session listing ---------------------------------------------------------------------


TIMEOUTS = (
    ("Recovery Timeout", "node.session.timeo.replacement_timeout"),
    ("Target Reset Timeout", "node.session.err_timeo.tgt_reset_timeout"),
    ("LUN Reset Timeout", "node.session.err_timeo.lu_reset_timeout"),
    ("Abort Timeout", "node.session.err_timeo.abort_timeout"),
)


def _banner(title: str, width: int) -> List[str]:
    return ["*" * width, title, "*" * width]


def session_details(s: Session, level: int, settings: Dict[str, str]) -> List[str]:
    """The indented part of one session in ``-P 1..3`` (session_info_print_tree)."""
    lines = [
        *_banner("Interface:", 10),
        f"Iface Name: {s.iface}",
        "Iface Transport: tcp",
        f"Iface Initiatorname: {s.initiator}",
        f"Iface IPaddress: {s.local_ip}",
        f"Iface HWaddress: {UNKNOWN}",
        f"Iface Netdev: {UNKNOWN}",
        f"SID: {s.sid}",
        "iSCSI Connection State: LOGGED IN",
        "iSCSI Session State: LOGGED_IN",
        "Internal iscsid Session State: NO CHANGE",
    ]
    if level >= 2:
        lines += _banner("Timeouts:", 9)
        lines += [f"{label}: {settings.get(key) or UNKNOWN}" for label, key in TIMEOUTS]
        lines += _banner("CHAP:", 5)
        lines += [
            f"username: {s.username or UNKNOWN}",
            "password: ********",
            f"username_in: {settings.get('node.session.auth.username_in') or UNKNOWN}",
            "password_in: ********",
        ]
        lines += _banner("Negotiated iSCSI params:", 24)  # values unknown: not printed
    if level >= 3:
        host_no = s.sid
        lines += _banner("Attached SCSI devices:", 24)
        lines.append(f"Host Number: {host_no}\tState: running")
        disks = {d.lun: os.path.basename(d.loop) for d in s.devices}
        for lun, _ in s.luns:
            lines.append(f"scsi{host_no} Channel 00 Id 0 Lun: {lun}")
            if lun in disks:
                lines.append(f"\tAttached scsi disk {disks[lun]}\t\tState: running")
    return lines


def print_sessions(
    sessions: Sequence[Session], level: int, settings_of: Dict[int, Dict[str, str]]
) -> None:
    """``-m session -P level`` in the real tool's layout (session_info.c)."""
    if level <= 0:
        for s in sessions:
            info(f"tcp: [{s.sid}] {s.ip}:{s.port},{s.tpgt} {s.target} (non-flash)")
        return
    if level >= 3:
        info(f"iSCSI Transport Class version {TRANSPORT_CLASS_VERSION}")
        info(f"version {VERSION}")
    previous: Optional[Session] = None
    for s in sessions:
        if previous is None or previous.target != s.target:
            info(f"Target: {s.target} (non-flash)")
            previous = None
        if previous is None or (previous.ip, previous.port) != (s.ip, s.port):
            info(f"\tCurrent Portal: {s.ip}:{s.port},{s.tpgt}")
            info(f"\tPersistent Portal: {s.ip}:{s.port},{s.tpgt}")
        else:
            info("")
        for line in session_details(s, level, settings_of.get(s.sid, {})):
            info(f"\t\t{line}")
        previous = s


def session_mode(req: Request, argv: Sequence[str]) -> int:
    with host_lock():
        sessions = load_sessions()
        if req.sid >= 0:
            sessions = [s for s in sessions if s.sid == req.sid]
            if not sessions:
                error(f"Could not get session info for sid {req.sid}")
                return ERR_SYSFS_LOOKUP
        if req.logout or req.rescan:
            require_root()
            if req.logout:
                if not sessions:
                    error("No matching sessions found")
                    return ERR_NO_OBJS_FOUND
                return logout(sessions)
            if not sessions:
                error("No session found.")
                return ERR_NO_OBJS_FOUND
            return rescan(sessions)
        if req.sid >= 0 and req.print_level <= 0:
            node = sessions[0].node
            return passthrough(
                ["-m", "node", "-T", node.target, "-p", node.portal, "-I", node.iface]
            )
        if not sessions:
            error("No active sessions.")
            return ERR_NO_OBJS_FOUND
        settings = {}
        if req.print_level >= 2 and os.geteuid() == 0:
            settings = {s.sid: node_settings(s.node) for s in sessions}
        print_sessions(sessions, req.print_level, settings)
        return OK


# ---- discovery -----------------------------------------------------------------------------


def iscsid_defaults() -> Dict[str, str]:
    settings: Dict[str, str] = {}
    if ISCSID_CONF.exists():
        for line in ISCSID_CONF.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.lstrip().startswith("#"):
                settings[key.strip()] = value.strip()
    return settings


def discovery_ifaces(req: Request) -> List[str]:
    """The ifaces to bind discovered targets to (idbm_bind_ifaces_to_nodes)."""
    if not req.ifaces:
        configured = []
        for path in sorted(IFACE_DIR.glob("*")) if IFACE_DIR.exists() else []:
            text = path.read_text()
            if path.name != "default" and re.search(r"^iface\.transport_name = tcp$", text, re.M):
                configured.append(path.name)
        return configured or ["default"]
    usable = []
    for name in req.ifaces:
        if name != "default" and not (IFACE_DIR / name).exists():
            error(
                f"Could not read iface info for {name}. Make sure an iface config with the "
                f"file name and iface.iscsi_ifacename {name} is in {IFACE_DIR}."
            )
            continue
        usable.append(name)
    return usable


def sendtargets(
    ip: str, port: int, chap: Optional[Chap], initiator: str
) -> List[Tuple[str, str, int, int]]:
    """(target, ip, port, tpgt) for every target SendTargets reports to this initiator."""
    result = tool(["iscsi-ls", "-i", initiator, f"iscsi://{ip}:{port}"], env=libiscsi_env(chap))
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        rc = login_status(output, ERR_TRANS)
        note(f"sendtargets {ip}:{port}: {output}")
        if rc == ERR_LOGIN_AUTH_FAILED:
            error(f"discovery login to {ip} rejected: initiator failed authorization")
        elif rc == ERR_TRANS:
            error(f"cannot make connection to {ip}: Connection refused")
            error("connection login retries (reopen_max) 5 exceeded")
        error(f"Could not perform SendTargets discovery: {ERROR_TEXT[rc]}")
        raise Failure(rc)
    found = []
    for match in re.finditer(r"^Target:(\S+) Portal:(\S+):(\d+),(\d+)$", result.stdout, re.M):
        found.append((match.group(1), match.group(2), int(match.group(3)), int(match.group(4))))
    return found


def load_discovered() -> Dict[str, str]:
    """Node key -> discovery portal it came from."""
    return dict(json.loads(DISCOVERED.read_text())) if DISCOVERED.exists() else {}


def node_key(node: Node) -> str:
    return f"{node.target} {node.ip}:{node.port},{node.tpgt} {node.iface}"


def discover(req: Request) -> int:
    if not req.ip:
        error("Please specify portal as <ipaddr>[:<ipport>]")
        return ERR_INVAL
    require_root()
    port = ISCSI_PORT if req.port == -1 else req.port
    portal = f"{req.ip}:{port}"
    ops = req.ops or {"new", "delete", "update"}
    with host_lock():
        record = ["-m", "discoverydb", "-t", "st", "-p", portal]
        if req.mode == "discoverydb":
            settings = read_record(record)
            if not settings and "nonpersistent" not in ops:
                real([*record, "-o", "new"])
            settings = settings or iscsid_defaults()
        else:
            settings = iscsid_defaults()
            if "nonpersistent" not in ops:
                real([*record, "-o", "new"])
        chap = chap_of(settings, "discovery.sendtargets.auth")
        ifaces = discovery_ifaces(req)
        if not ifaces:
            return ERR_NO_OBJS_FOUND
        try:
            targets = sendtargets(req.ip, port, chap, initiator_name())
        except Failure as failure:
            return failure.rc
        if not targets:
            error("No portals found")
            return ERR_NO_OBJS_FOUND
        found = [Node(t, ip, p, tpgt, iface) for t, ip, p, tpgt in targets for iface in ifaces]
        if "nonpersistent" not in ops:
            update_records(found, portal, ops)
        for node in found:
            info(f"{node.ip}:{node.port},{node.tpgt} {node.target}")
        if req.login:
            return login(found)
    return OK


def update_records(found: Sequence[Node], portal: str, ops: Set[str]) -> None:
    """Delete stale records of this discovery portal, add new ones, overwrite old ones."""
    existing = set(node_records())
    discovered = load_discovered()
    sessions = load_sessions()
    if "delete" in ops:
        for node in existing - set(found):
            if discovered.get(node_key(node)) != portal:
                continue
            if any(s.node == node for s in sessions):
                record_in_use(node)
                continue
            real(record_argv("delete", node))
            discovered.pop(node_key(node), None)
    for node in found:
        if node in existing:
            if "update" not in ops:
                continue
            real(record_argv("delete", node))
        elif "new" not in ops:
            continue
        result = real(record_argv("new", node))
        if result.returncode != 0:
            error(
                f"Could not add/update [tcp:[hw=,ip=,net_if=,iscsi_if={node.iface}] "
                f"{node.ip},{node.port},{node.tpgt} {node.target}]"
            )
            continue
        discovered[node_key(node)] = portal
    DISCOVERED.write_text(json.dumps(discovered, indent=1))


def record_argv(op: str, node: Node) -> List[str]:
    """``-m node -o OP`` for exactly one record."""
    portal = f"{node.portal},{node.tpgt}"
    return ["-m", "node", "-o", op, "-T", node.target, "-p", portal, "-I", node.iface]


# ---- entry point ---------------------------------------------------------------------------


def run(argv: Sequence[str]) -> int:
    req = parse(argv)
    if req.unsupported:
        error(
            f"{', '.join(req.unsupported)}: not implemented by the test hosts' iscsiadm "
            "stand-in (tests/hosts/initiator.py)"
        )
        return ERR_OP_NOT_SUPP
    if req.mode == "session":
        return session_mode(req, argv)
    if req.mode == "node":
        return node_mode(req, argv)
    if req.mode in ("discovery", "discoverydb") and req.type == "sendtargets":
        if req.mode == "discovery" or req.discover:
            return discover(req)
    if req.mode in ("discovery", "discoverydb", "iface", ""):
        if req.login:
            error("-l without -t st: not implemented by the test hosts' iscsiadm stand-in")
            return ERR_OP_NOT_SUPP
        return passthrough(argv)
    error(
        f"mode {req.mode}: not implemented by the test hosts' iscsiadm stand-in "
        "(tests/hosts/initiator.py)"
    )
    return ERR_OP_NOT_SUPP


def main(argv: Sequence[str]) -> int:
    """Run one iscsiadm command line; log it with its exit code."""
    try:
        rc = run(argv)
    except Failure as failure:
        rc = failure.rc
    except Exception as exc:  # a bug here must not look like one of iscsiadm's answers
        error(f"internal error of the test hosts' iscsiadm stand-in: {exc!r}")
        note(traceback.format_exc())
        rc = ERR_INTERNAL
    entry = {
        "argv": list(argv),
        "uid": os.getuid(),
        "sudo_user": os.environ.get("SUDO_USER"),
        "rc": rc,
        "details": _details,
    }
    try:
        with open(LOG, "a") as log:
            log.write(json.dumps(entry) + "\n")
    except OSError:
        pass
    return rc
