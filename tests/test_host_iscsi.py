"""Host-side iSCSI (``eqliscsi.host_iscsi``).

Unit tests run the generated scripts for real (bash, flock, ln, fuser) through a fake
``ssh`` (runs the command locally), a fake ``sudo`` (insists on ``-n``, then runs the
command as the caller) and ``tests/fake_iscsiadm.py`` (node records in open-iscsi's
layout, sessions, by-path links to a real, unused ``/dev/loopN``); ``/sys/class/block`` is
a small fake tree.  The sudoers test checks ``sudoers/eqliscsi`` with the real sudo and a
non-root user in a private mount namespace.  The ``iscsi`` tests at the end use the real
test hosts of ``tests/hosts`` (sshd, sudo with ``sudoers/eqliscsi``, the iscsiadm stand-in
over real iSCSI sessions to the simulated group's tgtd).
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from eqliscsi import host_iscsi
from eqliscsi.config import DriverConfig
from eqliscsi.host_iscsi import (
    Chap,
    DiskLink,
    Host,
    HostBusy,
    HostError,
    HostLayout,
    VolumeTarget,
)

REPO = Path(__file__).resolve().parent.parent
IQN1 = "iqn.2001-05.com.equallogic:0-8a0906-4a1c7e105-1e2000000385a3a1-vol1"
IQN2 = "iqn.2001-05.com.equallogic:0-8a0906-5b2d8f216-2f3000000496b4b2-vol2"
PORTAL = "10.99.0.10:3260"
SECRET = "Zq9!secretAB7"
HOST_IQN = "iqn.2024-01.org.example:fake1"
FAST = DriverConfig(wait_time=1.0, command_timeout=10.0, connect_timeout=5.0)

FAKE_SSH = """#!/bin/bash
# fake ssh: log argv, then run the remote command locally (stdin passes through)
printf '%s\\n' "$*" >> "$FAKE_ISCSI_DIR/ssh.log"
while [ $# -gt 0 ]; do
  case $1 in --) shift; break ;; -o|-F|-i|-p) shift 2 ;; *) shift ;; esac
done
shift
exec bash -c "$*"
"""
FAKE_SUDO = """#!/bin/bash
printf '%s\\n' "$*" >> "$FAKE_ISCSI_DIR/sudo.log"
if [ "$1" != -n ]; then echo "sudo: a password is required" >&2; exit 1; fi
shift
exec "$@"
"""
FAKE_BLOCKDEV = """#!/bin/bash
printf '%s\\n' "$*" >> "$FAKE_ISCSI_DIR/blockdev.log"
"""


def _free_loop_device() -> str:
    """A loop device node that exists and is not bound to a file."""
    free = [f"/dev/loop{index}" for index in range(7, -1, -1)
            if Path(f"/dev/loop{index}").exists()
            and not Path(f"/sys/block/loop{index}/loop").exists()]
    if not free:
        pytest.skip("no unused /dev/loopN block device")
    return free[0]


@dataclass
class Fake:
    """The fake host environment of one test."""

    tmp: Path
    state: Path
    by_path: Path
    sys_block: Path
    device: str
    lock_dir: Path

    def host(self, config: DriverConfig = FAST, name: str = "kvm1", **options: object) -> Host:
        layout = HostLayout(by_path_dir=str(self.by_path), node_dbs=(str(self.state / "nodes"),),
                            initiator_file=str(self.tmp / "initiatorname.iscsi"),
                            lock_dirs=(str(self.tmp / "hostlock"),),
                            sys_block=str(self.sys_block))
        return Host(name, config, lock_dir=str(self.lock_dir), layout=layout,
                    **options)  # type: ignore[arg-type]

    def log(self, name: str) -> List[str]:
        path = self.state / name
        return path.read_text().splitlines() if path.exists() else []

    def calls(self) -> List[Dict[str, Any]]:
        return [json.loads(line) for line in self.log("calls.log")]

    def iscsiadm_argvs(self) -> List[List[str]]:
        return [list(call["argv"]) for call in self.calls()]

    def sessions(self) -> List[Dict[str, str]]:
        path = self.state / "sessions.json"
        return list(json.loads(path.read_text())) if path.exists() else []

    def records(self) -> List[Path]:
        nodes = self.state / "nodes"
        return sorted(p for p in nodes.rglob("*") if p.is_file()) if nodes.exists() else []

    def link_name(self, iqn: str, lun: int = 0) -> Path:
        return self.by_path / f"ip-10.99.0.10:3260-iscsi-{iqn}-lun-{lun}"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fake:
    device = _free_loop_device()
    name = os.path.basename(device)
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    for directory in (bin_dir, state, tmp_path / "hostlock", tmp_path / "by-path"):
        directory.mkdir()
    for tool, text in (("ssh", FAKE_SSH), ("sudo", FAKE_SUDO), ("blockdev", FAKE_BLOCKDEV)):
        (bin_dir / tool).write_text(text)
        (bin_dir / tool).chmod(0o755)
    (bin_dir / "iscsiadm").write_text(
        f"#!/bin/sh\nexec {shlex.quote(sys.executable)} "
        f"{shlex.quote(str(REPO / 'tests' / 'fake_iscsiadm.py'))} \"$@\"\n")
    (bin_dir / "iscsiadm").chmod(0o755)
    sys_dev = tmp_path / "sys" / name
    (sys_dev / "holders").mkdir(parents=True)
    (sys_dev / "dev").write_text(Path(f"/sys/class/block/{name}/dev").read_text())
    (sys_dev / "size").write_text("2048\n")
    (tmp_path / "initiatorname.iscsi").write_text(f"## comment\nInitiatorName={HOST_IQN}\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ISCSI_DIR", str(state))
    monkeypatch.setenv("FAKE_BY_PATH", str(tmp_path / "by-path"))
    monkeypatch.setenv("FAKE_DEVICE", device)
    for variable in ("FAKE_LOGIN_RC", "FAKE_NO_LINK", "FAKE_SESSION_DISK", "FAKE_SLEEP",
                     "FAKE_LUN"):
        monkeypatch.delenv(variable, raising=False)
    return Fake(tmp_path, state, tmp_path / "by-path", tmp_path / "sys", device,
                tmp_path / "locks")


def target(iqn: str = IQN1, chap: Optional[Chap] = None, lun: int = 0) -> VolumeTarget:
    return VolumeTarget(iqn, PORTAL, lun, chap)


def vm_dir(fake: Fake, name: str = "7") -> Path:
    return fake.tmp / "datastores" / "0" / name


# --- script generation and validation -----------------------------------------------------

HOSTILE_DIR = "vm $(touch PWNED) `touch PWNED2` 'q\" ;x"


def test_hostile_paths_are_quoted_not_run(fake: Fake) -> None:
    directory = fake.tmp / HOSTILE_DIR
    link = DiskLink(target(), str(directory / "disk.0"))
    devices = fake.host().attach([link], make_dirs=[str(directory)])
    assert devices == {str(directory / "disk.0"): fake.device}
    assert os.readlink(directory / "disk.0") == str(fake.link_name(IQN1))
    assert not list(fake.tmp.rglob("PWNED*"))
    assert not (Path.cwd() / "PWNED").exists()


def test_every_value_is_assigned_as_one_quoted_word(fake: Fake) -> None:
    host = fake.host()
    checked = host_iscsi._check_target("kvm1", "attach", target(chap=Chap("user1", SECRET)))
    path = f"/var/lib/one/datastores/0/{HOSTILE_DIR}/disk.3"
    script = host._script("attach", [checked], links=[(path, 0)], make_dirs=["/a b/$(x)"])
    assignments = dict(line.split("=", 1) for line in script.splitlines()
                       if line.startswith(("L_PATH=", "MAKE_DIRS=", "T_IQN=")))
    assert shlex.split(assignments["L_PATH"].strip("()")) == [path]
    assert shlex.split(assignments["MAKE_DIRS"].strip("()")) == ["/a b/$(x)"]
    assert shlex.split(assignments["T_IQN"].strip("()")) == [IQN1]
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0


@pytest.mark.parametrize("iqn", [
    "iqn.2001-05.com.equallogic:vol$(reboot)",
    "iqn.2001-05.com.equallogic:vol;reboot",
    "iqn.2001-05.com.equallogic:vol\nreboot",
    "iqn.2001-05.com.equallogic:../../etc",
    "-T iqn.2001-05.com.equallogic:x",
    "",
])
def test_invalid_iqns_are_rejected_before_ssh(fake: Fake, iqn: str) -> None:
    with pytest.raises(HostError, match="host kvm1: attach: invalid target IQN"):
        fake.host().attach([DiskLink(target(iqn), str(vm_dir(fake) / "disk.0"))])
    assert fake.log("ssh.log") == []


@pytest.mark.parametrize(("portal", "lun"), [
    ("eql.example.com:3260", 0), ("10.0.0.300:3260", 0), ("10.0.0.5", 0),
    ("10.0.0.5:0", 0), ("10.0.0.5:3260;x", 0), ("10.99.0.10:3260", -1),
    ("10.99.0.10:3260", 16384),
])
def test_invalid_portals_and_luns_are_rejected(fake: Fake, portal: str, lun: int) -> None:
    with pytest.raises(HostError, match=r"invalid (portal|LUN)"):
        fake.host().rescan(VolumeTarget(IQN1, portal, lun))
    assert fake.log("ssh.log") == []


@pytest.mark.parametrize("path", [
    "relative/disk.0", "/var/lib/one/datastores/0/../../../etc/disk.0",
    "/var/lib/one/datastores/0/7/disk.0\n", "/var/lib/one/datastores/0/7/disk.x",
    "/var/lib/one/datastores/0/7/disk.0/..", "/etc/passwd",
])
def test_invalid_disk_paths_are_rejected(fake: Fake, path: str) -> None:
    with pytest.raises(HostError, match="path"):
        fake.host().detach([target()], remove_paths=[path])
    assert fake.log("ssh.log") == []


def test_ipv6_portals_and_double_slashes(fake: Fake) -> None:
    host = fake.host()
    link = host.by_path_link(VolumeTarget(IQN1, "[fd00::a]:3260", 1))
    assert link.endswith(f"/ip-fd00::a:3260-iscsi-{IQN1}-lun-1")
    assert host._disk_path("attach", "/var/lib/one//datastores/0/7/disk.2") == \
        "/var/lib/one/datastores/0/7/disk.2"


@pytest.mark.parametrize("name", ["-oProxyCommand=touch x", "kvm 1", "kvm1;x", ""])
def test_host_names_cannot_become_ssh_options(name: str) -> None:
    with pytest.raises(HostError, match="invalid host name"):
        Host(name, FAST)


def test_ssh_gets_the_script_on_stdin_and_only_options_in_argv(fake: Fake) -> None:
    chap = Chap("user1", SECRET)
    fake.host().attach([DiskLink(target(chap=chap), str(vm_dir(fake) / "disk.0"))])
    (argv,) = fake.log("ssh.log")
    assert argv.endswith("-T -o BatchMode=yes -o ConnectTimeout=5 -- kvm1 bash --norc "
                         "--noprofile -s")
    assert SECRET not in argv
    assert "Chap(user='user1')" == repr(chap)


# --- attach --------------------------------------------------------------------------------

def test_attach_logs_in_waits_verifies_and_links(fake: Fake) -> None:
    links = [DiskLink(target(IQN1), str(vm_dir(fake) / "disk.0")),
             DiskLink(target(IQN2), str(vm_dir(fake) / "disk.1"))]
    devices = fake.host().attach(links)
    assert devices == {link.path: fake.device for link in links}
    for link in links:
        assert os.readlink(link.path) == str(fake.link_name(link.target.iqn))
    assert [s["iqn"] for s in fake.sessions()] == [IQN1, IQN2]
    settings = fake.records()[0].read_text()
    assert "node.startup = manual" in settings
    assert "authmethod = None" in settings
    new = [argv for argv in fake.iscsiadm_argvs() if "new" in argv]
    assert new[0] == ["-m", "node", "-o", "new", "-T", IQN1, "-p", f"{PORTAL},1"]
    assert all(line.startswith("-n ") for line in fake.log("sudo.log"))
    assert len(fake.log("ssh.log")) == 1


def test_chap_secret_goes_to_the_record_but_never_on_a_command_line(fake: Fake) -> None:
    fake.host().attach([DiskLink(target(chap=Chap("user1", SECRET)),
                                 str(vm_dir(fake) / "disk.0"))])
    (session,) = fake.sessions()
    assert (session["user"], session["secret"]) == ("user1", SECRET)
    record = fake.records()[0]
    assert record.parent.name == "10.99.0.10,3260,1" and record.name == "default"
    assert "node.session.auth.authmethod = CHAP" in record.read_text()
    argvs = [*fake.log("ssh.log"), *fake.log("sudo.log"),
             *(" ".join(argv) for argv in fake.iscsiadm_argvs())]
    assert argvs and not [line for line in argvs if SECRET in line]
    assert any(line.startswith("-n tee -a ") for line in fake.log("sudo.log"))


def test_secret_is_masked_in_errors(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    chap = Chap("user1", SECRET)
    monkeypatch.setenv("FAKE_LOGIN_RC", "24")
    with pytest.raises(HostError) as failed:
        fake.host().attach([DiskLink(target(chap=chap), str(vm_dir(fake) / "disk.0"))])
    assert SECRET not in str(failed.value)
    error = HostError("kvm1", "attach", f"echoed {SECRET} back")
    assert SECRET not in str(error) and "***" in str(error)
    with pytest.raises(HostError) as invalid:
        fake.host().attach([DiskLink(target(chap=Chap("user1", "short$")),
                                     str(vm_dir(fake) / "disk.0"))])
    assert "short$" not in str(invalid.value)


def test_attach_twice_logs_in_once(fake: Fake) -> None:
    link = DiskLink(target(), str(vm_dir(fake) / "disk.0"))
    host = fake.host()
    assert host.attach([link]) == host.attach([link])
    assert sum("--login" in argv for argv in fake.iscsiadm_argvs()) == 1
    assert len(fake.sessions()) == 1


def test_stale_disk_link_is_replaced(fake: Fake) -> None:
    directory = vm_dir(fake)
    directory.mkdir(parents=True)
    (directory / "disk.0").symlink_to("/dev/disk/by-path/some-old-volume")
    fake.host().attach([DiskLink(target(), str(directory / "disk.0"))])
    assert os.readlink(directory / "disk.0") == str(fake.link_name(IQN1))


def test_failed_login_rolls_back_everything_this_call_did(
        fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    host = fake.host()
    host.attach([DiskLink(target(IQN1), str(vm_dir(fake, "1") / "disk.0"))])
    monkeypatch.setenv("FAKE_LOGIN_RC", "24")
    links = [DiskLink(target(IQN1), str(vm_dir(fake, "2") / "disk.0")),
             DiskLink(target(IQN2), str(vm_dir(fake, "2") / "disk.1"))]
    with pytest.raises(HostError) as failed:
        host.attach(links)
    assert failed.value.exit_code == host_iscsi.EXIT_LOGIN
    assert str(failed.value) == (f"host kvm1: attach: login to {IQN2} at {PORTAL} "
                                 "failed (rc 24): fake login fault")  # iscsiadm's reason only
    assert [s["iqn"] for s in fake.sessions()] == [IQN1]  # logged in before: kept
    assert [r.parts[-3] for r in fake.records()] == [IQN1]
    assert not (vm_dir(fake, "2") / "disk.0").exists()
    monkeypatch.delenv("FAKE_LOGIN_RC")
    assert len(host.attach(links)) == 2


def test_device_that_never_appears_fails_and_logs_out(
        fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NO_LINK", "1")
    started = time.monotonic()
    with pytest.raises(HostError, match=r"did not appear within 1s") as failed:
        fake.host().attach([DiskLink(target(), str(vm_dir(fake) / "disk.0"))])
    assert time.monotonic() - started < 10
    assert failed.value.exit_code == host_iscsi.EXIT_DEVICE
    assert fake.sessions() == [] and fake.records() == []


def test_stale_by_path_link_to_a_non_block_device_fails(
        fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NO_LINK", "1")
    (fake.tmp / "plain-file").write_text("")
    fake.link_name(IQN1).symlink_to(fake.tmp / "plain-file")
    with pytest.raises(HostError, match=r"is not a block device \(stale"):
        fake.host().attach([DiskLink(target(), str(vm_dir(fake) / "disk.0"))])
    assert fake.sessions() == []


def test_device_that_is_not_a_disk_of_the_session_fails(
        fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SESSION_DISK", "sdz")
    with pytest.raises(HostError, match=r"not to a disk of session 1 .* /dev/sdz"):
        fake.host().attach([DiskLink(target(), str(vm_dir(fake) / "disk.0"))])
    assert fake.sessions() == []


def test_lun_is_part_of_the_device_name(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_LUN", "1")
    with pytest.raises(HostError, match="-lun-0 did not appear"):
        fake.host().attach([DiskLink(target(lun=0), str(vm_dir(fake) / "disk.0"))])
    assert fake.host().attach([DiskLink(target(lun=1), str(vm_dir(fake) / "disk.0"))])


def test_dedicated_iface_is_used_for_records_and_sessions(fake: Fake) -> None:
    host = fake.host(replace(FAST, iface="eql0"))
    host.attach([DiskLink(target(chap=Chap("user1", SECRET)), str(vm_dir(fake) / "disk.0"))])
    assert fake.records()[0].name == "eql0"
    assert all(argv[-2:] != ["-I", "default"] for argv in fake.iscsiadm_argvs())
    login = [argv for argv in fake.iscsiadm_argvs() if "--login" in argv]
    assert login == [["-m", "node", "-T", IQN1, "-p", PORTAL, "-I", "eql0", "--login"]]
    host.detach([target()])
    assert fake.records() == [] and fake.sessions() == []


# --- initiator name ------------------------------------------------------------------------

def test_initiator_name_is_read_once_then_cached(fake: Fake) -> None:
    assert fake.host().initiator_name() == HOST_IQN
    assert fake.host().initiator_name() == HOST_IQN
    assert len(fake.log("ssh.log")) == 1
    assert (fake.lock_dir / "initiator-kvm1").read_text() == HOST_IQN + "\n"


def test_unreadable_initiator_file_is_read_with_sudo(fake: Fake) -> None:
    (fake.tmp / "initiatorname.iscsi").unlink()  # not readable, even for root
    with pytest.raises(HostError, match=r"initiator: sudo cat .*initiatorname\.iscsi failed "
                       r"\(rc 1\): cat: .*No such file") as failed:
        fake.host().initiator_name()
    assert failed.value.exit_code == host_iscsi.EXIT_INITIATOR_READ
    assert fake.log("sudo.log") == [f"-n cat {fake.tmp / 'initiatorname.iscsi'}"]
    assert not (fake.lock_dir / "initiator-kvm1").exists()


def test_changed_initiator_refreshes_the_cache_and_retries_once(fake: Fake) -> None:
    fake.lock_dir.mkdir()
    (fake.lock_dir / "initiator-kvm1").write_text("iqn.2024-01.org.example:old\n")
    granted: List[str] = []
    link = DiskLink(target(), str(vm_dir(fake) / "disk.0"))
    assert fake.host().attach([link], ensure_access=granted.append)
    assert granted == ["iqn.2024-01.org.example:old", HOST_IQN]
    assert fake.host().initiator_name() == HOST_IQN
    assert len(fake.log("ssh.log")) == 2
    assert sum("--login" in argv for argv in fake.iscsiadm_argvs()) == 1


def test_changed_initiator_without_ensure_access_is_not_checked(fake: Fake) -> None:
    fake.lock_dir.mkdir()
    (fake.lock_dir / "initiator-kvm1").write_text("iqn.2024-01.org.example:old\n")
    assert fake.host().attach([DiskLink(target(), str(vm_dir(fake) / "disk.0"))])


def test_initiator_change_before_any_change_on_the_host(fake: Fake) -> None:
    fake.lock_dir.mkdir()
    (fake.lock_dir / "initiator-kvm1").write_text("iqn.2024-01.org.example:old\n")

    def refuse(name: str) -> None:
        if name == HOST_IQN:
            raise HostError("kvm1", "access", "no access for the new name")

    with pytest.raises(HostError, match="no access for the new name"):
        fake.host().attach([DiskLink(target(), str(vm_dir(fake) / "disk.0"))],
                           ensure_access=refuse)
    assert fake.calls() == [] and not vm_dir(fake).exists()


# --- detach ---------------------------------------------------------------------------------

def test_detach_removes_links_flushes_logs_out_and_deletes_records(fake: Fake) -> None:
    links = [DiskLink(target(IQN1), str(vm_dir(fake) / "disk.0")),
             DiskLink(target(IQN2), str(vm_dir(fake) / "disk.1"))]
    host = fake.host()
    host.attach(links)
    host.detach([link.target for link in links], remove_paths=[link.path for link in links])
    assert fake.sessions() == [] and fake.records() == []
    assert not any(os.path.lexists(link.path) for link in links)
    assert fake.log("blockdev.log") == [f"--flushbufs {fake.device}"] * 2
    host.detach([link.target for link in links], remove_paths=[link.path for link in links])
    assert len(fake.log("ssh.log")) == 3


def test_detach_refuses_a_held_device_and_changes_nothing(fake: Fake) -> None:
    link = DiskLink(target(), str(vm_dir(fake) / "disk.0"))
    host = fake.host()
    host.attach([link])
    name = os.path.basename(fake.device)
    (fake.sys_block / name / "holders" / "dm-3").mkdir()
    with pytest.raises(HostBusy, match=f"{fake.device} .* is held by dm-3; not logging out"):
        host.detach([link.target], remove_paths=[link.path])
    assert len(fake.sessions()) == 1 and os.path.islink(link.path)
    assert fake.log("blockdev.log") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="opening a block device needs root")
def test_detach_refuses_a_device_open_by_a_process(fake: Fake) -> None:
    link = DiskLink(target(), str(vm_dir(fake) / "disk.0"))
    host = fake.host()
    host.attach([link])
    with open(fake.device, "rb") as device:
        holder = subprocess.Popen(["sleep", "30"], stdin=device)
    try:
        with pytest.raises(HostBusy, match=rf"is open by +{holder.pid} sleep"):
            host.detach([link.target], remove_paths=[link.path])
        assert len(fake.sessions()) == 1 and os.path.islink(link.path)
    finally:
        holder.kill()
        holder.wait(5)
    host.detach([link.target], remove_paths=[link.path])
    assert fake.sessions() == []


def test_detach_refuses_to_remove_a_non_link(fake: Fake) -> None:
    host = fake.host()
    host.attach([DiskLink(target(), str(vm_dir(fake) / "disk.0"))])
    (vm_dir(fake) / "disk.1").write_text("data")
    with pytest.raises(HostError, match=r"disk\.1 is not a symbolic link; not removed"):
        host.detach([target()], remove_paths=[str(vm_dir(fake) / "disk.0"),
                                              str(vm_dir(fake) / "disk.1")])
    assert os.path.islink(vm_dir(fake) / "disk.0") and len(fake.sessions()) == 1


# --- rescan ---------------------------------------------------------------------------------

def test_rescan_reports_the_new_size(fake: Fake) -> None:
    host = fake.host()
    host.attach([DiskLink(target(), str(vm_dir(fake) / "disk.0"))])
    (fake.sys_block / os.path.basename(fake.device) / "size").write_text("4096\n")
    assert host.rescan(target()) == 4096 * 512
    assert [argv for argv in fake.iscsiadm_argvs() if "--rescan" in argv] == [
        ["-m", "node", "-T", IQN1, "-p", PORTAL, "--rescan"]]


def test_rescan_of_a_target_not_logged_in_fails(fake: Fake) -> None:
    with pytest.raises(HostError, match=f"rescan: not logged in to {IQN1}") as failed:
        fake.host().rescan(target())
    assert failed.value.exit_code == host_iscsi.EXIT_RESCAN


# --- ssh, timeouts and locks ----------------------------------------------------------------

def test_ssh_failure_is_reported_with_its_message(fake: Fake) -> None:
    broken = fake.tmp / "bin" / "broken-ssh"
    broken.write_text("#!/bin/sh\necho 'ssh: connect to host kvm1 port 22: Connection "
                      "refused' >&2\nexit 255\n")
    broken.chmod(0o755)
    with pytest.raises(HostError, match=r"host kvm1: rescan: ssh failed: .*Connection refused"):
        fake.host(ssh_command=(str(broken),)).rescan(target())


def test_a_host_that_never_answers_times_out(fake: Fake) -> None:
    hanging = fake.tmp / "bin" / "hanging-ssh"
    hanging.write_text("#!/bin/sh\nexec sleep 30\n")
    hanging.chmod(0o755)
    config = DriverConfig(wait_time=0.2, command_timeout=0.2, connect_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(HostError, match="no answer within"):
        fake.host(config, ssh_command=(str(hanging),)).rescan(target())
    assert time.monotonic() - started < 5


def test_busy_front_end_lock_times_out(fake: Fake) -> None:
    fake.lock_dir.mkdir()
    with open(fake.lock_dir / "host-kvm1.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(HostError, match="another action on this host holds"):
            fake.host(lock_wait=0.2).rescan(target())
    assert fake.log("ssh.log") == []


RACE = """
import sys
from eqliscsi.config import DriverConfig
from eqliscsi.host_iscsi import Host, HostLayout, VolumeTarget
lock_dir, sys_block, host_lock, by_path = sys.argv[1:5]
layout = HostLayout(by_path_dir=by_path, lock_dirs=(host_lock,), sys_block=sys_block)
host = Host("kvm1", DriverConfig(wait_time=1, command_timeout=20), lock_dir=lock_dir,
            layout=layout)
try:
    host.rescan(VolumeTarget({iqn!r}, {portal!r}, 0))
except Exception as exc:
    print(exc)
"""


def _race(fake: Fake, front_end_locks: List[Path], host_locks: List[Path]) -> bool:
    """Two processes rescan at once (every iscsiadm call sleeps 0.15 s); whether their
    iscsiadm calls ran as two blocks, one after the other, without overlap."""
    script = RACE.format(iqn=IQN1, portal=PORTAL)
    processes = []
    for tag, lock_dir, host_lock in zip("ab", front_end_locks, host_locks):
        host_lock.mkdir(exist_ok=True)
        env = {**os.environ, "FAKE_SLEEP": "0.15", "FAKE_TAG": tag, "PYTHONPATH": str(REPO)}
        processes.append(subprocess.Popen(
            [sys.executable, "-c", script, str(lock_dir), str(fake.sys_block), str(host_lock),
             str(fake.by_path)],
            env=env, stdout=subprocess.PIPE, text=True))
    for process in processes:
        out, _ = process.communicate(timeout=60)
        assert out == ""
    calls = sorted((c for c in fake.calls() if c["tag"]), key=lambda c: float(c["start"]))
    order = "".join(str(call["tag"]) for call in calls)
    assert sorted(order) == list("aaaabbbb")
    switches = [(a, b) for a, b in zip(calls, calls[1:]) if a["tag"] != b["tag"]]
    return len(switches) == 1 and float(switches[0][0]["end"]) <= float(switches[0][1]["start"])


@pytest.mark.parametrize("shared", ["front-end lock", "host lock"])
def test_one_lock_alone_serialises_two_actions_on_a_host(fake: Fake, shared: str) -> None:
    fake.host().attach([DiskLink(target(), str(vm_dir(fake) / "disk.0"))])
    pair = [fake.tmp / "a", fake.tmp / "b"]
    same = [fake.tmp / "shared"] * 2
    assert _race(fake, same if shared == "front-end lock" else pair,
                 pair if shared == "front-end lock" else same)


def test_without_locks_the_actions_interleave(fake: Fake) -> None:
    """The control experiment for the test above: separate locks let the calls mix."""
    fake.host().attach([DiskLink(target(), str(vm_dir(fake) / "disk.0"))])
    assert not _race(fake, [fake.tmp / "a", fake.tmp / "b"], [fake.tmp / "c", fake.tmp / "d"])


# --- sudoers --------------------------------------------------------------------------------

SUDO_PROBES = textwrap.dedent("""\
    t() { if setpriv --reuid={uid} --regid={uid} --clear-groups sudo -n -l "$@" \
      >/dev/null 2>&1; then echo "allow $*"; else echo "deny $*"; fi; }
    t iscsiadm -m node -T {iqn} -p 10.0.0.5:3260 --login
    t blockdev --flushbufs /dev/sdb
    t blockdev --flushbufs /dev/sdb --setro
    t blockdev --setrw /dev/sdb
    t fuser /dev/sdb
    t fuser -k /dev/sdb
    t tee -a /etc/iscsi/nodes/{iqn}/10.0.0.5,3260,1/default
    t tee -a /var/lib/iscsi/nodes/{iqn}/fd00::5,3260,1/eql0
    t tee -a /etc/iscsi/nodes/../../sudoers.d/x/1.2.3.4,3260,1/default
    t tee -a /etc/iscsi/nodes/{iqn}/10.0.0.5,3260,1/default /etc/shadow
    t tee /etc/iscsi/nodes/{iqn}/10.0.0.5,3260,1/default
    t cat /etc/iscsi/initiatorname.iscsi
    t cat /etc/shadow
    t dd if=/dev/zero of=/dev/sdb
    """)


def _uid_taken(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_sudoers_snippet_allows_exactly_the_driver_commands(tmp_path: Path) -> None:
    """``sudoers/eqliscsi`` with the real sudo, for a real non-root oneadmin (own
    passwd/group/shadow and sudoers.d bind-mounted in a private mount namespace)."""
    tools = [shutil.which(tool) for tool in ("sudo", "visudo", "unshare", "setpriv")]
    if os.geteuid() != 0 or None in tools:
        if os.environ.get("CI") == "true":
            pytest.fail("the sudoers test must run in CI (root, sudo, unshare, setpriv)")
        pytest.skip("needs root, sudo, visudo, unshare and setpriv")
    snippet = REPO / "sudoers" / "eqliscsi"
    check = subprocess.run(["visudo", "-c", "-f", str(snippet)], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    uid = 9869
    while _uid_taken(uid):
        uid += 1
    files = {}
    for name, entry in (("passwd", f"oneadmin:x:{uid}:{uid}::/nonexistent:/bin/sh"),
                        ("group", f"oneadmin:x:{uid}:"),
                        ("shadow", "oneadmin:*:19000:0:99999:7:::")):
        lines = [line for line in Path(f"/etc/{name}").read_text().splitlines()
                 if not line.startswith("oneadmin:")]
        files[name] = tmp_path / name
        files[name].write_text("\n".join([*lines, entry, ""]))
        files[name].chmod(Path(f"/etc/{name}").stat().st_mode & 0o777)
    sudoers_d = tmp_path / "sudoers.d"
    sudoers_d.mkdir()
    shutil.copy(snippet, sudoers_d / "eqliscsi")
    (sudoers_d / "eqliscsi").chmod(0o440)
    binds = " && ".join(f"mount --bind {shlex.quote(str(source))} /etc/{name}"
                        for name, source in [*files.items(), ("sudoers.d", sudoers_d)])
    probes = SUDO_PROBES.replace("{uid}", str(uid)).replace("{iqn}", IQN1)
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "bash",
                             "-c", f"{binds} && {probes}"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    verdicts = [line.split(" ", 1)[0] for line in result.stdout.splitlines()]
    assert verdicts == ["allow", "allow", "deny", "deny", "allow", "deny", "allow", "allow",
                        "deny", "deny", "deny", "allow", "deny", "deny"], result.stdout


# --- real test hosts (sshd, sudo, iscsiadm stand-in over real iSCSI to tgtd) ---------------

MIB = 1 << 20
SYSTEM_DS = "/var/lib/one/datastores/0"


@dataclass
class World:
    """Two test hosts, the simulated group and what the tests need to drive them."""

    hosts: Any  # tests.hosts.world.HostWorld
    client: Any  # eqliscsi.group.GroupClient
    sim: Any  # tests.conftest.RunningSim
    portal: str
    ssh_count: Path
    config: DriverConfig
    lock_dir: Path

    def host(self, name: str = "host1") -> Host:
        wrapper = self.ssh_count.parent / "ssh"
        return Host(name, self.config, ssh_command=(str(wrapper),), lock_dir=str(self.lock_dir))

    def ssh_calls(self) -> int:
        return len(self.ssh_count.read_text().splitlines()) if self.ssh_count.exists() else 0

    def volume(self, name: str, size_mb: int = 16) -> VolumeTarget:
        return VolumeTarget(self.client.create_volume(name, size_mb), self.portal, 1)

    def grant(self, *volumes: str) -> Any:
        """An ``ensure_access`` callback: initiator access records for the volumes."""
        def ensure(initiator: str) -> None:
            for volume in volumes:
                self.client.ensure_access(volume, initiator=initiator)
        return ensure

    def on_host(self, command: str, host: str = "host1") -> str:
        result = self.hosts.host(host).ssh(command)
        assert result.returncode == 0, result.stderr
        return str(result.stdout)


@pytest.fixture
def world(tmp_path: Path, sim_factory: Any, hosts_factory: Any) -> Iterator[World]:
    """The simulated group with real tgtd targets and two test hosts whose sudoers is
    exactly ``sudoers/eqliscsi`` (plus ``dd`` for the tests' own writes)."""
    from eqliscsi.group import GroupClient, GroupSettings
    from tests import iscsi_tools

    iscsi_tools.require_iscsi()
    sim = sim_factory(iscsi=True)
    test_rule = tmp_path / "eqliscsi-tests-dd"
    test_rule.write_text("oneadmin ALL=(root) NOPASSWD: /usr/bin/dd, /bin/dd\n")
    hosts = hosts_factory(count=2, sudoers=(REPO / "sudoers" / "eqliscsi", test_rule))
    counter = tmp_path / "ssh-wrapper" / "calls"
    counter.parent.mkdir()
    wrapper = counter.parent / "ssh"
    wrapper.write_text(f"#!/bin/sh\necho call >> {shlex.quote(str(counter))}\n"
                       f"exec ssh -F {shlex.quote(str(hosts.ssh_config))} \"$@\"\n")
    wrapper.chmod(0o755)
    settings = GroupSettings(
        host=sim.host, port=sim.port, user=sim.user, password=sim.password,
        known_hosts=str(sim.write_known_hosts(tmp_path / "known_hosts")),
        slot_dir=str(tmp_path / "slots"))
    config = DriverConfig(lun=1, wait_time=15.0, command_timeout=60.0, connect_timeout=10.0)
    with GroupClient(settings) as client:
        yield World(hosts, client, sim, f"{client.group_ip()}:3260", counter, config,
                    tmp_path / "locks")


def _no_iscsi_state(world: World, host: str = "host1") -> None:
    assert world.hosts.host(host).sessions() == []
    assert world.hosts.host(host).by_path() == {}
    nodes = world.hosts.host(host).root(["iscsiadm", "-m", "node"])
    assert nodes.returncode == 21, nodes.stdout


@pytest.mark.iscsi
def test_two_volumes_attach_write_read_detach(world: World) -> None:
    from tests import iscsi_tools

    vol1, vol2 = world.volume("vol1"), world.volume("vol2")
    host = world.host()
    links = [DiskLink(vol1, f"{SYSTEM_DS}/42/disk.0"), DiskLink(vol2, f"{SYSTEM_DS}/42/disk.1")]
    assert host.initiator_name() == "iqn.2024-01.org.example:host1"
    calls = world.ssh_calls()
    devices = host.attach(links, make_dirs=[f"{SYSTEM_DS}/42"],
                          ensure_access=world.grant("vol1", "vol2"))
    assert world.ssh_calls() == calls + 1
    assert sorted(devices) == [link.path for link in links]
    assert all(device.startswith("/dev/loop") for device in devices.values())
    assert len({*devices.values()}) == 2
    listing = world.on_host(f"readlink {SYSTEM_DS}/42/disk.0 {SYSTEM_DS}/42/disk.1")
    assert listing.split() == [host.by_path_link(vol1), host.by_path_link(vol2)]

    for index, (volume, byte) in enumerate(((vol1, 0xAB), (vol2, 0xCD))):
        world.on_host(f"head -c {MIB} /dev/zero | tr '\\0' '\\{byte:o}' | sudo -n dd "
                      f"of={SYSTEM_DS}/42/disk.{index} bs={MIB} seek=4 oflag=direct "
                      "conv=notrunc status=none")
        data = iscsi_tools.read_bytes(world.portal, volume.iqn, 1, 4 * MIB, MIB,
                                      "iqn.2024-01.org.example:host1")
        assert data == bytes([byte]) * MIB

    calls = world.ssh_calls()
    host.detach([vol1, vol2], remove_paths=[link.path for link in links])
    assert world.ssh_calls() == calls + 1
    _no_iscsi_state(world)
    assert world.on_host(f"ls -A {SYSTEM_DS}/42") == ""
    assert world.hosts.host("host2").sessions() == []


@pytest.mark.iscsi
def test_attach_and_detach_twice(world: World) -> None:
    volume = world.volume("vol1")
    host = world.host()
    link = DiskLink(volume, f"{SYSTEM_DS}/7/disk.2")
    first = host.attach([link], ensure_access=world.grant("vol1"))
    calls = world.ssh_calls()
    assert host.attach([link], ensure_access=world.grant("vol1")) == first
    assert world.ssh_calls() == calls + 1
    assert len(world.hosts.host("host1").sessions()) == 1
    host.detach([volume], remove_paths=[link.path])
    host.detach([volume], remove_paths=[link.path])
    _no_iscsi_state(world)


@pytest.mark.iscsi
def test_stale_link_is_replaced_and_unknown_volume_fails_cleanly(world: World) -> None:
    volume = world.volume("vol1")
    host = world.host()
    world.on_host(f"mkdir -p {SYSTEM_DS}/9 && ln -s /dev/disk/by-path/gone {SYSTEM_DS}/9/disk.0")
    host.attach([DiskLink(volume, f"{SYSTEM_DS}/9/disk.0")], ensure_access=world.grant("vol1"))
    assert world.on_host(f"readlink {SYSTEM_DS}/9/disk.0").strip() == host.by_path_link(volume)

    denied = world.volume("vol2")  # no access record for host1
    with pytest.raises(HostError, match=r"host host1: attach: login to .*vol2 .*failed") as bad:
        host.attach([DiskLink(denied, f"{SYSTEM_DS}/9/disk.1")])
    assert bad.value.exit_code == host_iscsi.EXIT_LOGIN
    assert [s["target"] for s in world.hosts.host("host1").sessions()] == [volume.iqn]
    assert world.on_host(f"ls {SYSTEM_DS}/9").split() == ["disk.0"]
    host.detach([volume, denied], remove_paths=[f"{SYSTEM_DS}/9/disk.0"])
    _no_iscsi_state(world)


@pytest.mark.iscsi
def test_held_device_is_not_logged_out(world: World) -> None:
    volume = world.volume("vol1")
    host = world.host()
    link = DiskLink(volume, f"{SYSTEM_DS}/5/disk.0")
    device = host.attach([link], ensure_access=world.grant("vol1"))[link.path]
    holder = subprocess.Popen(["nsenter", f"--target={world.hosts.host('host1').pid}",
                               "--mount", "--", "sh", "-c", f"exec sleep 60 < {device}"])
    try:
        deadline = time.monotonic() + 10
        while os.path.realpath(f"/proc/{holder.pid}/fd/0") != device:  # sh has exec'd sleep
            assert time.monotonic() < deadline and holder.poll() is None
            time.sleep(0.05)
        with pytest.raises(HostBusy, match=rf"{device} .* is open by +{holder.pid} sleep"):
            host.detach([volume], remove_paths=[link.path])
        assert len(world.hosts.host("host1").sessions()) == 1
        assert world.on_host(f"readlink {link.path}").strip() == host.by_path_link(volume)
    finally:
        holder.kill()
        holder.wait(10)
    host.detach([volume], remove_paths=[link.path])
    _no_iscsi_state(world)


@pytest.mark.iscsi
def test_rescan_after_extend(world: World) -> None:
    from tests import iscsi_tools

    volume = world.volume("vol1", 16)
    host = world.host()
    link = DiskLink(volume, f"{SYSTEM_DS}/3/disk.0")
    host.attach([link], ensure_access=world.grant("vol1"))

    def target_size() -> int:  # what a fresh login sees (the group rounds sizes up)
        return iscsi_tools.lun_size(world.portal, volume.iqn, 1, "iqn.2024-01.org.example:host1")

    before = host.rescan(volume)
    assert before == target_size()
    world.client.extend_volume("vol1", 64)
    calls = world.ssh_calls()
    after = host.rescan(volume)
    assert world.ssh_calls() == calls + 1
    assert after == target_size() >= 64 * MIB > before
    last = after // MIB - 1
    assert world.on_host(f"sudo -n dd if={link.path} bs={MIB} skip={last} count=1 status=none "
                         "iflag=direct | wc -c").strip() == str(MIB)
    host.detach([volume], remove_paths=[link.path])
    _no_iscsi_state(world)


@pytest.mark.iscsi
def test_chap_login_keeps_the_secret_off_command_lines(world: World) -> None:
    from tests import iscsi_tools

    secret = world.client.create_chap_user("onehost", "Chap1secret42")
    world.volume("vol1")
    world.client.create_access("vol1", chap_user="onehost")
    volume = VolumeTarget(world.client.show_volume("vol1").iqn, world.portal, 1,
                          Chap("onehost", secret))
    host = world.host("host2")
    link = DiskLink(volume, f"{SYSTEM_DS}/11/disk.0")
    host.attach([link])
    world.on_host(f"printf 'chap-data' | sudo -n dd of={link.path} conv=notrunc status=none",
                  host="host2")
    reader = "iqn.2024-01.org.example:reader"
    assert iscsi_tools.read_bytes(world.portal, volume.iqn, 1, 0, 9, reader,
                                  iscsi_tools.Chap("onehost", secret)) == b"chap-data"
    calls = world.hosts.host("host2").iscsiadm_calls()
    assert calls and not [call for call in calls if secret in json.dumps(call["argv"])]
    wrong = replace(volume, chap=Chap("onehost", "Wrong1secret42"))
    host.detach([volume], remove_paths=[link.path])
    with pytest.raises(HostError, match="rc 24"):
        host.attach([replace(link, target=wrong)])
    _no_iscsi_state(world, "host2")


@pytest.mark.iscsi
def test_concurrent_attaches_and_detaches_on_one_host(world: World) -> None:
    """Eight front-ends (own lock directories) attach and then detach a volume each on
    host1 at once: the host lock serialises them, every one succeeds, nothing is left."""
    count = 8
    host1 = world.hosts.host("host1")
    volumes = [world.volume(f"vol{index}") for index in range(count)]
    for index in range(count):
        world.client.ensure_access(f"vol{index}", initiator=host1.iqn)
    wrapper = world.ssh_count.parent / "ssh"
    front_ends = [Host("host1", world.config, ssh_command=(str(wrapper),),
                       lock_dir=str(world.lock_dir / f"front-end{index}"))
                  for index in range(count)]
    links = [DiskLink(volume, f"{SYSTEM_DS}/{100 + index}/disk.0")
             for index, volume in enumerate(volumes)]

    with ThreadPoolExecutor(max_workers=count) as pool:
        devices = list(pool.map(
            lambda index: front_ends[index].attach(
                [links[index]], make_dirs=[f"{SYSTEM_DS}/{100 + index}"]),
            range(count)))
    assert len({device[links[index].path] for index, device in enumerate(devices)}) == count
    assert sorted(s["target"] for s in host1.sessions()) == sorted(v.iqn for v in volumes)

    with ThreadPoolExecutor(max_workers=count) as pool:
        list(pool.map(lambda index: front_ends[index].detach(
            [volumes[index]], remove_paths=[links[index].path]), range(count)))
    _no_iscsi_state(world)
    failed = [call for call in host1.iscsiadm_calls()
              if call["rc"] not in (0, 21)]  # 21: "no records"/"no sessions" probes
    assert failed == []
