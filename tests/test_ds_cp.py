"""DS ``cp`` run as oned runs it, against a simulated group with real tgtd iSCSI targets."""

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import http.server
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from eqliscsi.ds_actions import image_description
from eqliscsi.image_copy import (
    SAMPLE_WINDOW,
    SHARED_NODE,
    ImageVerifier,
    LunTarget,
    SourceImage,
    Tool,
    _WindowRead,
)
from eqliscsi.oned import DriverError
from tests.ds_harness import (
    FRONTEND,
    LUN,
    MIB,
    REPO,
    DsHarness,
    ds_xml,
    iscsi,
    serve_http,
    write_random,
)
from tests.iscsi_tools import read_bytes

pytestmark = iscsi
VOLUME = "ubuntu.42"


def cp_xml(path: str, size: str = "1", **template: str) -> str:
    return ds_xml({"PATH": path, "SIZE": size, "NAME": "Ubuntu"}, image_template=template)


def assert_clean(ds: DsHarness, *volumes: str) -> None:
    """Only ``volumes`` exist, none with an access record; the staging dir is empty."""
    assert ds.volume_names() == sorted(volumes)
    for name in volumes:
        assert ds.volume(name).access == [], name
    assert ds.staging_left() == []


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


# --- successful copies ---------------------------------------------------------------------

@pytest.mark.parametrize("form", ["argv", "dash", "stdin"])
def test_raw_file(ds, tmp_path, form):
    data = write_random(tmp_path / "disk.raw", 3 * MIB + 1)
    run = ds.run("cp", cp_xml(str(tmp_path / "disk.raw"), size="4"), form=form)
    assert run.ok() == f"{VOLUME} raw\n"
    assert "INFO: cp: creating volume ubuntu.42 (4 MB) in pool default" in run.stderr
    volume = ds.volume(VOLUME)
    assert (volume.size_mb, volume.pool, volume.status, volume.multihost, volume.thin) == (
        4, "default", "online", True, False)
    assert volume.description == image_description(42, "Ubuntu")
    assert ds.volume_bytes(VOLUME, 4 * MIB) == data + bytes(MIB - 1)
    assert_clean(ds, VOLUME)
    commands = ds.commands()
    assert f"volume select {VOLUME} access create initiator {FRONTEND}" in commands
    assert f"volume select {VOLUME} access delete 1" in commands


def test_read_back_over_iscsi_and_size_from_the_image(ds, tmp_path):
    data = write_random(tmp_path / "disk.raw", 32 * MIB)
    started = time.monotonic()
    assert ds.run("cp", cp_xml(str(tmp_path / "disk.raw"), size="2")).ok() == f"{VOLUME} raw\n"
    elapsed = time.monotonic() - started
    assert elapsed < 10
    assert ds.volume(VOLUME).size_mb == 32
    with ds.group() as group:
        group.create_access(VOLUME, initiator="iqn.2024-01.org.example:reader")
    tail = read_bytes(ds.portal, ds.volume(VOLUME).iqn, 1,
                      31 * MIB, MIB, initiator_name="iqn.2024-01.org.example:reader")
    assert tail == data[31 * MIB:]


@pytest.mark.parametrize("verify", ["sample", "full", "off"])
def test_qcow2_image(ds, tmp_path, verify):
    image = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", str(image), "20M")
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 3M", "-c", "write -P 0xa5 19M 1M",
                    str(image)], check=True, capture_output=True)
    qemu_img("convert", "-O", "raw", str(image), str(tmp_path / "expected.raw"))
    ds.write_conf(EQL_VERIFY=verify)
    run = ds.run("cp", cp_xml(str(image), size="20"))
    assert run.ok() == f"{VOLUME} raw\n"
    assert (f"{verify} verification passed" in run.stderr) is (verify != "off")
    assert ds.volume_bytes(VOLUME, 20 * MIB) == (tmp_path / "expected.raw").read_bytes()
    assert_clean(ds, VOLUME)


def read_windows(call: List[str]) -> List[str]:
    """The window option strings of a verification read's ``qemu-img convert`` call."""
    return call[call.index("--image-opts") + 1:call.index("-O")]


def test_sample_verification_opens_the_image_and_the_lun_once_each(ds, tmp_path):
    write_random(tmp_path / "disk.raw", 20 * MIB)
    run = ds.run("cp", cp_xml(str(tmp_path / "disk.raw"), size="20"), env=ds.fake_qemu_img())
    assert run.ok() == f"{VOLUME} raw\n"
    assert "sample verification passed" in run.stderr
    calls = ds.qemu_img_calls()
    write = next(index for index, call in enumerate(calls) if "--target-image-opts" in call)
    reads = [(index, read_windows(call)) for index, call in enumerate(calls) if "-O" in call]
    assert [index < write for index, _ in reads] == [True, False]  # image before the write
    (_, image), (_, lun) = reads
    assert len(image) == len(lun) == 32
    shared = f"file.node-name={SHARED_NODE}"
    assert image[0].startswith("driver=raw,offset=0,size=65536,file.driver=raw,")
    assert f"file.file.filename={tmp_path / 'disk.raw'}" in image[0] and shared in image[0]
    assert lun[0].startswith("driver=raw,offset=0,size=65536,file.driver=iscsi,")
    assert shared in lun[0]
    assert image[1:] == lun[1:]  # the same windows of the shared node
    assert all(window.endswith(f",file={SHARED_NODE}") for window in lun[1:])
    assert lun[-1] == f"driver=raw,offset={20 * MIB - SAMPLE_WINDOW},size=65536,file={SHARED_NODE}"
    assert_clean(ds, VOLUME)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_window_read_returns_the_bytes_at_each_offset(tmp_path, fmt):
    data = write_random(tmp_path / "disk.raw", 10 * MIB)
    if fmt == "qcow2":
        qemu_img("convert", "-O", "qcow2", str(tmp_path / "disk.raw"), str(tmp_path / "disk"))
    else:
        (tmp_path / "disk.raw").rename(tmp_path / "disk")
    windows = [(0, MIB), (4 * MIB, MIB), (7 * MIB, MIB), (10 * MIB - 512, 512)]
    image = SourceImage(tmp_path / "disk", fmt, 10 * MIB)
    read = _WindowRead(image.options(), [], windows, tmp_path / "windows", 60)
    assert read.data() == b"".join(data[offset:offset + length] for offset, length in windows)
    assert not (tmp_path / "windows").exists()


def test_sample_verification_names_the_first_differing_window(ds, tmp_path):
    data = write_random(tmp_path / "disk.raw", 4 * MIB)
    last = 4 * MIB - SAMPLE_WINDOW  # the last window is always sampled
    (tmp_path / "lun.raw").write_bytes(data[:last] + bytes(SAMPLE_WINDOW))  # its bytes lost
    with ds.group() as group:
        group.create_volume("copy.1", 4)
        group.create_access("copy.1", initiator=FRONTEND)
        target = LunTarget(ds.portal, group.show_volume("copy.1").iqn, LUN, FRONTEND)
    lun = ",".join(f"{key}={value}" for key, value in target.options().items())
    qemu_img("convert", "-n", "-f", "raw", str(tmp_path / "lun.raw"), "--target-image-opts", lun)
    source = SourceImage(tmp_path / "disk.raw", "raw", 4 * MIB)
    stage = tmp_path / "stage"
    stage.mkdir()
    with ImageVerifier(source, "sample", stage) as verifier, pytest.raises(
            DriverError, match=rf"^verification failed: .* in the 64 KiB at offset {last}$"):
        verifier.verify(target)
    assert list(stage.iterdir()) == []


def test_tool_time_limit_counts_from_the_start_but_spares_a_finished_tool():
    finished = Tool(["sh", "-c", "echo done"], "quick tool", 0.1)
    finished._process.wait(timeout=30)
    time.sleep(0.2)  # past its time limit, finished long before
    assert finished.result().stdout == "done\n"
    with pytest.raises(DriverError, match=r"^slow tool: timed out after 0.2s$"):
        Tool(["sleep", "30"], "slow tool", 0.2).result()


def test_leaving_the_verifier_stops_the_background_image_read(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "qemu-img").write_text("#!/bin/sh\nexec sleep 60\n")
    (bin_dir / "qemu-img").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    image = SourceImage(Path("/nonexistent.raw"), "raw", 100 * MIB)
    with ImageVerifier(image, "sample", tmp_path) as verifier:
        pass
    background = verifier._expected._tool._process  # type: ignore[union-attr]
    assert background.returncode == -signal.SIGKILL


def test_start_up_does_not_load_invoke():
    """paramiko imports ``invoke`` only for ``Match exec`` in OpenSSH config files; the
    driver hides it while paramiko loads (the package stays importable afterwards)."""
    check = ("import sys, scripts_eqliscsi, eqliscsi.cli_session; "
             "assert scripts_eqliscsi.ds_cp and 'invoke' not in sys.modules; "
             "assert sys.modules['paramiko'].config.invoke is None; import invoke")
    subprocess.run([sys.executable, "-c", check], check=True, cwd=REPO, timeout=120)


def test_compressed_files(ds, tmp_path):
    data = write_random(tmp_path / "disk.raw", MIB) + bytes(2 * MIB)
    (tmp_path / "disk.gz").write_bytes(gzip.compress(data))
    (tmp_path / "disk.bz2").write_bytes(bz2.compress(data))
    md5 = hashlib.md5((tmp_path / "disk.gz").read_bytes()).hexdigest()  # noqa: S324
    run = ds.run("cp", cp_xml(str(tmp_path / "disk.gz"), MD5=md5.upper()))
    assert run.ok() == f"{VOLUME} raw\n"
    assert "decompressing gzip image" in run.stderr
    assert ds.volume(VOLUME).size_mb == 3
    assert ds.volume_bytes(VOLUME, 3 * MIB) == data
    assert ds.data_file(VOLUME).stat().st_blocks * 512 <= 2 * MIB  # zeros were not written
    run = ds.run("cp", cp_xml(str(tmp_path / "disk.bz2")), object_id=43)
    assert run.ok() == "ubuntu.43 raw\n"
    assert ds.volume_bytes("ubuntu.43", 3 * MIB) == data
    assert_clean(ds, VOLUME, "ubuntu.43")


def test_no_decompress_copies_the_file_as_it_is(ds, tmp_path):
    packed = gzip.compress(bytes(4 * MIB))
    (tmp_path / "disk.gz").write_bytes(packed)
    xml = ds_xml({"PATH": str(tmp_path / "disk.gz"), "SIZE": "1", "NAME": "Ubuntu"},
                 datastore_template={"NO_DECOMPRESS": "yes"})
    assert ds.run("cp", xml).ok() == f"{VOLUME} raw\n"
    assert ds.volume_bytes(VOLUME, len(packed)) == packed


# --- URLs ----------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    files: Dict[str, bytes] = {}  # noqa: RUF012 (set per test by the fixture)

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        if self.path.startswith("/private/") and self.headers.get("Authorization") != (
                "Basic " + base64.b64encode(b"user:s3cret!").decode()):
            self.send_error(401, "Unauthorized")
            return
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """An HTTP server on 127.0.0.1 serving ``files`` (path -> body)."""
    files: Dict[str, bytes] = {}
    with serve_http(type("Handler", (_Handler,), {"files": files})) as url:
        yield url, files


def test_url(ds, tmp_path, web):
    base, files = web
    data = write_random(tmp_path / "disk.raw", 2 * MIB + 512)
    files["/disk.raw"] = data
    files["/disk.raw.gz"] = gzip.compress(data)
    sha1 = hashlib.sha1(files["/disk.raw.gz"]).hexdigest()  # noqa: S324
    run = ds.run("cp", cp_xml(f"{base}/disk.raw", size="3"))
    assert run.ok() == f"{VOLUME} raw\n"
    assert f"downloading {base}/disk.raw" in run.stderr
    assert ds.volume_bytes(VOLUME, len(data)) == data
    run = ds.run("cp", cp_xml(f"{base}/disk.raw.gz", SHA1=sha1), object_id=43)
    assert run.ok() == "ubuntu.43 raw\n"
    assert ds.volume_bytes("ubuntu.43", len(data)) == data
    assert_clean(ds, VOLUME, "ubuntu.43")


def test_url_credentials_checksum_and_bandwidth_limit(ds, tmp_path, web):
    base, files = web
    data = write_random(tmp_path / "disk.raw", 2 * MIB)
    files["/private/disk.raw"] = data
    url = base.replace("http://", "http://user:s3cret%21@") + "/private/disk.raw"
    reason = ds.run("cp", cp_xml(url, MD5="0" * 32)).reason
    assert reason.startswith(f"MD5 checksum mismatch for {base}/private/disk.raw: expected")
    assert ds.commands() == []
    xml = ds_xml({"PATH": url, "SIZE": "2", "NAME": "Ubuntu"},
                 datastore_template={"LIMIT_TRANSFER_BW": "4M"})
    started = time.monotonic()
    run = ds.run("cp", xml)
    assert run.ok() == f"{VOLUME} raw\n"
    assert time.monotonic() - started >= 0.5  # 2 MiB at 4 MiB/s
    assert "s3cret" not in run.stderr
    assert ds.volume_bytes(VOLUME, 2 * MIB) == data
    assert_clean(ds, VOLUME)


def test_missing_url_sends_no_command(ds, web):
    base, _ = web
    assert ds.run("cp", cp_xml(f"{base}/missing")).reason == (
        f"cannot fetch {base}/missing: HTTP 404 Not Found")
    assert ds.commands() == []
    assert ds.staging_left() == []


def test_other_schemes_go_to_downloader_sh(ds, tmp_path):
    data = write_random(tmp_path / "disk.raw", MIB)
    downloader = ds.remotes / "datastore" / "downloader.sh"
    downloader.write_text(f"""#!/bin/sh
printf '%s\\n' "$@" > '{tmp_path}/args'
printf '%s' "$DRV_ACTION" | head -c 20 > '{tmp_path}/drv_action'
eval "last=\\${{$#}}"
cp '{tmp_path}/disk.raw' "$last"
""")
    downloader.chmod(0o755)
    xml = ds_xml({"PATH": "s3://bucket/disk", "SIZE": "1", "NAME": "Ubuntu"},
                 image_template={"MD5": "abc"}, datastore_template={"LIMIT_TRANSFER_BW": "5M"})
    run = ds.run("cp", xml)
    assert run.ok() == f"{VOLUME} raw\n"
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:5] == ["--md5", "abc", "--limit", "5M", "s3://bucket/disk"]
    assert args[5].startswith(str(ds.staging / "eqliscsi-")) and args[5].endswith("/download")
    assert (tmp_path / "drv_action").read_text() == "PERTX0RSSVZFUl9BQ1RJ"  # base64 XML
    assert ds.volume_bytes(VOLUME, MIB) == data
    assert_clean(ds, VOLUME)


# --- refused before anything happens on the group ------------------------------------------

def test_wrong_checksum_sends_no_command(ds, tmp_path):
    write_random(tmp_path / "disk.raw", MIB)
    (tmp_path / "disk.gz").write_bytes(gzip.compress(bytes(MIB)))
    reason = ds.run("cp", cp_xml(str(tmp_path / "disk.raw"), MD5="0" * 32)).reason
    assert reason.startswith(f"MD5 checksum mismatch for {tmp_path}/disk.raw: expected 000")
    reason = ds.run("cp", cp_xml(str(tmp_path / "disk.gz"), SHA1="1" * 40)).reason
    assert reason.startswith("SHA1 checksum mismatch")
    assert ds.commands() == []
    assert ds.staging_left() == []


@pytest.mark.parametrize("path", ["/etc/passwd", "{tmp}/private/disk.raw"])
def test_restricted_path_sends_no_command(ds, tmp_path, path):
    (tmp_path / "private").mkdir()
    write_random(tmp_path / "private" / "disk.raw", MIB)
    path = path.format(tmp=tmp_path)
    xml = ds_xml({"PATH": path, "SIZE": "1", "NAME": "Ubuntu"},
                 datastore_template={"RESTRICTED_DIRS": f"{tmp_path}/private"})
    assert ds.run("cp", xml).reason.startswith(f"not allowed to copy image file {path}")
    assert ds.commands() == []


def test_corrupt_compressed_data_sends_no_command(ds, tmp_path):
    whole = gzip.compress(bytes(2 * MIB))
    (tmp_path / "disk.gz").write_bytes(whole[: len(whole) // 2])
    assert ds.run("cp", cp_xml(str(tmp_path / "disk.gz"))).reason == (
        f"truncated gzip data in {tmp_path}/disk.gz")
    assert ds.commands() == []
    assert ds.staging_left() == []


# --- failures after the volume was made ----------------------------------------------------

def test_pool_full(ds, tmp_path):
    write_random(tmp_path / "disk.raw", 32 * MIB)
    ds.sim.set_pool_size("default", 60)
    reason = ds.run("cp", cp_xml(str(tmp_path / "disk.raw"))).reason
    assert "Not enough free space in the pool" in reason
    assert_clean(ds)


@pytest.mark.parametrize("step", ["multihost-access", "grpparams show", "access create",
                                  "access delete"])
def test_failing_group_step_leaves_nothing_and_a_rerun_succeeds(ds, tmp_path, step):
    data = write_random(tmp_path / "disk.raw", MIB)
    ds.sim.set_faults([{"match": step, "action": "error"}])
    run = ds.run("cp", cp_xml(str(tmp_path / "disk.raw")))
    assert "Injected failure" in run.reason
    assert f"WARN: cp: deleting volume {VOLUME} after the failure" in run.stderr
    assert_clean(ds)
    assert ds.run("cp", cp_xml(str(tmp_path / "disk.raw"))).ok() == f"{VOLUME} raw\n"
    assert ds.volume_bytes(VOLUME, MIB) == data
    assert_clean(ds, VOLUME)


def test_front_end_record_the_group_adds_after_the_timeout_is_removed(ds, tmp_path):
    """Finding F3: the group answers the front-end's ``access create`` after
    EQL_COMMAND_TIMEOUT but adds the record anyway, and the volume cannot be deleted
    either: the cleanup waits for the record and deletes it, so the volume left for the
    re-run is not exposed to the front-end."""
    write_random(tmp_path / "disk.raw", MIB)
    ds.write_conf(EQL_COMMAND_TIMEOUT="2")
    ds.sim.set_faults([
        {"match": f"^volume select {VOLUME} access create initiator ", "action": "delay",
         "seconds": 3},
        {"match": f"^volume delete {VOLUME}$", "action": "error"}])
    run = ds.run("cp", cp_xml(str(tmp_path / "disk.raw")))
    assert run.reason.startswith(f"no answer to `volume select {VOLUME} access create ")
    ds.sim.wait_sessions(0, timeout=20)  # the delayed command has completed
    assert ds.volume_names() == [VOLUME]
    assert ds.volume(VOLUME).access == []
    assert "added by the group although the command failed" in run.stderr
    ds.sim.clear_faults()
    ds.write_conf()
    assert ds.run("cp", cp_xml(str(tmp_path / "disk.raw"))).ok() == f"{VOLUME} raw\n"
    assert_clean(ds, VOLUME)


def test_dropped_connection_is_survived(ds, tmp_path):
    write_random(tmp_path / "disk.raw", MIB)
    ds.sim.set_faults([{"match": "multihost-access", "action": "drop"}])
    assert ds.run("cp", cp_xml(str(tmp_path / "disk.raw"))).ok() == f"{VOLUME} raw\n"
    assert ds.volume(VOLUME).multihost
    assert_clean(ds, VOLUME)


def test_failing_cleanup_is_logged_and_does_not_mask_the_failure(ds, tmp_path):
    write_random(tmp_path / "disk.raw", MIB)
    ds.sim.set_faults([{"match": "multihost-access", "action": "error"},
                       {"match": "volume delete", "action": "error", "message": "% Error - no"}])
    run = ds.run("cp", cp_xml(str(tmp_path / "disk.raw")))
    assert "multihost-access enable`: % Error - Injected failure." in run.reason
    assert f"ERROR: cp: cleanup: could not delete volume {VOLUME}: " in run.stderr
    assert ds.volume_names() == [VOLUME]  # left for the re-run to replace
    run = ds.run("cp", cp_xml(str(tmp_path / "disk.raw")))
    assert run.ok() == f"{VOLUME} raw\n"
    assert f"deleting volume {VOLUME} left by an earlier attempt" in run.stderr
    assert_clean(ds, VOLUME)


@pytest.mark.parametrize(("write", "verify", "problem"), [
    ("fail", "sample", "writing the image to the volume (qemu-img convert) failed (exit 1): "
                       "qemu-img: simulated failure"),
    ("skip", "sample", "verification failed: the volume differs from the image in the 64 "
                       "KiB at offset 0"),
    ("skip", "full", "verification failed: the volume differs from the image (Content "
                     "mismatch at offset 0!)"),
])
def test_failing_write_or_verification(ds, tmp_path, write, verify, problem):
    write_random(tmp_path / "disk.raw", 2 * MIB)
    ds.write_conf(EQL_VERIFY=verify)
    run = ds.run("cp", cp_xml(str(tmp_path / "disk.raw")), env=ds.fake_qemu_img(write))
    assert run.reason == problem
    assert_clean(ds)
    assert ds.run("cp", cp_xml(str(tmp_path / "disk.raw"))).ok() == f"{VOLUME} raw\n"


def test_bad_source_data_fails_the_write(ds, tmp_path):
    image = tmp_path / "disk.qcow2"
    (tmp_path / "data.raw").write_bytes(b"abcdefgh" * (MIB // 8))
    qemu_img("convert", "-c", "-O", "qcow2", str(tmp_path / "data.raw"), str(image))
    with open(image, "r+b") as stream:  # the compressed clusters are at the end
        stream.seek(-4096, 2)
        stream.write(b"\xff" * 4096)
    reason = ds.run("cp", cp_xml(str(image))).reason
    assert reason.startswith("writing the image to the volume (qemu-img convert) failed")
    assert_clean(ds)


def test_wrong_lun_fails_the_write(ds, tmp_path):
    write_random(tmp_path / "disk.raw", MIB)
    ds.write_conf(EQL_LUN="5")
    assert "qemu-img convert) failed" in ds.run("cp", cp_xml(str(tmp_path / "disk.raw"))).reason
    assert_clean(ds)


def test_sigterm_cleans_up(ds, tmp_path):
    write_random(tmp_path / "disk.raw", MIB)
    log = ds.base / "qemu-img.log"
    run = ds.run_terminated(
        "cp", cp_xml(str(tmp_path / "disk.raw")),
        lambda: log.exists() and "--target-image-opts" in log.read_text(),
        "the write never started", env=ds.fake_qemu_img("hang"))
    assert (run.returncode, run.stdout) == (1, "")
    assert run.stderr.splitlines()[-1] == "terminated by SIGTERM"
    assert_clean(ds)


# --- existing volumes ----------------------------------------------------------------------

def test_leftover_of_the_same_image_is_replaced(ds, tmp_path):
    data = write_random(tmp_path / "disk.raw", MIB)
    with ds.group() as group:
        group.create_volume(VOLUME, 100, description=image_description(42, "old name"))
        group.create_access(VOLUME, initiator=FRONTEND)
    run = ds.run("cp", cp_xml(str(tmp_path / "disk.raw")))
    assert run.ok() == f"{VOLUME} raw\n"
    assert f"deleting volume {VOLUME} left by an earlier attempt for image 42" in run.stderr
    assert ds.volume(VOLUME).size_mb == 1
    assert ds.volume_bytes(VOLUME, MIB) == data
    assert_clean(ds, VOLUME)


@pytest.mark.parametrize("description", ["OpenNebula image 7 (other)", "an admin's volume"])
def test_foreign_volume_is_never_replaced(ds, tmp_path, description):
    write_random(tmp_path / "disk.raw", MIB)
    with ds.group() as group:
        group.create_volume(VOLUME, 100, description=description)
    reason = ds.run("cp", cp_xml(str(tmp_path / "disk.raw"))).reason
    assert reason == (f"volume {VOLUME} already exists and is not a leftover of image 42 "
                      f"(description {description!r}): refusing to replace it")
    assert ds.volume(VOLUME).size_mb == 100


# --- volume settings -----------------------------------------------------------------------

def test_volume_settings_from_conf_and_templates(ds, tmp_path):
    write_random(tmp_path / "disk.raw", MIB)
    ds.write_conf(EQL_THINPROVISION="thin-provision thin-min-reserve 20%",
                  EQL_SNAP_RESERVE="50%", EQL_ACCESS_MODE="static",
                  EQL_SECURITY_ACCESS="ipaddress 10.1.1.*")
    xml = ds_xml({"PATH": str(tmp_path / "disk.raw"), "SIZE": "1", "NAME": "Ubuntu"},
                 image_template={"EQL_MULTIHOST": "disable"})
    assert ds.run("cp", xml).ok() == f"{VOLUME} raw\n"
    volume = ds.volume(VOLUME)
    assert (volume.thin, volume.thin_min_reserve, volume.snap_reserve, volume.multihost) == (
        True, 20, 50, False)
    assert [(r.ipaddress, r.initiator) for r in volume.access] == [("10.1.1.*", "")]


def test_static_mode_without_security_access_is_unrestricted(ds, tmp_path):
    write_random(tmp_path / "disk.raw", MIB)
    ds.write_conf(EQL_ACCESS_MODE="static")
    assert ds.run("cp", cp_xml(str(tmp_path / "disk.raw"))).ok() == f"{VOLUME} raw\n"
    assert [r.ipaddress for r in ds.volume(VOLUME).access] == ["*.*.*.*"]


def test_chap_secret_reaches_qemu_through_a_file_only(ds, tmp_path):
    data = write_random(tmp_path / "disk.raw", MIB)
    secret = "Chap+Secret123"
    with ds.group() as group:
        group.create_chap_user("frontend", secret)
    ds.write_conf(EQL_CHAP_USER="frontend", EQL_CHAP_PASS=secret)
    run = ds.run("cp", cp_xml(str(tmp_path / "disk.raw")), env=ds.fake_qemu_img())
    assert run.ok() == f"{VOLUME} raw\n"
    assert secret not in run.stderr
    assert (f"volume select {VOLUME} access create initiator {FRONTEND} username frontend "
            "authmethod chap") in ds.commands()
    calls = ds.qemu_img_calls()
    assert all(secret not in arg for call in calls for arg in call)
    write = next(call for call in calls if "--target-image-opts" in call)
    assert write[write.index("--object") + 1].startswith("secret,id=sec0,format=raw,file=")
    assert ",user=frontend,password-secret=sec0" in write[-1]
    assert ds.volume_bytes(VOLUME, MIB) == data
    assert_clean(ds, VOLUME)
