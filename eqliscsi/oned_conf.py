"""Registering the driver with oned: ``oned.conf`` entries, datastore templates, hosts.

oned refuses drivers it does not know (reference §3): ``eqliscsi`` must be in the ``-d``
lists of ``TM_MAD`` and ``DATASTORE_MAD`` (and, to use it for a shared system datastore,
in ``DATASTORE_MAD``'s ``-s`` list), and have a ``TM_MAD_CONF`` and a ``DS_MAD_CONF``
stanza.  ``DATASTORE_ENCRYPTED_ATTR`` makes oned store ``EQL_PASS``/``EQL_CHAP_PASS`` of
datastore templates encrypted (it decrypts them before running the driver).

``apply_text`` makes these edits to oned.conf text and nothing else: it parses the file
(``parse``: top-level ``NAME = value`` and ``NAME = [ KEY = value, ... ]`` attributes,
``#`` comments), extends the argument lists in place, and inserts each missing stanza
after the last stanza of its kind.  Present entries are kept as they are (a stanza that
differs from the recommended one is reported), so applying twice changes nothing.
``apply_file`` writes the result atomically after a backup copy.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

DRIVER = "eqliscsi"
TM_MAD_CONF: Dict[str, str] = {  # docs/tm-actions.md, oned.conf
    "NAME": DRIVER, "LN_TARGET": "NONE", "CLONE_TARGET": "SELF", "SHARED": "YES",
    "DRIVER": "raw", "DISK_TYPE": "BLOCK", "ALLOW_ORPHANS": "YES", "DS_MIGRATE": "NO",
}
DS_MAD_CONF: Dict[str, str] = {
    "NAME": DRIVER, "REQUIRED_ATTRS": "", "PERSISTENT_ONLY": "NO", "MARKETPLACE_ACTIONS": "",
}
ENCRYPTED_ATTRS = ("EQL_PASS", "EQL_CHAP_PASS")
# (attribute, flag): the driver lists eqliscsi must be in (-s: shared system datastores)
DRIVER_LISTS = (("TM_MAD", "-d"), ("DATASTORE_MAD", "-d"), ("DATASTORE_MAD", "-s"))

_TOKEN = re.compile(r'(?P<space>\s+)|(?P<comment>#[^\n]*)|(?P<string>"(?:[^"\\]|\\.)*")'
                    r'|(?P<punct>[=\[\],])|(?P<word>[^\s=\[\],"#]+)|(?P<bad>")')


class OnedConfError(Exception):
    """oned.conf cannot be parsed or written; the message names the line."""


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    start: int
    end: int

    @property
    def value(self) -> str:
        """The text, unquoted for strings."""
        if self.kind != "string":
            return self.text
        return re.sub(r"\\(.)", r"\1", self.text[1:-1])


@dataclass
class Attribute:
    """One top-level attribute; ``spans`` locate its value tokens (key ``""`` for a
    single value, the upper-cased keys of a vector)."""

    name: str
    value: Union[str, Dict[str, str]]
    start: int
    end: int
    spans: Dict[str, Tuple[int, int]] = field(default_factory=dict)

    @property
    def vector(self) -> Dict[str, str]:
        return self.value if isinstance(self.value, dict) else {}


def _tokens(text: str) -> List[Token]:
    tokens = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup or ""
        if kind == "bad":
            raise OnedConfError(f"line {text.count(chr(10), 0, match.start()) + 1}: "
                                "unterminated string")
        if kind not in ("space", "comment"):
            tokens.append(Token(kind, match.group(), match.start(), match.end()))
    return tokens


def parse(text: str) -> List[Attribute]:
    """The top-level attributes of oned.conf text (names upper-cased, as oned reads them)."""
    tokens = _tokens(text)
    attributes = []
    index = 0

    def expect(kinds: Tuple[str, ...], texts: Tuple[str, ...] = ()) -> Token:
        nonlocal index
        if index >= len(tokens):
            raise OnedConfError("unexpected end of file")
        token = tokens[index]
        if token.kind not in kinds or (texts and token.text not in texts):
            line = text.count("\n", 0, token.start) + 1
            raise OnedConfError(f"line {line}: unexpected {token.text!r}")
        index += 1
        return token

    while index < len(tokens):
        name = expect(("word",))
        expect(("punct",), ("=",))
        if tokens[index:index + 1] and tokens[index].text == "[":
            index += 1
            vector: Dict[str, str] = {}
            spans: Dict[str, Tuple[int, int]] = {}
            while True:
                if index >= len(tokens):
                    raise OnedConfError(f"{name.text}: unterminated [ ... ]")
                token = tokens[index]
                if token.kind == "punct" and token.text in ("]", ","):
                    index += 1
                    if token.text == "]":
                        break
                    continue
                key = expect(("word",))
                expect(("punct",), ("=",))
                value = expect(("string", "word"))
                vector[key.text.upper()] = value.value
                spans[key.text.upper()] = (value.start, value.end)
            attributes.append(Attribute(name.text.upper(), vector, name.start, token.end, spans))
        else:
            value = expect(("string", "word"))
            attributes.append(Attribute(name.text.upper(), value.value, name.start, value.end,
                                        {"": (value.start, value.end)}))
    return attributes


# --- rendering ---------------------------------------------------------------------------

def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_vector(name: str, values: Dict[str, str]) -> str:
    """``NAME = [ KEY = "value", ... ]``, four pairs per line like the stock file."""
    pairs = [f"{key} = {quote(value)}" for key, value in values.items()]
    lines = [", ".join(pairs[i:i + 4]) for i in range(0, len(pairs), 4)]
    return f"{name} = [\n    " + ",\n    ".join(lines) + "\n]"


def stanzas() -> str:
    """The stanzas to add to oned.conf, as text."""
    encrypted = "\n".join(f"DATASTORE_ENCRYPTED_ATTR = {quote(attr)}"
                          for attr in ENCRYPTED_ATTRS)
    return (render_vector("TM_MAD_CONF", TM_MAD_CONF) + "\n\n"
            + render_vector("DS_MAD_CONF", DS_MAD_CONF) + "\n\n" + encrypted)


# --- applying ----------------------------------------------------------------------------

@dataclass
class Edit:
    """Replace ``text[start:end]`` by ``new``."""

    start: int
    end: int
    new: str


def _with_driver(arguments: str, flag: str) -> Optional[str]:
    """``arguments`` with eqliscsi added to the list after ``flag``; None if it is there
    or the flag is absent."""
    match = re.search(rf"(?:^|\s){re.escape(flag)}\s+(\S+)", arguments)
    if match is None or DRIVER in match.group(1).split(","):
        return None
    return arguments[:match.end(1)] + f",{DRIVER}" + arguments[match.end(1):]


def apply_text(text: str) -> Tuple[str, List[str]]:
    """oned.conf text with the driver registered, and one note per edit or finding."""
    attributes = parse(text)
    edits: List[Edit] = []
    notes: List[str] = []
    for name in dict.fromkeys(name for name, _ in DRIVER_LISTS):
        found = [a for a in attributes if a.name == name and "ARGUMENTS" in a.vector]
        flags = [flag for list_name, flag in DRIVER_LISTS if list_name == name]
        if not found:
            notes.append(f"no {name} with ARGUMENTS: add {DRIVER} to its "
                         f"{' and '.join(flags)} lists by hand")
            continue
        attribute = found[-1]
        arguments = attribute.vector["ARGUMENTS"]
        for flag in flags:
            updated = _with_driver(arguments, flag)
            if updated is not None:
                arguments = updated
                notes.append(f"{name} {flag}: {DRIVER} added")
            elif re.search(rf"(?:^|\s){re.escape(flag)}\s", arguments):
                notes.append(f"{name} {flag}: {DRIVER} already listed")
            else:
                notes.append(f"{name} has no {flag} list (every driver is allowed)")
        if arguments != attribute.vector["ARGUMENTS"]:
            start, end = attribute.spans["ARGUMENTS"]
            edits.append(Edit(start, end, quote(arguments)))
    for name, wanted in (("TM_MAD_CONF", TM_MAD_CONF), ("DS_MAD_CONF", DS_MAD_CONF)):
        kind = [a for a in attributes if a.name == name]
        ours = [a for a in kind if a.vector.get("NAME", "").lower() == DRIVER]
        if ours:
            differs = sorted(key for key, value in wanted.items()
                             if ours[0].vector.get(key, "").upper() != value.upper())
            notes.append(f"{name} for {DRIVER} already present" + (
                f" (kept as is; differs from the recommended in {', '.join(differs)})"
                if differs else ""))
            continue
        edits.append(_insert_after(text, kind, "\n\n" + render_vector(name, wanted)))
        notes.append(f"{name} for {DRIVER} added")
    encrypted = [a for a in attributes if a.name == "DATASTORE_ENCRYPTED_ATTR"]
    present = {a.value for a in encrypted if isinstance(a.value, str)}
    missing = [attr for attr in ENCRYPTED_ATTRS if attr not in present]
    if len(missing) < len(ENCRYPTED_ATTRS):
        notes.append("DATASTORE_ENCRYPTED_ATTR " + ", ".join(
            attr for attr in ENCRYPTED_ATTRS if attr in present) + " already present")
    if missing:
        lines = "".join(f"\nDATASTORE_ENCRYPTED_ATTR = {quote(attr)}" for attr in missing)
        edits.append(_insert_after(text, encrypted, "\n" + lines if not encrypted else lines))
        notes += [f"DATASTORE_ENCRYPTED_ATTR {attr} added" for attr in missing]
    for edit in sorted(edits, key=lambda e: e.start, reverse=True):
        text = text[:edit.start] + edit.new + text[edit.end:]
    return text, notes


def _insert_after(text: str, kind: List[Attribute], new: str) -> Edit:
    """An edit inserting ``new`` after the last attribute of ``kind`` (else at the end)."""
    position = kind[-1].end if kind else len(text.rstrip("\n"))
    return Edit(position, position, new)


@dataclass(frozen=True)
class FileResult:
    """What ``apply_file`` did: notes, whether the file changed, the backup copy."""

    notes: List[str]
    changed: bool
    backup: Optional[Path]


def apply_file(path: Path, dry_run: bool = False) -> FileResult:
    """Register the driver in the oned.conf at ``path`` (a backup is made first)."""
    if path.is_symlink() or not path.is_file():
        raise OnedConfError(f"{path}: not a regular file (give the path of oned.conf "
                            "itself, or of a copy of it)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OnedConfError(f"cannot read {path}: {exc}") from None
    try:
        updated, notes = apply_text(text)
    except OnedConfError as exc:
        raise OnedConfError(f"{path}: {exc}") from None
    if updated == text or dry_run:
        return FileResult(notes, updated != text, None)
    backup = path.with_name(f"{path.name}.eqliscsi-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.copy2(path, backup)
    stat = path.stat()
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(updated)
        os.chmod(temp, stat.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.chown(temp, stat.st_uid, stat.st_gid)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return FileResult(notes, True, backup)


# --- what the administrator does next ----------------------------------------------------

IMAGE_DS_TEMPLATE = """\
NAME      = "eqliscsi_images"
TYPE      = "IMAGE_DS"
DS_MAD    = "eqliscsi"
TM_MAD    = "eqliscsi"
DISK_TYPE = "BLOCK"
# optional: settings of this datastore (override eqliscsi.conf; README, Configure)
EQL_POOL  = "default"
#EQL_HOST = "192.168.0.1"
#EQL_USER = "opennebula"
#EQL_PASS = "..."      (stored encrypted with DATASTORE_ENCRYPTED_ATTR)"""

SYSTEM_DS_TEMPLATE = """\
NAME      = "eqliscsi_system"
TYPE      = "SYSTEM_DS"
TM_MAD    = "eqliscsi"
SHARED    = "NO"        # YES when the hosts share /var/lib/one/datastores (e.g. NFS)
EQL_POOL  = "default"   # volatile disks are volumes of this pool"""


def next_steps(remotes: Path, share: Path, conf: Path, oned_conf_applied: bool) -> str:
    """What is left to do after the files are installed, as text to print."""
    lists = ("   TM_MAD        = [ ..., ARGUMENTS = \"... -d <drivers>,eqliscsi\" ]\n"
             "   DATASTORE_MAD = [ ..., ARGUMENTS = \"... -d <drivers>,eqliscsi "
             "-s <drivers>,eqliscsi\" ]\n")
    oned = ("1. oned.conf was updated (see above); restart OpenNebula:\n"
            "   systemctl restart opennebula\n") if oned_conf_applied else (
        "1. Register the driver in /etc/one/oned.conf (or apply it: eqliscsi install "
        "--oned-conf /etc/one/oned.conf):\n"
        "   add eqliscsi to the driver lists:\n" + lists
        + "   and add these stanzas:\n\n"
        + "\n".join("   " + line if line else "" for line in stanzas().splitlines())
        + "\n\n   then: systemctl restart opennebula\n")
    oned += ("   For live disk snapshots (snap_create_live) add kvm-eqliscsi to "
             "LIVE_DISK_SNAPSHOTS in\n   /etc/one/vmm_exec/vmm_execrc.\n")
    templates = (
        "3. Create the image datastore (onedatastore create eqliscsi_images.tmpl):\n\n"
        + "\n".join("   " + line for line in IMAGE_DS_TEMPLATE.splitlines())
        + "\n\n   and, optionally, a system datastore whose volatile disks are volumes too "
        "(eqliscsi then also\n   moves the VM directories between hosts when they are not "
        "shared):\n\n"
        + "\n".join("   " + line for line in SYSTEM_DS_TEMPLATE.splitlines()) + "\n")
    hosts = (
        "4. On every hypervisor host (open-iscsi installed, oneadmin reachable by ssh from "
        "the front-end):\n"
        f"   install -m 0440 {share}/sudoers/eqliscsi /etc/sudoers.d/eqliscsi && visudo -c\n"
        f"   install -m 0755 {share}/udev/eqliscsi-volume-name /usr/lib/udev/\n"
        f"   install -m 0644 {share}/udev/61-eqliscsi.rules /etc/udev/rules.d/\n"
        "   udevadm control --reload\n")
    check = ("5. Check everything from the front-end, as oneadmin:\n"
             f"   eqliscsi check --remotes {remotes} --host <host1> --host <host2>\n")
    return (oned
            + f"2. Edit {conf} (EQL_HOST, EQL_USER, EQL_PASS, EQL_POOL; mode 0600, owner "
            "oneadmin) and add the group's\n   host key: ssh-keyscan <EQL_HOST> >> "
            "~oneadmin/.ssh/eqliscsi_known_hosts\n"
            + templates + hosts + check)
