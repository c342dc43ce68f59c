"""The bad input corpus: generated and hand-written inputs every action must refuse before
it sends a Group CLI command, contacts a host or changes anything.

A case is (kind, action, payload): ``raw`` payloads go to a DS action as its stdin data
as they are (not base64 of an XML); ``xml`` payloads are base64-encoded XML; ``tm``
payloads are a TM action's argv.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from tests.ds_harness import ds_xml

DS_ACTIONS = ("cp", "mkfs", "clone", "rm", "monitor", "snap_delete", "snap_revert",
              "snap_flatten", "stat")
GROUP_DS_ACTIONS = ("cp", "mkfs", "clone", "rm", "snap_delete", "snap_revert", "snap_flatten")


@dataclass(frozen=True)
class Case:
    name: str
    action: str
    kind: str  # raw | xml | tm
    payload: Tuple[str, ...]


def _raw_cases() -> List[Case]:
    """Data that is not base64 of an XML document."""
    payloads = {
        "not-base64": "!!!not base64!!!",
        "bad-padding": "PERBVEE",
        "embedded-nul": "PERBVEE+\x00",
        "unicode": "PERBVEE+é",
        "whitespace-only": "   ",
        "empty": "",
        "base64-of-garbage": base64.b64encode(b"\x00\xff\xfe garbage").decode(),
        "base64-of-text": base64.b64encode(b"hello world").decode(),
        "base64-of-empty-xml": base64.b64encode(b"<DS_DRIVER_ACTION_DATA/>").decode(),
    }
    return [Case(f"raw/{name}/{action}", action, "raw", (payload,))
            for name, payload in payloads.items() for action in DS_ACTIONS]


def _truncated_cases() -> List[Case]:
    """Valid action XML cut at several points, and XML that is not well-formed."""
    full = ds_xml({"NAME": "Data", "TYPE": "2", "SIZE": "16", "PATH": "", "FORMAT": "raw",
                   "FS": "", "SOURCE": "ubuntu.42", "TARGET_SNAPSHOT": "0"})
    cases = []
    for fraction in (0.05, 0.3, 0.6, 0.9, 0.99):
        cut = full[: int(len(full) * fraction)]
        for action in ("mkfs", "rm", "monitor", "cp", "snap_revert"):
            cases.append(Case(f"truncated-{fraction}/{action}", action, "xml", (cut,)))
    broken = {
        "not-xml": "this is not xml",
        "unclosed": "<DS_DRIVER_ACTION_DATA><IMAGE><ID>42</ID>",
        "mismatched": "<DS_DRIVER_ACTION_DATA><IMAGE></DATASTORE></DS_DRIVER_ACTION_DATA>",
        "entity": ('<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                   "<DS_DRIVER_ACTION_DATA><IMAGE><NAME>&e;</NAME></IMAGE>"
                   "</DS_DRIVER_ACTION_DATA>"),
        "billion-laughs": ('<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
                           "<DS_DRIVER_ACTION_DATA><IMAGE><NAME>&b;</NAME></IMAGE>"
                           "</DS_DRIVER_ACTION_DATA>"),
        "wrong-root": "<VM><ID>1</ID></VM>",
    }
    for name, text in broken.items():
        for action in ("mkfs", "rm", "monitor"):
            cases.append(Case(f"xml/{name}/{action}", action, "xml", (text,)))
    return cases


def _missing_cases() -> List[Case]:
    """Required elements missing."""
    cases = [Case(f"missing/no-image/{action}", action, "xml", (ds_xml(with_image=False),))
             for action in GROUP_DS_ACTIONS]
    missing: Dict[str, Dict[str, Optional[str]]] = {
        "mkfs": {"SIZE": None}, "rm": {"SOURCE": None}, "clone": {"PATH": None},
        "snap_delete": {"TARGET_SNAPSHOT": None}, "snap_revert": {"TARGET_SNAPSHOT": None},
        "snap_flatten": {"TARGET_SNAPSHOT": None}, "cp": {"PATH": None},
    }
    for action, fields in missing.items():
        base: Dict[str, Optional[str]] = {
            "SOURCE": "ubuntu.42", "PATH": "golden.7", "CLONING_ID": "7", "SIZE": "16",
            "TARGET_SNAPSHOT": "0", "FORMAT": "raw", "FS": ""}
        if action == "cp":
            base["PATH"] = "/var/tmp/image.raw"
        base.update(fields)
        cases.append(Case(f"missing/{next(iter(fields))}/{action}", action, "xml",
                          (ds_xml(base),)))
        empty = {key: ("" if value is None else value) for key, value in base.items()}
        cases.append(Case(f"empty/{next(iter(fields))}/{action}", action, "xml",
                          (ds_xml(empty),)))
    return cases


SIZES = ("0", "-1", "-16", "abc", "1.5", "16MB", "1e3", "0x10", "99999999999999999999",
         "2147483648000", " ", "16 16", "١٦")


def _size_cases() -> List[Case]:
    cases = []
    for size in SIZES:
        cases.append(Case(f"size/{size!r}/mkfs", "mkfs", "xml", (ds_xml(
            {"NAME": "Data", "SIZE": size, "PATH": "", "FORMAT": "raw", "FS": ""}),)))
        cases.append(Case(f"size/{size!r}/clone", "clone", "xml", (ds_xml(
            {"ID": "43", "NAME": "Copy", "PATH": "golden.7", "SIZE": size, "CLONING_ID": "7"}),)))
    # IMAGE/ID and CLONING_ID are not in this list: the driver takes the image id from its
    # argument, and CLONING_ID only names the source in a log line.
    for value in ("abc", "-1", "1.5", "", "٣"):
        cases.append(Case(f"target-snapshot/{value!r}/snap_revert", "snap_revert", "xml",
                          (ds_xml({"SOURCE": "ubuntu.42", "TARGET_SNAPSHOT": value}),)))
        cases.append(Case(f"target-snapshot/{value!r}/snap_delete", "snap_delete", "xml",
                          (ds_xml({"SOURCE": "ubuntu.42", "TARGET_SNAPSHOT": value}),)))
    return cases


HOSTILE_SOURCES = (
    "../../etc/passwd", "/etc/passwd", "ubuntu.42; volume delete keep.9",
    "ubuntu.42\nvolume delete keep.9", "ubuntu.42\rvolume delete keep.9", "$(reboot)",
    "`id`", "vol name", 'vol"quote', "vol'quote", "völume", "x" * 300, "-rf", "a|b",
    "a&&b", "a>b", "fe:../../x", "ubuntu.42 show", "*", "vol#comment", "\\x00", "a\tb",
)


def _source_cases() -> List[Case]:
    cases = []
    for source in HOSTILE_SOURCES:
        for action in ("rm", "snap_delete", "snap_revert", "snap_flatten"):
            cases.append(Case(f"source/{source[:20]!r}/{action}", action, "xml", (ds_xml(
                {"SOURCE": source, "PATH": "", "TARGET_SNAPSHOT": "0"}),)))
        cases.append(Case(f"clone-path/{source[:20]!r}/clone", "clone", "xml", (ds_xml(
            {"ID": "43", "NAME": "Copy", "PATH": source, "SIZE": "16", "CLONING_ID": "7"}),)))
    return cases


BAD_PATHS = (
    "/etc/passwd", "/etc/shadow", "/root/.ssh/id_rsa", "/var/lib/one/.one/one_auth",
    "/var/lib/one/.ssh/id_rsa", "/proc/self/environ", "/dev/sda", "../../../etc/passwd",
    "/var/tmp/../../etc/passwd", "file:///etc/passwd", "ftp://127.0.0.1/x.img",
    "gopher://127.0.0.1/x", "javascript:alert(1)", "smb://127.0.0.1/share/x",
    "http://127.0.0.1:9/x.img", "https://127.0.0.1:9/x.img", "-o/tmp/x", "",
    "/nonexistent/image.raw", "http://user:pw@[::1/x",
)


def _path_cases() -> List[Case]:
    cases = []
    for path in BAD_PATHS:
        for action in ("cp", "stat"):
            cases.append(Case(f"path/{path[:24]!r}/{action}", action, "xml", (ds_xml(
                {"NAME": "Img", "PATH": path, "SIZE": "16"},
                datastore_template={"SAFE_DIRS": "/var/tmp"}),)))
    return cases


HOSTILE_NAMES = ("a;b", "$(id)", "`id`", "a\nb", 'a"b', "a'b", "ümläut", "x" * 300, "-", "",
                 "..", "a b c", "\t", "#", "日本語")


def _name_cases() -> List[Case]:
    """Hostile image names combined with a bad size: refused before anything, whatever the
    name does (names alone are made safe, not refused: see test_rel_bad_input)."""
    return [Case(f"name/{name[:12]!r}/mkfs", "mkfs", "xml", (ds_xml(
        {"NAME": name, "SIZE": "-1", "PATH": "", "FORMAT": "raw"}),)) for name in HOSTILE_NAMES]


DISK = "/var/lib/one//datastores/0/17/disk.0"
BAD_HOSTPATHS = (
    f"host1:{DISK}:extra", f"host1::{DISK}", f":{DISK}", f"host1:{DISK}/../../../etc",
    "host1:/var/lib/one//datastores/0/17/disk 0", "host1;id:" + DISK, "$(id):" + DISK,
    "host1:" + DISK + "\n", "host1", "host1:/var/lib/one//datastores/0/18/disk.0",
    "host1:relative/17/disk.0", "host1:/var/lib/one//datastores/0/17/disk.x",
)


def _tm_cases() -> List[Case]:
    cases = []
    for path in BAD_HOSTPATHS:
        argvs = {
            "ln": ("fe:ubuntu.42", path, "17", "100"),
            "clone": ("fe:ubuntu.42", path, "17", "100"),
            "mkswap": ("64", path, "17", "0"),
            "delete": (path, "17", "100"),
            "resize": (path, "64", "17", "100"),
            "snap_create": (path, "0", "17", "100"),
            "mvds": (path, "ubuntu.42", "17", "100"),
        }
        for action, argv in argvs.items():
            cases.append(Case(f"tm/{path[-16:]!r}/{action}", action, "tm", argv))
    for argv in (("fe:ubuntu.42", "host1:" + DISK, "x", "100"),
                 ("fe:ubuntu.42", "host1:" + DISK, "17"),
                 ("fe:ubuntu.42", "host1:" + DISK, "-17", "100"),
                 ("fe:ubuntu.42; reboot", "host1:" + DISK, "17", "100"),
                 ("fe:../../etc/passwd", "host1:" + DISK, "17", "100")):
        cases.append(Case(f"tm-args/{argv[0][:10]}-{argv[2]}/{len(argv)}", "clone", "tm", argv))
    return cases


def corpus() -> List[Case]:
    return (_raw_cases() + _truncated_cases() + _missing_cases() + _size_cases()
            + _source_cases() + _path_cases() + _name_cases() + _tm_cases())
