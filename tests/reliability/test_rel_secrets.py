"""Secrets: the group password and the CHAP secret never appear in any process's argv,
on stdout/stderr, in the debug log or in exception texts; a host key mismatch is
refused; a conf file readable by others is warned about.

The argv sampler reads every ``/proc/<pid>/cmdline`` every few ms while actions run.
Excluded: ``tgtadm`` processes started by the simulator (this pytest process): they are
the simulated ARRAY's own target set-up (the group sets the CHAP secret of its target),
not the driver, which never runs tgtadm.  Everything else, including the actions, their
children (qemu-img, mkfs) and ssh, is checked.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import List, Set

from eqliscsi.ds_actions import image_description
from tests.ds_harness import MIB, ds_xml, iscsi, write_random

pytestmark = iscsi
CHAP_SECRET = "Chap+Secret-88"


class ArgvSampler(threading.Thread):
    """Collects every process argv (as text) containing one of ``secrets``."""

    def __init__(self, secrets: List[str]) -> None:
        super().__init__(daemon=True)
        self.secrets = [secret.encode() for secret in secrets]
        self.hits: Set[str] = set()
        self.samples = 0
        self.stop = threading.Event()
        self.me = os.getpid()

    def _excluded(self, pid: str, argv: bytes) -> bool:
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
        return ppid == self.me and os.path.basename(argv.split(b"\0")[0]) == b"tgtadm"

    def run(self) -> None:
        while not self.stop.wait(0.003):
            self.samples += 1
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    argv = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                if any(secret in argv for secret in self.secrets) and \
                        not self._excluded(entry, argv):
                    self.hits.add(argv.replace(b"\0", b" ").decode("utf-8", "replace"))


def test_secrets_never_leak(ds, tmp_path):
    with ds.group() as group:
        group.create_chap_user("frontend", CHAP_SECRET)
    log = tmp_path / "debug.log"
    ds.write_conf(EQL_CHAP_USER="frontend", EQL_CHAP_PASS=CHAP_SECRET, EQL_DEBUG="yes",
                  EQL_DEBUG_LOG=str(log))
    secrets = [ds.sim.password, CHAP_SECRET]
    write_random(tmp_path / "disk.raw", 2 * MIB)
    sampler = ArgvSampler(secrets)
    sampler.start()
    runs = [
        ds.run("cp", ds_xml({"NAME": "Img", "PATH": str(tmp_path / "disk.raw"), "SIZE": "2"})),
        ds.run("mkfs", ds_xml({"ID": "43", "NAME": "Fs", "SIZE": "16", "PATH": "",
                               "FORMAT": "raw", "FS": "ext4"}), object_id=43),
        ds.run("clone", ds_xml({"ID": "44", "NAME": "Copy", "PATH": "img.42", "SIZE": "16",
                                "CLONING_ID": "42"}), object_id=44),
        ds.run("monitor", ds_xml(with_image=False), object_id=100),
        # failures: an injected CLI error, a refused delete, a CHAP user that is wrong
        ds.run("rm", ds_xml({"SOURCE": "missing.1", "PATH": ""}), object_id=1),
    ]
    ds.sim.set_faults([{"match": "volume create", "action": "error",
                        "message": f"% Error - echo {CHAP_SECRET}"}])
    runs.append(ds.run("mkfs", ds_xml({"ID": "45", "NAME": "D", "SIZE": "16", "PATH": "",
                                       "FORMAT": "raw"}), object_id=45))
    ds.sim.clear_faults()
    ds.write_conf(EQL_CHAP_USER="frontend", EQL_CHAP_PASS=CHAP_SECRET, EQL_DEBUG="yes",
                  EQL_DEBUG_LOG=str(log), EQL_PASS="X" + ds.sim.password)
    runs.append(ds.run("monitor", ds_xml(with_image=False), object_id=100))  # bad password
    sampler.stop.set()
    sampler.join()
    assert sampler.samples > 50
    assert sampler.hits == set()
    assert [run.returncode for run in runs] == [0, 0, 0, 0, 0, 1, 1], [r.stderr for r in runs]
    for run in runs:
        for secret in secrets:
            assert secret not in run.stdout and secret not in run.stderr, run.stderr
    text = log.read_text()
    assert "volume create" in text  # the debug log did record commands
    for secret in secrets:
        assert secret not in text
    staged = list(ds.staging.rglob("*"))
    assert staged == [], staged


def test_exception_texts_mask_secrets():
    from eqliscsi import errors, oned

    oned.register_secret(CHAP_SECRET)
    for error_type in (errors.EqlError, errors.InvalidValue):
        text = oned.clean_message(str(error_type(f"bad value {CHAP_SECRET}")))
        assert CHAP_SECRET not in text and "***" in text


def test_host_key_mismatch_is_refused(ds, tmp_path):
    other = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(tmp_path / "otherkey")], check=True)
    assert other.returncode == 0
    key = (tmp_path / "otherkey.pub").read_text().split()[:2]
    ds.known_hosts.write_text(f"[{ds.sim.host}]:{ds.sim.port} {key[0]} {key[1]}\n")
    for policy in ("strict", "accept-new"):
        ds.write_conf(EQL_HOST_KEY_POLICY=policy)
        reason = ds.run("monitor", ds_xml(with_image=False), object_id=100).reason
        assert "host key" in reason.lower(), reason
    assert ds.sim.commands() == []


def test_conf_readable_by_others_is_warned_about(ds):
    with ds.group() as group:
        group.create_volume("x.42", 16, description=image_description(42, "X"))
    ds.conf.chmod(0o644)
    run = ds.run("monitor", ds_xml(with_image=False), object_id=100)
    run.ok()
    assert "readable by group/others" in run.stderr and "chmod 600" in run.stderr
    ds.conf.chmod(0o600)
    assert "readable" not in ds.run("monitor", ds_xml(with_image=False), object_id=100).stderr
