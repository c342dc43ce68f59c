"""The front-end data path of ``cp`` and ``mkfs``: fetch, stage, inspect, write, verify.

Nothing here talks to the group; ``ds_actions`` creates the volume and the access record
and hands over a ``LunTarget``.  The front-end has no kernel iSCSI initiator: every LUN
read and write is qemu's own libiscsi (``driver=iscsi``, package qemu-block-extra;
qemu-img 5.0 or newer for ``--target-is-zero``).

Fetching an image (``fetch_image``), before any Group CLI command is sent:

* a local file (absolute path; ``image_source.PathPolicy`` refuses restricted
  directories) is used in place, unless it must be decompressed;
* an http(s) URL is downloaded into the staging directory (certificates verified,
  redirects to http(s) only, URL credentials sent as Basic auth and masked; at most
  ``LIMIT_TRANSFER_BW`` bytes/s when the datastore sets it);
* any other ``scheme://`` PATH (marketplace pseudo-URLs such as ``s3://``, ``lxd://``)
  is handed to OpenNebula's ``<remotes>/datastore/downloader.sh`` when it exists: run with
  an argument list (never a shell), ``--md5``/``--sha1``/``--nodecomp``/``--limit`` as
  its own options, writing into the staging directory, ``DRV_ACTION`` in its environment.

MD5/SHA1 (from the image template) are checked over the bytes as fetched, before
decompression, as ``downloader.sh`` does.  gzip, bzip2 and xz data is decompressed into
the staging directory unless the datastore says ``NO_DECOMPRESS=yes``.  Staging files are
sparse (all-zero 64 KiB blocks are skipped), mode 0600, in a private 0700 directory that
``staging_area`` always removes.

``inspect_image`` asks ``qemu-img info`` for the format and virtual size and refuses what
could make qemu read other files of the front-end: backing files, qcow2 external data
files, VMDK extents in other files, and encrypted images.

Writing (``write_image``): ``qemu-img convert -n --target-is-zero -W -m 16`` with the
source and the LUN given as option strings.  ``--target-is-zero`` skips zero areas, so
only allocated data is written: the target is always a volume created by this action,
which reads as zeros.  A CHAP secret reaches qemu only through a 0600 file named by
``--object secret,...,file=``; it is never on a command line or in a URL.

Verifying (``ImageVerifier``), over the image's length only (the LUN is usually larger:
the group rounds volumes up to whole 15 MB pages):

* ``sample``: 64 KiB windows at the start, at the end and at 30 random places of the
  image, read through qemu from the source (so qcow2 & co. are compared as the guest sees
  them) and from the LUN in one ``qemu-img convert`` each (which opens the image or the
  LUN once: one iSCSI login), compared byte for byte.  Many small windows rather than a
  few large ones: a write that went to the wrong volume, stopped short, or lost or
  misplaced a request is caught by the places sampled, not by the bytes per place, and
  only 2 MiB are read back.  The source's windows are read in the background while the
  volume is made and written;
* ``full``: ``qemu-img compare`` of the whole image with the LUN's first bytes;
* ``off``: nothing.

Every subprocess runs with captured output (nothing reaches stdout) and a time limit:
one hour plus 4 seconds per MB of the image for transfers (at least ~256 KiB/s), 60 s
for ``qemu-img info``, 10 minutes for ``mkfs``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from eqliscsi.image_source import (
    HEAD_BYTES,
    READ_CHUNK,
    PathPolicy,
    compression,
    decompressed,
    open_url,
)
from eqliscsi.oned import DriverError, InputError, log_info

if TYPE_CHECKING:  # http.client (~12 ms) is imported only when a URL is fetched
    from http.client import HTTPResponse

MIB = 1024 * 1024
SPARSE_BLOCK = 64 * 1024
QEMU_INFO_TIMEOUT = 60.0
MKFS_TIMEOUT = 600.0
TRANSFER_BASE_SECONDS = 3600.0
TRANSFER_SECONDS_PER_MB = 4.0
SAMPLE_WINDOW = 64 * 1024  # bytes compared per place
SAMPLE_WINDOWS = 30  # random windows besides the first and the last
ALLOWED_FORMATS = frozenset({"raw", "qcow2", "qcow", "qed", "vmdk", "vdi", "vhdx", "vpc",
                             "parallels"})
CHAP_SECRET_ID = "sec0"  # noqa: S105 (the id of qemu's secret object)
SHARED_NODE = "eqlsampled"  # the image the sample windows of one read share

FILESYSTEMS: Dict[str, Tuple[str, ...]] = {
    "ext2": ("mkfs.ext2", "-F", "-q"),
    "ext3": ("mkfs.ext3", "-F", "-q"),
    "ext4": ("mkfs.ext4", "-F", "-q"),
    "xfs": ("mkfs.xfs", "-f", "-q"),
    "btrfs": ("mkfs.btrfs", "-f", "-q"),
    "vfat": ("mkfs.vfat",),
    "ntfs": ("mkfs.ntfs", "-F", "-Q", "-q"),
    "swap": ("mkswap",),
}
"""``mkfs`` command per FS/FSTYPE value; the staging file's path is appended."""

_ZEROS = bytes(SPARSE_BLOCK)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_RATE = re.compile(r"(\d{1,12})([kKmMgG]?)")
_RATE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def transfer_timeout(size_bytes: int) -> float:
    """The time limit of one transfer (download, write, compare) of ``size_bytes``."""
    return TRANSFER_BASE_SECONDS + TRANSFER_SECONDS_PER_MB * -(-size_bytes // MIB)


# --- the staging directory ---------------------------------------------------------------

@contextmanager
def staging_area(base: Path) -> Iterator[Path]:
    """A private (0700) directory under ``base``, removed with everything in it at exit."""
    try:
        path = Path(tempfile.mkdtemp(prefix="eqliscsi-", dir=str(base)))
    except OSError as exc:
        raise DriverError(f"cannot create a staging directory in {base} "
                          f"(EQL_STAGING_DIR): {exc.strerror}") from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def private_file(path: Path, data: bytes = b"") -> Path:
    """Create ``path`` (which must not exist) with mode 0600, holding ``data``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)
    return path


class _SparseWriter:
    """Writes a stream into a new 0600 file, seeking over all-zero blocks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), SPARSE_BLOCK):
            block = view[start:start + SPARSE_BLOCK]
            if block == _ZEROS[:len(block)]:
                os.lseek(self._fd, len(block), os.SEEK_CUR)
            else:
                while block:
                    written = os.write(self._fd, block)
                    if written <= 0:
                        raise OSError(errno.EIO, "short write")
                    block = block[written:]
        self.size += len(data)

    def close(self) -> None:
        try:
            os.ftruncate(self._fd, self.size)
        finally:
            os.close(self._fd)


def _stage(chunks: Iterator[bytes], path: Path, origin: str) -> Path:
    """Write ``chunks`` sparsely into the new staging file ``path``."""
    writer = _SparseWriter(path)
    try:
        for chunk in chunks:
            try:
                writer.write(chunk)
            except OSError as exc:
                raise DriverError(f"cannot stage {origin} in {path.parent}: "
                                  f"{exc.strerror}") from None
    finally:
        writer.close()
    return path


# --- fetching ----------------------------------------------------------------------------

@dataclass(frozen=True)
class FetchOptions:
    """How to fetch an image: checksums (hex, may be empty), decompression, limits."""

    md5: str = ""
    sha1: str = ""
    decompress: bool = True
    limit_bw: str = ""
    size_hint_bytes: int = 0  # IMAGE/SIZE: sets the time limit of a download


def fetch_image(location: str, policy: PathPolicy, stage: Path, options: FetchOptions,
                downloader: Optional[Path], environ: Mapping[str, str]) -> Path:
    """The local file holding the image at ``location`` (see the module docstring)."""
    if location.startswith("/"):
        return _fetch_local(policy.check(location), stage, options)
    match = _URL.match(location)
    if match is None:
        raise InputError(f"unsupported image PATH {location[:200]!r}: expected an absolute "
                         "file path or a URL")
    scheme = match.group(0)[:-3].lower()
    if scheme in ("http", "https"):
        return _fetch_url(location, stage, options)
    if downloader is None:
        raise InputError(f"unsupported image PATH scheme {scheme}:// (only local files and "
                         "http(s) URLs without OpenNebula's datastore/downloader.sh)")
    return _run_downloader(downloader, location, stage, options, environ)


def _fetch_local(path: str, stage: Path, options: FetchOptions) -> Path:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise InputError(f"image file {path} is not a regular file")
        with open(path, "rb") as stream:
            head = stream.read(HEAD_BYTES)
            codec = compression(head) if options.decompress else None
            checksums = _Checksums(options, path)
            if codec is None and not checksums:
                return Path(path)
            data = checksums.feed(chain([head], iter(lambda: stream.read(READ_CHUNK), b"")))
            if codec is None:
                result = Path(path)
            else:
                log_info(f"decompressing {codec} image {path}")
                result = _stage(decompressed(codec, data, path), stage / "image", path)
            checksums.finish(data)
            return result
    except FileNotFoundError:
        raise InputError(f"image file {path} does not exist") from None
    except OSError as exc:
        raise DriverError(f"cannot read image file {path}: {exc.strerror}") from None


class _Checksums:
    """The MD5/SHA1 checks of one fetch, over the bytes as fetched."""

    def __init__(self, options: FetchOptions, origin: str) -> None:
        self.origin = origin
        self._hashers = [(name, expected.strip().lower(),
                          hashlib.new(name, usedforsecurity=False))
                         for name, expected in (("md5", options.md5), ("sha1", options.sha1))
                         if expected]

    def __bool__(self) -> bool:
        return bool(self._hashers)

    def feed(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """``chunks`` passed through, hashed on the way."""
        for chunk in chunks:
            for _, _, hasher in self._hashers:
                hasher.update(chunk)
            yield chunk

    def finish(self, rest: Iterator[bytes]) -> None:
        """Hash what the consumer left of ``rest`` (the ``feed`` iterator), then compare."""
        for _ in rest:
            pass
        for name, expected, hasher in self._hashers:
            if hasher.hexdigest() != expected:
                raise DriverError(f"{name.upper()} checksum mismatch for {self.origin}: "
                                  f"expected {expected}, got {hasher.hexdigest()}")


def _fetch_url(url: str, stage: Path, options: FetchOptions) -> Path:
    from http.client import HTTPException  # loaded by open_url anyway

    rate = _parse_rate(options.limit_bw)
    deadline = time.monotonic() + transfer_timeout(options.size_hint_bytes)
    with open_url(url) as (shown, response):
        log_info(f"downloading {shown}")
        checksums = _Checksums(options, shown)
        try:
            data = checksums.feed(_paced(_complete(response, shown), rate, deadline, shown))
            head = b""
            for chunk in data:
                head += chunk
                if len(head) >= HEAD_BYTES:
                    break
            codec = compression(head) if options.decompress else None
            staged: Iterator[bytes] = chain([head], data)
            if codec is not None:
                log_info(f"decompressing {codec} data of {shown}")
                staged = decompressed(codec, staged, shown)
            result = _stage(staged, stage / "image", shown)
            checksums.finish(data)
        except (HTTPException, OSError) as exc:
            raise DriverError(f"cannot fetch {shown}: {exc}") from None
        return result


def _complete(response: HTTPResponse, origin: str) -> Iterator[bytes]:
    """The response body; DriverError when the connection ends before Content-Length
    bytes arrived (``read1`` just returns ``b""`` then, so a truncated download would
    otherwise be taken for the whole image)."""
    declared = (response.headers.get("Content-Length") or "").strip()
    total = 0
    for chunk in iter(lambda: response.read1(READ_CHUNK), b""):
        total += len(chunk)
        yield chunk
    if declared.isdigit() and total != int(declared):
        raise DriverError(f"cannot fetch {origin}: the connection ended after {total} of "
                          f"{declared} bytes")


def _parse_rate(text: str) -> Optional[int]:
    """LIMIT_TRANSFER_BW as bytes per second (curl's syntax: ``500K``, ``10M``), or None."""
    if not text:
        return None
    match = _RATE.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise InputError(f"invalid LIMIT_TRANSFER_BW {text!r}: expected e.g. 500K or 10M")
    return int(match.group(1)) * _RATE_UNITS[match.group(2).lower()]


def _paced(chunks: Iterator[bytes], rate: Optional[int], deadline: float,
           origin: str) -> Iterator[bytes]:
    """``chunks`` at most ``rate`` bytes/s, failing once ``deadline`` has passed."""
    started, total = time.monotonic(), 0
    for chunk in chunks:
        total += len(chunk)
        now = time.monotonic()
        if now > deadline:
            raise DriverError(f"cannot fetch {origin}: the transfer took too long")
        if rate is not None:
            time.sleep(max(0.0, min(started + total / rate, deadline) - now))
        yield chunk


def _run_downloader(downloader: Path, location: str, stage: Path, options: FetchOptions,
                    environ: Mapping[str, str]) -> Path:
    target = stage / "download"
    args: List[str] = [str(downloader)]
    if options.md5:
        args += ["--md5", options.md5.strip().lower()]
    if options.sha1:
        args += ["--sha1", options.sha1.strip().lower()]
    if not options.decompress:
        args.append("--nodecomp")
    if options.limit_bw:
        args += ["--limit", options.limit_bw]
    log_info(f"fetching {location} with {downloader}")
    run_tool([*args, location, str(target)], "downloader.sh",
             transfer_timeout(options.size_hint_bytes), env=environ, cwd=stage)
    if not target.is_file():
        raise DriverError(f"downloader.sh did not produce an image file from {location} "
                          "(archives of several files are not supported)")
    return target


# --- subprocesses ------------------------------------------------------------------------

def run_tool(command: Sequence[str], what: str, timeout: float,
             env: Optional[Mapping[str, str]] = None, cwd: Optional[Path] = None,
             accept: Tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with captured output and a time limit.  An exit code outside
    ``accept`` is a DriverError: ``what`` and the last lines of the tool's error output."""
    return Tool(command, what, timeout, env, cwd).result(accept)


class Tool:
    """A subprocess started in the background with captured output and a time limit
    counted from its start: ``result`` waits for it as ``run_tool`` does, ``stop`` ends it."""

    def __init__(self, command: Sequence[str], what: str, timeout: float,
                 env: Optional[Mapping[str, str]] = None, cwd: Optional[Path] = None) -> None:
        self.what = what
        self.timeout = timeout
        self._deadline = time.monotonic() + timeout
        try:
            self._process = subprocess.Popen(
                list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, errors="replace",
                env=None if env is None else dict(env), cwd=cwd)
        except FileNotFoundError:
            raise DriverError(f"{what}: {command[0]} is not installed on the front-end") from None

    def result(self, accept: Tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        """Wait for the tool (killed on any exception, SIGTERM's ``Terminated`` included);
        an exit code outside ``accept`` is a DriverError."""
        finished = self._process.poll() is not None  # then only its output is left to read
        try:
            stdout, stderr = self._process.communicate(
                timeout=None if finished else max(self._deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            self.stop()
            raise DriverError(f"{self.what}: timed out after {self.timeout:g}s") from None
        except BaseException:
            self.stop()
            raise
        done = subprocess.CompletedProcess(self._process.args, self._process.returncode,
                                           stdout, stderr)
        if done.returncode not in accept:
            detail = " / ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise DriverError(f"{self.what} failed (exit {done.returncode}): "
                              f"{detail or 'no output'}")
        return done

    def stop(self) -> None:
        """Kill the tool if it still runs, and reap it."""
        process = self._process
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


# --- inspecting --------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceImage:
    """A local image file as qemu reads it: format and virtual size in bytes."""

    path: Path
    format: str
    virtual_size: int

    @property
    def size_mb(self) -> int:
        """The virtual size in MB, rounded up."""
        return -(-self.virtual_size // MIB)

    def options(self) -> Dict[str, str]:
        """qemu block options opening this file with its format."""
        return {"driver": self.format, "file.driver": "file", "file.filename": str(self.path)}


def inspect_image(path: Path) -> SourceImage:
    """Format and virtual size from ``qemu-img info``; refuses unsafe or unknown images."""
    done = run_tool(["qemu-img", "info", "--output=json", "--force-share", str(path)],
                    f"qemu-img info of {path}", QEMU_INFO_TIMEOUT)
    try:
        info = json.loads(done.stdout)
        image_format, size = str(info["format"]), info["virtual-size"]
    except (ValueError, KeyError, TypeError):
        raise DriverError(f"qemu-img info of {path}: unexpected output") from None
    if image_format not in ALLOWED_FORMATS:
        raise DriverError(f"unsupported image format {image_format}")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise DriverError(f"qemu-img info of {path}: invalid virtual size {size!r}")
    problem = _unsafe(info, path)
    if problem:
        raise DriverError(f"refusing the {image_format} image: {problem}")
    return SourceImage(path, image_format, size)


def _unsafe(info: Mapping[str, object], path: Path) -> Optional[str]:
    """Why qemu would read something besides ``path`` for this image, or None."""
    if info.get("backing-filename") or info.get("full-backing-filename"):
        return "it has a backing file"
    if info.get("encrypted"):
        return "it is encrypted"
    specific = info.get("format-specific")
    data = specific.get("data") if isinstance(specific, dict) else None
    if not isinstance(data, dict):
        return None
    if data.get("data-file"):
        return "it has an external data file"
    extents = data.get("extents")
    if isinstance(extents, list):
        own = os.path.realpath(path)
        for extent in extents:
            name = extent.get("filename") if isinstance(extent, dict) else None
            if not isinstance(name, str) or os.path.realpath(name) != own:
                return "it has extents in other files"
    return None


# --- filesystems (mkfs) ------------------------------------------------------------------

def build_filesystem(fs: str, path: Path, size_bytes: int) -> SourceImage:
    """A sparse raw file of ``size_bytes`` at ``path`` formatted with ``fs``."""
    command = FILESYSTEMS[fs]
    private_file(path)
    os.truncate(path, size_bytes)
    log_info(f"building a {fs} filesystem of {size_bytes // MIB} MB in a staging file")
    run_tool([*command, str(path)], f"{command[0]} (FS {fs})", MKFS_TIMEOUT)
    return SourceImage(path, "raw", size_bytes)


# --- the LUN ------------------------------------------------------------------------------

@dataclass(frozen=True)
class LunTarget:
    """A volume's LUN as the front-end's initiator reaches it (qemu libiscsi)."""

    portal: str
    iqn: str
    lun: int
    initiator: str
    chap_user: Optional[str] = None
    chap_secret_file: Optional[Path] = None

    def options(self) -> Dict[str, str]:
        """qemu ``driver=iscsi`` options (the CHAP secret by reference only)."""
        options = {"driver": "iscsi", "transport": "tcp", "portal": self.portal,
                   "target": self.iqn, "lun": str(self.lun), "initiator-name": self.initiator}
        if self.chap_user is not None:
            options.update({"user": self.chap_user, "password-secret": CHAP_SECRET_ID})
        return options

    def objects(self) -> List[str]:
        """qemu ``--object`` arguments defining the CHAP secret, if any."""
        if self.chap_secret_file is None:
            return []
        return ["--object", f"secret,id={CHAP_SECRET_ID},format=raw,"
                            f"file={_escape(str(self.chap_secret_file))}"]


def _escape(value: str) -> str:
    """A value inside a qemu option string (a comma is written twice)."""
    return value.replace(",", ",,")


def _option_string(options: Mapping[str, str]) -> str:
    return ",".join(f"{key}={_escape(value)}" for key, value in options.items())


def _window(options: Mapping[str, str], offset: int, length: int) -> str:
    """Option string of ``length`` bytes at ``offset`` of the image ``options`` open."""
    layered = {"driver": "raw", "offset": str(offset), "size": str(length)}
    layered.update({f"file.{key}": value for key, value in options.items()})
    return _option_string(layered)


def _shared_windows(options: Mapping[str, str],
                    windows: Sequence[Tuple[int, int]]) -> List[str]:
    """Option strings of ``windows`` of the image ``options`` open: the first window opens
    it as node ``SHARED_NODE``, the others refer to that node, so the image is opened
    once (one iSCSI login for a LUN, not one per window)."""
    (offset, length), *others = windows
    return [_window({**options, "node-name": SHARED_NODE}, offset, length),
            *(_option_string({"driver": "raw", "offset": str(offset), "size": str(length),
                              "file": SHARED_NODE}) for offset, length in others)]


def write_image(source: SourceImage, target: LunTarget) -> None:
    """Write the image onto the (new, all-zero) LUN; only non-zero data is sent."""
    log_info(f"writing the {source.format} image ({source.size_mb} MB) to {target.iqn} "
             f"lun {target.lun} at {target.portal}")
    started = time.monotonic()
    run_tool(["qemu-img", "convert", "-n", "--target-is-zero", "-W", "-m", "16",
              *target.objects(), "--image-opts", _option_string(source.options()),
              "--target-image-opts", _option_string(target.options())],
             "writing the image to the volume (qemu-img convert)",
             transfer_timeout(source.virtual_size))
    log_info(f"image written in {time.monotonic() - started:.2f}s")


class ImageVerifier:
    """Checks that a LUN holds ``source`` (``mode``: sample, full or off; module docstring).

    In sample mode the image's windows are read in the background from the moment the
    verifier is made (while the volume is created and written), so only the LUN's windows
    are read after the write.  Leaving the ``with`` block stops that read.
    """

    def __init__(self, source: SourceImage, mode: str, stage: Path) -> None:
        self.source = source
        self.mode = mode
        self._stage = stage
        self._timeout = transfer_timeout(source.virtual_size)
        self._windows = sample_windows(source.virtual_size) if mode == "sample" else []
        self._expected = (_WindowRead(source.options(), [], self._windows,
                                      stage / "verify-image", self._timeout)
                          if self._windows else None)

    def __enter__(self) -> ImageVerifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._expected is not None:
            self._expected.stop()

    def verify(self, target: LunTarget) -> None:
        """Check the LUN after the write; a difference is a DriverError."""
        if self.mode == "off":
            return
        started = time.monotonic()
        if self._expected is None:
            self._compare_all(target)
        else:
            lun_read = _WindowRead(target.options(), target.objects(), self._windows,
                                   self._stage / "verify-volume", self._timeout)
            try:
                expected = self._expected.data()  # while the LUN is read
                actual = lun_read.data()
            finally:
                lun_read.stop()
            if actual != expected:  # one comparison; the windows only to name the place
                offset = self._first_difference(expected, actual)
                raise DriverError(f"verification failed: the volume differs from the image "
                                  f"in the {SAMPLE_WINDOW // 1024} KiB at offset {offset}")
        log_info(f"{self.mode} verification passed in {time.monotonic() - started:.2f}s")

    def _first_difference(self, expected: bytes, actual: bytes) -> int:
        """The offset of the first window in which the two reads differ (the last window
        when only their lengths do)."""
        position = 0
        for offset, length in self._windows:
            if expected[position:position + length] != actual[position:position + length]:
                return offset
            position += length
        return self._windows[-1][0]

    def _compare_all(self, target: LunTarget) -> None:
        lun = _window(target.options(), 0, self.source.virtual_size)
        done = run_tool(["qemu-img", "compare", *target.objects(), "--image-opts",
                         _option_string(self.source.options()), lun],
                        "verification (qemu-img compare)", self._timeout, accept=(0, 1))
        if done.returncode == 1:
            raise DriverError(f"verification failed: the volume differs from the image "
                              f"({done.stdout.strip()})")


def sample_windows(size: int) -> List[Tuple[int, int]]:
    """(offset, length) of the first and last ``SAMPLE_WINDOW`` bytes of ``size`` bytes
    and of up to ``SAMPLE_WINDOWS`` other random windows, in order."""
    blocks = -(-size // SAMPLE_WINDOW)
    chosen = {0, blocks - 1}
    middle = range(1, blocks - 1)
    chosen.update(secrets.SystemRandom().sample(middle, min(SAMPLE_WINDOWS, len(middle))))
    return [(block * SAMPLE_WINDOW, min(SAMPLE_WINDOW, size - block * SAMPLE_WINDOW))
            for block in sorted(chosen)]


class _WindowRead:
    """The bytes of ``windows`` of an image, concatenated into ``path`` by one
    ``qemu-img convert`` started in the background."""

    def __init__(self, options: Mapping[str, str], objects: List[str],
                 windows: Sequence[Tuple[int, int]], path: Path, timeout: float) -> None:
        self._path = path
        self._tool = Tool(["qemu-img", "convert", *objects, "--image-opts",
                           *_shared_windows(options, windows),
                           "-O", "raw", str(path)],
                          "verification read (qemu-img convert)", timeout)

    def data(self) -> bytes:
        """The bytes, once the read has finished (the file is removed)."""
        self._tool.result()
        try:
            return self._path.read_bytes()
        finally:
            self._path.unlink()

    def stop(self) -> None:
        self._tool.stop()
