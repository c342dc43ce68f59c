"""The size of an image to register, for the DS ``stat`` action (never touches the group).

oned calls ``stat`` inside ``oneimage create`` and uses the printed number (MB, rounded up)
as the image SIZE, i.e. the size of the volume ``cp`` will create.  So it must be the size
the image has *once written to a block device*:

* local file (absolute path): refused if it resolves (``realpath``) into a restricted
  directory and not into a safe one, like OpenNebula's ``check_restricted``: restricted are
  the datastore's RESTRICTED_DIRS plus ``/etc``, OpenNebula's var and etc directories
  (``$ONE_LOCATION/{var,etc}`` or ``/var/lib/one``, ``/etc/one``) and ``$HOME`` (as
  ``set_up_datastore`` does); SAFE_DIRS win.  Matching is per path component.  Only
  regular files are accepted.
  - gzip/bzip2/xz: decompressed in a stream and counted (gzip's ISIZE trailer is mod 2**32
    and covers only the last member, so it is not used);
  - qcow/qcow2, QED, VMDK, VDI, VHD, VHDX, Parallels: the virtual size from
    ``qemu-img info --output=json`` (60 s timeout);
  - anything else (raw, ISO): the file size.
* http(s) URL (``urllib``, 60 s socket timeout, redirects only to http(s), credentials in
  the URL sent as Basic auth - never on a command line, masked in messages, not forwarded
  to another host on redirect; certificates are verified): the body is read as a stream
  and only as far as needed:
  - compressed (by its magic bytes): decompressed and counted to the end;
  - qcow/qcow2 or sparse VMDK (also inside compressed data): the virtual size from the
    header, then the download stops;
  - other container formats: refused (their size needs the whole file; register a local
    copy instead);
  - otherwise Content-Length, or, without one, the body is counted to the end.

A size of 0 is an error, as in OpenNebula's ``stat``.
"""

from __future__ import annotations

import base64
import bz2
import json
import lzma
import os
import re
import socket
import stat
import struct
import subprocess
import urllib.parse
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import (
    IO,
    TYPE_CHECKING,
    Callable,
    Dict,
    Iterable,
    Iterator,
    Mapping,
    Optional,
    Protocol,
    Tuple,
    Union,
)

from eqliscsi.action_xml import DatastoreInfo, ds_request
from eqliscsi.oned import Action, DriverError, InputError, register_secret

if TYPE_CHECKING:
    import urllib.request
    from http.client import HTTPMessage, HTTPResponse

MB = 1024 * 1024
HEAD_BYTES = 512
READ_CHUNK = 1024 * 1024
URL_TIMEOUT = 60.0
QEMU_IMG_TIMEOUT = 60.0
USER_AGENT = "eqliscsi"

_COMPRESSION_MAGIC: Dict[str, bytes] = {
    "gzip": b"\x1f\x8b",
    "bzip2": b"BZh",
    "xz": b"\xfd7zXZ\x00",
}
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def ds_stat(action: Action) -> str:
    """DS ``stat``: the size in MB of IMAGE/PATH."""
    request = ds_request(action)
    location = request.data.image.path
    policy = PathPolicy.for_datastore(request.data.datastore, action.environ)
    return str(image_size_mb(location, policy))


def image_size_mb(location: str, policy: PathPolicy) -> int:
    """The size in MB (rounded up) of the image at ``location``, a local path or URL."""
    if _URL.match(location):
        shown, size = _url_bytes(location)
    elif location.startswith("/"):
        shown, size = location, _local_bytes(policy.check(location))
    else:
        raise InputError(f"unsupported image PATH {location[:200]!r}: expected an absolute "
                         "file path or an http(s) URL")
    if size == 0:
        raise InputError(f"cannot determine the size of {shown}: the image is empty")
    return -(-size // MB)


# --- restricted directories --------------------------------------------------------------

@dataclass(frozen=True)
class PathPolicy:
    """Which local directories images may be read from (resolved paths)."""

    safe_dirs: Tuple[str, ...]
    restricted_dirs: Tuple[str, ...]

    @classmethod
    def for_datastore(cls, datastore: DatastoreInfo, environ: Mapping[str, str]) -> PathPolicy:
        """The datastore's SAFE_DIRS/RESTRICTED_DIRS plus OpenNebula's default restrictions."""
        one_location = environ.get("ONE_LOCATION", "")
        if one_location:
            one_dirs = [f"{one_location}/var", f"{one_location}/etc"]
        else:
            one_dirs = ["/var/lib/one", "/etc/one"]
        home = [environ["HOME"]] if environ.get("HOME") else []
        restricted = ["/etc", *one_dirs, *home, *datastore.restricted_dirs]
        return cls(_resolved(datastore.safe_dirs), _resolved(restricted))

    def check(self, path: str) -> str:
        """``path`` resolved, or InputError if it lies in a restricted directory."""
        resolved = os.path.realpath(path)
        if any(_inside(resolved, safe) for safe in self.safe_dirs):
            return resolved
        for restricted in self.restricted_dirs:
            if _inside(resolved, restricted):
                raise InputError(f"not allowed to copy image file {path}: it is in the "
                                 f"restricted directory {restricted} (see SAFE_DIRS)")
        return resolved


def _resolved(directories: Iterable[str]) -> Tuple[str, ...]:
    return tuple(os.path.realpath(directory) for directory in directories)


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


# --- local files -------------------------------------------------------------------------

def _local_bytes(path: str) -> int:
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"image file {path} is not a regular file")
        with open(path, "rb") as stream:
            head = stream.read(HEAD_BYTES)
            if compression(head):
                return _stream_bytes(_chain_head(head, stream), None, path)
            image_format = _container_format(head)
            if image_format:
                return _qemu_img_virtual_size(path, image_format)
            return info.st_size
    except FileNotFoundError:
        raise InputError(f"image file {path} does not exist") from None
    except OSError as exc:
        raise DriverError(f"cannot read image file {path}: {exc.strerror}") from None


def _chain_head(head: bytes, stream: IO[bytes]) -> Iterator[bytes]:
    return chain([head], iter(lambda: stream.read(READ_CHUNK), b""))


def _qemu_img_virtual_size(path: str, image_format: str) -> int:
    command = ["qemu-img", "info", "--output=json", "--force-share", path]
    try:
        done = subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL,
                              timeout=QEMU_IMG_TIMEOUT, check=False)
    except FileNotFoundError:
        raise DriverError(f"qemu-img is needed to size the {image_format} image {path} "
                          "but is not installed") from None
    except subprocess.TimeoutExpired:
        raise DriverError(f"qemu-img info {path} timed out after {QEMU_IMG_TIMEOUT:g}s") from None
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip() or f"exit {done.returncode}"
        raise DriverError(f"qemu-img info {path} failed: {detail}")
    try:
        size = json.loads(done.stdout)["virtual-size"]
    except (ValueError, KeyError, TypeError):
        raise DriverError(f"qemu-img info {path}: no virtual-size in its output") from None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise DriverError(f"qemu-img info {path}: invalid virtual-size {size!r}")
    return int(size)


# --- URLs --------------------------------------------------------------------------------

def _http_only_redirects() -> urllib.request.HTTPRedirectHandler:
    """A redirect handler that follows redirects to http(s) only and drops credentials
    when the host changes (``urllib.request`` is imported only when a URL is fetched:
    it costs ~20 ms of every action's start-up)."""
    import urllib.request

    class HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int,
                             msg: str, headers: HTTPMessage,
                             newurl: str) -> Optional[urllib.request.Request]:
            target = urllib.parse.urlsplit(newurl)
            if target.scheme not in ("http", "https"):
                raise DriverError(f"refusing redirect from {req.full_url} to a "
                                  f"{target.scheme} URL")
            new = super().redirect_request(req, fp, code, msg, headers, newurl)
            if new is not None and (target.hostname
                                    != urllib.parse.urlsplit(req.full_url).hostname):
                new.remove_header("Authorization")
            return new

    return HttpOnlyRedirects()


def _url_bytes(url: str) -> Tuple[str, int]:
    """(URL without credentials, size in bytes)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InputError(f"unsupported URL scheme {parts.scheme!r} in image PATH: "
                         "use http, https or a local file path")
    try:
        with open_url(url) as (shown, response):
            length = response.headers.get("Content-Length", "").strip()
            declared = int(length) if length.isdigit() else None
            chunks = iter(lambda: response.read1(READ_CHUNK), b"")
            return shown, _stream_bytes(chunks, declared, shown)
    except OSError as exc:
        raise DriverError(f"cannot fetch {url_without_credentials(url)}: {exc}") from None


def url_without_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` removed (what messages may show)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


@contextmanager
def open_url(url: str) -> Iterator[Tuple[str, HTTPResponse]]:
    """(URL without credentials, open response); errors become one-line DriverErrors."""
    import urllib.error
    import urllib.request
    from http.client import HTTPException

    parts = urllib.parse.urlsplit(url)
    shown = url_without_credentials(url)
    request = urllib.request.Request(  # noqa: S310 (the caller checked the scheme)
        shown, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    if parts.username is not None:
        password = urllib.parse.unquote(parts.password or "")
        register_secret(parts.password or "")
        register_secret(password)
        pair = f"{urllib.parse.unquote(parts.username)}:{password}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
    opener = urllib.request.build_opener(_http_only_redirects())
    try:
        with opener.open(request, timeout=URL_TIMEOUT) as response:
            yield shown, response
    except urllib.error.HTTPError as exc:
        raise DriverError(f"cannot fetch {shown}: HTTP {exc.code} {exc.reason}") from None
    except socket.timeout:
        raise DriverError(f"cannot fetch {shown}: no data for {URL_TIMEOUT:g}s") from None
    except urllib.error.URLError as exc:
        raise DriverError(f"cannot fetch {shown}: {exc.reason}") from None
    except HTTPException as exc:
        raise DriverError(f"cannot fetch {shown}: {exc}") from None


# --- streams: sniffing, headers, decompression -------------------------------------------

def _stream_bytes(chunks: Iterator[bytes], declared: Optional[int], origin: str,
                  decompress: bool = True) -> int:
    """The image size in bytes of the data in ``chunks`` (see the module docstring)."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= HEAD_BYTES:
            break
    codec = compression(head) if decompress else None
    if codec:
        inflated = decompressed(codec, chain([head], chunks), origin)
        return _stream_bytes(inflated, None, origin, decompress=False)
    image_format = _container_format(head)
    if image_format:
        return _header_virtual_size(image_format, head, origin)
    if declared is not None:
        return declared
    return len(head) + sum(len(chunk) for chunk in chunks)


def compression(head: bytes) -> Optional[str]:
    for codec, magic in _COMPRESSION_MAGIC.items():
        if head.startswith(magic):
            return codec
    return None


def _container_format(head: bytes) -> Optional[str]:
    """The disk image container format of a file starting with ``head``, None for raw."""
    if head.startswith(b"QFI\xfb"):
        return "qcow"
    if head.startswith((b"KDMV", b"# Disk DescriptorFile")):
        return "vmdk"
    if head.startswith(b"QED\x00"):
        return "qed"
    if head.startswith(b"vhdxfile"):
        return "vhdx"
    if head.startswith(b"conectix"):
        return "vpc"
    if head[64:68] == b"\x7f\x10\xda\xbe":
        return "vdi"
    if head.startswith((b"WithoutFreeSpace", b"WithouFreSpacExt")):
        return "parallels"
    return None


def _header_virtual_size(image_format: str, head: bytes, origin: str) -> int:
    """The virtual size from a qcow (any version) or sparse VMDK header."""
    if image_format == "qcow" and len(head) >= 32:
        return int(struct.unpack(">Q", head[24:32])[0])
    if image_format == "vmdk" and head.startswith(b"KDMV") and len(head) >= 20:
        return int(struct.unpack("<Q", head[12:20])[0]) * 512
    raise DriverError(f"cannot determine the size of the {image_format} image {origin} "
                      "from a stream: register a local copy of it instead")


class _Inflater(Protocol):
    @property
    def eof(self) -> bool:
        """True once the end of the current member was decoded."""

    @property
    def unused_data(self) -> bytes:
        """Input after the end of the current member."""

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decompress ``data``, yielding output in bounded pieces."""


class _GzipInflater:
    def __init__(self) -> None:
        self._decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)

    @property
    def eof(self) -> bool:
        return self._decompressor.eof

    @property
    def unused_data(self) -> bytes:
        return self._decompressor.unused_data

    def feed(self, data: bytes) -> Iterator[bytes]:
        while True:
            out = self._decompressor.decompress(data, READ_CHUNK)
            yield out
            data = self._decompressor.unconsumed_tail
            if self._decompressor.eof or (not data and len(out) < READ_CHUNK):
                return


class _BufferedInflater:
    """bzip2 and xz decompressors (same API)."""

    def __init__(self, decompressor: Union[bz2.BZ2Decompressor, lzma.LZMADecompressor]) -> None:
        self._decompressor = decompressor

    @property
    def eof(self) -> bool:
        return self._decompressor.eof

    @property
    def unused_data(self) -> bytes:
        return self._decompressor.unused_data

    def feed(self, data: bytes) -> Iterator[bytes]:
        yield self._decompressor.decompress(data, READ_CHUNK)
        while not self._decompressor.eof and not self._decompressor.needs_input:
            yield self._decompressor.decompress(b"", READ_CHUNK)


_INFLATERS: Dict[str, Callable[[], _Inflater]] = {
    "gzip": _GzipInflater,
    "bzip2": lambda: _BufferedInflater(bz2.BZ2Decompressor()),
    "xz": lambda: _BufferedInflater(lzma.LZMADecompressor(format=lzma.FORMAT_XZ)),
}


def decompressed(codec: str, chunks: Iterator[bytes], origin: str) -> Iterator[bytes]:
    """The decompressed data, across concatenated members; trailing garbage is ignored."""
    magic = _COMPRESSION_MAGIC[codec]
    inflater: Optional[_Inflater] = None
    buffer = b""
    try:
        for chunk in chunks:
            buffer += chunk
            while buffer:
                if inflater is None:
                    if len(buffer) < len(magic):
                        break
                    if not buffer.startswith(magic):
                        return
                    inflater = _INFLATERS[codec]()
                yield from inflater.feed(buffer)
                buffer = b""
                if inflater.eof:
                    buffer, inflater = inflater.unused_data, None
    except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
        raise DriverError(f"corrupt {codec} data in {origin}: {exc}") from None
    if inflater is not None:
        raise DriverError(f"truncated {codec} data in {origin}")
