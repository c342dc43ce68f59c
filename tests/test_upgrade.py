"""Upgrading a remotes tree that runs the 2014 bash driver: the install replaces its
scripts (keeping copies), keeps and uses its ``eqliscsi.conf``, warns about the 2014
``tm/shared`` wrappers; the installed actions and the admin tool work with volumes named
the way the 2014 driver named them."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from eqliscsi import install as installer
from eqliscsi.admin import main
from eqliscsi.group import GroupClient, GroupSettings
from tests.conftest import RunningSim
from tests.oned_xml import action_xml, datastore_xml, history_xml, image_xml, vm_xml
from tests.test_install import ME
from tests.tm_harness import STAND_IN, STAND_INS, image_disk

OLD_IMAGE = "ubuntu-14-04-server.42"  # SOURCE of image 42, as the 2014 driver made it
OLD_CLONE = "ubuntu-14-04-server.42-117"  # its clone for VM 117 (non-persistent disk)
V01_VOLUME = "ubuntu-12-04"  # a 2014 v0.1 image: SOURCE <group ip>:<target iqn>
CONF_2014 = """\
# eqliscsi.conf of the 2014 add-on (sourced by bash there, parsed here)
EQL_HOST="127.0.0.1"
EQL_POOL="default"
EQL_USER="grpadmin"
EQL_PASS="{password}"
EQL_MULTIHOST="enable"
EQL_SECURITY_ACCESS="ipaddress 192.168.*.*"
EQL_THINPROVISION="thin-provision thin-min-reserve 50%"
EQL_BASE_DEVICE="/dev/iscsi"
EQL_IFACE="eql00"
EQL_WAIT_TIME=1
NO_ISCSI=""
EQLADM=EqlCliExec.py
# added for the test environment: a private slot directory
EQL_SLOT_DIR="{slots}"
"""
OLD_FILES = {  # what the 2014 README had installed
    "scripts_eqliscsi.sh": "#!/bin/bash\neqladm_target_new() { :; }\n",
    "datastore/xpath_multi.rb": "#!/usr/bin/env ruby\n",
    "datastore/eqliscsi/cp": "#!/bin/bash\nsource ../../scripts_eqliscsi.sh\n",
    "datastore/eqliscsi/rm": "#!/bin/bash\nsource ../../scripts_eqliscsi.sh\n",
    "tm/eqliscsi/clone": "#!/bin/bash\nsource ../../scripts_eqliscsi.sh\n",
    "tm/eqliscsi/premigrate": "#!/bin/sh\n# per disk, called by tm/shared/premigrate\n",
    "tm/shared/premigrate": "#!/bin/bash\n# premigrate.eqliscsi: runs tm/eqliscsi/premigrate"
                            " for every eqliscsi disk\nexit 0\n",
    "tm/shared/postmigrate": "#!/bin/bash\n# postmigrate.eqliscsi\nexit 0\n",
    "tm/shared/mv": "#!/bin/bash\n# OpenNebula's own\n",
}


class Upgraded:
    """A remotes tree of the 2014 driver, upgraded; oned's stand-ins; the group."""

    def __init__(self, sim: RunningSim, base: Path) -> None:
        self.sim = sim
        self.base = base
        self.remotes = base / "remotes"
        for relative, text in OLD_FILES.items():
            (self.remotes / relative).parent.mkdir(parents=True, exist_ok=True)
            (self.remotes / relative).write_text(text)
        self.conf = self.remotes / installer.LEGACY_CONF_PATH
        self.conf.write_text(CONF_2014.format(password=sim.password, slots=base / "slots"))
        self.conf.chmod(0o600)
        home = base / "home"
        (home / ".ssh").mkdir(parents=True)  # the default EQL_KNOWN_HOSTS is in there
        sim.write_known_hosts(home / ".ssh" / "eqliscsi_known_hosts")
        self.one_dir = base / "one"
        self.one_dir.mkdir()
        bin_dir = base / "one-bin"
        bin_dir.mkdir()
        for command, kind in STAND_INS.items():
            (bin_dir / command).write_text(STAND_IN.format(
                command=command, kind=kind, directory=self.one_dir, log=base / "one.log"))
            (bin_dir / command).chmod(0o755)
        self.env = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home),
                    "LANG": "C.UTF-8"}
        # the simulator's port and a host without iSCSI come from the datastore template
        self.ds_template: Dict[str, Optional[str]] = {"EQL_HOST": None, "EQL_PORT": str(sim.port),
                                               "NO_ISCSI": "kvm1"}
        self.put("datastore", 100, datastore_xml(template=self.ds_template))
        self.v01_source = ""  # set by the fixture
        self.report = installer.Report(self.remotes, dry_run=False)

    def put(self, kind: str, object_id: int, xml: str) -> None:
        (self.one_dir / f"{kind}-{object_id}.xml").write_text(xml)

    def run(self, kind: str, action: str, *args: str, stdin: str = "") -> str:
        """Run an installed action as oned does; its stdout (it must succeed)."""
        done = subprocess.run([str(self.remotes / kind / "eqliscsi" / action), *args],
                              input=stdin.encode(), capture_output=True, env=self.env,
                              timeout=120, check=False, cwd=self.base)
        assert done.returncode == 0, done.stderr.decode()
        assert b"unknown keys" not in done.stderr and b"WARN" not in done.stderr
        return done.stdout.decode()

    def ds(self, action: str, object_id: int, **image: Optional[str]) -> str:
        xml = action_xml(image_xml(None, ID=str(object_id), **image),
                         datastore_xml(template=self.ds_template))
        return self.run("datastore", action, str(object_id),
                        stdin=base64.b64encode(xml.encode()).decode())

    def group(self) -> GroupClient:
        return GroupClient(GroupSettings(
            host=self.sim.host, port=self.sim.port, user=self.sim.user,
            password=self.sim.password, known_hosts=self.env["HOME"]
            + "/.ssh/eqliscsi_known_hosts", slot_dir=str(self.base / "test-slots")))

    def volume_names(self) -> List[str]:
        return sorted(v.name for v in self.sim.load_state().volumes.values())


@pytest.fixture
def old(sim: RunningSim, tmp_path: Path) -> Upgraded:
    """The 2014 tree, upgraded; the group holds volumes made by the 2014 driver."""
    upgraded = Upgraded(sim, tmp_path)
    with upgraded.group() as group:
        group.create_volume(OLD_IMAGE, 100, description="Ubuntu 14.04 server")
        group.clone_volume(OLD_IMAGE, OLD_CLONE, description=f"Clone 117 of {OLD_IMAGE}")
        group.create_volume(V01_VOLUME, 50)
        upgraded.v01_source = f"127.0.0.1:{group.show_volume(V01_VOLUME).iqn}"
    upgraded.report = installer.install(installer.InstallOptions(upgraded.remotes,
                                                                 owner=ME))
    return upgraded


def test_install_over_the_2014_driver(old):
    changes = {c.path: (c.action, c.note) for c in old.report.changes}
    for relative in ("datastore/eqliscsi/cp", "datastore/eqliscsi/rm", "tm/eqliscsi/clone",
                     "tm/eqliscsi/premigrate"):
        action, note = changes[relative]
        assert action == "replace"
        saved = old.remotes / note.rsplit(" ", 1)[1]
        assert saved.read_text() == OLD_FILES[relative]
    assert changes[installer.LEGACY_CONF_PATH] == (
        "keep", "the 2014 add-on's conf, still read from there")
    assert not (old.remotes / installer.CONF_PATH).exists()
    warned = {path for path, (action, _) in changes.items() if action == "warn"}
    assert warned == {"scripts_eqliscsi.sh", "datastore/xpath_multi.rb",
                      "tm/shared/premigrate", "tm/shared/postmigrate"}
    assert "restore OpenNebula's own" in changes["tm/shared/premigrate"][1]
    assert (old.remotes / "tm/shared/mv").read_text() == OLD_FILES["tm/shared/mv"]
    again = installer.install(installer.InstallOptions(old.remotes, owner=ME))
    assert not again.changed


def test_datastore_actions_with_the_2014_conf_and_names(old):
    assert old.ds("monitor", 100).startswith("USED_MB=")
    copy = old.ds("clone", 43, NAME="Ubuntu copy", PATH=OLD_IMAGE, SIZE="100",
                  CLONING_ID="42")
    assert copy == "ubuntu-copy.43 raw\n"
    assert old.ds("rm", 42, SOURCE=OLD_IMAGE, PATH="") == ""
    assert old.ds("rm", 5, SOURCE=old.v01_source, PATH="") == ""
    assert old.volume_names() == sorted([OLD_CLONE, "ubuntu-copy.43"])
    with old.group() as group:  # made with the 2014 conf's settings
        assert group.show_volume("ubuntu-copy.43").multihost


def test_a_vm_deployed_by_the_2014_driver_is_terminated(old):
    old.put("vm", 117, vm_xml("117", [image_disk(0, OLD_IMAGE, 42, 100)],
                              [history_xml(0, "kvm1", "0", "eqliscsi")], "11"))
    old.put("image", 42, image_xml(ID="42", NAME="Ubuntu 14.04 server", SOURCE=OLD_IMAGE))
    old.run("tm", "delete", "kvm1:/var/lib/one//datastores/0/117/disk.0", "117", "100")
    assert old.volume_names() == sorted([OLD_IMAGE, V01_VOLUME])


def test_admin_tool_knows_the_2014_names(old, capsys, monkeypatch):
    monkeypatch.setenv("HOME", old.env["HOME"])  # oneadmin's, with the known_hosts file
    datastore = old.base / "datastore.xml"
    datastore.write_text((old.one_dir / "datastore-100.xml").read_text())
    args = ["--remotes", str(old.remotes), "--datastore-xml", str(datastore), "--json"]
    assert main(["volumes", *args]) == 0
    volumes = {v["name"]: v["owner"]["text"] for v in json.loads(capsys.readouterr().out)[
        "volumes"]}
    assert volumes == {OLD_IMAGE: "image 42", OLD_CLONE: "VM 117 (image 42)",
                       V01_VOLUME: "-"}
    images = old.base / "images.xml"
    images.write_text(f"<IMAGE_POOL>{image_xml(ID='42', SOURCE=OLD_IMAGE)}"
                      f"{image_xml(ID='5', SOURCE=old.v01_source)}</IMAGE_POOL>")
    vms = old.base / "vms.xml"
    vms.write_text("<VM_POOL/>")  # VM 117 is gone: its clone is an orphan
    assert main(["orphans", *args, "--images-xml", str(images), "--vms-xml", str(vms)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(v["name"], v["why"]) for v in data["volumes"]] == [
        (OLD_CLONE, "VM 117 does not exist (or is done)")]
