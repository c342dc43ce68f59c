"""``eqliscsi install``/``uninstall`` into a fake OpenNebula remotes tree, and registering
the driver in a copy of a stock oned.conf (``tests/data/oned.conf.stock``)."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from eqliscsi import install as installer
from eqliscsi import oned_conf
from eqliscsi.admin import main
from tests.oned_xml import action_xml, b64, datastore_xml

REPO = Path(__file__).resolve().parent.parent
STOCK_ONED_CONF = REPO / "tests" / "data" / "oned.conf.stock"
ME = pwd.getpwuid(os.geteuid()).pw_name
STOCK_FILES = {  # a few files of OpenNebula's own remotes tree, which must stay untouched
    "VERSION": "6.10.0\n",
    "datastore/fs/cp": "#!/bin/bash\n# OpenNebula fs cp\n",
    "tm/shared/premigrate": "#!/bin/bash\nmigrate_other \"$@\"\nexit 0\n",
    "etc/datastore/fs/fs.conf": "SUPPORTED_FS=\"ext4\"\n",
}


def tree(root: Path) -> Dict[str, str]:
    """Every file under ``root``: relative path -> mode and sha256 of the content."""
    listing = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_dir():
            listing[relative + "/"] = oct(path.stat().st_mode & 0o7777)
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            listing[relative] = f"{oct(path.stat().st_mode & 0o7777)} {digest}"
    return listing


@pytest.fixture
def remotes(tmp_path: Path) -> Path:
    """A remotes tree with some of OpenNebula's own files."""
    root = tmp_path / "remotes"
    for relative, text in STOCK_FILES.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


def install(remotes: Path, python: str = sys.executable, owner: str = ME,
            dry_run: bool = False) -> installer.Report:
    return installer.install(installer.InstallOptions(remotes, python, owner, dry_run))


def actions(directory: str) -> Dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (REPO / directory).iterdir()
            if path.is_file()}


def test_install_puts_every_file_with_mode_and_shebang(remotes):
    report = install(remotes)
    assert report.count("create") == len(report.changes) - report.count("mkdir")
    for directory in installer.ACTION_DIRS:
        for name, source in actions(directory).items():
            installed = remotes / directory / name
            assert installed.stat().st_mode & 0o7777 == 0o755, installed
            lines = installed.read_bytes().split(b"\n", 1)
            assert lines[0] == f"#!{sys.executable}".encode()
            assert lines[1] == source.split(b"\n", 1)[1]
    assert (remotes / "scripts_eqliscsi.py").read_bytes() == (
        REPO / "scripts_eqliscsi.py").read_bytes()
    for module in (REPO / "eqliscsi").glob("*.py"):
        installed = remotes / "eqliscsi" / module.name
        assert installed.read_bytes() == module.read_bytes()
        assert installed.stat().st_mode & 0o7777 == 0o644
    sample = (REPO / "eqliscsi.conf.sample").read_bytes()
    conf = remotes / installer.CONF_PATH
    assert conf.read_bytes() == sample and conf.stat().st_mode & 0o7777 == 0o600
    assert (remotes / installer.SAMPLE_PATH).read_bytes() == sample
    for relative, text in STOCK_FILES.items():
        assert (remotes / relative).read_text() == text
    manifest = json.loads((remotes / installer.MANIFEST_PATH).read_text())
    assert manifest["python"] == sys.executable
    assert installer.CONF_PATH not in manifest["files"]
    assert sorted(manifest["dirs"]) == sorted(["eqliscsi", "datastore/eqliscsi",
                                               "tm/eqliscsi", "etc/datastore/eqliscsi"])
    for relative, digest in manifest["files"].items():
        assert hashlib.sha256((remotes / relative).read_bytes()).hexdigest() == digest


def test_second_install_changes_nothing(remotes):
    install(remotes)
    before = tree(remotes)
    manifest_mtime = (remotes / installer.MANIFEST_PATH).stat().st_mtime_ns
    report = install(remotes)
    assert not report.changed
    assert {c.action for c in report.changes} == {"unchanged", "keep"}
    assert tree(remotes) == before
    assert (remotes / installer.MANIFEST_PATH).stat().st_mtime_ns == manifest_mtime


def test_dry_run_changes_nothing(remotes):
    before = tree(remotes)
    report = install(remotes, dry_run=True)
    assert report.count("create") > 50 and report.count("mkdir") == 4
    assert tree(remotes) == before
    install(remotes)
    (remotes / "tm/eqliscsi/ln").write_text("edited\n")
    before = tree(remotes)
    report = install(remotes, dry_run=True)
    [replaced] = [c for c in report.changes if c.action == "replace"]
    assert replaced.path == "tm/eqliscsi/ln"
    assert replaced.note.startswith("the file there was saved as etc/datastore/eqliscsi/"
                                    "backup-")
    assert tree(remotes) == before


def test_conf_is_never_overwritten(remotes):
    install(remotes)
    conf = remotes / installer.CONF_PATH
    conf.write_text('EQL_HOST="10.0.0.1"\n')
    report = install(remotes)
    assert conf.read_text() == 'EQL_HOST="10.0.0.1"\n'
    assert "keep      etc/datastore/eqliscsi/eqliscsi.conf  (existing conf, never " \
           "overwritten)" in [str(c) for c in report.changes]
    main(["uninstall", "--remotes", str(remotes)])
    assert conf.read_text() == 'EQL_HOST="10.0.0.1"\n'


def test_a_2014_conf_is_kept_where_it_is(remotes):
    legacy = remotes / installer.LEGACY_CONF_PATH
    legacy.parent.mkdir(parents=True)
    legacy.write_text('EQL_HOST="10.0.0.2"\n')
    report = install(remotes)
    assert legacy.read_text() == 'EQL_HOST="10.0.0.2"\n'
    assert not (remotes / installer.CONF_PATH).exists()  # it would hide the 2014 conf
    assert any(c.action == "keep" and c.path == installer.LEGACY_CONF_PATH
               for c in report.changes)


def test_an_edited_file_is_saved_then_replaced(remotes):
    install(remotes)
    edited = remotes / "datastore/eqliscsi/cp"
    edited.write_text("#!/bin/sh\n# a local change\n")
    report = install(remotes)
    [change] = [c for c in report.changes if c.action != "unchanged" and c.action != "keep"]
    assert change.action == "replace" and change.path == "datastore/eqliscsi/cp"
    saved = remotes / change.note.rsplit(" ", 1)[1]
    assert saved.read_text() == "#!/bin/sh\n# a local change\n"
    assert edited.read_bytes().startswith(f"#!{sys.executable}\n".encode())


def test_mode_is_repaired_and_stale_files_removed(remotes):
    install(remotes)
    (remotes / "tm/eqliscsi/mv").chmod(0o700)
    manifest_path = remotes / installer.MANIFEST_PATH
    manifest = json.loads(manifest_path.read_text())
    (remotes / "tm/eqliscsi/old_action").write_text("old\n")
    manifest["files"]["tm/eqliscsi/old_action"] = hashlib.sha256(b"old\n").hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    report = install(remotes)
    changes = {(c.action, c.path, c.note) for c in report.changes
               if c.action not in ("unchanged", "keep")}
    assert changes == {("update", "tm/eqliscsi/mv", "mode or owner"),
                       ("remove", "tm/eqliscsi/old_action", "no longer part of the driver")}
    assert (remotes / "tm/eqliscsi/mv").stat().st_mode & 0o7777 == 0o755
    assert not (remotes / "tm/eqliscsi/old_action").exists()


def test_uninstall_removes_exactly_what_install_put(remotes):
    before = tree(remotes)
    install(remotes)
    run = subprocess.run([str(remotes / "datastore/eqliscsi/stat")], capture_output=True,
                         env={"HOME": str(remotes.parent)}, timeout=60,
                         check=False)  # leaves bytecode caches behind
    assert run.returncode == 1
    assert (remotes / "eqliscsi" / "__pycache__").is_dir()
    (remotes / "eqliscsi" / "oned.py").write_text("# edited\n")
    report = installer.uninstall(remotes)
    assert ("keep", "eqliscsi/oned.py") in {(c.action, c.path) for c in report.changes}
    left = tree(remotes)
    expected = {**before, "etc/datastore/eqliscsi/": "0o755",
                "etc/datastore/eqliscsi/eqliscsi.conf": left[installer.CONF_PATH],
                "eqliscsi/": "0o755", "eqliscsi/oned.py": left["eqliscsi/oned.py"]}
    assert left == expected
    with pytest.raises(installer.InstallError, match="not installed there"):
        installer.uninstall(remotes)


def test_uninstall_dry_run(remotes):
    install(remotes)
    before = tree(remotes)
    report = installer.uninstall(remotes, dry_run=True)
    assert tree(remotes) == before
    assert report.count("remove") == len(json.loads(
        (remotes / installer.MANIFEST_PATH).read_text())["files"]) + 1
    assert {c.path for c in report.changes if c.action == "rmdir"} == {
        "eqliscsi/", "datastore/eqliscsi/", "tm/eqliscsi/"}


def test_installed_actions_use_the_remotes_copy(remotes, sim):
    """The installed monitor runs from the tree (the tree's copy of the code is what runs)
    against the simulator, with the interpreter of its shebang and no PATH."""
    install(remotes)
    with open(remotes / "scripts_eqliscsi.py", "a") as library:
        library.write("\nimport sys as _sys\nprint('INFO: the remotes copy', "
                      "file=_sys.stderr)\n")
    known_hosts = sim.write_known_hosts(remotes.parent / "known_hosts")
    conf = remotes / installer.CONF_PATH
    conf.write_text(f'EQL_HOST="{sim.host}"\nEQL_PORT="{sim.port}"\nEQL_USER="{sim.user}"\n'
                    f'EQL_PASS="{sim.password}"\nEQL_KNOWN_HOSTS="{known_hosts}"\n'
                    f'EQL_SLOT_DIR="{remotes.parent / "slots"}"\n')
    xml = action_xml("", datastore_xml(template={"EQL_HOST": None}))
    done = subprocess.run([str(remotes / "datastore/eqliscsi/monitor"), "100"],
                          input=b64(xml).encode(), capture_output=True, timeout=60,
                          env={"HOME": str(remotes.parent)}, cwd="/", check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == "USED_MB=0\nTOTAL_MB=10485760\nFREE_MB=10485760\n"
    assert b"INFO: the remotes copy" in done.stderr


def test_python_must_import_paramiko_and_lxml(remotes, tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named paramiko' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    before = tree(remotes)
    with pytest.raises(installer.InstallError, match="cannot import paramiko and lxml"):
        install(remotes, python=str(fake))
    with pytest.raises(installer.InstallError, match="absolute path"):
        install(remotes, python="python3")
    with pytest.raises(installer.InstallError, match="not an executable"):
        install(remotes, python=str(tmp_path / "missing"))
    assert tree(remotes) == before  # nothing is written before the check


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owner_gets_every_file(remotes):
    nobody = pwd.getpwnam("nobody")
    install(remotes, owner="nobody", python="/bin/true")  # an interpreter nobody may run
    for relative in json.loads((remotes / installer.MANIFEST_PATH).read_text())["files"]:
        stat = (remotes / relative).stat()
        assert (stat.st_uid, stat.st_gid) == (nobody.pw_uid, nobody.pw_gid), relative
    assert (remotes / "tm/eqliscsi").stat().st_uid == nobody.pw_uid
    assert (remotes / "datastore").stat().st_uid == os.geteuid()  # was there already
    assert (remotes / installer.CONF_PATH).stat().st_uid == nobody.pw_uid


def test_default_remotes():
    assert installer.default_remotes({}) == Path("/var/lib/one/remotes")
    assert installer.default_remotes({"ONE_LOCATION": "/opt/one"}) == Path(
        "/opt/one/var/remotes")


def test_missing_remotes_tree(tmp_path, capsys):
    assert main(["install", "--remotes", str(tmp_path / "none")]) == 1
    assert "no such directory" in capsys.readouterr().err


def test_command_line_install_with_oned_conf(remotes, tmp_path):
    oned = tmp_path / "oned.conf"
    oned.write_text(STOCK_ONED_CONF.read_text())
    argv = [sys.executable, "-m", "eqliscsi", "install", "--remotes", str(remotes),
            "--owner", ME, "--oned-conf", str(oned)]
    dry = subprocess.run([*argv, "--dry-run"], capture_output=True, text=True, timeout=60,
                         cwd=REPO, check=False)
    assert dry.returncode == 0, dry.stderr
    assert "dry run, nothing changed: would 4 mkdir, " in dry.stdout
    assert oned.read_text() == STOCK_ONED_CONF.read_text()
    assert not (remotes / "eqliscsi").exists()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "TM_MAD_CONF for eqliscsi added" in done.stdout
    assert "1. oned.conf was updated" in done.stdout
    assert "onedatastore create" in done.stdout and "visudo -c" in done.stdout
    backups = list(tmp_path.glob("oned.conf.eqliscsi-*"))
    assert len(backups) == 1 and backups[0].read_text() == STOCK_ONED_CONF.read_text()
    again = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO,
                           check=False)
    assert "  unchanged" in again.stdout and len(list(tmp_path.glob("oned.conf.*"))) == 1


# --- oned.conf -----------------------------------------------------------------------------

def attributes(text: str, name: str):
    return [a for a in oned_conf.parse(text) if a.name == name]


def test_stock_oned_conf_gets_the_lists_and_stanzas():
    stock = STOCK_ONED_CONF.read_text()
    updated, notes = oned_conf.apply_text(stock)
    [tm] = attributes(updated, "TM_MAD")
    assert tm.vector["ARGUMENTS"] == ("-t 15 -d dummy,lvm,shared,fs_lvm,fs_lvm_ssh,qcow2,ssh,"
                                      "ceph,dev,vcenter,iscsi_libvirt,eqliscsi")
    [ds] = attributes(updated, "DATASTORE_MAD")
    assert ds.vector["ARGUMENTS"] == (
        "-t 15 -d dummy,fs,lvm,ceph,dev,iscsi_libvirt,vcenter,restic,rsync,eqliscsi "
        "-s shared,ssh,ceph,fs_lvm,fs_lvm_ssh,qcow2,vcenter,eqliscsi")
    tm_confs = attributes(updated, "TM_MAD_CONF")
    assert [a.vector["NAME"] for a in tm_confs] == [
        "dummy", "lvm", "shared", "ceph", "iscsi_libvirt", "eqliscsi"]
    assert tm_confs[-1].vector == oned_conf.TM_MAD_CONF
    ds_confs = attributes(updated, "DS_MAD_CONF")
    assert ds_confs[-1].vector == oned_conf.DS_MAD_CONF
    assert [a.value for a in attributes(updated, "DATASTORE_ENCRYPTED_ATTR")] == [
        "PROVISION/PACKET_TOKEN", "EQL_PASS", "EQL_CHAP_PASS"]
    # everything else is as it was, in the same order
    before = [(a.name, a.value) for a in oned_conf.parse(stock)]
    after = [(a.name, a.value) for a in oned_conf.parse(updated)
             if not (isinstance(a.value, dict) and a.value.get("NAME") == "eqliscsi")
             and a.value not in ("EQL_PASS", "EQL_CHAP_PASS")
             and a.name not in ("TM_MAD", "DATASTORE_MAD")]
    assert after == [item for item in before if item[0] not in ("TM_MAD", "DATASTORE_MAD")]
    assert len(notes) == 7
    assert oned_conf.apply_text(updated)[0] == updated


def test_present_entries_are_kept():
    stock = STOCK_ONED_CONF.read_text().replace(
        'TM_MAD_CONF = [\n    NAME = "dummy"',
        'TM_MAD_CONF = [\n    NAME = "eqliscsi", LN_TARGET = "NONE", CLONE_TARGET = "SELF",'
        ' SHARED = "NO"\n]\n\nTM_MAD_CONF = [\n    NAME = "dummy"')
    updated, notes = oned_conf.apply_text(stock)
    assert len([a for a in attributes(updated, "TM_MAD_CONF")
                if a.vector["NAME"] == "eqliscsi"]) == 1
    assert ("TM_MAD_CONF for eqliscsi already present (kept as is; differs from the "
            "recommended in ALLOW_ORPHANS, DISK_TYPE, DRIVER, DS_MIGRATE, SHARED)") in notes


def test_lists_without_d_are_left_alone():
    text = ('TM_MAD = [ EXECUTABLE = "one_tm", ARGUMENTS = "-t 15" ]\n'
            'DATASTORE_MAD = [ EXECUTABLE = "one_datastore", ARGUMENTS = "-t 15 -d fs" ]\n')
    updated, notes = oned_conf.apply_text(text)
    assert 'ARGUMENTS = "-t 15"' in updated and 'ARGUMENTS = "-t 15 -d fs,eqliscsi"' in updated
    assert "TM_MAD has no -d list (every driver is allowed)" in notes
    assert "DATASTORE_MAD has no -s list (every driver is allowed)" in notes
    assert attributes(updated, "TM_MAD_CONF")[0].vector == oned_conf.TM_MAD_CONF


def test_printed_stanzas_parse():
    parsed = oned_conf.parse(oned_conf.stanzas())
    assert [a.name for a in parsed] == ["TM_MAD_CONF", "DS_MAD_CONF",
                                        "DATASTORE_ENCRYPTED_ATTR", "DATASTORE_ENCRYPTED_ATTR"]
    assert parsed[0].vector == oned_conf.TM_MAD_CONF
    assert parsed[1].vector == oned_conf.DS_MAD_CONF


@pytest.mark.parametrize("text, line", [('TM_MAD = [ NAME = "x"\n', 1),
                                        ('A = 1\nB = "open\n', 2), ("A = 1\n= 2\n", 2)])
def test_syntax_errors_name_the_line(text, line):
    with pytest.raises(oned_conf.OnedConfError, match=rf"line {line}|unterminated"):
        oned_conf.apply_text(text)


def test_apply_file_backs_up_and_keeps_the_mode(tmp_path):
    oned = tmp_path / "oned.conf"
    oned.write_text(STOCK_ONED_CONF.read_text())
    oned.chmod(0o640)
    result = oned_conf.apply_file(oned)
    assert result.changed and result.backup is not None
    assert result.backup.read_text() == STOCK_ONED_CONF.read_text()
    assert oned.stat().st_mode & 0o7777 == 0o640
    again = oned_conf.apply_file(oned)
    assert not again.changed and again.backup is None
    with pytest.raises(oned_conf.OnedConfError, match="not a regular file"):
        oned_conf.apply_file(tmp_path)
