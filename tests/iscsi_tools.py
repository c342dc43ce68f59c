"""The initiator side of iSCSI tests: real libiscsi through qemu-io, qemu-img, qemu-nbd, iscsi-ls.

Every function logs in as ``initiator_name`` (qemu's own default is
``iqn.2008-11.org.linux-kvm``, so it is always passed explicitly).  CHAP secrets never appear
on a command line: qemu reads them from a 0600 file through ``--object secret``, iscsi-ls
from libiscsi's ``LIBISCSI_CHAP_USERNAME``/``LIBISCSI_CHAP_PASSWORD`` environment variables.
Every subprocess runs with a timeout.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

DEFAULT_INITIATOR = "iqn.2024-01.org.example:host1"
TOOL_TIMEOUT = 30.0
SESSION_TIMEOUT = 5.0  # qemu-nbd: log in and serve, or exit after SIGTERM
SECTOR = 512
TOOLS = ("tgtd", "tgtadm", "qemu-img", "qemu-io", "qemu-nbd", "iscsi-ls", "iscsi-inq")


@dataclass(frozen=True)
class Chap:
    user: str
    secret: str


class InitiatorError(RuntimeError):
    """An initiator tool failed; the message carries its output."""


@functools.cache
def missing_requirements() -> Optional[str]:
    """Why real iSCSI tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (tgtd)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (packages tgt, qemu-utils, libiscsi-bin)"
    formats = _run(["qemu-img", "--help"], check=False).stdout
    if not re.search(r"^Supported formats:.*\biscsi\b", formats, flags=re.MULTILINE):
        return "qemu-img has no iscsi driver (package qemu-block-extra)"
    return None


def require_iscsi() -> None:
    """Skip when real iSCSI cannot run here; fail instead when running in CI."""
    reason = missing_requirements()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"iSCSI tests must run in CI: {reason}")
    pytest.skip(reason)


def _run(
    cmd: Sequence[str], check: bool = True, env: Optional[Dict[str, str]] = None
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            list(cmd),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise InitiatorError(f"{cmd[0]} timed out after {TOOL_TIMEOUT}s") from None
    if check and result.returncode != 0:
        raise InitiatorError(
            f"{cmd[0]} failed (rc {result.returncode}): {(result.stderr or result.stdout).strip()}"
        )
    return result


def _opt(value: object) -> str:
    """A value for a qemu option string (a comma is written twice)."""
    return str(value).replace(",", ",,")


@contextmanager
def _lun_options(
    portal: str, iqn: str, lun: int, initiator_name: str, chap: Optional[Chap], prefix: str = ""
) -> Iterator[Tuple[List[str], str]]:
    """qemu ``--object`` arguments and an ``--image-opts`` string (keys after ``prefix``)."""
    options: Dict[str, object] = {
        "driver": "iscsi",
        "transport": "tcp",
        "portal": portal,
        "target": iqn,
        "lun": lun,
        "initiator-name": initiator_name,
    }
    with tempfile.TemporaryDirectory(prefix="eqlsim-initiator-") as tmp:
        objects: List[str] = []
        if chap is not None:
            secret_file = Path(tmp) / "chap-secret"
            fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(chap.secret)
            objects = ["--object", f"secret,id=chap0,file={_opt(secret_file)}"]
            options["user"] = chap.user
            options["password-secret"] = "chap0"
        yield objects, ",".join(f"{prefix}{key}={_opt(value)}" for key, value in options.items())


def _libiscsi_env(chap: Optional[Chap]) -> Dict[str, str]:
    """The environment for libiscsi's own tools: CHAP credentials, or none at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBISCSI_CHAP_")}
    if chap is not None:
        env["LIBISCSI_CHAP_USERNAME"] = chap.user
        env["LIBISCSI_CHAP_PASSWORD"] = chap.secret
    return env


def _read_window(objects: List[str], file_options: str, offset: int, length: int) -> bytes:
    """Exact bytes of an image: qemu-img converts the enclosing sector range into a file."""
    if length <= 0:
        return b""
    start = offset // SECTOR * SECTOR
    end = -(-(offset + length) // SECTOR) * SECTOR
    with tempfile.TemporaryDirectory(prefix="eqlsim-read-") as tmp:
        out = Path(tmp) / "window.raw"
        source = f"driver=raw,offset={start},size={end - start},{file_options}"
        _run(["qemu-img", "convert", *objects, "--image-opts", source, "-O", "raw", str(out)])
        data = out.read_bytes()
    return data[offset - start : offset - start + length]


def write_pattern(
    portal: str,
    iqn: str,
    lun: int,
    offset: int,
    length: int,
    byte: int,
    initiator_name: str = DEFAULT_INITIATOR,
    chap: Optional[Chap] = None,
) -> None:
    """Write ``length`` bytes of value ``byte`` at ``offset`` (qemu-io)."""
    with _lun_options(portal, iqn, lun, initiator_name, chap) as (objects, options):
        _run(
            [
                "qemu-io",
                *objects,
                "--image-opts",
                options,
                "-c",
                f"write -P {byte:#x} {offset} {length}",
            ]
        )


def read_bytes(
    portal: str,
    iqn: str,
    lun: int,
    offset: int,
    length: int,
    initiator_name: str = DEFAULT_INITIATOR,
    chap: Optional[Chap] = None,
) -> bytes:
    """Read exactly ``length`` bytes at ``offset`` of the LUN."""
    with _lun_options(portal, iqn, lun, initiator_name, chap, prefix="file.") as (objects, opts):
        return _read_window(objects, opts, offset, length)


def copy_file_into(
    portal: str,
    iqn: str,
    lun: int,
    src_path: Path,
    fmt: str = "raw",
    initiator_name: str = DEFAULT_INITIATOR,
    chap: Optional[Chap] = None,
) -> None:
    """Write an image file onto the LUN from offset 0 (``qemu-img convert -n``)."""
    with _lun_options(portal, iqn, lun, initiator_name, chap) as (objects, options):
        _run(
            [
                "qemu-img",
                "convert",
                "-n",
                *objects,
                "-f",
                fmt,
                str(src_path),
                "--target-image-opts",
                options,
            ]
        )


def _info(
    portal: str, iqn: str, lun: int, initiator_name: str, chap: Optional[Chap]
) -> subprocess.CompletedProcess[str]:
    with _lun_options(portal, iqn, lun, initiator_name, chap) as (objects, options):
        return _run(
            ["qemu-img", "info", "--output=json", *objects, "--image-opts", options], check=False
        )


def lun_size(
    portal: str,
    iqn: str,
    lun: int,
    initiator_name: str = DEFAULT_INITIATOR,
    chap: Optional[Chap] = None,
) -> int:
    """The LUN's size in bytes as a fresh login sees it."""
    result = _info(portal, iqn, lun, initiator_name, chap)
    if result.returncode != 0:
        raise InitiatorError(f"qemu-img info failed: {result.stderr.strip()}")
    return int(json.loads(result.stdout)["virtual-size"])


def can_login(
    portal: str,
    iqn: str,
    lun: int,
    initiator_name: str = DEFAULT_INITIATOR,
    chap: Optional[Chap] = None,
) -> bool:
    """True when a login to the LUN (and reading its capacity) succeeds."""
    return _info(portal, iqn, lun, initiator_name, chap).returncode == 0


def discover(
    portal: str, initiator_name: str = DEFAULT_INITIATOR, chap: Optional[Chap] = None
) -> List[str]:
    """The target names SendTargets discovery shows to this initiator (iscsi-ls)."""
    result = _run(["iscsi-ls", "-i", initiator_name, f"iscsi://{portal}"], env=_libiscsi_env(chap))
    return re.findall(r"^Target:(\S+) Portal:", result.stdout, flags=re.MULTILINE)


def inquiry(
    portal: str,
    iqn: str,
    lun: int,
    initiator_name: str = DEFAULT_INITIATOR,
    chap: Optional[Chap] = None,
) -> Dict[str, str]:
    """Standard INQUIRY fields (``Vendor``, ``Product``, ``Revision``, ...) from iscsi-inq."""
    result = _run(
        ["iscsi-inq", "-i", initiator_name, f"iscsi://{portal}/{iqn}/{lun}"],
        env=_libiscsi_env(chap),
    )
    fields: Dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


@contextmanager
def iscsi_session(
    portal: str,
    iqn: str,
    lun: int,
    initiator_name: str = DEFAULT_INITIATOR,
    chap: Optional[Chap] = None,
) -> Iterator[Path]:
    """A long-lived login: qemu-nbd holds the session and serves the LUN on the yielded socket.

    The process is ended on exit, with SIGKILL when it does not react to SIGTERM in time
    (qemu-nbd ignores SIGTERM while libiscsi tries to reconnect to a vanished target).
    """
    with (
        _lun_options(portal, iqn, lun, initiator_name, chap, prefix="file.") as (
            objects,
            options,
        ),
        tempfile.TemporaryDirectory(prefix="eqlsim-session-") as tmp,
    ):
        sock, log = Path(tmp) / "nbd.sock", Path(tmp) / "qemu-nbd.log"
        with open(log, "wb") as log_file:
            proc = subprocess.Popen(
                [
                    "qemu-nbd",
                    *objects,
                    "--persistent",
                    "--socket",
                    str(sock),
                    "--image-opts",
                    f"driver=raw,{options}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + SESSION_TIMEOUT
            # The socket appears before the login ends; an answered NBD request means it did.
            while not (sock.exists() and _serves(sock)):
                if proc.poll() is not None:
                    raise InitiatorError(
                        f"qemu-nbd exited with {proc.returncode}: {log.read_text().strip()}"
                    )
                if time.monotonic() > deadline:
                    raise InitiatorError(f"qemu-nbd did not serve within {SESSION_TIMEOUT}s")
                time.sleep(0.01)
            yield sock
        finally:
            _end(proc)


def _serves(sock: Path) -> bool:
    info = ["qemu-img", "info", "--image-opts", f"driver=nbd,path={_opt(sock)}"]
    return _run(info, check=False).returncode == 0


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(1.0)
        except subprocess.TimeoutExpired:
            proc.kill()
    try:
        proc.wait(SESSION_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass


def read_session(sock: Path, offset: int, length: int) -> bytes:
    """Read exactly ``length`` bytes at ``offset`` through an ``iscsi_session`` socket."""
    return _read_window([], f"file.driver=nbd,file.path={_opt(sock)}", offset, length)


def established_connections(portal: str) -> int:
    """Established TCP connections to an IPv4 ``host:port`` portal, from /proc/net/tcp."""
    host, port = portal.rsplit(":", 1)
    local = f"{socket.inet_aton(host)[::-1].hex().upper()}:{int(port):04X}"
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[1] == local and fields[3] == "01":
            count += 1
    return count
