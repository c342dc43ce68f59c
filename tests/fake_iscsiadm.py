#!/usr/bin/env python3
"""A small fake ``iscsiadm`` for unit tests of the host scripts (no root, no network).

State lives under ``$FAKE_ISCSI_DIR``: node records in the real tool's layout
(``nodes/<iqn>/<ip>,<port>,<tpgt>/<iface>``, ``key = value`` lines, the last one wins),
``sessions.json`` and ``calls.log`` (one JSON argv per line).  A login creates the by-path
link ``$FAKE_BY_PATH/ip-<ip>:<port>-iscsi-<iqn>-lun-$FAKE_LUN -> $FAKE_DEVICE``; a logout
removes it.  Faults: ``FAKE_LOGIN_RC`` (login fails with that code), ``FAKE_NO_LINK=1``
(login makes no link), ``FAKE_SESSION_DISK`` (the disk ``-P 3`` reports), ``FAKE_SLEEP``
(seconds every call sleeps, for lock tests; calls log start and end times and
``FAKE_TAG``).  Exit codes
are open-iscsi's: 7 bad arguments, 15 session exists, 21 nothing found.
"""

from __future__ import annotations

import getopt
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

STATE = Path(os.environ["FAKE_ISCSI_DIR"])
NODES = STATE / "nodes"
SESSIONS = STATE / "sessions.json"


def fail(rc: int, message: str) -> int:
    print(f"iscsiadm: {message}", file=sys.stderr)
    return rc


def load_sessions() -> List[Dict[str, str]]:
    return list(json.loads(SESSIONS.read_text())) if SESSIONS.exists() else []


def save_sessions(sessions: List[Dict[str, str]]) -> None:
    SESSIONS.write_text(json.dumps(sessions))


def split_portal(text: str) -> Tuple[str, str, str]:
    address, _, tpgt = text.partition(",")
    if address.startswith("["):
        ip, _, port = address[1:].partition("]:")
    else:
        ip, _, port = address.partition(":")
    return ip, port or "3260", tpgt


def records(iqn: str, ip: str, port: str, iface: Optional[str]) -> List[Path]:
    base = NODES / iqn
    if not base.is_dir():
        return []
    return [record for portal in sorted(base.iterdir()) if portal.name.startswith(f"{ip},{port},")
            for record in sorted(portal.iterdir()) if iface is None or record.name == iface]


def read_record(path: Path) -> Dict[str, str]:
    settings: Dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            settings[key.strip()] = value.strip()
    return settings


def write_record(path: Path, settings: Dict[str, str]) -> None:
    path.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))


def link_path(session: Dict[str, str]) -> Path:
    lun = os.environ.get("FAKE_LUN", "0")
    name = f"ip-{session['ip']}:{session['port']}-iscsi-{session['iqn']}-lun-{lun}"
    return Path(os.environ["FAKE_BY_PATH"]) / name


def node_mode(opts: Dict[str, List[str]]) -> int:
    iqn = opts.get("-T", [""])[0]
    ip, port, tpgt = split_portal(opts.get("-p", [""])[0])
    iface = opts.get("-I", [None])[0]
    ops = opts.get("-o", [])
    if not iqn or not ip:
        return fail(7, "need -T and -p")
    found = records(iqn, ip, port, iface)
    matching = [s for s in load_sessions() if s["iqn"] == iqn and s["ip"] == ip
                and s["port"] == port and (iface is None or s["iface"] == iface)]
    if "new" in ops:
        record = NODES / iqn / f"{ip},{port},{tpgt or '-1'}" / (iface or "default")
        record.parent.mkdir(parents=True, exist_ok=True)
        write_record(record, {"node.name": iqn, "node.startup": "automatic",
                              "node.session.auth.authmethod": "None",
                              "node.session.auth.username": "<empty>",
                              "node.session.auth.password": "<empty>"})
        print(f"New iSCSI node [tcp:[iscsi_if={iface or 'default'}] {ip},{port},{tpgt} {iqn}]"
              " added")
        return 0
    if not found and not ("-u" in opts or "-R" in opts):
        return fail(21, "No records found")
    if "update" in ops:
        for record in found:
            settings = read_record(record)
            settings[opts["-n"][0]] = opts["-v"][0]
            write_record(record, settings)
        return 0
    if "show" in ops:
        for key, value in read_record(found[0]).items():
            masked = "password" in key and value != "<empty>"
            print(f"{key} = {'********' if masked else value}")
        return 0
    if "delete" in ops:
        if matching:
            return fail(15, "a session is using the record")
        for record in found:
            record.unlink()
        return 0
    if "-l" in opts:
        if matching:
            return fail(15, "1 session requested, but 1 already present.")
        if os.environ.get("FAKE_LOGIN_RC"):
            rc = int(os.environ["FAKE_LOGIN_RC"])
            return fail(rc, f"Could not login to [fake].\niscsiadm: initiator reported error "
                            f"({rc} - fake login fault)\niscsiadm: Could not log into all portals")
        sessions = load_sessions()
        sid = str(max([int(s["sid"]) for s in sessions] + [0]) + 1)
        settings = read_record(found[0])
        session = {"sid": sid, "iqn": iqn, "ip": ip, "port": port,
                   "tpgt": found[0].parent.name.rsplit(",", 1)[1], "iface": found[0].name,
                   "user": settings.get("node.session.auth.username", ""),
                   "secret": settings.get("node.session.auth.password", "")}
        save_sessions([*sessions, session])
        if not os.environ.get("FAKE_NO_LINK"):
            link = link_path(session)
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(os.environ["FAKE_DEVICE"])
        print(f"Login to [iface: {session['iface']}, target: {iqn}, portal: {ip},{port}] "
              "successful.")
        return 0
    if "-u" in opts:
        if not matching:
            return fail(21, "No matching sessions found")
        for session in matching:
            link = link_path(session)
            if link.is_symlink():
                link.unlink()
        save_sessions([s for s in load_sessions() if s not in matching])
        return 0
    if "-R" in opts:
        return 0 if matching else fail(21, "No session found.")
    return fail(7, "unsupported node operation")


def session_mode(opts: Dict[str, List[str]]) -> int:
    sessions = load_sessions()
    if "-r" in opts:
        chosen = [s for s in sessions if s["sid"] == opts["-r"][0]]
        if not chosen:
            return fail(22, f"Could not get session info for sid {opts['-r'][0]}")
        disk = os.environ.get("FAKE_SESSION_DISK") or os.path.basename(os.environ["FAKE_DEVICE"])
        print(f"Target: {chosen[0]['iqn']} (non-flash)")
        print(f"\t\tAttached scsi disk {disk}\t\tState: running")
        return 0
    if not sessions:
        return fail(21, "No active sessions.")
    for s in sessions:
        portal = f"[{s['ip']}]:{s['port']}" if ":" in s["ip"] else f"{s['ip']}:{s['port']}"
        print(f"tcp: [{s['sid']}] {portal},{s['tpgt']} {s['iqn']} (non-flash)")
    return 0


def main(argv: List[str]) -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    started = time.time()
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    try:
        parsed, _ = getopt.gnu_getopt(argv, "m:T:p:I:o:n:v:r:P:luRS",
                                      ["login", "logout", "rescan"])
    except getopt.GetoptError as exc:
        return fail(7, str(exc))
    opts: Dict[str, List[str]] = {}
    for flag, value in parsed:
        flag = {"--login": "-l", "--logout": "-u", "--rescan": "-R"}.get(flag, flag)
        opts.setdefault(flag, []).append(value)
    mode = opts.get("-m", [""])[0]
    rc = node_mode(opts) if mode == "node" else session_mode(opts) if mode == "session" \
        else fail(7, f"unsupported mode {mode!r}")
    with open(STATE / "calls.log", "a") as log:
        log.write(json.dumps({"argv": argv, "rc": rc, "start": started, "end": time.time(),
                              "tag": os.environ.get("FAKE_TAG", "")}) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
