"""datastore/eqliscsi/stat run as oned runs it: a real subprocess, base64 action data."""

import base64
import bz2
import gzip
import http.server
import lzma
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from typing import Callable, ClassVar, Dict

import pytest

from tests.ds_harness import serve_http
from tests.oned_xml import action_xml, b64, image_xml, stat_action_xml

REPO = Path(__file__).resolve().parent.parent
STAT = REPO / "datastore" / "eqliscsi" / "stat"
VENV_BIN = Path(sys.executable).parent
MIB = 1024 * 1024


# --- running the action ------------------------------------------------------------------

@pytest.fixture
def env(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    conf = tmp_path / "eqliscsi.conf"
    conf.write_text("")
    return {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home),
            "EQLISCSI_CONF": str(conf), "LANG": "C.UTF-8"}


def run_stat(env, xml=None, *, form="stdin", raw=None, script=STAT, python_args=()):
    """Run stat like oned: ``form`` = argv (4.x-6.6), dash (6.4.4+ -i) or stdin (6.8+)."""
    encoded = raw if raw is not None else b64(xml)
    args, data = {"argv": ([encoded, "3"], ""), "dash": (["-", "3"], encoded),
                  "stdin": (["3"], encoded)}[form]
    command = [sys.executable, *python_args, str(script)] if python_args else [str(script)]
    return subprocess.run([*command, *args], input=data.encode(), capture_output=True,
                          env=env, timeout=120, check=False)


def size_of(env, path, **template):
    done = run_stat(env, stat_action_xml(str(path), datastore_template=template or None))
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr == b""
    return done.stdout.decode()


def failure(env, xml=None, **kwargs):
    """The single reason line of a failed run, after checking the error contract."""
    done = run_stat(env, xml, **kwargs)
    assert done.returncode == 1
    assert done.stdout == b""
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 2, lines
    assert lines[0] == f"ERROR: stat: {lines[1]}"
    return lines[1]


# --- image files -------------------------------------------------------------------------

def qemu_img(*args):
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    base = tmp_path_factory.mktemp("images")
    raw = os.urandom(3 * MIB + 1)
    (base / "raw.img").write_bytes(raw)
    (base / "exact.img").write_bytes(bytes(MIB))
    (base / "empty.img").write_bytes(b"")
    with open(base / "sparse.img", "wb") as sparse:
        sparse.truncate(10 * 1024 * MIB)
    (base / "raw.img.gz").write_bytes(gzip.compress(bytes(5 * MIB + 1)))
    (base / "multi.gz").write_bytes(gzip.compress(bytes(2 * MIB)) + gzip.compress(bytes(MIB + 1)))
    (base / "raw.img.bz2").write_bytes(bz2.compress(bytes(7 * MIB)))
    (base / "raw.img.xz").write_bytes(lzma.compress(bytes(2 * MIB + 7)))
    qemu_img("create", "-q", "-f", "qcow2", str(base / "disk.qcow2"), "100M")
    qemu_img("create", "-q", "-f", "qcow2", str(base / "big.qcow2"), "1536M")
    qemu_img("create", "-q", "-f", "vmdk", str(base / "disk.vmdk"), "50M")
    qemu_img("create", "-q", "-f", "vdi", str(base / "disk.vdi"), "20M")
    (base / "disk.qcow2.gz").write_bytes(gzip.compress((base / "disk.qcow2").read_bytes()))
    (base / "bad.qcow2").write_bytes(b"QFI\xfb" + b"\xff" * 1020)
    (base / "corrupt.gz").write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(2000))
    whole = (base / "raw.img.gz").read_bytes()
    (base / "truncated.gz").write_bytes(whole[: len(whole) // 2])
    return base


def huge_gzip(path: Path) -> int:
    """One gzip member of 4 GiB + 64 MiB of zeros (ISIZE wraps to 64 MiB), built cheaply."""
    block = bytes(64 * MIB)
    deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
    piece = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    count, crc = 65, 0
    for _ in range(count):
        crc = zlib.crc32(block, crc)
    total = count * len(block)
    with open(path, "wb") as out:
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")
        for _ in range(count):
            out.write(piece)
        out.write(deflate.flush() + struct.pack("<II", crc, total % 2**32))
    return total


# --- invocation forms and sizes ----------------------------------------------------------

@pytest.mark.parametrize("form", ["argv", "dash", "stdin"])
def test_all_invocation_forms(env, images, form):
    done = run_stat(env, stat_action_xml(str(images / "raw.img")), form=form)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"4\n", b"")


def test_full_image_element_and_trailing_newline(env, images):
    xml = action_xml(image_xml(PATH=str(images / "raw.img")))
    done = run_stat(env, raw=b64(xml) + "\n")
    assert (done.returncode, done.stdout) == (0, b"4\n")


@pytest.mark.parametrize(("name", "size"), [
    ("raw.img", "4\n"),
    ("exact.img", "1\n"),
    ("sparse.img", "10240\n"),
    ("disk.qcow2", "100\n"),
    ("big.qcow2", "1536\n"),
    ("disk.vmdk", "50\n"),
    ("disk.vdi", "20\n"),
    ("raw.img.gz", "6\n"),
    ("multi.gz", "4\n"),
    ("raw.img.bz2", "7\n"),
    ("raw.img.xz", "3\n"),
    ("disk.qcow2.gz", "100\n"),
])
def test_local_file_sizes(env, images, name, size):
    assert size_of(env, images / name) == size


def test_gzip_bigger_than_4_gib_is_counted_not_read_from_isize(env, tmp_path):
    path = tmp_path / "huge.img.gz"
    total = huge_gzip(path)
    assert size_of(env, path) == f"{total // MIB}\n"  # ISIZE alone would say 64


@pytest.mark.parametrize(("name", "reason"), [
    ("empty.img", "cannot determine the size of {path}: the image is empty"),
    ("missing.img", "image file {path} does not exist"),
    (".", "image file {path} is not a regular file"),
    ("corrupt.gz", "corrupt gzip data in {path}: "),
    ("truncated.gz", "truncated gzip data in {path}"),
    ("bad.qcow2", "qemu-img info {path} failed: "),
])
def test_local_file_errors(env, images, name, reason):
    path = os.path.normpath(images / name)
    assert failure(env, stat_action_xml(path)).startswith(reason.format(path=path))


def test_qemu_img_missing(env, images):
    env["PATH"] = str(VENV_BIN)
    path = images / "disk.qcow2"
    assert failure(env, stat_action_xml(str(path))) == (
        f"qemu-img is needed to size the qcow image {path} but is not installed")


# --- restricted and safe directories -----------------------------------------------------

def test_etc_is_restricted_by_default(env):
    assert failure(env, stat_action_xml("/etc/hostname")) == (
        "not allowed to copy image file /etc/hostname: it is in the restricted directory /etc "
        "(see SAFE_DIRS)")


def test_safe_dirs_win(env):
    assert int(size_of(env, "/etc/hostname", SAFE_DIRS="/srv /etc")) >= 1


def test_home_and_one_dirs_are_restricted(env, tmp_path):
    image = Path(env["HOME"]) / "disk.img"
    image.write_bytes(b"x")
    assert "restricted directory" in failure(env, stat_action_xml(str(image)))
    one = tmp_path / "one"
    (one / "var").mkdir(parents=True)
    (one / "var" / "disk.img").write_bytes(b"x")
    env["ONE_LOCATION"] = str(one)
    assert failure(env, stat_action_xml(str(one / "var" / "disk.img"))).endswith(
        f"restricted directory {one}/var (see SAFE_DIRS)")


def test_restricted_dirs_and_symlinks_are_resolved(env, images, tmp_path):
    assert "restricted directory" in failure(env, stat_action_xml(
        str(images / "raw.img"), datastore_template={"RESTRICTED_DIRS": f"/nope {images}"}))
    link = tmp_path / "innocent.img"
    link.symlink_to("/etc/hostname")
    assert "restricted directory /etc" in failure(env, stat_action_xml(str(link)))
    dotted = f"{tmp_path}/../../../../../../etc/hostname"
    assert "restricted directory /etc" in failure(env, stat_action_xml(dotted))


def test_restricted_match_is_per_path_component(env, tmp_path):
    lookalike = tmp_path / "home-other"
    lookalike.mkdir()
    (lookalike / "disk.img").write_bytes(b"x" * 10)
    env["HOME"] = str(tmp_path / "home")
    assert size_of(env, lookalike / "disk.img") == "1\n"


# --- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "reason"), [
    ("%%%not base64%%%", "invalid action data: not valid base64"),
    (b64("<DS_DRIVER_ACTION_DATA><IMAGE><PATH>/x</PATH>"), "invalid action data XML: "),
    (b64("<DS_DRIVER_ACTION_DATA><IMAGE>"), "invalid action data XML: "),
    (b64("plain text"), "invalid action data XML: "),
    (b64("<IMAGE><PATH>/x</PATH></IMAGE>"),
     "invalid action data XML: root element is <IMAGE>, expected <DS_DRIVER_ACTION_DATA>"),
    (b64(action_xml(image="")), "/DS_DRIVER_ACTION_DATA/IMAGE is missing"),
    (b64(action_xml(image="<IMAGE><SIZE>1</SIZE></IMAGE>")),
     "/DS_DRIVER_ACTION_DATA/IMAGE/PATH is missing or empty"),
    (b64(action_xml(image="<IMAGE><PATH></PATH></IMAGE>")),
     "/DS_DRIVER_ACTION_DATA/IMAGE/PATH is missing or empty"),
    (b64(action_xml(image="<IMAGE><PATH>/srv/x.img</PATH></IMAGE>", datastore="")),
     "/DS_DRIVER_ACTION_DATA/DATASTORE is missing"),
    (b64(stat_action_xml("images/disk.img")),
     "unsupported image PATH 'images/disk.img': expected an absolute file path or an http(s) URL"),
    (b64(stat_action_xml("ftp://127.0.0.1/disk.img")),
     "unsupported URL scheme 'ftp' in image PATH: use http, https or a local file path"),
    (b64(stat_action_xml("file:///etc/passwd")), "unsupported URL scheme 'file'"),
])
def test_bad_input_gives_one_clear_line(env, raw, reason):
    assert failure(env, raw=raw).startswith(reason)


def test_no_stdin_data(env):
    assert failure(env, raw="") == "no action data: expected base64 text"


def test_error_markers_for_old_opennebula(env, images, tmp_path):
    remotes = tmp_path / "remotes"
    (remotes / "datastore" / "eqliscsi").mkdir(parents=True)
    (remotes / "VERSION").write_text("5.12.0.4\n")
    script = remotes / "datastore" / "eqliscsi" / "stat"
    script.symlink_to(STAT)
    done = run_stat(env, stat_action_xml("/etc/shadow"), script=script)
    assert done.returncode == 1
    assert done.stderr.decode().splitlines()[1:] == [
        "ERROR MESSAGE --8<------",
        "not allowed to copy image file /etc/shadow: it is in the restricted directory /etc "
        "(see SAFE_DIRS)",
        "ERROR MESSAGE ------>8--",
    ]
    ok = run_stat(env, stat_action_xml(str(images / "raw.img")), script=script)
    assert (ok.returncode, ok.stdout) == (0, b"4\n")


def test_stat_never_imports_paramiko(env, images):
    done = run_stat(env, stat_action_xml(str(images / "raw.img")), python_args=("-X", "importtime"))
    assert done.stdout == b"4\n"
    imported = done.stderr.decode()
    assert "eqliscsi.image_source" in imported
    assert "paramiko" not in imported


# --- URLs --------------------------------------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[Dict[str, Callable[["Handler"], None]]] = {}
    stop = threading.Event()

    def do_GET(self):
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        route(self)

    def log_message(self, *args):
        pass

    def body(self, data: bytes, length=True, status=200):
        self.send_response(status)
        if length:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def redirect(self, location: str):
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def server(images):
    qcow2 = (images / "disk.qcow2").read_bytes()

    def huge_qcow2(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(10**12))
        handler.end_headers()
        handler.wfile.write(qcow2[:HEADER_CHUNK])
        handler.wfile.flush()
        Handler.stop.wait(30)

    def secret(handler):
        expected = "Basic " + base64.b64encode(b"one:pa55%word").decode()
        if handler.headers.get("Authorization") == expected:
            handler.body(b"x" * (MIB + 1))
        else:
            handler.body(b"denied", status=401)

    Handler.routes = {
        "/raw.img": lambda h: h.body((images / "raw.img").read_bytes()),
        "/nolength.img": lambda h: h.body(bytes(2 * MIB + 5), length=False),
        "/raw.img.gz": lambda h: h.body((images / "raw.img.gz").read_bytes()),
        "/nolength.gz": lambda h: h.body((images / "multi.gz").read_bytes(), length=False),
        "/disk.qcow2": lambda h: h.body(qcow2),
        "/huge.qcow2": huge_qcow2,
        "/disk.qcow2.gz": lambda h: h.body((images / "disk.qcow2.gz").read_bytes()),
        "/disk.vdi": lambda h: h.body((images / "disk.vdi").read_bytes()),
        "/disk.vmdk": lambda h: h.body((images / "disk.vmdk").read_bytes()),
        "/empty.img": lambda h: h.body(b""),
        "/truncated.gz": lambda h: h.body((images / "truncated.gz").read_bytes()),
        "/to-raw": lambda h: h.redirect("/raw.img"),
        "/to-ftp": lambda h: h.redirect("ftp://127.0.0.1/raw.img"),
        "/secret.img": secret,
    }
    with serve_http(Handler) as url:
        yield url
        Handler.stop.set()


HEADER_CHUNK = 4096


@pytest.mark.parametrize(("path", "size"), [
    ("/raw.img", "4\n"),
    ("/nolength.img", "3\n"),
    ("/raw.img.gz", "6\n"),
    ("/nolength.gz", "4\n"),
    ("/disk.qcow2", "100\n"),
    ("/disk.qcow2.gz", "100\n"),
    ("/disk.vmdk", "50\n"),
    ("/to-raw", "4\n"),
])
def test_url_sizes(env, server, path, size):
    assert size_of(env, server + path) == size


def test_qcow2_url_is_read_only_as_far_as_the_header(env, server):
    assert size_of(env, server + "/huge.qcow2") == "100\n"


def test_credentials_in_urls_are_sent_but_never_shown(env, server):
    url = server.replace("http://", "http://one:pa55%25word@") + "/secret.img"
    assert size_of(env, url) == "2\n"
    wrong = server.replace("http://", "http://one:wr0ngpw@") + "/secret.img"
    done = run_stat(env, stat_action_xml(wrong))
    assert done.returncode == 1
    assert b"wr0ngpw" not in done.stderr
    assert done.stderr.decode().splitlines()[-1] == (
        f"cannot fetch {server}/secret.img: HTTP 401 Unauthorized")


@pytest.mark.parametrize(("path", "reason"), [
    ("/missing.img", "cannot fetch {url}: HTTP 404 Not Found"),
    ("/empty.img", "cannot determine the size of {url}: the image is empty"),
    ("/truncated.gz", "truncated gzip data in {url}"),
    ("/to-ftp", "refusing redirect from {url} to a ftp URL"),
    ("/disk.vdi", "cannot determine the size of the vdi image {url} from a stream: "
                  "register a local copy of it instead"),
])
def test_url_errors(env, server, path, reason):
    url = server + path
    assert failure(env, stat_action_xml(url)).startswith(reason.format(url=url))


def test_unreachable_url(env):
    assert failure(env, stat_action_xml("http://127.0.0.1:9/disk.img")).startswith(
        "cannot fetch http://127.0.0.1:9/disk.img: ")
