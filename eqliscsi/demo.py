"""The demo (``python3 -m eqliscsi demo``, from a checkout): the real action scripts,
installed into a temporary remotes tree, run as oned runs them against the simulated
group.

1. The group simulator (``tests/eqlsim``) starts as a subprocess on 127.0.0.1 (password
   in its environment, never on argv); as root with tgtd and qemu's iSCSI driver its
   volumes are real iSCSI targets (the data path), otherwise the data path is skipped.
2. ``eqliscsi install`` into ``<work>/remotes``; a 0600 conf points at the simulator
   (EQL_LUN=1: the simulator's data LUN) with its host key in a known_hosts file.
3. Datastore actions (``[ImM]``), each a subprocess with base64 action data on stdin as
   oned 6.8+ sends it (XML shaped by ``tests/oned_xml``): ``stat``, ``cp`` of a 16 MiB
   qcow2 image and ``mkfs`` of an ext4 datablock (data path only; without it a raw
   datablock), ``clone``, ``monitor``.
4. With the data path, the transfer-manager actions and test hosts (``tests/hosts``:
   host1/host2, host3 standing in for the front-end, all as root), a VM lifecycle
   (``[TrM]``): deploy (clone, ln, mkimage, context), a guest write, a disk snapshot,
   live migration, undeploy, resume, terminate; ``onevm``/``onedatastore``/``oneimage``
   are stand-ins printing the XML oned would hold.  Then the image snapshot is reverted
   and deleted (``[ImM] snap_revert``/``snap_delete``).
5. ``rm`` of every image; the summary counts steps, failures and volumes left.

Every step prints like oned's log: ``[ImM] cp 0 -> OK "ubuntu-demo.0 raw" (0.41 s)``.
Checks of the data (``[check]``) read the volumes' bytes in the simulator's files or
through the hosts.  Everything is stopped and removed at the end, also after a failure,
Ctrl-C or SIGTERM (``--keep`` keeps the work directory).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import pwd
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

from eqliscsi import install as installer
from eqliscsi.oned import one_line

if TYPE_CHECKING:
    from tests.hosts.world import HostWorld

ACTION_TIMEOUT = 180.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
MIB = 1024 * 1024
IMAGE_MB = 16
IMAGE_DS = 100
SYSTEM_DS = 0
VM_ID = 7
DS_LOCATION = "/var/lib/one//datastores"  # oned's DATASTORE_LOCATION, double slash included
FRONTEND_INITIATOR = "iqn.2026-11.org.opennebula.eqliscsi:demo-frontend"
POOL_SIZE = "200GB"
IMAGE_NAMES = {0: "Ubuntu demo", 1: "Data", 2: "Copy"}
FRONTEND_STAND_IN = "host3"  # undeploy target: NO_ISCSI, like the front-end
LCM = {"prolog": 1, "running": 3, "migrate": 4, "epilog": 11, "epilog_undeploy": 30,
       "prolog_resume": 9, "poweroff_snapshot": 51}
EXT4_MAGIC = (1024 + 56, b"\x53\xef")  # the superblock magic's offset and bytes
_LISTENING = re.compile(r"eqlsim listening on (\S+):(\d+)")


class StepFailed(Exception):
    """A step failed (already printed); the phase it belongs to stops."""


class Skipped(Exception):
    """A phase cannot run here; the message says why."""


def checkout() -> Path:
    """The repository this package runs from (it holds the simulator and test hosts)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "tests" / "eqlsim" / "__main__.py").is_file():
        raise installer.InstallError(
            f"the demo runs from a git checkout of eqliscsi (it needs tests/eqlsim); "
            f"{root} is not one")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def _import(name: str) -> ModuleType:
    import importlib

    return importlib.import_module(name)


class Demo:
    """One demo run: its work directory, processes, counters and output."""

    def __init__(self, repo: Path, *, verbose: bool, keep: bool, hosts: bool,
                 data_path: bool) -> None:
        self.repo = repo
        self.verbose = verbose
        self.keep = keep
        self.want_hosts = hosts
        self.want_data_path = data_path
        self.out = _say
        self.work = Path(tempfile.mkdtemp(prefix="eqliscsi-demo-"))
        self.remotes = self.work / "remotes"
        self.state = self.work / "group"
        self.one_dir = self.work / "one"
        self.password = secrets.token_urlsafe(12)
        self.sim: Optional[subprocess.Popen[bytes]] = None
        self.world: Optional[HostWorld] = None
        self.data_path = False
        self.steps = 0
        self.failures = 0
        self.skipped: List[str] = []
        self.env: Dict[str, str] = {}
        self.volumes: Dict[int, str] = {}  # image id -> volume
        self.host = "127.0.0.1"
        self.port = 0

    # --- output --------------------------------------------------------------------------

    def step(self, tag: str, text: str, ok: bool, detail: str, seconds: float,
             log: str = "") -> None:
        """One step line, like oned's log; the action's log lines with -v or a failure."""
        self.steps += 1
        if not ok:
            self.failures += 1
        shown = f' "{detail}"' if detail else ""
        self.out(f"[{tag}] {text} -> {'OK' if ok else 'FAILED:'}{shown} ({seconds:.2f} s)")
        if log and (self.verbose or not ok):
            for line in log.splitlines():
                self.out(f"        {line}")

    def skip(self, what: str, why: str) -> None:
        self.skipped.append(what)
        self.out(f"[skip] {what}: {why}")

    def check(self, text: str, ok: bool, detail: str = "") -> None:
        """A data check: counted as a step; a failed one stops the phase."""
        self.step("check", text, ok, detail, 0.0)
        if not ok:
            raise StepFailed(text)

    # --- running actions -----------------------------------------------------------------

    def action(self, kind: str, name: str, args: List[str], stdin: bytes = b"",
               shown: Optional[str] = None) -> str:
        """Run ``<remotes>/<datastore|tm>/eqliscsi/<name> args`` like oned; its stdout."""
        tag, directory = ("ImM", "datastore") if kind == "ds" else ("TrM", "tm")
        script = self.remotes / directory / "eqliscsi" / name
        started = time.monotonic()
        try:
            done = subprocess.run([str(script), *args], input=stdin, capture_output=True,
                                  env=self.env, timeout=ACTION_TIMEOUT, check=False,
                                  cwd=self.work)
        except subprocess.TimeoutExpired:
            self.step(tag, f"{name} {shown or ' '.join(args)}", False,
                      f"no result within {ACTION_TIMEOUT:.0f} s", ACTION_TIMEOUT)
            raise StepFailed(name) from None
        seconds = time.monotonic() - started
        stdout = done.stdout.decode("utf-8", "replace")
        log = done.stderr.decode("utf-8", "replace").rstrip()
        ok = done.returncode == 0
        detail = one_line(stdout) if ok else (log.splitlines() or ["no reason"])[-1]
        self.step(tag, f"{name} {shown or ' '.join(args)}", ok, detail, seconds, log)
        if not ok:
            raise StepFailed(name)
        return stdout

    def admin(self, *args: str) -> None:
        """``eqliscsi <args> --remotes <work>/remotes``: the admin tool, output shown."""
        argv = [sys.executable, "-m", "eqliscsi", *args, "--remotes", str(self.remotes)]
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, env={**self.env, "PYTHONPATH": str(
            self.repo)}, timeout=ACTION_TIMEOUT, check=False, cwd=self.repo)
        output = (done.stdout + done.stderr).decode("utf-8", "replace").rstrip()
        ok = done.returncode == 0
        shown = " ".join(arg if not arg.startswith("/") else f"<{Path(arg).name}>"
                         for arg in args)
        self.step("admin", f"eqliscsi {shown}", ok, "", time.monotonic() - started)
        for line in output.splitlines():
            self.out(f"        {line}")
        if not ok:
            raise StepFailed(args[0])

    def ds(self, name: str, object_id: int, xml: str) -> str:
        """A datastore action: ``<action> <id>`` with base64 action data on stdin."""
        return self.action("ds", name, [str(object_id)], base64.b64encode(xml.encode()))

    # --- setting up ----------------------------------------------------------------------

    def start_group(self) -> None:
        """Start the simulator subprocess and wait for its ``listening`` line."""
        iscsi_tools = _import("tests.iscsi_tools")
        missing = iscsi_tools.missing_requirements() if self.want_data_path else "--no-iscsi"
        self.data_path = missing is None
        argv = [sys.executable, "-m", "tests.eqlsim", "--state-dir", str(self.state),
                "--listen", "127.0.0.1:0", "--group-name", "demo-group",
                "--iscsi", "on" if self.data_path else "off", "--pool-size", POOL_SIZE]
        env = {**os.environ, "EQLSIM_PASSWORD": self.password,
               "PYTHONPATH": str(self.repo)}
        started = time.monotonic()
        with open(self.work / "eqlsim.log", "wb") as log:  # the child keeps its own copy
            self.sim = subprocess.Popen(argv, cwd=self.repo, env=env, stdout=subprocess.PIPE,
                                        stderr=log, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        assert self.sim.stdout is not None
        ready, _, _ = select.select([self.sim.stdout], [], [], START_TIMEOUT)
        line = self.sim.stdout.readline().decode("utf-8", "replace") if ready else ""
        match = _LISTENING.search(line)
        if match is None:
            tail = (self.work / "eqlsim.log").read_text(errors="replace").strip()
            raise StepFailed(f"the group simulator did not start: {tail[-300:] or 'no output'}")
        self.host, self.port = match.group(1), int(match.group(2))
        store = _import("tests.eqlsim.state").StateStore(self.state)
        group_ip = store.load().group.ipaddress
        self.step("group", "eqlsim --state-dir <work>/group --listen 127.0.0.1:0", True,
                  f"listening on {self.host}:{self.port}", time.monotonic() - started)
        if self.data_path:
            self.out(f"        volumes are real iSCSI targets (tgtd) on {group_ip}:3260")
        else:
            self.out(f"        the iSCSI data path is off ({missing}): volumes are files, "
                     "steps that write data and the VM lifecycle are skipped")

    def install(self) -> None:
        """``eqliscsi install`` into the work directory, then the demo's conf."""
        self.remotes.mkdir()
        started = time.monotonic()
        owner = pwd.getpwuid(os.geteuid()).pw_name
        report = installer.install(installer.InstallOptions(self.remotes, sys.executable,
                                                            owner))
        self.step("install", f"eqliscsi install --remotes <work>/remotes --python "
                  f"{sys.executable}", True,
                  f"{report.count('create')} files", time.monotonic() - started)
        key = _import("tests.eqlsim.server")
        host_key = key.load_host_key(self.state / "ssh_host_ed25519_key")
        known_hosts = self.work / "known_hosts"
        known_hosts.write_text(key.known_hosts_line(self.host, self.port, host_key) + "\n")
        self.write_conf()
        (self.work / "home").mkdir()
        (self.work / "staging").mkdir()
        self.env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "HOME": str(self.work / "home"), "LANG": "C.UTF-8"}

    def write_conf(self, **extra: str) -> None:
        """The installed conf, pointing at the simulator (0600: it holds EQL_PASS)."""
        values = {
            "EQL_HOST": self.host, "EQL_PORT": str(self.port), "EQL_USER": "grpadmin",
            "EQL_PASS": self.password, "EQL_KNOWN_HOSTS": str(self.work / "known_hosts"),
            "EQL_POOL": "default", "EQL_LUN": "1", "EQL_SLOT_DIR": str(self.work / "slots"),
            "EQL_STAGING_DIR": str(self.work / "staging"),
            "EQL_FRONTEND_INITIATOR": FRONTEND_INITIATOR, "EQL_CONNECT_TIMEOUT": "5",
            "EQL_COMMAND_TIMEOUT": "30", "EQL_WAIT_TIME": "10", **extra,
        }
        conf = self.remotes / installer.CONF_PATH
        conf.write_text("# written by the eqliscsi demo\n"
                        + "".join(f'{key}="{value}"\n' for key, value in values.items()))
        conf.chmod(0o600)

    # --- the phases ----------------------------------------------------------------------

    def images(self) -> None:
        """Datastore actions: stat, cp, mkfs, clone, monitor."""
        xml = _import("tests.oned_xml")
        image = self.make_image()
        size = self.ds("stat", 0, xml.stat_action_xml(str(image)))
        self.check(f"stat says {IMAGE_MB} MB", size.strip() == str(IMAGE_MB), size.strip())
        if self.data_path:
            self.volumes[0] = self.ds("cp", 0, self.image_xml(0, "Ubuntu demo", IMAGE_MB,
                                                              PATH=str(image))).split()[0]
            self.check_same(self.volumes[0], self.work / "image.raw", "the image")
            self.volumes[1] = self.ds("mkfs", 1, self.image_xml(
                1, "Data", 32, PATH="", FS="ext4", PERSISTENT="1")).strip()
            offset, magic = EXT4_MAGIC
            self.check(f"{self.volumes[1]} holds an ext4 filesystem",
                       self.read_volume(self.volumes[1], offset, len(magic)) == magic)
        else:
            self.skip("cp", "writes the image over iSCSI")
            self.volumes[1] = self.ds("mkfs", 1, self.image_xml(
                1, "Data", 32, PATH="", PERSISTENT="1")).strip()
        source = self.volumes.get(0, self.volumes[1])
        self.volumes[2] = self.ds("clone", 2, self.image_xml(
            2, "Copy", IMAGE_MB if 0 in self.volumes else 32, PATH=source,
            CLONING_ID="0" if 0 in self.volumes else "1")).split()[0]
        if self.data_path:
            self.check_same(self.volumes[2], self.work / "image.raw", "its source")
        self.ds("monitor", IMAGE_DS, xml.action_xml("", self.datastore_xml()))
        self.admin("check")
        self.admin("volumes")

    def vm_lifecycle(self) -> None:
        """VM 7 through deploy, write, snapshot, migrate, undeploy, resume, terminate."""
        if not self.want_hosts:
            raise Skipped("--no-hosts")
        if not self.data_path:
            raise Skipped("needs the iSCSI data path")
        if not (self.repo / "tm" / "eqliscsi" / "clone").is_file():
            raise Skipped("no transfer-manager actions in this checkout")
        reason = _import("tests.hosts.world").missing_requirements()
        if reason is not None:
            raise Skipped(f"no test hosts here ({reason})")
        self.start_hosts()
        life = VmLife(self)
        try:
            life.run()
        except StepFailed:
            life.tear_down()
            raise

    def start_hosts(self) -> None:
        """Three test hosts (host3 is the front-end's stand-in) and oned's CLI stand-ins."""
        world_module = _import("tests.hosts.world")
        harness = _import("tests.tm_harness")
        started = time.monotonic()
        key = world_module.generate_key(self.work / "frontend-ssh" / "id_ed25519",
                                        "eqliscsi-demo")
        self.world = world_module.HostWorld(self.work / "hosts", 3, client_key=key)
        self.world.start()
        self.step("hosts", "start host1 host2 host3 (sshd, sudo, iscsiadm)", True,
                  ", ".join(f"{h.name}={h.address}" for h in self.world.hosts),
                  time.monotonic() - started)
        bin_dir = self.work / "one-bin"
        bin_dir.mkdir()
        self.one_dir.mkdir()
        for command, kind in harness.STAND_INS.items():
            stand_in = bin_dir / command
            stand_in.write_text(harness.STAND_IN.format(
                command=command, kind=kind, directory=self.one_dir,
                log=self.work / "one-cli.log"))
            stand_in.chmod(0o755)
        self.env["PATH"] = f"{bin_dir}:{self.world.bin_dir}:{self.env['PATH']}"
        self.write_conf(NO_ISCSI=FRONTEND_STAND_IN)
        xml = _import("tests.oned_xml")
        self.put("datastore", IMAGE_DS, self.datastore_xml())
        self.put("datastore", SYSTEM_DS, xml.datastore_xml(
            ID=str(SYSTEM_DS), NAME="system", DS_MAD="-", TYPE="1",
            BASE_PATH=f"{DS_LOCATION}/{SYSTEM_DS}",
            template={"EQL_HOST": None, "SHARED": "NO", "TYPE": "SYSTEM_DS", "DS_MAD": None,
                      "CLONE_TARGET": None, "LN_TARGET": None}))
        for image_id, size, persistent in ((0, IMAGE_MB, "0"), (1, 32, "1")):
            self.put("image", image_id, xml.image_xml(
                ID=str(image_id), NAME=IMAGE_NAMES[image_id], SIZE=str(size),
                SOURCE=self.volumes[image_id], PATH="", PERSISTENT=persistent,
                DATASTORE_ID=str(IMAGE_DS)))

    def snapshots(self) -> None:
        """The image snapshot the VM's disk got: revert the image to it, delete it."""
        volume = self.volumes[1]
        self.ds("snap_revert", 1, self.image_xml(1, "Data", 32, SOURCE=volume, PATH="",
                                                 TARGET_SNAPSHOT="0"))
        self.check(f"{volume} holds the snapshot's data again",
                   self.read_volume(volume, 2 * MIB, MIB) == bytes([0xA1]) * MIB)
        self.ds("snap_delete", 1, self.image_xml(1, "Data", 32, SOURCE=volume, PATH="",
                                                 TARGET_SNAPSHOT="0"))

    def remove_images(self) -> None:
        """``rm`` of every image made (also after a failure: rm of a gone volume is fine)."""
        for image_id in sorted(self.volumes, reverse=True):
            self.ds("rm", image_id, self.image_xml(image_id, IMAGE_NAMES[image_id], 1,
                                                   SOURCE=self.volumes[image_id], PATH=""))
        self.ds("monitor", IMAGE_DS, _import("tests.oned_xml").action_xml(
            "", self.datastore_xml()))

    # --- helpers -------------------------------------------------------------------------

    def make_image(self) -> Path:
        """A 16 MiB image: qcow2 (with qemu-img) of a raw file with random first 4 MiB."""
        raw = self.work / "image.raw"
        with open(raw, "wb") as stream:
            stream.write(os.urandom(4 * MIB))
            stream.truncate(IMAGE_MB * MIB)
        if shutil.which("qemu-img") is None:
            return raw
        image = self.work / "image.qcow2"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                        str(image)], check=True, capture_output=True, timeout=60)
        return image

    def image_xml(self, image_id: int, name: str, size_mb: int, **fields: str) -> str:
        """DS_DRIVER_ACTION_DATA for image ``image_id`` of datastore 100."""
        xml = _import("tests.oned_xml")
        image = xml.image_xml(ID=str(image_id), NAME=name, SIZE=str(size_mb),
                              **{"SOURCE": "", **fields})
        return str(xml.action_xml(image, self.datastore_xml()))

    def datastore_xml(self) -> str:
        """Datastore 100 (DS_MAD and TM_MAD eqliscsi): settings come from the conf."""
        return str(_import("tests.oned_xml").datastore_xml(template={"EQL_HOST": None}))

    def put(self, kind: str, object_id: int, xml: str) -> None:
        """What the ``one<kind> show -x <id>`` stand-in prints."""
        (self.one_dir / f"{kind}-{object_id}.xml").write_text(xml)

    def read_volume(self, volume: str, offset: int, length: int) -> bytes:
        """Bytes of a volume, from the simulator's data file behind its LUN."""
        found = _import("tests.eqlsim.state").StateStore(self.state).load().find_volume(volume)
        if found is None:
            return b""
        with open(self.state / "data" / f"{found.obj_id}.img", "rb") as stream:
            stream.seek(offset)
            return stream.read(length)

    def check_same(self, volume: str, raw: Path, what: str) -> None:
        data = raw.read_bytes()
        digest = hashlib.sha256(data).hexdigest()[:12]
        self.check(f"{volume} holds {what}'s {len(data) // MIB} MiB (sha256 {digest}...)",
                   self.read_volume(volume, 0, len(data)) == data)

    def volumes_left(self) -> int:
        state = _import("tests.eqlsim.state").StateStore(self.state).load()
        return len(state.volumes)

    # --- the whole run -------------------------------------------------------------------

    def run(self) -> int:
        started = time.monotonic()
        self.out(f"eqliscsi demo: work directory {self.work}")
        try:
            self.start_group()
            self.install()
        except StepFailed as exc:
            self.out(f"demo: cannot set up: {exc}")
            return 1
        for phase, name in ((self.images, "images"), (self.vm_lifecycle, "VM lifecycle")):
            self.out(f"--- {name}")
            try:
                phase()
            except Skipped as why:
                self.skip(name, str(why))
            except StepFailed:
                self.out(f"--- {name}: stopped after the failure")
                break
        else:
            if self.world is not None:
                self.run_phase("image snapshots", self.snapshots)
        self.run_phase("removing the images", self.remove_images)
        left = self.volumes_left()
        logged_in = self.stop_hosts()
        skipped = f", {len(self.skipped)} skipped ({', '.join(self.skipped)})" \
            if self.skipped else ""
        self.out(f"\nSummary: {self.steps} steps, {self.steps - self.failures} OK, "
                 f"{self.failures} failed{skipped}; volumes left on the group: {left}; "
                 f"host leftovers: {logged_in}; iSCSI data path: "
                 f"{'on' if self.data_path else 'off'}; {time.monotonic() - started:.1f} s")
        return 0 if self.failures == 0 and left == 0 and logged_in == 0 else 1

    def run_phase(self, name: str, phase: Callable[[], None]) -> None:
        self.out(f"--- {name}")
        try:
            phase()
        except StepFailed:
            self.out(f"--- {name}: stopped after the failure")

    def stop_hosts(self) -> int:
        """Stop the test hosts; the number of things they left behind."""
        if self.world is None:
            return 0
        world, self.world = self.world, None
        world.stop()
        leftovers: List[str] = world.leftovers()
        for item in leftovers:
            self.out(f"[hosts] left behind: {item}")
        return len(leftovers)

    def close(self) -> None:
        """Stop hosts and simulator, remove the work directory (unless --keep)."""
        try:
            self.stop_hosts()
        finally:
            if self.sim is not None and self.sim.poll() is None:
                self.sim.send_signal(signal.SIGTERM)
                try:
                    self.sim.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.sim.kill()
                    self.sim.wait(STOP_TIMEOUT)
            if self.sim is not None and self.sim.stdout is not None:
                self.sim.stdout.close()
            if self.keep:
                self.out(f"kept {self.work}")
            else:
                shutil.rmtree(self.work, ignore_errors=True)


class VmLife:
    """VM 7 as oned knows it (the ``onevm`` stand-in's XML) and its TM calls."""

    def __init__(self, demo: Demo) -> None:
        self.demo = demo
        self.hosts = ["host1"]
        self.lcm = LCM["prolog"]
        self.frontend = socket.gethostname()

    def disks(self) -> List[str]:
        harness = _import("tests.tm_harness")
        volumes = self.demo.volumes
        return [harness.image_disk(0, volumes[0], 0, IMAGE_MB),
                harness.image_disk(1, volumes[1], 1, 32, persistent=True),
                harness.volatile_disk(2, 8, "ext4")]

    def publish(self) -> None:
        harness = _import("tests.tm_harness")
        self.demo.put("vm", VM_ID, harness.vm(VM_ID, self.disks(), self.hosts, self.lcm))

    def tm(self, name: str, *args: str, stdin: bytes = b"") -> None:
        self.publish()
        self.demo.action("tm", name, list(args), stdin)

    def migrate(self, name: str, src: str, dst: str) -> None:
        vm_xml = (self.demo.one_dir / f"vm-{VM_ID}.xml").read_bytes()
        self.tm(name, src, dst, path(), str(VM_ID), str(SYSTEM_DS),
                stdin=base64.b64encode(vm_xml))

    def move(self, src: str, dst: str) -> None:
        """``mv`` of every disk and then of the VM directory (stop/undeploy, resume)."""
        for disk_id in range(3):
            ds = SYSTEM_DS if disk_id == 2 else IMAGE_DS
            self.tm("mv", f"{src}:{path(disk_id)}", f"{dst}:{path(disk_id)}", str(VM_ID),
                    str(ds))
        self.tm("mv", f"{src}:{path()}", f"{dst}:{path()}", str(VM_ID), str(SYSTEM_DS))

    def guest_write(self, host: str, disk_id: int, byte: int) -> None:
        """1 MiB of ``byte`` at 2 MiB of the disk, written on the host as a guest would."""
        world = self.demo.world
        assert world is not None
        started = time.monotonic()
        done = world.host(host).ssh(
            f"head -c {MIB} /dev/zero | tr '\\0' '\\{byte:03o}' | dd of={path(disk_id)} "
            "bs=1M seek=2 oflag=direct conv=notrunc status=none")
        self.demo.step(host, f"guest writes 1 MiB of 0x{byte:02X} to disk.{disk_id}",
                       done.returncode == 0, done.stderr.strip(), time.monotonic() - started)
        if done.returncode != 0:
            raise StepFailed("guest write")

    def guest_read(self, host: str, disk_id: int, byte: int) -> None:
        world = self.demo.world
        assert world is not None
        done = subprocess.run(world.ssh_argv(host, f"dd if={path(disk_id)} bs=1M skip=2 "
                                             "count=1 iflag=direct status=none"),
                              capture_output=True, timeout=60, check=False)
        self.demo.check(f"{host} reads the 0x{byte:02X} MiB back from disk.{disk_id}",
                        done.stdout == bytes([byte]) * MIB)

    def orphans(self) -> None:
        """The admin tool's view while the VM runs: its volumes, and nothing orphaned."""
        xml = _import("tests.oned_xml")
        demo = self.demo
        images = "".join(xml.image_xml(ID=str(image_id), NAME=IMAGE_NAMES[image_id],
                                       SOURCE=volume, PATH="")
                         for image_id, volume in demo.volumes.items())
        vm_xml = (demo.one_dir / f"vm-{VM_ID}.xml").read_text()
        (demo.work / "images.xml").write_text(f"<IMAGE_POOL>{images}</IMAGE_POOL>")
        (demo.work / "vms.xml").write_text(f"<VM_POOL>{vm_xml}</VM_POOL>")
        demo.admin("volumes")
        demo.admin("orphans", "--images-xml", str(demo.work / "images.xml"),
                   "--vms-xml", str(demo.work / "vms.xml"), "--host", "host1",
                   "--host", "host2")

    def tear_down(self) -> None:
        """After a failure: ``delete`` of every disk and the directory on the VM's host,
        as ``onevm terminate --hard`` does (failures are printed, not raised)."""
        host = self.hosts[-1]
        self.demo.out(f"--- VM {VM_ID}: terminate --hard on {host} after the failure")
        calls = [(f"{host}:{path(disk_id)}", IMAGE_DS if disk_id < 2 else SYSTEM_DS)
                 for disk_id in range(3)] + [(f"{host}:{path()}", SYSTEM_DS)]
        self.lcm = LCM["epilog"]
        for place, ds in calls:
            try:
                self.tm("delete", place, str(VM_ID), str(ds))
            except StepFailed:
                continue

    def run(self) -> None:
        demo = self.demo
        volumes = demo.volumes
        context = demo.work / "context.sh"
        context.write_text("HOSTNAME='demo-vm'\n")
        fe = self.frontend
        demo.out(f"VM {VM_ID}: disk.0 clone of image 0, disk.1 persistent image 1, disk.2 "
                 f"volatile ext4, disk.3 context; {FRONTEND_STAND_IN} stands in for the "
                 "front-end (NO_ISCSI)")
        self.tm("clone", f"{fe}:{volumes[0]}", f"host1:{path(0)}", str(VM_ID), str(IMAGE_DS))
        self.tm("ln", f"{fe}:{volumes[1]}", f"host1:{path(1)}", str(VM_ID), str(IMAGE_DS))
        self.tm("mkimage", "8", "raw", f"host1:{path(2)}", str(VM_ID), str(SYSTEM_DS))
        if shutil.which("genisoimage") or shutil.which("mkisofs"):
            self.tm("context", str(context), f"host1:{path(3)}", str(VM_ID), str(SYSTEM_DS))
        else:
            demo.skip("context", "no genisoimage/mkisofs on the front-end")
        self.lcm = LCM["running"]
        self.guest_write("host1", 1, 0xA1)
        self.orphans()
        self.lcm = LCM["poweroff_snapshot"]
        self.tm("snap_create", f"host1:{path(1)}", "0", str(VM_ID), str(IMAGE_DS))
        self.lcm = LCM["running"]
        self.guest_write("host1", 1, 0xB2)
        self.lcm, self.hosts = LCM["migrate"], ["host1", "host2"]
        self.migrate("premigrate", "host1", "host2")
        self.migrate("postmigrate", "host1", "host2")
        self.lcm = LCM["running"]
        self.guest_read("host2", 1, 0xB2)
        self.lcm, self.hosts = LCM["epilog_undeploy"], [*self.hosts, FRONTEND_STAND_IN]
        self.move("host2", FRONTEND_STAND_IN)
        self.lcm, self.hosts = LCM["prolog_resume"], [*self.hosts, "host1"]
        self.move(FRONTEND_STAND_IN, "host1")
        self.lcm = LCM["running"]
        self.guest_read("host1", 1, 0xB2)
        self.lcm = LCM["epilog"]
        self.tm("delete", f"host1:{path(0)}", str(VM_ID), str(IMAGE_DS))
        self.tm("mvds", f"host1:{path(1)}", volumes[1], str(VM_ID), str(IMAGE_DS))
        self.tm("delete", f"host1:{path(2)}", str(VM_ID), str(SYSTEM_DS))
        self.tm("delete", f"host1:{path()}", str(VM_ID), str(SYSTEM_DS))


def path(disk_id: Optional[int] = None) -> str:
    """VM 7's directory (or disk) in system datastore 0, as oned writes it."""
    base = f"{DS_LOCATION}/{SYSTEM_DS}/{VM_ID}"
    return base if disk_id is None else f"{base}/disk.{disk_id}"


def _say(text: str) -> None:
    """Print a line at once (the demo's output is often piped)."""
    print(text, flush=True)


def _terminate(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    """``eqliscsi demo``."""
    repo = checkout()
    previous = signal.signal(signal.SIGTERM, _terminate)
    demo = Demo(repo, verbose=args.verbose, keep=args.keep, hosts=not args.no_hosts,
                data_path=not args.no_iscsi)
    try:
        return demo.run()
    except KeyboardInterrupt:
        _say("demo: interrupted, cleaning up")
        return 130
    finally:
        demo.close()
        signal.signal(signal.SIGTERM, previous)

