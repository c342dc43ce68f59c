"""Helpers of the DS actions that need no group: names, settings, staging, image checks."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from eqliscsi import ds_actions
from eqliscsi.action_xml import parse_action_data
from eqliscsi.config import ConfFile
from eqliscsi.ds_actions import (
    FRONTEND_IQN_PREFIX,
    action_config,
    default_frontend_initiator,
    description_owner,
    frontend_iqn,
    image_description,
    mkfs_filesystem,
    snapshot_id,
    snapshot_name,
)
from eqliscsi.image_copy import (
    MIB,
    SAMPLE_WINDOW,
    SAMPLE_WINDOWS,
    FetchOptions,
    _parse_rate,
    _SparseWriter,
    fetch_image,
    inspect_image,
    sample_windows,
    staging_area,
)
from eqliscsi.image_source import PathPolicy
from eqliscsi.oned import Action, ConfigError, DriverError, InputError
from tests.oned_xml import action_xml, datastore_xml, image_xml

REPO = Path(__file__).resolve().parent.parent


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


# --- names and descriptions --------------------------------------------------------------

def test_snapshot_names_map_both_ways():
    assert snapshot_name("ubuntu.42", 0) == "ubuntu.42-snap0"
    assert snapshot_id("ubuntu.42", "ubuntu.42-snap0") == 0
    assert snapshot_id("ubuntu.42", "UBUNTU.42-SNAP17") == 17
    long_volume = "v" * 64
    name = snapshot_name(long_volume, 123)
    assert len(name) == 64 and name.endswith("-snap123")
    assert snapshot_id(long_volume, name) == 123
    assert snapshot_id(long_volume, snapshot_name(long_volume, 7)) == 7


@pytest.mark.parametrize("name", [
    "ubuntu.42-2024-11-24-10:20:30.1",  # made by the group
    "ubuntu.42-snap",
    "other.43-snap0",
    "ubuntu.42-snap0-extra",
    "ubuntu.4-snap20",
])
def test_other_snapshots_are_not_mapped(name):
    assert snapshot_id("ubuntu.42", name) is None


def test_negative_snapshot_id_is_refused():
    with pytest.raises(InputError):
        snapshot_name("ubuntu.42", -1)


def test_descriptions_record_the_owner():
    assert image_description(42, "Ubuntu 24.04") == "OpenNebula image 42 (Ubuntu 24.04)"
    assert image_description(7, 'a "quoted"\n#name') == "OpenNebula image 7 (a 'quoted' name)"
    assert len(image_description(1, "x" * 300)) == 127
    assert description_owner("OpenNebula image 42 (Ubuntu)") == 42
    assert description_owner(image_description(7, "x" * 300)) == 7
    for other in ("", "Ubuntu server", "OpenNebula image 42x", "xOpenNebula image 4"):
        assert description_owner(other) is None


# --- settings ----------------------------------------------------------------------------

def settings_for(conf=None, ds=None, image=None):
    data = parse_action_data(action_xml(image_xml(template=image),
                                        datastore_xml(template=ds)).encode())
    action = Action("cp", ("42",), sys.stdin.buffer, {}, REPO, ConfFile(None, conf or {}))
    return action_config(action, data.datastore, data.image)


def test_settings_defaults():
    settings = settings_for()
    assert (settings.frontend_initiator, settings.staging_dir, settings.verify,
            settings.force_delete) == (None, Path("/var/tmp"), "sample", False)
    assert settings.host == "192.168.0.1"  # oned_xml's datastore template


def test_settings_levels_and_precedence(capsys):
    settings = settings_for(
        conf={"EQL_VERIFY": "full", "EQL_STAGING_DIR": "/srv/stage",
              "EQL_FRONTEND_INITIATOR": "iqn.2024-01.org.example:fe"},
        ds={"EQL_VERIFY": "OFF", "EQL_FORCE_DELETE": "no", "EQL_STAGING_DIR": "/ignored"},
        image={"EQL_FORCE_DELETE": "YES", "EQL_VERIFY": "sample"})
    assert settings.verify == "off"
    assert settings.force_delete is True
    assert settings.staging_dir == Path("/srv/stage")
    assert frontend_iqn(settings) == "iqn.2024-01.org.example:fe"
    warnings = capsys.readouterr().err
    assert "EQL_STAGING_DIR in the datastore template ignored" in warnings
    assert "EQL_VERIFY in the image template ignored" in warnings
    assert "unknown attribute" not in warnings


@pytest.mark.parametrize(("conf", "ds", "problem"), [
    ({"EQL_VERIFY": "always"}, {}, "EQL_VERIFY in eqliscsi.conf: expected one of"),
    ({}, {"EQL_FORCE_DELETE": "maybe"}, "EQL_FORCE_DELETE in the datastore template"),
    ({"EQL_STAGING_DIR": "tmp"}, {}, "EQL_STAGING_DIR in eqliscsi.conf: expected an absolute"),
    ({"EQL_FRONTEND_INITIATOR": "frontend"}, {}, "invalid iSCSI initiator name"),
])
def test_invalid_settings(conf, ds, problem):
    with pytest.raises(ConfigError, match=problem):
        settings_for(conf=conf, ds=ds)


def test_frontend_initiator_default(tmp_path):
    names = tmp_path / "initiatorname.iscsi"
    names.write_text("## comment\nInitiatorName=iqn.1993-08.org.debian:01:abc\n")
    assert default_frontend_initiator(names) == "iqn.1993-08.org.debian:01:abc"
    missing = tmp_path / "missing"
    assert default_frontend_initiator(missing, "FE_01.example.org") == (
        f"{FRONTEND_IQN_PREFIX}:fe-01.example.org")
    assert default_frontend_initiator(missing, "__") == f"{FRONTEND_IQN_PREFIX}:frontend"
    names.write_text("InitiatorName=not an iqn\n")
    with pytest.raises(ConfigError, match="set EQL_FRONTEND_INITIATOR"):
        default_frontend_initiator(names)


@pytest.mark.parametrize(("fields", "expected"), [
    ({"FORMAT": "raw", "FS": ""}, None),
    ({"FORMAT": "", "FS": "raw"}, None),
    ({"FORMAT": "raw", "FS": "EXT4"}, "ext4"),
    ({"FORMAT": "raw", "FS": None, "FSTYPE": "xfs"}, "xfs"),
    ({"FORMAT": "save_as", "FS": ""}, "save_as"),
    ({"FORMAT": "raw", "FS": None, "FSTYPE": "save_as"}, "save_as"),
])
def test_mkfs_filesystem(fields, expected):
    image = parse_action_data(action_xml(image_xml(**fields)).encode()).image
    assert mkfs_filesystem(image) == expected


@pytest.mark.parametrize(("fields", "problem"), [
    ({"FORMAT": "qcow2"}, "FORMAT qcow2 is not supported"),
    ({"FORMAT": "raw", "FS": "qcow2"}, "unsupported filesystem 'qcow2'"),
    ({"FORMAT": "raw", "FS": "zfs"}, "unsupported filesystem 'zfs'"),
])
def test_mkfs_refuses(fields, problem):
    image = parse_action_data(action_xml(image_xml(**fields)).encode()).image
    with pytest.raises(InputError, match=problem):
        mkfs_filesystem(image)


# --- staging, fetching, inspecting -------------------------------------------------------

def test_staging_area_is_private_and_removed(tmp_path):
    with staging_area(tmp_path) as stage:
        assert stage.parent == tmp_path
        assert stage.stat().st_mode & 0o777 == 0o700
        (stage / "file").write_bytes(b"x")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DriverError, match="cannot create a staging directory"):
        with staging_area(tmp_path / "missing"):
            pass


def test_sparse_writer_skips_zero_blocks(tmp_path):
    path = tmp_path / "sparse"
    writer = _SparseWriter(path)
    data = b"a" * 100 + bytes(8 * MIB) + b"b" * 100
    writer.write(data)
    writer.write(bytes(MIB))
    writer.close()
    assert path.read_bytes() == data + bytes(MIB)
    assert path.stat().st_blocks * 512 < MIB
    assert path.stat().st_mode & 0o777 == 0o600


def test_sample_windows():
    assert sample_windows(512) == [(0, 512)]
    assert sample_windows(3 * SAMPLE_WINDOW + 512) == [
        (0, SAMPLE_WINDOW), (SAMPLE_WINDOW, SAMPLE_WINDOW), (2 * SAMPLE_WINDOW, SAMPLE_WINDOW),
        (3 * SAMPLE_WINDOW, 512)]
    windows = sample_windows(100 * MIB)
    assert len(windows) == SAMPLE_WINDOWS + 2
    assert windows[0] == (0, SAMPLE_WINDOW)
    assert windows[-1] == (100 * MIB - SAMPLE_WINDOW, SAMPLE_WINDOW)
    assert windows == sorted(set(windows))


@pytest.mark.parametrize(("text", "rate"), [("", None), ("500", 500), ("500K", 512000),
                                            ("10m", 10 * MIB), ("1G", 1024**3)])
def test_transfer_limit(text, rate):
    assert _parse_rate(text) == rate


@pytest.mark.parametrize("text", ["0", "10 M", "fast", "-1"])
def test_invalid_transfer_limit(text):
    with pytest.raises(InputError, match="LIMIT_TRANSFER_BW"):
        _parse_rate(text)


def test_local_images_are_used_in_place_unless_decompressed(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(b"data" * 1000)
    policy = PathPolicy((), ())
    assert fetch_image(str(image), policy, tmp_path, FetchOptions(), None, {}) == image
    with pytest.raises(InputError, match="not a regular file"):
        fetch_image(str(tmp_path), policy, tmp_path, FetchOptions(), None, {})
    with pytest.raises(InputError, match="does not exist"):
        fetch_image(str(tmp_path / "nope"), policy, tmp_path, FetchOptions(), None, {})
    with pytest.raises(InputError, match="unsupported image PATH"):
        fetch_image("disk.img", policy, tmp_path, FetchOptions(), None, {})
    with pytest.raises(InputError, match="unsupported image PATH scheme s3://"):
        fetch_image("s3://bucket/disk", policy, tmp_path, FetchOptions(), None, {})


def test_inspect_image(tmp_path):
    raw = tmp_path / "odd.raw"
    raw.write_bytes(os.urandom(MIB + 1))
    image = inspect_image(raw)
    assert (image.format, image.virtual_size, image.size_mb) == ("raw", MIB + 512, 2)
    qemu_img("create", "-f", "qcow2", str(tmp_path / "disk.qcow2"), "5M")
    assert inspect_image(tmp_path / "disk.qcow2").virtual_size == 5 * MIB


@pytest.mark.parametrize(("create", "problem"), [
    (["-f", "qcow2", "-b", "{base}", "-F", "raw", "{image}"], "it has a backing file"),
    (["-f", "qcow2", "-o", "data_file={base}", "{image}", "1M"],
     "it has an external data file"),
    (["-f", "vmdk", "-o", "subformat=monolithicFlat", "{image}", "1M"],
     "it has extents in other files"),
    (["-f", "qcow2", "--object", "secret,id=k,data=password", "-o",
      "encrypt.format=aes,encrypt.key-secret=k", "{image}", "1M"], "it is encrypted"),
])
def test_images_reading_other_files_are_refused(tmp_path, create, problem):
    base, image = tmp_path / "base.raw", tmp_path / "image"
    base.write_bytes(bytes(MIB))
    qemu_img("create", *(arg.format(base=base, image=image) for arg in create))
    with pytest.raises(DriverError, match=problem):
        inspect_image(image)


def test_unsupported_format_is_refused(tmp_path):
    image = tmp_path / "disk.bochs"  # a growing Bochs image of 1 MiB: header and catalog
    header = (b"Bochs Virtual HD Image".ljust(32, b"\0") + b"Redolog".ljust(16, b"\0")
              + b"Growing".ljust(16, b"\0") + struct.pack("<IIIIIIQ", 0x20000, 512, 256, 1,
                                                           4096, 0, MIB))
    image.write_bytes(header.ljust(512, b"\0") + b"\xff" * 1024)
    with pytest.raises(DriverError, match="unsupported image format bochs"):
        inspect_image(image)


# --- the facade --------------------------------------------------------------------------

def test_scripts_module_exports_the_actions_lazily():
    code = ("import sys, scripts_eqliscsi as s; assert 'eqliscsi.ds_actions' not in sys.modules;"
            "f = s.ds_cp; assert 'eqliscsi.ds_actions' in sys.modules;"
            "assert 'paramiko' not in sys.modules; print(f.__module__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True)
    assert done.stdout == "eqliscsi.ds_actions\n"
    import scripts_eqliscsi

    assert scripts_eqliscsi.ds_snap_flatten is ds_actions.ds_snap_flatten
    with pytest.raises(AttributeError):
        scripts_eqliscsi.ds_nothing  # noqa: B018 (the attribute access is the test)
