"""Volume names, image SOURCEs and TM ``host:path`` arguments.

Group rule: a volume name is 1-64 characters from ``A-Z a-z 0-9 . - :``.  Ours never contain
``:`` (oned treats a SOURCE with ``:`` as "host:path" and a TM line cannot carry spaces), so
a SOURCE is simply the volume name.

Image volumes: ``<clean image name>.<image id>``, e.g. ``ubuntu-14-04-server.42`` - the
2014 v0.2 format, so SOURCEs of images registered by the 2014 driver keep working.  The
``.`` before the id is the only dot (``clean_name`` turns dots into ``-``), which makes the
name unique per image id.

Per-VM clones of non-persistent disks: ``<image volume>-v<vm id>-d<disk id>``, unique per
VM *and* disk (the 2014 ``<volume>-<vmid>`` clashed when one VM had the same image twice).

Length budget (64): an image volume is at most ``64 - CLONE_SUFFIX_RESERVE`` = 46
characters, so its clone names fit: the suffix ``-v<vm id>-d<disk id>`` takes at most 18
(a 10-digit VM id, a 4-digit disk id).  The cleaned image name is cut to what is left after
``.<image id>``.  Longer SOURCEs (2014 names had no limit) get their clone name's base cut
instead; the ``-v…-d…`` suffix alone keeps clone names unique.

2014 v0.1 SOURCEs were ``<group ip>:<target iqn>``; the volume name is the IQN's tail after
its 36-character generated part (``iqn.2001-05.com.equallogic:0-8a0906-4a1c7e105-
1e2000000385a3a1-<volume>``).  oned passes such a SOURCE to TM actions verbatim (it only
prefixes ``fe:`` to SOURCEs without ``:``), which ``volume_from_tm_source`` handles.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Optional

from eqliscsi.oned import InputError

VOLUME_NAME_MAX = 64
MAX_VM_ID_DIGITS = 10  # OpenNebula ids are 32-bit integers; also the bound for image ids
MAX_DISK_ID_DIGITS = 4
CLONE_SUFFIX_RESERVE = len("-v") + MAX_VM_ID_DIGITS + len("-d") + MAX_DISK_ID_DIGITS
IMAGE_VOLUME_MAX = VOLUME_NAME_MAX - CLONE_SUFFIX_RESERVE
FALLBACK_NAME = "one"

_VOLUME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")
_LEGACY_SOURCE = re.compile(
    r"(?P<host>[A-Za-z0-9.-]+):iqn\.[^:\s]+:"
    r"\d-[0-9a-f]{6}-[0-9a-f]{9}-[0-9a-f]{16}-(?P<volume>\S+)"
)
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DISK_FILE = re.compile(r"disk\.(\d+)")


def clean_name(name: str) -> str:
    """``name`` made volume-safe: accents dropped, lower case, ``_``, whitespace and ``.``
    to ``-``, other characters removed, ``-`` runs collapsed and trimmed; never empty."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    dashed = re.sub(r"[\s_.]", "-", ascii_name.lower())
    kept = re.sub(r"[^a-z0-9-]", "", dashed)
    return re.sub(r"-{2,}", "-", kept).strip("-") or FALLBACK_NAME


def image_volume_name(image_name: str, image_id: int) -> str:
    """The volume (and SOURCE) of image ``image_id``: ``<clean name>.<id>``, <= 46 chars."""
    if not 0 <= image_id < 10**MAX_VM_ID_DIGITS:
        raise InputError(f"invalid image id {image_id}")
    suffix = f".{image_id}"
    base = clean_name(image_name)[:IMAGE_VOLUME_MAX - len(suffix)].rstrip("-")
    return f"{base or FALLBACK_NAME}{suffix}"


def clone_volume_name(volume: str, vm_id: int, disk_id: int) -> str:
    """The per-VM clone of ``volume`` for disk ``disk_id`` of VM ``vm_id``."""
    if not 0 <= vm_id < 10**MAX_VM_ID_DIGITS or not 0 <= disk_id < 10**MAX_DISK_ID_DIGITS:
        raise InputError(f"VM id {vm_id} or disk id {disk_id} out of range for a clone name")
    suffix = f"-v{vm_id}-d{disk_id}"
    return check_volume_name(volume)[:VOLUME_NAME_MAX - len(suffix)].rstrip("-.") + suffix


def check_volume_name(name: str) -> str:
    """``name`` if it is a volume name this driver may use, else InputError."""
    problem = None
    if not name or len(name) > VOLUME_NAME_MAX:
        problem = f"must be 1-{VOLUME_NAME_MAX} characters"
    elif ":" in name or any(char.isspace() for char in name):
        problem = "must not contain ':' or spaces"
    elif not _VOLUME.fullmatch(name) or ".." in name:
        problem = "must be letters, digits, '.' and '-', start with a letter or digit, no '..'"
    if problem:
        raise InputError(f"invalid volume name {name[:80]!r}: {problem}")
    return name


def volume_from_source(source: str) -> str:
    """The volume of an image SOURCE (a volume name, or a 2014 v0.1 ``host:iqn``)."""
    legacy = _LEGACY_SOURCE.fullmatch(source)
    return check_volume_name(legacy.group("volume") if legacy else source)


def volume_from_tm_source(argument: str) -> str:
    """The volume of a CLONE/LN source argument: ``fe:<SOURCE>``, or a v0.1 SOURCE as is."""
    if _LEGACY_SOURCE.fullmatch(argument):
        return volume_from_source(argument)
    return volume_from_source(parse_host_path(argument).path)


@dataclass(frozen=True)
class HostPath:
    """A TM ``host:path`` argument, path normalised (``//`` collapsed, no trailing ``/``)."""

    host: str
    path: str

    @property
    def disk_id(self) -> Optional[int]:
        """N for a ``.../disk.N`` path, None for anything else (e.g. the VM directory)."""
        match = _DISK_FILE.fullmatch(self.path.rsplit("/", 1)[-1])
        return int(match.group(1)) if match else None


def parse_host_path(argument: str) -> HostPath:
    """Split ``host:path`` (exactly one ``:``); InputError for anything else or ``..``."""
    host, colon, path = argument.partition(":")
    if not colon:
        raise InputError(f"invalid TM argument {argument[:120]!r}: expected host:path")
    if ":" in path:
        raise InputError(f"invalid TM argument {argument[:120]!r}: more than one ':'")
    if not _HOST.fullmatch(host):
        raise InputError(f"invalid host {host[:80]!r} in TM argument")
    if any(char.isspace() or ord(char) < 32 for char in path):
        raise InputError(f"invalid path in TM argument {argument[:120]!r}: contains spaces")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise InputError(f"invalid path in TM argument {argument[:120]!r}: contains '..'")
    if not parts and not path.startswith("/"):
        raise InputError(f"invalid TM argument {argument[:120]!r}: empty path")
    normalised = ("/" if path.startswith("/") else "") + "/".join(parts)
    return HostPath(host, normalised)
