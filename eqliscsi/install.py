"""Install the driver into an OpenNebula remotes tree, and uninstall it.

``<remotes>`` is ``--remotes``, else ``$ONE_LOCATION/var/remotes``, else
``/var/lib/one/remotes``.  What goes where:

=============================== ================================================= ======
source                          installed as                                      mode
=============================== ================================================= ======
``scripts_eqliscsi.py``         ``<remotes>/scripts_eqliscsi.py``                 0644
``eqliscsi/*.py``               ``<remotes>/eqliscsi/``                           0644
``datastore/eqliscsi/*``        ``<remotes>/datastore/eqliscsi/`` (shebang:       0755
                                the ``--python`` interpreter)
``tm/eqliscsi/*``               ``<remotes>/tm/eqliscsi/`` (same)                 0755
``eqliscsi.conf.sample``        ``<remotes>/etc/datastore/eqliscsi/``             0644
                                ``eqliscsi.conf.sample`` (always) and
                                ``eqliscsi.conf`` (only when no conf exists, here  0600
                                or at the 2014 location)
=============================== ================================================= ======

Like the 2014 add-on, the shared code sits at the remotes root: each action script puts
the directory two levels above itself first on ``sys.path``.  The shebang is the absolute
path of an interpreter that imports paramiko and lxml (checked, as the owner when run as
root), so actions never depend on oned's PATH.  Files and the directories the installer
makes belong to ``--owner`` (default ``oneadmin`` when run as root).

Every file is written atomically.  A file that is neither what this install writes nor
what the previous install wrote (a 2014 action script, a local edit) is first saved
under ``<remotes>/etc/datastore/eqliscsi/backup-<time>/``.  The manifest
``<remotes>/etc/datastore/eqliscsi/install-manifest.json`` lists every installed file
with its SHA-256 and the directories made; a second run changes nothing, and files an
older install put that are no longer part of the driver are removed.  ``uninstall``
removes exactly the manifest's files (those edited since are kept, with a note), the
bytecode Python cached for them and the directories made, if empty; never the conf.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Set, Tuple

from eqliscsi.config import CONF_NAME

DEFAULT_REMOTES = Path("/var/lib/one/remotes")
DEFAULT_OWNER = "oneadmin"
ETC_DIR = "etc/datastore/eqliscsi"
CONF_PATH = f"{ETC_DIR}/{CONF_NAME}"
LEGACY_CONF_PATH = f"datastore/eqliscsi/{CONF_NAME}"
SAMPLE_PATH = f"{ETC_DIR}/{CONF_NAME}.sample"
MANIFEST_PATH = f"{ETC_DIR}/install-manifest.json"
ACTION_DIRS = ("datastore/eqliscsi", "tm/eqliscsi")
DRIVER_DIRS = ("eqliscsi", *ACTION_DIRS, ETC_DIR)
MANIFEST_FORMAT = 1
MAX_SHEBANG = 127  # the kernel's limit before Linux 5.1
PYTHON_CHECK = "import paramiko, lxml.etree"
PYTHON_CHECK_TIMEOUT = 60.0
SHARE_DIR = Path(sys.prefix) / "share" / "eqliscsi"  # where a wheel puts the non-Python files

_SHEBANG = re.compile(rb"#![^\n]*\n")


class InstallError(Exception):
    """The install or uninstall cannot go on; the message says why."""


# --- what gets installed -----------------------------------------------------------------

@dataclass(frozen=True)
class SourceTree:
    """Where the files to install come from: a checkout or an installed wheel's share dir."""

    library: Path  # scripts_eqliscsi.py
    package: Path  # the eqliscsi package directory
    share: Path  # holds datastore/, tm/, eqliscsi.conf.sample, sudoers/, udev/

    @classmethod
    def find(cls) -> SourceTree:
        """The checkout this package was imported from, else ``<prefix>/share/eqliscsi``."""
        import scripts_eqliscsi

        package = Path(__file__).resolve().parent
        library = Path(scripts_eqliscsi.__file__).resolve()
        for share in (package.parent, SHARE_DIR):
            if (share / "datastore" / "eqliscsi" / "stat").is_file():
                return cls(library, package, share)
        raise InstallError(f"the action scripts are neither in {package.parent} nor in "
                           f"{SHARE_DIR}: install from a checkout or from the wheel")

    @property
    def sample_conf(self) -> Path:
        return self.share / f"{CONF_NAME}.sample"


@dataclass(frozen=True)
class Item:
    """One file to install: path relative to the remotes root, content, mode."""

    path: str
    content: bytes
    mode: int


def with_shebang(script: bytes, python: str) -> bytes:
    """``script`` with its first line replaced by ``#!<python>``."""
    match = _SHEBANG.match(script)
    if match is None:
        raise InstallError("an action script does not start with a #! line")
    return f"#!{python}\n".encode() + script[match.end():]


def planned_items(source: SourceTree, python: str) -> List[Item]:
    """Every file the driver consists of, as installed (the conf is handled apart)."""
    items = [Item("scripts_eqliscsi.py", source.library.read_bytes(), 0o644)]
    items += [Item(f"eqliscsi/{path.name}", path.read_bytes(), 0o644)
              for path in sorted(source.package.glob("*.py"))]
    for directory in ACTION_DIRS:
        for path in sorted((source.share / directory).iterdir()):
            if path.is_file() and not path.name.startswith(".") and path.name != CONF_NAME:
                items.append(Item(f"{directory}/{path.name}",
                                  with_shebang(path.read_bytes(), python), 0o755))
    items.append(Item(SAMPLE_PATH, source.sample_conf.read_bytes(), 0o644))
    return items


# --- remotes, owner, interpreter ---------------------------------------------------------

def default_remotes(environ: Mapping[str, str]) -> Path:
    """``$ONE_LOCATION/var/remotes`` for a self-contained OpenNebula, else the system one."""
    location = environ.get("ONE_LOCATION", "")
    return Path(location) / "var" / "remotes" if location else DEFAULT_REMOTES


@dataclass(frozen=True)
class Owner:
    """The account that owns the installed files."""

    name: str
    uid: int
    gid: int


def resolve_owner(name: Optional[str]) -> Optional[Owner]:
    """``name``'s ids; without a name ``oneadmin`` when root and it exists, else None
    (files keep the installing user).  Other owners than oneself need root."""
    if name is None:
        if os.geteuid() != 0:
            return None
        name = DEFAULT_OWNER
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
    else:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise InstallError(f"--owner {name}: no such user") from None
        if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
            raise InstallError(f"--owner {name} needs root (files are chown'ed)")
    return Owner(entry.pw_name, entry.pw_uid, entry.pw_gid)


def check_python(python: str, owner: Optional[Owner]) -> None:
    """The interpreter must be an absolute path fit for a shebang and import paramiko and
    lxml as the owner (the account oned runs actions as)."""
    if not os.path.isabs(python) or any(char.isspace() for char in python):
        raise InstallError(f"--python {python!r}: expected an absolute path without spaces")
    if len(python) + 3 > MAX_SHEBANG:
        raise InstallError(f"--python {python}: too long for a #! line ({MAX_SHEBANG} max)")
    if not os.access(python, os.X_OK):
        raise InstallError(f"--python {python}: not an executable file")
    as_owner = owner is not None and os.geteuid() == 0 and owner.uid != 0
    who = f" as {owner.name}" if as_owner and owner is not None else ""
    try:
        done = subprocess.run(
            [python, "-c", PYTHON_CHECK], capture_output=True, text=True, check=False,
            timeout=PYTHON_CHECK_TIMEOUT, cwd="/",
            user=owner.uid if as_owner and owner else None,
            group=owner.gid if as_owner and owner else None,
            extra_groups=[] if as_owner else None)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"--python {python} does not run{who}: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InstallError(
            f"--python {python} cannot import paramiko and lxml{who} ({last}): use the "
            "python of the virtualenv eqliscsi was pip-installed into (readable by "
            "the owner), or install python3-paramiko and python3-lxml for the system python")


# --- the manifest ------------------------------------------------------------------------

@dataclass
class Manifest:
    """What an install put into a remotes tree."""

    files: Dict[str, str] = field(default_factory=dict)  # path -> sha256
    dirs: List[str] = field(default_factory=list)  # made by the installer, parents first
    version: str = field(default_factory=lambda: package_version())
    python: str = ""

    @classmethod
    def load(cls, remotes: Path) -> Optional[Manifest]:
        """The manifest of ``remotes``, None if there is none."""
        path = remotes / MANIFEST_PATH
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InstallError(f"cannot read {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise InstallError(f"{path}: not an eqliscsi install manifest (format "
                               f"{MANIFEST_FORMAT})")
        return cls(dict(data.get("files", {})), list(data.get("dirs", [])),
                   str(data.get("version", "")), str(data.get("python", "")))

    def to_json(self) -> bytes:
        data = {"format": MANIFEST_FORMAT, "version": self.version, "python": self.python,
                "files": dict(sorted(self.files.items())), "dirs": self.dirs}
        return (json.dumps(data, indent=1) + "\n").encode()


def package_version() -> str:
    """The installed distribution's version, or ``unknown``."""
    from importlib import metadata

    try:
        return metadata.version("eqliscsi")
    except metadata.PackageNotFoundError:
        return "unknown"


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _file_digest(path: Path) -> Optional[str]:
    try:
        return sha256(path.read_bytes()) if path.is_file() and not path.is_symlink() else None
    except OSError:
        return None


# --- install -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    """One line of the install report: ``<action> <path>[ (<note>)]``."""

    action: str  # create, update, replace, unchanged, keep, remove, mkdir, warn
    path: str
    note: str = ""

    def __str__(self) -> str:
        return f"{self.action:<9} {self.path}" + (f"  ({self.note})" if self.note else "")


@dataclass
class Report:
    """The changes an install or uninstall made (or, with dry_run, would make)."""

    remotes: Path
    dry_run: bool
    changes: List[Change] = field(default_factory=list)

    def add(self, action: str, path: str, note: str = "") -> None:
        self.changes.append(Change(action, path, note))

    def count(self, action: str) -> int:
        return sum(1 for change in self.changes if change.action == action)

    @property
    def changed(self) -> bool:
        return any(c.action not in ("unchanged", "keep", "warn") for c in self.changes)


class _Writer:
    """File operations that honour dry-run, the owner and atomic replacement."""

    def __init__(self, remotes: Path, owner: Optional[Owner], dry_run: bool) -> None:
        self.remotes = remotes
        self.owner = owner
        self.dry_run = dry_run
        self.backup_dir: Optional[Path] = None

    def chown(self, path: Path) -> None:
        if self.owner is not None and not self.dry_run:
            os.chown(path, self.owner.uid, self.owner.gid, follow_symlinks=False)

    def mkdir(self, relative: str) -> None:
        path = self.remotes / relative
        if not self.dry_run:
            path.mkdir(mode=0o755)
            path.chmod(0o755)
            self.chown(path)

    def write(self, relative: str, content: bytes, mode: int) -> None:
        if self.dry_run:
            return
        path = self.remotes / relative
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(content)
            os.chmod(temp, mode)
            self.chown(Path(temp))
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def back_up(self, relative: str) -> str:
        """Move the file to the backup directory; its path there (relative)."""
        if self.backup_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.backup_dir = self.remotes / ETC_DIR / f"backup-{stamp}"
        target = self.backup_dir / relative
        if not self.dry_run:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copy2(self.remotes / relative, target)
        return str(target.relative_to(self.remotes))


@dataclass(frozen=True)
class InstallOptions:
    """What ``install`` is asked to do."""

    remotes: Path
    python: str = sys.executable
    owner: Optional[str] = None
    dry_run: bool = False


def install(options: InstallOptions, source: Optional[SourceTree] = None) -> Report:
    """Install (or update) the driver in ``options.remotes``; see the module docstring."""
    remotes = options.remotes
    if not remotes.is_dir():
        raise InstallError(f"{remotes}: no such directory (the OpenNebula remotes tree; "
                           "give it with --remotes)")
    source = source or SourceTree.find()
    owner = resolve_owner(options.owner)
    check_python(options.python, owner)
    previous = Manifest.load(remotes) or Manifest()
    manifest = Manifest(python=options.python, dirs=list(previous.dirs))
    writer = _Writer(remotes, owner, options.dry_run)
    report = Report(remotes, options.dry_run)
    _make_dirs(remotes, writer, manifest, report)
    items = planned_items(source, options.python)
    for item in items:
        _install_file(item, previous, writer, report)
        manifest.files[item.path] = sha256(item.content)
    for stale in sorted(set(previous.files) - set(manifest.files)):
        _remove_file(remotes, stale, previous.files[stale], writer, report,
                     "no longer part of the driver")
    _install_conf(remotes, source, writer, report)
    report.changes += legacy_notes(remotes)
    content = manifest.to_json()
    if report.changed or _file_digest(remotes / MANIFEST_PATH) != sha256(content):
        writer.write(MANIFEST_PATH, content, 0o644)
    return report


def _make_dirs(remotes: Path, writer: _Writer, manifest: Manifest, report: Report) -> None:
    made: Set[str] = set()
    for directory in DRIVER_DIRS:
        parts = directory.split("/")
        for depth in range(1, len(parts) + 1):
            relative = "/".join(parts[:depth])
            path = remotes / relative
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                raise InstallError(f"{path} exists and is not a directory")
            if path.exists() or relative in made:
                continue
            writer.mkdir(relative)
            made.add(relative)
            report.add("mkdir", relative + "/")
            if relative not in manifest.dirs:
                manifest.dirs.append(relative)


def _install_file(item: Item, previous: Manifest, writer: _Writer, report: Report) -> None:
    path = writer.remotes / item.path
    wanted = sha256(item.content)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise InstallError(f"{path} exists and is not a regular file")
    current = _file_digest(path)
    if current is None:
        writer.write(item.path, item.content, item.mode)
        report.add("create", item.path)
        return
    stat = path.stat()
    owner_ok = writer.owner is None or (stat.st_uid, stat.st_gid) == (writer.owner.uid,
                                                                      writer.owner.gid)
    if current == wanted and stat.st_mode & 0o7777 == item.mode and owner_ok:
        report.add("unchanged", item.path)
        return
    if current not in (wanted, previous.files.get(item.path)):
        saved = writer.back_up(item.path)
        writer.write(item.path, item.content, item.mode)
        report.add("replace", item.path, f"the file there was saved as {saved}")
        return
    writer.write(item.path, item.content, item.mode)
    report.add("update", item.path, "" if current != wanted else "mode or owner")


def _install_conf(remotes: Path, source: SourceTree, writer: _Writer,
                  report: Report) -> None:
    if (remotes / CONF_PATH).exists():
        report.add("keep", CONF_PATH, "existing conf, never overwritten")
    elif (remotes / LEGACY_CONF_PATH).exists():
        report.add("keep", LEGACY_CONF_PATH, "the 2014 add-on's conf, still read from there")
    else:
        writer.write(CONF_PATH, source.sample_conf.read_bytes(), 0o600)
        report.add("create", CONF_PATH, "from the sample: edit it")


def legacy_notes(remotes: Path) -> List[Change]:
    """Files of the 2014 add-on that the new driver does not use."""
    notes = []
    for relative, why in (("scripts_eqliscsi.sh", "the 2014 library, unused now: remove it"),
                          ("datastore/xpath_multi.rb", "the 2014 helper, unused now: "
                           "remove it")):
        if (remotes / relative).exists():
            notes.append(Change("warn", relative, why))
    for action in ("premigrate", "postmigrate"):
        relative = f"tm/shared/{action}"
        try:
            text = (remotes / relative).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if "eqliscsi" in text:
            notes.append(Change("warn", relative, "the 2014 add-on's replacement: restore "
                                "OpenNebula's own (README, Upgrade), or live migration of "
                                "VMs with eqliscsi disks will not log the hosts in"))
    return notes


# --- uninstall ---------------------------------------------------------------------------

def uninstall(remotes: Path, dry_run: bool = False) -> Report:
    """Remove what the manifest lists, the bytecode cached for it and the directories the
    install made (if empty); keep the conf, backups and files edited since."""
    manifest = Manifest.load(remotes)
    if manifest is None:
        raise InstallError(f"no {MANIFEST_PATH} in {remotes}: eqliscsi is not installed "
                           "there (by this installer)")
    writer = _Writer(remotes, None, dry_run)
    report = Report(remotes, dry_run)
    for relative, digest in sorted(manifest.files.items()):
        _remove_file(remotes, relative, digest, writer, report, "")
    for cache in _bytecode(remotes):
        report.add("remove", str(cache.relative_to(remotes)), "bytecode cache")
        if not dry_run:
            shutil.rmtree(cache) if cache.is_dir() else cache.unlink()
    root_cache = remotes / "__pycache__"
    if root_cache.is_dir() and not dry_run and not any(root_cache.iterdir()):
        root_cache.rmdir()  # Python made it for scripts_eqliscsi.py only
    report.add("remove", MANIFEST_PATH)
    if not dry_run:
        (remotes / MANIFEST_PATH).unlink()
    removed = {change.path.rstrip("/") for change in report.changes
               if change.action in ("remove", "rmdir")}
    for relative in reversed(manifest.dirs):
        path = remotes / relative
        if not path.is_dir():
            continue
        left = sorted(name for name in os.listdir(path) if f"{relative}/{name}" not in removed)
        if left:
            report.add("keep", relative + "/", f"not empty: {', '.join(left[:5])}")
            continue
        report.add("rmdir", relative + "/")
        removed.add(relative)
        if not dry_run:
            path.rmdir()
    return report


def _remove_file(remotes: Path, relative: str, digest: str, writer: _Writer, report: Report,
                 why: str) -> None:
    path = remotes / relative
    current = _file_digest(path)
    if current is None:
        report.add("gone", relative, "already removed")
    elif current != digest:
        report.add("keep", relative, "edited since it was installed")
    else:
        report.add("remove", relative, why)
        if not writer.dry_run:
            path.unlink()


def _bytecode(remotes: Path) -> List[Path]:
    """The ``__pycache__`` of the package and the library's cached bytecode."""
    caches = [remotes / "eqliscsi" / "__pycache__"]
    caches += sorted((remotes / "__pycache__").glob("scripts_eqliscsi.*.pyc"))
    return [path for path in caches if path.exists()]


# --- printing ----------------------------------------------------------------------------

def print_report(report: Report, out: Callable[[str], None], verbose: bool = False) -> None:
    """The report's lines (``unchanged`` ones only when ``verbose``) and a summary."""
    for change in report.changes:
        if verbose or change.action != "unchanged":
            out(f"  {change}")
    counts: List[Tuple[str, int]] = [
        (action, report.count(action)) for action in
        ("mkdir", "create", "update", "replace", "remove", "rmdir", "unchanged", "keep",
         "warn")]
    summary = ", ".join(f"{count} {action}" for action, count in counts if count)
    prefix = "dry run, nothing changed: would " if report.dry_run else ""
    out(f"{prefix}{summary or 'nothing to do'} in {report.remotes}")
