"""The admin tool (``eqliscsi check|volumes|orphans``) against the simulated group, with
test hosts where root allows; and the ownership rules of ``eqliscsi.inventory``."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from eqliscsi import inventory
from eqliscsi.admin import Progress, main, pool_members, table
from eqliscsi.cli_output import PoolCapacity
from eqliscsi.config import load_conf_file, resolve_config
from eqliscsi.ds_actions import image_description
from eqliscsi.group import GroupClient, GroupSettings
from eqliscsi.host_iscsi import DiskLink, Host, VolumeTarget
from eqliscsi.naming import clone_volume_name
from eqliscsi.session_slots import SessionSlots
from eqliscsi.tm_common import legacy_clone_name, vm_disk_description, volatile_volume_name
from tests.conftest import RunningSim
from tests.eqlsim.server import load_host_key
from tests.oned_xml import disk_xml, history_xml, image_xml, vm_xml

REPO = Path(__file__).resolve().parent.parent


class Admin:
    """A conf for the simulator (``--conf``) and the admin tool run in-process."""

    def __init__(self, sim: RunningSim, base: Path) -> None:
        self.sim = sim
        self.base = base
        self.conf = base / "eqliscsi.conf"
        base.mkdir(parents=True, exist_ok=True)
        self.known_hosts = sim.write_known_hosts(base / "known_hosts")
        self.write_conf()

    def write_conf(self, mode: int = 0o600, **extra: str) -> None:
        values: Dict[str, str] = {
            "EQL_HOST": self.sim.host, "EQL_PORT": str(self.sim.port),
            "EQL_USER": self.sim.user, "EQL_PASS": self.sim.password,
            "EQL_KNOWN_HOSTS": str(self.known_hosts), "EQL_SLOT_DIR": str(self.base / "slots"),
            "EQL_CONNECT_TIMEOUT": "5", "EQL_COMMAND_TIMEOUT": "10", "EQL_LUN": "1",
        }
        values.update(extra)
        self.conf.write_text("".join(f'{k}="{v}"\n' for k, v in values.items() if v != "-"))
        self.conf.chmod(mode)

    def run(self, capsys: pytest.CaptureFixture[str], *args: str) -> Tuple[int, str, str]:
        code = main([*args, "--conf", str(self.conf), "--remotes", str(self.base / "none")])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    def checks(self, capsys: pytest.CaptureFixture[str], *args: str) -> Dict[str, List[str]]:
        """``check --json``: check name -> [status, detail]."""
        _, out, _ = self.run(capsys, "check", "--json", *args)
        return {c["name"]: [c["status"], c["detail"]] for c in json.loads(out)["checks"]}

    def group(self) -> GroupClient:
        return GroupClient(GroupSettings(
            host=self.sim.host, port=self.sim.port, user=self.sim.user,
            password=self.sim.password, known_hosts=str(self.known_hosts),
            slot_dir=str(self.base / "test-slots")))


@pytest.fixture
def admin(sim: RunningSim, tmp_path: Path) -> Admin:
    return Admin(sim, tmp_path)


# --- check ---------------------------------------------------------------------------------

def test_check_all_good(admin, capsys):
    code, out, _ = admin.run(capsys, "check")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["CHECK", "RESULT", "DETAIL"]
    assert lines[1].startswith("driver           WARN    not installed in ")
    assert f"conf             OK      {admin.conf} (mode 0600)" in lines
    assert any(line.startswith("group CLI        OK      logged in to group group-0 as "
                               "grpadmin; group IP ") for line in lines)
    assert "pool             OK      default: 10.00 TB free of 10.00 TB (100%)" in lines
    assert lines[-1] == "6 ok, 1 warn, 1 skip"


@pytest.mark.parametrize("change, name, status, detail", [
    ({"EQL_PASS": "wrong-one"}, "group CLI", "fail", "rejected the login of user "
     "'grpadmin' (wrong user name or password?)"),
    ({"EQL_POOL": "nope"}, "pool", "fail", "nope: `pool select nope show`: % Error - "
     "Pool does not exist."),
    ({"EQL_HOST": "-"}, "settings", "fail", "EQL_HOST not set: set it in "),
    ({"EQL_HOST_KEY_POLICY": "accept-new", "EQL_KNOWN_HOSTS": "/nonexistent/kh"},
     "host key", "warn", "accept-new stores it at the first login"),
])
def test_check_problems(admin, capsys, change, name, status, detail):
    admin.write_conf(**change)
    checks = admin.checks(capsys)
    assert checks[name][0] == status
    assert detail in checks[name][1]


def test_check_unknown_host_key_skips_the_login(admin, capsys):
    admin.known_hosts.write_text("")
    code, out, _ = admin.run(capsys, "check")
    assert code == 1
    assert (f"[{admin.sim.host}]:{admin.sim.port} is not in {admin.known_hosts}; add it "
            f"after checking the fingerprint: ssh-keyscan -p {admin.sim.port} "
            f"{admin.sim.host} >> {admin.known_hosts}") in out
    assert "group CLI        SKIP    needs the group reachable and its host key" in out
    assert admin.sim.commands() == []


def test_check_changed_host_key(admin, capsys):
    other = load_host_key(admin.base / "other_key")  # a new key, as a replaced group has
    line = admin.sim.known_hosts_line().rsplit(" ", 1)[0]
    admin.known_hosts.write_text(f"{line} {other.get_base64()}\n")
    checks = admin.checks(capsys)
    assert checks["host key"][0] == "fail"
    assert "ssh-ed25519 key differs from the one for" in checks["host key"][1]
    assert checks["group CLI"][0] == "skip"


def test_check_unreachable_group(admin, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    admin.write_conf(EQL_PORT=str(port))
    checks = admin.checks(capsys)
    assert checks["group reachable"][0] == "fail"
    assert f"127.0.0.1:{port}: Connection refused (check EQL_HOST/EQL_PORT" in \
        checks["group reachable"][1]


def test_check_warns_about_a_readable_conf(admin, capsys):
    admin.write_conf(mode=0o644)
    assert admin.checks(capsys)["conf"] == [
        "warn", f"{admin.conf} is readable by others (mode 0644): chmod 600 it, it holds "
        "the group password"]


def test_check_as_a_command_with_json(admin):
    done = subprocess.run([sys.executable, "-m", "eqliscsi", "check", "--conf",
                           str(admin.conf), "--remotes", str(admin.base), "--json"],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["ok"] is True
    assert [c["name"] for c in data["checks"]] == [
        "driver", "conf", "settings", "group reachable", "host key", "group CLI", "pool",
        "hosts"]
    assert admin.sim.password not in done.stdout + done.stderr


def test_check_datastore_template_layers_over_the_conf(admin, capsys, tmp_path):
    admin.write_conf(EQL_POOL="nope")
    ds = tmp_path / "ds.xml"
    ds.write_text("<DATASTORE><ID>100</ID><TEMPLATE><EQL_POOL><![CDATA[default]]></EQL_POOL>"
                  "</TEMPLATE></DATASTORE>")
    assert admin.checks(capsys, "--datastore-xml", str(ds))["pool"][0] == "ok"


# --- volumes -------------------------------------------------------------------------------

CLONE = clone_volume_name("ubuntu.42", 117, 0)
VOLATILE = volatile_volume_name(117, 2)
OLD_IMAGE = "ubuntu-14-04-server.7"  # named by the 2014 driver
OLD_CLONE = legacy_clone_name(OLD_IMAGE, 99)  # its clone for VM 99, which is gone


@pytest.fixture
def volumes(admin: Admin) -> Admin:
    admin.sim.set_pool_size("fast", 1024 * 1024)
    with admin.group() as group:
        for name, description in (
                ("ubuntu.42", image_description(42, "Ubuntu")),
                (CLONE, vm_disk_description(117, 0, "clone of ubuntu.42")),
                (VOLATILE, vm_disk_description(117, 2, "volatile ext4")),
                (OLD_IMAGE, "Ubuntu 14.04 server"),
                (OLD_CLONE, f"Clone 99 of {OLD_IMAGE}"),
                ("old.13", image_description(13, "old")),
                ("backup-lun", "nightly backups")):
            group.create_volume(name, 100, description=description)
        group.create_volume("fast.50", 100, pool="fast",
                            description=image_description(50, "fast"))
    return admin


LISTED = {  # volume of pool default: owner, what its name tells, what its description tells
    "backup-lun": ("-", "-", "-"),
    "old.13": ("image 13", "name", "description"),
    OLD_IMAGE: ("image 7", "name", "name"),
    OLD_CLONE: ("VM 99 (image 7)", "2014 name", "2014 description"),
    "ubuntu.42": ("image 42", "name", "description"),
    CLONE: ("VM 117 disk 0", "name", "description"),
    VOLATILE: ("VM 117 disk 2", "name", "description"),
}


def details_read(sim: RunningSim, since: int) -> List[str]:
    """The volumes whose details were read (``volume select X show``) since command
    ``since`` of the log, in order."""
    return [match.group(1) for entry in sim.commands()[since:]
            for match in [re.fullmatch(r"volume select (\S+) show", entry["command"])]
            if match]


@pytest.mark.parametrize("details", [False, True])
def test_volumes_table(volumes, capsys, details):
    """The same owners with and without --details; without, only the volume whose name
    tells no owner has its details read."""
    since = len(volumes.sim.commands())
    code, out, _ = volumes.run(capsys, "volumes", *(["--details"] if details else []))
    assert code == 0
    rows = [re.split(r"\s{2,}", line) for line in out.splitlines()]
    assert rows[0] == ["VOLUME", "SIZE", "POOL", "STATUS", "CONN", "OWNER", "FROM"]
    owners = {row[0]: f"{row[5]} | {row[6]}" for row in rows[1:-2]}
    assert owners == {name: f"{owner} | {described if details else named}"
                      for name, (owner, named, described) in LISTED.items()}
    assert {row[2] for row in rows[1:-2]} == {"default"}
    assert out.splitlines()[-1] == "7 volumes in pool default, 6 OpenNebula's"
    lines = out.splitlines()[:-2]
    column = lines[0].index("SIZE")
    assert all(line[column - 2:column] == "  " and line[column] != " " for line in lines)
    listing = [entry["command"] for entry in volumes.sim.commands()[since:]
               if not entry["command"].startswith(("stty", "cli-settings"))]
    assert listing == ["volume show", "pool select default show", *(
        f"volume select {name} show" for name in (sorted(LISTED) if details else
                                                  ["backup-lun"]))]


def test_volumes_json_and_pools(volumes, capsys):
    _, out, _ = volumes.run(capsys, "volumes", "--json", "--pool", "fast")
    data = json.loads(out)
    assert [(v["name"], v["owner"]["image_id"], v["pool"], v["description"])
            for v in data["volumes"]] == [("fast.50", 50, "fast", None)]
    since = len(volumes.sim.commands())
    _, out, _ = volumes.run(capsys, "volumes", "--json", "--all-pools")
    listed = {v["name"]: (v["pool"], v["description"]) for v in json.loads(out)["volumes"]}
    assert len(listed) == 8
    assert listed["fast.50"] == ("fast", image_description(50, "fast"))  # read: not in EQL_POOL
    assert listed["backup-lun"] == ("default", "nightly backups")
    assert listed["ubuntu.42"] == ("default", None)
    assert details_read(volumes.sim, since) == ["backup-lun", "fast.50"]


def test_volumes_of_a_pool_that_does_not_exist(volumes, capsys):
    code, _, err = volumes.run(capsys, "volumes", "--pool", "nope")
    assert code == 1
    assert "Pool does not exist" in err


def test_volume_details_over_several_sessions(admin, capsys):
    """60 volumes whose names tell no owner: their details are read over EQL_MAX_SESSIONS
    - 1 = 2 sessions (a 3 s delay of the first read keeps one busy), each volume once."""
    admin.write_conf(EQL_MAX_SESSIONS="3")
    names = [f"data-{index:02d}" for index in range(60)]
    with admin.group() as group:
        for name in names:
            group.create_volume(name, 10, description=f"scratch {name}")
    since = len(admin.sim.commands())
    admin.sim.set_faults([{"match": "^volume select \\S+ show$", "action": "delay",
                           "seconds": 3}])
    code, out, _ = admin.run(capsys, "volumes", "--json")
    assert code == 0
    assert [(v["name"], v["description"]) for v in json.loads(out)["volumes"]] == [
        (name, f"scratch {name}") for name in names]
    assert sorted(details_read(admin.sim, since)) == names
    sessions = {(entry["conn"], entry["session"]) for entry in admin.sim.commands()[since:]
                if entry["command"].startswith("volume select ")}
    assert len(sessions) == 2


def test_volume_details_without_a_free_slot(admin, capsys):
    """Other processes hold 2 of the 3 slots: the details are read in the one session left,
    no extra session waits for a slot."""
    admin.write_conf(EQL_MAX_SESSIONS="3")
    names = [f"data-{index:02d}" for index in range(30)]
    with admin.group() as group:
        for name in names:
            group.create_volume(name, 10)
    since = len(admin.sim.commands())
    slots = SessionSlots(str(admin.base / "slots"), 3)
    with slots.acquire(5), slots.acquire(5):
        code, out, _ = admin.run(capsys, "volumes", "--json")
    assert code == 0
    assert [v["name"] for v in json.loads(out)["volumes"]] == names
    assert len({entry["conn"] for entry in admin.sim.commands()[since:]}) == 1


@pytest.mark.parametrize("total, listed, members", [
    (2, ["a", "b"], {"a", "b"}),
    (0, [], set()),
    (3, [], {"a", "b", "c"}),  # no table: a pool holding every volume
    (2, [], None),
    (None, ["a", "b"], None),  # no TotalVolumes to check the table against
    (3, ["a", "b"], None),  # the table misses one
    (2, ["a", "x"], None),  # x is no volume: not the volume table, or x came meanwhile
    (2, ["a", "a"], None),
])
def test_pool_members_only_when_sure(total, listed, members):
    capacity = PoolCapacity(100, 50, 50, None, None, total)
    assert pool_members(capacity, listed, {"a", "b", "c"}) == members


# --- orphans -------------------------------------------------------------------------------

def images_xml(*images: Tuple[int, str]) -> str:
    return "<IMAGE_POOL>" + "".join(image_xml(ID=str(i), NAME=f"image{i}", SOURCE=source)
                                    for i, source in images) + "</IMAGE_POOL>"


def vm117(host: str = "host1") -> str:
    disks = [disk_xml(DISK_ID="0", SOURCE="ubuntu.42", IMAGE_ID="42", CLONE="YES"),
             disk_xml(DISK_ID="2", TYPE="fs", SOURCE=None, IMAGE_ID=None)]
    return vm_xml("117", disks, [history_xml(0, host)])


@pytest.fixture
def lists(volumes: Admin) -> List[str]:
    images = volumes.base / "images.xml"
    images.write_text(images_xml((42, "ubuntu.42"), (7, OLD_IMAGE)))
    vms = volumes.base / "vms.xml"
    vms.write_text(f"<VM_POOL>{vm117()}</VM_POOL>")
    return ["--images-xml", str(images), "--vms-xml", str(vms)]


def test_orphan_volumes(volumes, lists, capsys):
    code, out, _ = volumes.run(capsys, "orphans", *lists)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "Volumes no image or VM owns (pool default):"
    assert [line.split()[0] for line in lines[2:4]] == ["old.13", OLD_CLONE]
    assert "no image 13 in OpenNebula" in lines[2]
    assert "VM 99 does not exist (or is done)" in lines[3]
    assert "Host sessions: not checked (no --host, no onehost command)" in out
    assert lines[-1] == ("2 orphaned volumes, 0 orphaned sessions; 1 volume not recognised "
                         "as OpenNebula's left out (eqliscsi volumes lists them)")
    _, out, _ = volumes.run(capsys, "orphans", "--json", *lists)
    data = json.loads(out)
    assert [(v["name"], v["owner"]["kind"]) for v in data["volumes"]] == [
        ("old.13", "image"), (OLD_CLONE, "vm")]
    assert data["unrecognised_volumes"] == 1


def test_orphans_read_the_description_before_a_verdict(volumes, lists, capsys):
    """copy.5's name says image 5 (not in OpenNebula), its description image 42: no orphan.
    Details are read only of the suspects and of the volume whose name tells no owner."""
    with volumes.group() as group:
        group.create_volume("copy.5", 100, description=image_description(42, "copy"))
    since = len(volumes.sim.commands())
    code, out, _ = volumes.run(capsys, "orphans", "--json", *lists)
    assert code == 0
    data = json.loads(out)
    assert [(v["name"], v["description"]) for v in data["volumes"]] == [
        ("old.13", image_description(13, "old")), (OLD_CLONE, f"Clone 99 of {OLD_IMAGE}")]
    assert sorted(details_read(volumes.sim, since)) == sorted(
        ["backup-lun", "copy.5", "old.13", OLD_CLONE])


def test_orphans_needs_opennebulas_lists(volumes, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    code, _, err = volumes.run(capsys, "orphans")
    assert code == 1
    assert "oneimage not found: run this on the front-end as oneadmin, or give " \
           "--images-xml and --vms-xml" in err


def test_orphans_with_the_cli_of_opennebula(volumes, capsys, monkeypatch, tmp_path):
    """oneimage/onevm list -x on PATH; a listed VM without disks is shown in full."""
    bin_dir = tmp_path / "one-bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    short_vm = vm_xml("117", [], [history_xml(0, "host9")])
    outputs = {"oneimage list -x": images_xml((42, "ubuntu.42"), (7, OLD_IMAGE)),
               "onevm list -x": f"<VM_POOL>{short_vm}</VM_POOL>",
               "onevm show -x 117": vm117("host9")}
    for command in ("oneimage", "onevm"):
        cases = "".join(f"  '{key}') cat <<'EOF'\n{value}\nEOF\n  ;;\n"
                        for key, value in outputs.items() if key.startswith(command + " "))
        script = bin_dir / command
        script.write_text(f'#!/bin/sh\necho "{command} $*" >> {log}\n'
                          f'case "{command} $*" in\n{cases}  *) exit 1 ;;\nesac\n')
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    code, out, _ = volumes.run(capsys, "orphans", "--host", "host9")
    assert code == 1  # host9 cannot be reached
    assert "host host9: not checked: host host9: sessions: ssh failed" in out
    assert log.read_text().splitlines() == ["oneimage list -x", "onevm list -x",
                                            "onevm show -x 117"]
    assert [line.split()[0] for line in out.splitlines()[2:4]] == ["old.13", OLD_CLONE]


@pytest.mark.iscsi
def test_orphan_sessions_on_a_host(sim_factory, hosts_factory, tmp_path, capsys,
                                   monkeypatch):
    """host1 is logged in to VM 117's clone (used) and to old.13 (nothing uses it)."""
    sim = sim_factory(iscsi=True)
    world = hosts_factory(count=1)
    admin = Admin(sim, tmp_path / "admin")
    with admin.group() as group:
        group.create_volume("ubuntu.42", 16, description=image_description(42, "Ubuntu"))
        group.create_volume(CLONE, 16, description=vm_disk_description(117, 0, "clone"))
        group.create_volume("old.13", 16, description=image_description(13, "old"))
        iqn = world.host("host1").iqn
        targets = []
        for name in (CLONE, "old.13"):
            group.create_access(name, initiator=iqn)
            targets.append(VolumeTarget(group.show_volume(name).iqn,
                                        f"{group.group_ip()}:3260", 1))
    config = resolve_config(load_conf_file(admin.conf), {}, {})
    host = Host("host1", config, ("ssh", "-F", str(world.ssh_config)),
                lock_dir=str(tmp_path / "locks"))
    links = [DiskLink(target, f"/var/lib/one/datastores/0/117/disk.{i}")
             for i, target in enumerate(targets)]
    host.attach(links, ["/var/lib/one/datastores/0/117"])
    try:
        (tmp_path / "images.xml").write_text(images_xml((42, "ubuntu.42")))
        (tmp_path / "vms.xml").write_text(f"<VM_POOL>{vm117('host1')}</VM_POOL>")
        monkeypatch.setenv("PATH", f"{world.bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin")
        code, out, _ = admin.run(capsys, "orphans", "--json", "--images-xml",
                                 str(tmp_path / "images.xml"), "--vms-xml",
                                 str(tmp_path / "vms.xml"), "--host", "host1")
        assert code == 0
        data = json.loads(out)
        assert [(s["host"], s["volume"], s["why"]) for s in data["sessions"]] == [
            ("host1", "old.13", "no VM on host1 uses it")]
        assert [v["name"] for v in data["volumes"]] == ["old.13"]
    finally:
        host.detach(targets, [link.path for link in links])


@pytest.mark.iscsi
def test_check_hosts(sim, hosts_factory, tmp_path, capsys, monkeypatch):
    world = hosts_factory(count=1)
    admin = Admin(sim, tmp_path / "admin")
    monkeypatch.setenv("PATH", f"{world.bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin")
    checks = admin.checks(capsys, "--host", "host1")
    assert checks["host host1"][0] == "ok"
    assert re.fullmatch(r"iscsiadm /\S+/iscsiadm, initiator iqn.2024-01.org.example:host1, "
                        r"sudo ok", checks["host host1"][1])
    no_sudo = hosts_factory(count=1, sudoers=())
    monkeypatch.setenv("PATH", f"{no_sudo.bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin")
    checks = admin.checks(capsys, "--host", "host1")
    assert checks["host host1"][0] == "fail"
    assert checks["host host1"][1].endswith("sudo -n iscsiadm is not allowed (install "
                                            "sudoers/eqliscsi)")


# --- ownership rules -----------------------------------------------------------------------

@pytest.mark.parametrize("name, description, owner", [
    ("ubuntu.42", image_description(42, "Ubuntu"), "image 42"),
    ("anything", image_description(42, "Ubuntu"), "image 42"),
    (CLONE, vm_disk_description(117, 0, "clone"), "VM 117 disk 0"),
    (CLONE, "", "VM 117 disk 0"),
    (VOLATILE, "", "VM 117 disk 2"),
    (clone_volume_name("a" * 46, 4294967295, 9999), "", "VM 4294967295 disk 9999"),
    (OLD_IMAGE, "Ubuntu 14.04 server", "image 7"),
    (OLD_CLONE, "", "VM 99 (image 7)"),
    (OLD_CLONE, "'Clone 99 of ubuntu-14-04-server.7'", "VM 99 (image 7)"),
    ("backup-lun", "", "-"),
    ("a.b.c", "", "-"),
])
def test_volume_owner(name, description, owner):
    assert str(inventory.volume_owner(name, description)) == owner


@pytest.mark.parametrize("name, description", [
    ("ubuntu.42", image_description(42, "Ubuntu")),
    (CLONE, vm_disk_description(117, 0, "clone of ubuntu.42")),
    (VOLATILE, vm_disk_description(117, 2, "volatile raw")),
    (OLD_IMAGE, "Ubuntu 14.04 server"),
    (OLD_CLONE, f"Clone 99 of {OLD_IMAGE}"),
    (OLD_CLONE, f"'Clone 99 of {OLD_IMAGE}'"),
])
def test_the_name_tells_what_the_description_tells(name, description):
    by_name = inventory.name_owner(name)
    assert by_name is not None
    assert str(by_name) == str(inventory.volume_owner(name, description))


@pytest.mark.parametrize("name", ["backup-lun", "anything", "a.b.c", "lun.7a"])
def test_names_that_tell_no_owner(name):
    assert inventory.name_owner(name) is None


def test_sessions_and_their_reasons():
    output = ("tcp: [3] 127.0.0.5:3260,1 iqn.2001-05.com.equallogic:0-8a0906-7fce10aed-"
              "00904842da69e286-ubuntu.42-v117-d0 (non-flash)\n"
              "tcp: [4] 127.0.0.5:3260,1 iqn.2001-05.com.equallogic:0-8a0906-7fce10aed-"
              "00904842da69e287-vm118-disk1 (non-flash)\n"
              "tcp: [5] 10.0.0.9:3260,1 iqn.2010-10.org.other:lun1 (non-flash)\n"
              "tcp: [6] 127.0.0.5:3260,1 iqn.2001-05.com.equallogic:0-8a0906-7fce10aed-"
              "00904842da69e288-gone.5 (non-flash)\n")
    sessions = inventory.parse_sessions("host2", output)
    assert [(s.volume, s.portal) for s in sessions] == [
        (CLONE, "127.0.0.5:3260"), ("vm118-disk1", "127.0.0.5:3260"),
        (None, "10.0.0.9:3260"), ("gone.5", "127.0.0.5:3260")]
    vms = inventory.parse_vms(f"<VM_POOL>{vm117('host1')}</VM_POOL>".encode())
    existing = {CLONE: inventory.volume_owner(CLONE, ""),
                "vm118-disk1": inventory.volume_owner("vm118-disk1", "")}
    orphans = inventory.orphan_sessions(sessions, {"127.0.0.5:3260"}, existing, vms)
    assert [(s.volume, s.why) for s in orphans] == [
        (CLONE, "VM 117 is on host1"), ("vm118-disk1", "VM 118 does not exist (or is done)"),
        ("gone.5", "the volume does not exist")]


def test_table_and_progress():
    assert table(["A", "LONG"], [["xyz", "1"], ["x", "22"]]) == "A    LONG\nxyz  1\nx    22"
    plain = io.StringIO()
    progress = Progress("reading volumes", 12, plain)
    for index in range(1, 13):
        progress.step(index, f"vol{index}")
    progress.done()
    assert plain.getvalue() == "eqliscsi: reading volumes: 12 ...\n"

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    progress = Progress("reading volumes", 2, terminal)
    progress.step(1, "a")
    progress.step(2, "b")
    progress.done()
    assert terminal.getvalue() == ("\rreading volumes 1/2 a\rreading volumes 2/2 b"
                                   "\r                     \r")
