"""The init process of one test host (stdlib only; run by ``tests.hosts.world``).

Started as ``unshare --mount --uts --propagation private -- python hostinit.py PLAN.json``,
so it is the first process of the host's mount and UTS namespaces and a direct child of
the harness; the namespaces live as long as it does.  It:

1. asks for SIGTERM when the harness dies (a crashed test run still tears down), and
   becomes a child subreaper, so daemons that ``iscsiadm --login`` leaves behind
   (qemu-nbd, nbdfuse) are re-parented to it and reaped at once instead of lingering as
   zombies under PID 1 (which reaps orphans only after seconds on this machine);
2. sets the host name and runs the plan's setup commands (the private mounts);
3. runs the plan's daemon (sshd in the foreground) and prints ``ready`` on stdout;
4. on SIGTERM (or when the daemon dies): stops the daemon, runs the teardown commands
   (log out of every iSCSI session; each with its accepted exit codes), then ends every
   other process of the namespace, reaps them, and exits.  Exit status 0 means a clean
   teardown (no command failed, nothing but sshd's session processes was left over).

Every command has a timeout.  Problems go to stderr, which the harness keeps as a log.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Dict, List, Optional, Sequence

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
COMMAND_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
POLL = 0.02

_stopping = False


def _on_signal(signum: int, frame: Optional[FrameType]) -> None:
    global _stopping
    _stopping = True


def _log(message: str) -> None:
    print(f"hostinit[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def _reap() -> Dict[int, int]:
    """Collect every exited child; return pid -> wait status."""
    done: Dict[int, int] = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done[pid] = status


def _processes() -> Dict[int, str]:
    """pid -> command name of every other live process in our mount namespace (a zombie
    has no namespaces any more)."""
    ours = os.readlink("/proc/self/ns/mnt")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.readlink(entry / "ns/mnt") != ours:
                continue
            name, rest = (entry / "stat").read_text().rsplit(")", 1)
        except (OSError, ValueError):
            continue
        if rest.split()[0] != "Z":
            found[int(entry.name)] = name.split("(", 1)[1]
    return found


def _run(command: List[str], allowed: Sequence[int] = (0,)) -> bool:
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _log(f"{command[0]}: {exc}")
        return False
    if result.returncode not in allowed:
        _log(f"{' '.join(command)} -> rc {result.returncode}: {result.stderr.strip()}")
        return False
    return True


def _empty_namespace() -> None:
    """SIGTERM, then SIGKILL, every other process of the namespace; reap until none is left
    (orphans are re-parented to us, so the namespace ends with this process)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = list(_processes())
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        while _processes() and time.monotonic() < deadline:
            _reap()
            time.sleep(POLL)
    deadline = time.monotonic() + STOP_TIMEOUT
    while (_processes() or _has_children()) and time.monotonic() < deadline:
        _reap()
        time.sleep(POLL)


def _has_children() -> bool:
    """True while any process (zombies included) still has us as its parent."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and (entry / "stat").read_text().rsplit(")", 1)[1].split()[2] == me
            ):
                return True
        except (OSError, IndexError):
            continue
    return False


def main(argv: List[str]) -> int:
    plan = json.loads(Path(argv[1]).read_text())
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    libc = ctypes.CDLL(None, use_errno=True)
    for option, value in ((PR_SET_CHILD_SUBREAPER, 1), (PR_SET_PDEATHSIG, signal.SIGTERM)):
        if libc.prctl(option, int(value), 0, 0, 0) != 0:
            _log(f"prctl({option}): errno {ctypes.get_errno()}")
            return 1
    if os.getppid() != int(plan["parent"]):  # the harness died before PDEATHSIG was set
        return 1
    socket.sethostname(plan["hostname"])
    for command in plan["setup"]:
        if not _run(command):
            return 1
    with open(plan["daemon_log"], "ab") as log:
        daemon = subprocess.Popen(
            plan["daemon"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    print("ready", flush=True)
    while not _stopping:
        if daemon.pid in _reap():
            _log(f"{plan['daemon'][0]} exited")
            break
        time.sleep(POLL)
    clean = True
    if daemon.poll() is None:
        daemon.terminate()
        try:
            daemon.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(STOP_TIMEOUT)
    for step in plan["teardown"]:
        clean = _run(step["command"], step["allowed_rc"]) and clean
    leftovers = {pid: name for pid, name in _processes().items() if name != "sshd"}
    if leftovers:
        _log(f"terminating processes left after teardown: {leftovers}")
        clean = False
    _empty_namespace()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a late signal must not hit the exit
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
