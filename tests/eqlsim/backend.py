"""Where the simulated group keeps volume data, and how it exposes it over iSCSI.

The group state (state.py) decides *what* exists; a backend mirrors it into real storage.
Every stored object (volume or snapshot) has an immutable ``obj_id`` chosen by the state
(safe characters only), so renames never move data.

* ``FileBackend``: one sparse file per object under ``<state-dir>/data``; no iSCSI.
* ``TgtBackend`` (iscsi.py): the same files, each published as a real tgtd target.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple


@dataclass(frozen=True)
class AccessRule:
    """One access control record, as the group stores it (None = criterion not set)."""

    initiator: Optional[str] = None
    ipaddress: Optional[str] = None  # may hold '*' wildcards per octet, e.g. 10.1.1.*
    chap_user: Optional[str] = None


@dataclass(frozen=True)
class Publication:
    """How one object must be visible on the iSCSI portal right now."""

    iqn: str
    unrestricted: bool = False
    rules: Tuple[AccessRule, ...] = ()
    chap_secrets: Dict[str, str] = field(default_factory=dict)  # CHAP user -> password
    read_only: bool = False


@dataclass(frozen=True)
class Connection:
    initiator: str
    ipaddress: str


class FileBackend:
    """Sparse files only: data operations are real, nothing is published."""

    data_lun = 0

    def __init__(self, state_dir: Path) -> None:
        self.data_dir = Path(state_dir) / "data"

    @property
    def portal(self) -> Optional[str]:
        """``host:port`` of the iSCSI portal, or None when volumes are not published."""
        return None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def stop(self) -> None:
        """Nothing runs for plain files."""

    def path(self, obj_id: str) -> Path:
        return self.data_dir / f"{obj_id}.img"

    def create(self, obj_id: str, size_bytes: int) -> None:
        with open(self.path(obj_id), "wb") as f:
            f.truncate(size_bytes)

    def copy(self, src_id: str, dst_id: str) -> None:
        """Copy the data of one object into a new object (clone, snapshot, restore)."""
        src, dst = self.path(src_id), self.path(dst_id)
        tmp = dst.with_suffix(".tmp")
        _sparse_copy(src, tmp)
        os.replace(tmp, dst)

    def resize(self, obj_id: str, size_bytes: int) -> None:
        with open(self.path(obj_id), "r+b") as f:
            f.truncate(size_bytes)

    def delete(self, obj_id: str) -> None:
        self.unpublish(obj_id)
        self.path(obj_id).unlink(missing_ok=True)

    def publish(self, obj_id: str, publication: Publication) -> None:
        """Make the object reachable as described (idempotent)."""

    def unpublish(self, obj_id: str) -> None:
        """Take the object off the portal and drop its connections (idempotent)."""

    def connections(self, obj_id: str) -> List[Connection]:
        return []


def _sparse_copy(src: Path, dst: Path) -> None:
    """Copy a file keeping holes: only data extents are read and written."""
    size = src.stat().st_size
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.truncate(size)
        fd = fin.fileno()
        offset = 0
        while offset < size:
            try:
                data_start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # no more data after offset
                break
            hole_start = os.lseek(fd, data_start, os.SEEK_HOLE)
            fin.seek(data_start)
            fout.seek(data_start)
            remaining = hole_start - data_start
            while remaining > 0:
                chunk = fin.read(min(remaining, 8 << 20))
                if not chunk:
                    break
                fout.write(chunk)
                remaining -= len(chunk)
            offset = hole_start
    shutil.copystat(src, dst)
