"""Faults outside single CLI commands: group out of space, every group session taken,
download failures, checksum mismatch, a failing or hanging data write.  Each: the action
fails with a clear reason (or succeeds where waiting is safe), leaves no volume, access
record, session or staging file, and succeeds when run again after the fault is gone.
Faults on hypervisor hosts (TM actions): ``test_rel_host_faults.py``.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from typing import Dict, Iterator, Tuple

import pytest

from tests.ds_harness import FRONTEND, MIB, DsHarness, ds_xml, serve_http, write_random
from tests.reliability.faultmatrix import group_view
from tests.tm_harness import iscsi

pytestmark = iscsi


def cp_xml(path: str, **template: str) -> str:
    return ds_xml({"NAME": "Img", "PATH": path, "SIZE": "1"}, image_template=template)


def assert_untouched(ds: DsHarness) -> None:
    assert ds.volume_names() == []
    assert ds.staging_left() == []
    ds.sim.wait_sessions(0, timeout=10)


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""
    mode = "ok"

    def do_GET(self) -> None:
        if self.mode == "500":
            self.send_error(500, "Internal Server Error")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.mode == "truncated":
            self.wfile.write(self.body[: len(self.body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[Tuple[str, type]]:
    handler = type("Handler", (_Handler,), {})
    with serve_http(handler) as url:
        yield f"{url}/disk.raw", handler


@pytest.mark.parametrize("mode", ["500", "truncated", "refused", "md5", "sha1"])
def test_download_and_checksum_failures(ds, tmp_path, web, mode):
    url, handler = web
    handler.body = write_random(tmp_path / "disk.raw", MIB)
    handler.mode = mode
    template: Dict[str, str] = {"md5": {"MD5": "0" * 32}, "sha1": {"SHA1": "0" * 40}}.get(
        mode, {})
    source = "http://127.0.0.1:9/disk.raw" if mode == "refused" else url
    run = ds.run("cp", cp_xml(source, **template))
    assert run.reason
    assert ds.sim.commands() == []
    assert_untouched(ds)
    handler.mode = "ok"
    assert ds.run("cp", cp_xml(url)).ok() == "img.42 raw\n"


@pytest.mark.parametrize("action", ["cp", "mkfs", "clone"])
def test_group_out_of_space(ds, tmp_path, action):
    write_random(tmp_path / "disk.raw", MIB)
    with ds.group() as group:
        group.create_volume("golden.7", 16)
    xml = {"cp": cp_xml(str(tmp_path / "disk.raw")),
           "mkfs": ds_xml({"NAME": "Img", "SIZE": "200", "PATH": "", "FORMAT": "raw"}),
           "clone": ds_xml({"NAME": "Img", "PATH": "golden.7", "SIZE": "200",
                            "CLONING_ID": "7"})}[action]
    ds.sim.set_pool_size("default", 20)
    assert "space" in ds.run(action, xml).reason.lower()
    assert ds.volume_names() == ["golden.7"]
    ds.sim.set_pool_size("default", 10000)
    assert ds.run(action, xml).returncode == 0
    assert ds.volume_names() == ["golden.7", "img.42"]
    assert ds.volume("img.42").access == []


def test_session_limit_reached_then_freed(sim_factory, tmp_path):
    """All 3 group sessions are taken by others for 3 s: the action waits (a refused
    session is retried, nothing was sent) and succeeds; with the sessions held longer
    than its retry time it fails with a clear reason."""
    from tests.iscsi_tools import require_iscsi

    require_iscsi()
    sim = sim_factory(iscsi=True, max_sessions=3)
    ds = DsHarness(sim, tmp_path / "ds")
    xml = ds_xml({"NAME": "Img", "SIZE": "16", "PATH": "", "FORMAT": "raw"})
    shells = [sim.shell() for _ in range(3)]
    timer = threading.Timer(3.0, lambda: [shell.close() for shell in shells])
    timer.start()
    started = time.monotonic()
    run = ds.run("mkfs", xml)
    timer.join()
    assert run.ok() == "img.42\n"
    assert time.monotonic() - started >= 2.5
    assert group_view(ds)["img.42"][1] == ()


@pytest.mark.parametrize("write", ["fail", "hang"])
def test_data_write_fails_or_hangs(ds, tmp_path, write):
    write_random(tmp_path / "disk.raw", MIB)
    env = ds.fake_qemu_img(write)
    if write == "hang":  # a write that does not end is stopped by oned's SIGTERM
        import subprocess

        from tests.oned_xml import b64
        script = ds.remotes / "datastore" / "eqliscsi" / "cp"
        process = subprocess.Popen([str(script), "42"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env={**ds.env(), **env}, cwd=ds.base)
        assert process.stdin is not None
        process.stdin.write(b64(cp_xml(str(tmp_path / "disk.raw"))).encode())
        process.stdin.close()
        process.stdin = None  # communicate() must not flush it
        deadline = time.monotonic() + 30
        while not any("access create" in c for c in ds.commands()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1.0)
        process.terminate()
        _, err = process.communicate(timeout=60)
        assert process.returncode == 1, err
        assert err.decode().splitlines()[-1]
    else:
        assert ds.run("cp", cp_xml(str(tmp_path / "disk.raw")), env=env).reason
    assert ds.volume_names() == []
    assert ds.staging_left() == []
    assert ds.run("cp", cp_xml(str(tmp_path / "disk.raw"))).ok() == "img.42 raw\n"
    assert ds.volume("img.42").access == []
    assert all(FRONTEND not in r.initiator for r in ds.volume("img.42").access)

