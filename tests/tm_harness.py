"""Run transfer-manager actions the way oned does, against a simulated group with real
iSCSI targets (``sim_factory(iscsi=True)``) and real test hosts (``tests/hosts``).

``TmHarness`` builds a private remotes tree (``<tmp>/remotes/tm/eqliscsi/<action>``
symlinks to the repository's scripts), a 0600 conf file pointing at the simulator
(EQL_PASS only there, LUN 1, private slot/lock/staging directories), and runs actions as
subprocesses with oned's argv (and stdin where oned gives one).  ``PATH`` starts with:

* stand-ins for ``onevm``, ``onedatastore`` and ``oneimage``: there is no oned here, so
  these stand in for oned's CLI.  ``<cmd> show -x <id>`` prints the XML the test composed
  (``put_vm``/``put_datastore``/``put_image``, shaped like OpenNebula's by
  ``tests.oned_xml``) from ``<tmp>/one/<kind>-<id>.xml``, and logs the call
  (``cli_calls``); an unknown id fails as oned's CLI does;
* the test hosts' ``ssh``/``scp`` wrappers (``ssh -F <generated config>``), so the
  driver's plain ``ssh host1`` reaches the test hosts.

Datastores put at the start: image datastore 100 and system datastore 0, both
``TM_MAD=eqliscsi`` (the system one ``SHARED=YES`` when the hosts share
``/var/lib/one/datastores``).  The autouse fixture ``tm_clean`` checks after every test
that no host is logged in to anything and that the group holds only the volumes the test
made itself or allowed (``allow``).
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Set

import pytest

from eqliscsi.group import GroupClient, GroupSettings
from tests import iscsi_tools
from tests.conftest import RunningSim
from tests.ds_harness import DsRun
from tests.eqlsim.iscsi import TgtBackend
from tests.eqlsim.state import Volume
from tests.hosts.world import Host, HostWorld
from tests.oned_xml import datastore_xml, disk_xml, history_xml, image_xml, vm_xml

REPO = Path(__file__).resolve().parent.parent
TM_DIR = REPO / "tm" / "eqliscsi"
VENV_BIN = Path(sys.executable).parent
LUN = TgtBackend.data_lun
MIB = 1024 * 1024
IMAGE_DS = 100
SYSTEM_DS = 0
DS_LOCATION = "/var/lib/one//datastores"  # oned's DATASTORE_LOCATION, double slash included
TESTER = "iqn.2024-11.org.example.cloud:tester"  # the test's own initiator (group side)
ACTION_TIMEOUT = 120.0

iscsi = pytest.mark.iscsi

STAND_IN = """#!/bin/sh
# Stands in for OpenNebula's {command} (oned's CLI; there is no oned in the tests):
# "{command} show -x <id>" prints {directory}/{kind}-<id>.xml, composed by the test.
printf '%s\\n' "{command} $*" >> '{log}'
if [ "$#" -ne 3 ] || [ "$1" != show ] || [ "$2" != -x ]; then
  echo "{command}: only 'show -x <id>' is stood in for" >&2; exit 2
fi
if [ ! -f '{directory}/{kind}-'"$3"'.xml' ]; then
  echo "[one.{kind}.info] Error getting {kind} [$3]." >&2; exit 255
fi
exec cat '{directory}/{kind}-'"$3"'.xml'
"""
STAND_INS = {"onevm": "vm", "onedatastore": "datastore", "oneimage": "image"}


TmRun = DsRun
"""One finished TM action (the same contract as a DS action's)."""


def vm_path(vm_id: int, disk_id: Optional[int] = None) -> str:
    """The VM directory (or disk) path oned writes: ``<location>/0/<vm>[/disk.N]``."""
    base = f"{DS_LOCATION}/{SYSTEM_DS}/{vm_id}"
    return base if disk_id is None else f"{base}/disk.{disk_id}"


def disk_arg(host: str, disk_id: int, vm_id: int = 17) -> str:
    """A TM disk argument as oned passes it: ``host:<location>/0/<vm>/disk.N``."""
    return f"{host}:{vm_path(vm_id, disk_id)}"


def image_disk(disk_id: int, volume: str, image_id: int, size_mb: int,
               persistent: bool = False, **fields: Optional[str]) -> str:
    """A VM DISK of image ``image_id`` (volume ``volume``) of datastore 100."""
    values: Dict[str, Optional[str]] = {
        "DISK_ID": str(disk_id), "SOURCE": volume, "IMAGE_ID": str(image_id),
        "IMAGE": volume.rsplit(".", 1)[0], "SIZE": str(size_mb), "ORIGINAL_SIZE": str(size_mb),
        "CLONE": "NO" if persistent else "YES", "SAVE": "YES" if persistent else "NO",
        "PERSISTENT": "YES" if persistent else None, "DATASTORE_ID": str(IMAGE_DS),
        "TARGET": f"vd{'abcdefgh'[disk_id]}"}
    values.update(fields)
    return disk_xml(**values)


def volatile_disk(disk_id: int, size_mb: int, fs: Optional[str] = None,
                  kind: str = "fs") -> str:
    """A volatile DISK (``TYPE=fs`` or ``swap``): no image, no datastore, no TM_MAD."""
    return disk_xml(
        DISK_ID=str(disk_id), TYPE=kind, SIZE=str(size_mb), FS=fs, FORMAT="raw",
        TARGET=f"vd{'abcdefgh'[disk_id]}", **{name: None for name in (
            "SOURCE", "IMAGE_ID", "IMAGE", "DATASTORE_ID", "DATASTORE", "TM_MAD", "CLONE",
            "CLONE_TARGET", "LN_TARGET", "ORIGINAL_SIZE", "IMAGE_STATE", "SAVE",
            "ALLOW_ORPHANS", "DISK_TYPE")})


def vm(vm_id: int, disks: List[str], hosts: List[str], lcm_state: int = 3,
       system_tm: str = "eqliscsi") -> str:
    """``onevm show -x`` of a VM that ran on ``hosts`` (the last is the current one),
    system datastore 0 with TM ``system_tm``."""
    history = [history_xml(seq, name, str(SYSTEM_DS), system_tm)
               for seq, name in enumerate(hosts)]
    return vm_xml(str(vm_id), disks, history, str(lcm_state))


class TmHarness:
    """A simulated group, test hosts, and everything an action needs to reach them."""

    def __init__(self, sim: RunningSim, world: Optional[HostWorld], base: Path,
                 shared: bool) -> None:
        self.sim = sim
        self.world = world
        self.base = base
        self.remotes = base / "remotes"
        self.one_dir = base / "one"
        self.staging = base / "staging"
        self.allowed: Set[str] = set()
        self.chap: Optional[iscsi_tools.Chap] = None  # the test initiator's, when needed
        driver_dir = self.remotes / "tm" / "eqliscsi"
        bin_dir = base / "one-bin"
        for directory in (driver_dir, self.one_dir, self.staging, bin_dir):
            directory.mkdir(parents=True)
        for script in sorted(p for p in TM_DIR.iterdir() if p.is_file()):
            (driver_dir / script.name).symlink_to(script)
        for command, kind in STAND_INS.items():
            stand_in = bin_dir / command
            stand_in.write_text(STAND_IN.format(command=command, kind=kind,
                                                directory=self.one_dir, log=self.cli_log))
            stand_in.chmod(0o755)
        self.bin_dir = bin_dir
        self.known_hosts = sim.write_known_hosts(base / "known_hosts")
        self.conf = base / "eqliscsi.conf"
        self.write_conf()
        ds_template = {"EQL_HOST": None, "SHARED": "YES" if shared else "NO", "TYPE": "SYSTEM_DS",
                       "DS_MAD": None, "CLONE_TARGET": None, "LN_TARGET": None}
        self.put_datastore(SYSTEM_DS, datastore_xml(
            ID=str(SYSTEM_DS), NAME="system", DS_MAD="-", TYPE="1",
            BASE_PATH=f"{DS_LOCATION}/{SYSTEM_DS}", template=ds_template))
        self.put_datastore(IMAGE_DS, datastore_xml(template={"EQL_HOST": None}))

    @property
    def cli_log(self) -> Path:
        return self.base / "one-cli.log"

    # --- configuration and oned's objects ------------------------------------------------

    def write_conf(self, **extra: str) -> None:
        """The conf file: the simulator, LUN 1, private directories, short timeouts, plus
        ``extra`` keys."""
        values: Dict[str, str] = {
            "EQL_HOST": self.sim.host, "EQL_PORT": str(self.sim.port),
            "EQL_USER": self.sim.user, "EQL_PASS": self.sim.password,
            "EQL_KNOWN_HOSTS": str(self.known_hosts), "EQL_LUN": str(LUN),
            "EQL_SLOT_DIR": str(self.base / "slots"), "EQL_STAGING_DIR": str(self.staging),
            "EQL_FRONTEND_INITIATOR": TESTER, "EQL_CONNECT_TIMEOUT": "5",
            "EQL_COMMAND_TIMEOUT": "20", "EQL_WAIT_TIME": "10",
        }
        values.update(extra)
        self.conf.write_text("".join(f'{key}="{value}"\n' for key, value in values.items()))
        self.conf.chmod(0o600)

    def put_vm(self, vm_id: int, xml: str) -> None:
        (self.one_dir / f"vm-{vm_id}.xml").write_text(xml)

    def put_datastore(self, ds_id: int, xml: str) -> None:
        (self.one_dir / f"datastore-{ds_id}.xml").write_text(xml)

    def put_image(self, image_id: int, xml: str) -> None:
        (self.one_dir / f"image-{image_id}.xml").write_text(xml)

    def cli_calls(self) -> List[str]:
        """The stand-ins' calls so far (``onevm show -x 17``, ...)."""
        return self.cli_log.read_text().splitlines() if self.cli_log.exists() else []

    # --- running actions -----------------------------------------------------------------

    def env(self) -> Dict[str, str]:
        home = self.base / "home"
        home.mkdir(exist_ok=True)
        hosts = f"{self.world.bin_dir}:" if self.world is not None else ""
        path = f"{self.bin_dir}:{hosts}{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin"
        return {"PATH": path, "HOME": str(home), "EQLISCSI_CONF": str(self.conf),
                "LANG": "C.UTF-8"}

    def run(self, action: str, *args: str, stdin: bytes = b"") -> TmRun:
        """Run ``tm/eqliscsi/<action> args...`` like oned does."""
        script = self.remotes / "tm" / "eqliscsi" / action
        done = subprocess.run([str(script), *args], input=stdin, capture_output=True,
                              env=self.env(), timeout=ACTION_TIMEOUT, check=False,
                              cwd=self.base)
        return TmRun(done.returncode, done.stdout.decode(), done.stderr.decode())

    # --- the group -----------------------------------------------------------------------

    @contextmanager
    def group(self) -> Iterator[GroupClient]:
        """A client for test set-up and checks (its own session slots)."""
        settings = GroupSettings(
            host=self.sim.host, port=self.sim.port, user=self.sim.user,
            password=self.sim.password, known_hosts=str(self.known_hosts),
            slot_dir=str(self.base / "test-slots"), connect_timeout=5, command_timeout=20)
        with GroupClient(settings) as client:
            yield client

    @property
    def portal(self) -> str:
        return f"{self.sim.load_state().group.ipaddress}:3260"

    def allow(self, *names: str) -> None:
        """Volumes the group may still hold after the test."""
        self.allowed.update(names)

    def make_image(self, image_id: int, name: str, size_mb: int, fill: int,
                   persistent: bool = False) -> str:
        """Image ``image_id``: volume ``<name>.<id>`` of ``size_mb`` MB whose first MiB is
        ``fill`` bytes, and its ``oneimage show`` XML; returns the volume."""
        volume = f"{name}.{image_id}"
        with self.group() as group:
            group.create_volume(volume, size_mb, description=f"OpenNebula image {image_id} "
                                f"({name})")
        self.write(volume, 0, MIB, fill)
        self.put_image(image_id, image_xml(ID=str(image_id), NAME=name, SOURCE=volume,
                                           SIZE=str(size_mb), PATH="",
                                           PERSISTENT="1" if persistent else "0",
                                           DATASTORE_ID=str(IMAGE_DS)))
        self.allow(volume)
        return volume

    @contextmanager
    def _tester_access(self, volume: str) -> Iterator[str]:
        """The volume's IQN, with an access record for the test's initiator meanwhile."""
        with self.group() as group:
            record = group.create_access(volume, initiator=TESTER)
            try:
                yield group.show_volume(volume).iqn
            finally:
                group.delete_access(volume, record)

    def write(self, volume: str, offset: int, length: int, byte: int) -> None:
        """Write ``length`` bytes ``byte`` at ``offset`` of the volume (group side)."""
        with self._tester_access(volume) as iqn:
            iscsi_tools.write_pattern(self.portal, iqn, LUN, offset, length, byte, TESTER,
                                      self.chap)

    def read(self, volume: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of the volume, read over iSCSI (group side)."""
        with self._tester_access(volume) as iqn:
            return iscsi_tools.read_bytes(self.portal, iqn, LUN, offset, length, TESTER,
                                          self.chap)

    def volume_names(self) -> List[str]:
        return sorted(v.name for v in self.sim.load_state().volumes.values())

    def volume(self, name: str) -> Volume:
        found = self.sim.load_state().find_volume(name)
        assert found is not None, f"no volume {name}"
        return found

    def access(self, name: str) -> List[str]:
        """The initiators of the volume's access records."""
        return sorted(record.initiator for record in self.volume(name).access)

    def commands(self) -> List[str]:
        return [str(entry.get("command", "")) for entry in self.sim.commands()]

    # --- hosts ---------------------------------------------------------------------------

    @property
    def hosts(self) -> HostWorld:
        assert self.world is not None, "this harness has no test hosts"
        return self.world

    def host(self, name: str) -> Host:
        return self.hosts.host(name)

    def iqn(self, name: str) -> str:
        return self.hosts.host(name).iqn

    def logged_in(self, name: str) -> List[str]:
        """The volumes host ``name`` has sessions to (by target IQN), sorted."""
        by_iqn = {v.iqn: v.name for v in self.sim.load_state().volumes.values()}
        return sorted(by_iqn.get(s["target"], s["target"]) for s in self.host(name).sessions())

    def link(self, name: str, path: str) -> Optional[str]:
        """Where ``path`` on host ``name`` points (None if it is no symlink)."""
        done = self.host(name).ssh(f"readlink -- {path} || true")
        return done.stdout.strip() or None

    def write_disk(self, name: str, path: str, offset_mib: int, byte: int) -> None:
        """Write one MiB of ``byte`` at ``offset_mib`` MiB through a disk link on a host,
        as a guest would (``dd oflag=direct``)."""
        done = self.host(name).ssh(
            f"head -c {MIB} /dev/zero | tr '\\0' '\\{byte:03o}' | "
            f"dd of={path} bs=1M seek={offset_mib} oflag=direct conv=notrunc status=none")
        assert done.returncode == 0, done.stderr

    def read_disk(self, name: str, path: str, offset_mib: int) -> bytes:
        """One MiB at ``offset_mib`` MiB through a disk link on a host."""
        done = subprocess.run(
            [*self.hosts.ssh_argv(name, f"dd if={path} bs=1M skip={offset_mib} count=1 "
                                        "iflag=direct status=none")],
            capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def check_clean(self) -> None:
        """No host logged in to anything; no volume the test did not make or allow."""
        for host in self.world.hosts if self.world is not None else []:
            assert host.sessions() == [], f"{host.name} is still logged in"
        assert set(self.volume_names()) <= self.allowed, self.volume_names()


@pytest.fixture(autouse=True)
def tm_clean(sim_factory: Callable[..., RunningSim],
             hosts_factory: Callable[..., HostWorld]) -> Iterator[List[TmHarness]]:
    """Autouse (in modules that import it): the harnesses of the test, each checked to be
    clean (``check_clean``) after the test, before the hosts and the group stop."""
    made: List[TmHarness] = []
    yield made
    for harness in made:
        harness.check_clean()


@pytest.fixture
def tm_factory(sim_factory: Callable[..., RunningSim],
               hosts_factory: Callable[..., HostWorld], tm_clean: List[TmHarness],
               tmp_path: Path) -> Callable[..., TmHarness]:
    """``factory(hosts=2, shared=False)``: a group with real targets, test hosts (none
    for ``hosts=0``; ``shared``: one ``/var/lib/one/datastores`` for all) and a harness."""

    def factory(hosts: int = 2, shared: bool = False) -> TmHarness:
        iscsi_tools.require_iscsi()
        sim = sim_factory(iscsi=True)
        world = hosts_factory(count=hosts, shared_datastores=shared) if hosts else None
        harness = TmHarness(sim, world, tmp_path / f"tm{len(tm_clean) + 1}", shared)
        tm_clean.append(harness)
        return harness

    return factory


@pytest.fixture
def tm(tm_factory: Callable[..., TmHarness]) -> TmHarness:
    """Two test hosts (own datastore directories) and a group."""
    return tm_factory()
