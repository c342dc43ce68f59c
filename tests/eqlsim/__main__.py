"""Run a simulated PS Series group in the foreground: ``python3 -m tests.eqlsim --help``.

Prints exactly one line, ``eqlsim listening on HOST:PORT``, when ready; SIGTERM or SIGINT
stops it cleanly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from types import FrameType, ModuleType
from typing import List, Optional, Tuple

from tests.eqlsim.backend import FileBackend
from tests.eqlsim.cli import load_messages
from tests.eqlsim.server import DEFAULT_IDLE_LOGOUT, GroupSimulator
from tests.eqlsim.state import GroupError, parse_size_mb

PASSWORD_ENV = "EQLSIM_PASSWORD"


def _listen_address(text: str) -> Tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _size_mb(text: str) -> int:
    try:
        return parse_size_mb(text)
    except GroupError as exc:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 500GB, 2TB)") from exc


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m tests.eqlsim",
        description="Simulated Dell EqualLogic PS Series group: the Group Manager CLI over SSH.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        help="directory holding the group (state.json, host key, volume data, commands.log, "
        "faults.json); created if missing, reused on restart",
    )
    parser.add_argument(
        "--listen",
        type=_listen_address,
        required=True,
        metavar="HOST:PORT",
        help="SSH address to listen on; port 0 picks a free port (the real one is printed)",
    )
    parser.add_argument(
        "--group-name", help="group name, shown in the prompt (default: kept, else group-0)"
    )
    parser.add_argument("--user", default="grpadmin", help="account name (default: grpadmin)")
    parser.add_argument(
        "--password",
        help=f"account password (default: ${PASSWORD_ENV}, else grpadmin); like the array, "
        "only the first 8 characters are checked",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=7,
        metavar="N",
        help="simultaneous CLI sessions (shell or exec, all connections); more are refused "
        "right after login (default: 7)",
    )
    parser.add_argument(
        "--session-limit-message",
        action="store_true",
        help="print a one-line error before closing a refused session (default: print nothing)",
    )
    parser.add_argument(
        "--pool-size",
        type=_size_mb,
        metavar="SIZE",
        help="capacity of the pool 'default', e.g. 2TB (default: kept, else 10TB)",
    )
    parser.add_argument(
        "--iscsi",
        choices=("on", "off", "auto"),
        default="auto",
        help="publish volumes as real tgtd iSCSI targets (default auto: on when root and "
        "tgtd are available, otherwise off with a note on stderr)",
    )
    parser.add_argument(
        "--group-ip",
        metavar="127.0.0.N",
        help="group (portal) IP: with iSCSI the portal address, default a free 127.0.0.N; "
        "without iSCSI only shown as Group-Ipaddress (default: the listen host)",
    )
    parser.add_argument(
        "--messages",
        type=Path,
        metavar="FILE",
        help="JSON object overriding CLI texts by key (see MESSAGES in tests/eqlsim/cli.py)",
    )
    parser.add_argument(
        "--max-access-records",
        type=int,
        default=16,
        metavar="N",
        help="access control records allowed per volume (default: 16)",
    )
    parser.add_argument(
        "--idle-logout",
        type=float,
        default=DEFAULT_IDLE_LOGOUT,
        metavar="SECONDS",
        help="idle time before a session is closed while cli-settings idlelogout is on "
        f"(default: {DEFAULT_IDLE_LOGOUT:g})",
    )
    parser.add_argument(
        "--host-key",
        type=Path,
        metavar="FILE",
        help="Ed25519 host key file, generated if missing "
        "(default: STATE_DIR/ssh_host_ed25519_key)",
    )
    return parser.parse_args(argv)


def _note(text: str) -> None:
    print(f"eqlsim: {text}", file=sys.stderr, flush=True)


def _simulator(
    args: argparse.Namespace, backend: FileBackend, group_ip: Optional[str]
) -> GroupSimulator:
    password = args.password or os.environ.get(PASSWORD_ENV) or "grpadmin"
    return GroupSimulator(
        args.state_dir,
        args.listen,
        accounts={args.user: password},
        group_name=args.group_name,
        group_ip=group_ip,
        pool_size_mb=args.pool_size,
        max_sessions=args.max_sessions,
        session_limit_message=args.session_limit_message,
        backend=backend,
        messages=load_messages(args.messages) if args.messages else None,
        max_access_records=args.max_access_records,
        host_key_path=args.host_key,
        idle_logout=args.idle_logout,
    )


def _iscsi_module(mode: str) -> Optional[ModuleType]:
    """tests.eqlsim.iscsi when iSCSI is wanted and possible, else None (after a note)."""
    if mode == "off":
        return None
    if mode == "auto" and not (os.geteuid() == 0 and shutil.which("tgtd")):
        _note("iSCSI off (needs root and tgtd); volumes are plain files")
        return None
    try:
        return importlib.import_module("tests.eqlsim.iscsi")
    except ImportError as exc:
        if mode == "on":
            raise SystemExit(f"eqlsim: --iscsi on: {exc}") from exc
        _note(f"iSCSI off ({exc}); volumes are plain files")
        return None


def start_simulator(args: argparse.Namespace) -> GroupSimulator:
    """Start with the tgtd backend when asked and possible, else with plain files."""
    iscsi = _iscsi_module(args.iscsi)
    if iscsi is not None:
        try:
            group_ip = args.group_ip or iscsi.pick_free_group_ip()
            sim = _simulator(args, iscsi.TgtBackend(args.state_dir, group_ip), group_ip)
            sim.start()
            return sim
        except iscsi.BackendUnavailable as exc:
            if args.iscsi == "on":
                raise SystemExit(f"eqlsim: --iscsi on: {exc}") from exc
            _note(f"iSCSI off ({exc}); volumes are plain files")
    sim = _simulator(args, FileBackend(args.state_dir), args.group_ip)
    sim.start()
    return sim


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sim = start_simulator(args)
    host, port = sim.address
    print(f"eqlsim listening on {host}:{port}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
