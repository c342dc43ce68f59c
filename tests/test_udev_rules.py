"""``udev/61-eqliscsi.rules`` and its helper ``udev/eqliscsi-volume-name``.

The helper is run with every POSIX shell found (dash, bash --posix, sh).  The rules run in
the REAL ``udevadm test`` (systemd-udevd's rule engine) against a real loop device, inside a
private mount namespace: tmpfs on ``/etc/udev/rules.d``, ``/dev`` and ``/run``, and an
overlay on ``/usr/lib/udev`` that adds the helper, so the machine's own ``/dev``,
``/run/udev`` and ``/usr/lib/udev`` are never touched.  The stock rules of
``/usr/lib/udev/rules.d`` run too (``60-persistent-storage.rules`` makes the by-path link).

Simulated: a loop device is not an iSCSI disk, so path_id and scsi_id cannot give it
``ID_PATH`` and ``ID_VENDOR``; a test-only rule (``59-eqliscsi-test.rules``) sets the
values they give an EqualLogic LUN.  Not covered here: partitions (loop devices get none on
this kernel) and ``device/timeout`` (only SCSI disks, ``sd*``, have it).  The queue
attributes written to the loop device are restored afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

UDEV = Path(__file__).resolve().parent.parent / "udev"
HELPER = UDEV / "eqliscsi-volume-name"
RULES = UDEV / "61-eqliscsi.rules"
EQL_IQN = "iqn.2001-05.com.equallogic:0-8a0906-4a1c7e105-1e2000000385a3a1-"
PORTAL_PATH = "ip-10.99.0.10:3260-iscsi-"


def _shells() -> List[List[str]]:
    found = [[shutil.which("dash") or ""], [shutil.which("bash") or "", "--posix"], ["/bin/sh"]]
    return [shell for shell in found if shell[0] and os.path.exists(shell[0])]


@pytest.mark.parametrize("shell", _shells(), ids=lambda shell: " ".join(shell))
@pytest.mark.parametrize(("id_path", "volume"), [
    (f"{PORTAL_PATH}{EQL_IQN}vol1-lun-0", "vol1"),
    (f"{PORTAL_PATH}{EQL_IQN}ubuntu-14.42-v117-d0-lun-0", "ubuntu-14.42-v117-d0"),
    (f"{PORTAL_PATH}{EQL_IQN}my-lunar-disk.3-lun-0", "my-lunar-disk.3"),  # 2014 bug B18
    (f"{PORTAL_PATH}{EQL_IQN}a-lun-1-lun-12", "a-lun-1"),
    (f"{PORTAL_PATH}{EQL_IQN}x-iscsi-y:z-lun-0", "x-iscsi-y:z"),
    (f"ip-fd00::5:3260-iscsi-{EQL_IQN}v6vol-lun-0", "v6vol"),
    (f"{PORTAL_PATH}{EQL_IQN}{'n' * 65}-lun-0", None),
    (f"{PORTAL_PATH}{EQL_IQN}vol1-lun-x", None),
    (f"{PORTAL_PATH}{EQL_IQN}-lun-0", None),
    (f"{PORTAL_PATH}{EQL_IQN}v/x-lun-0", None),
    (f"{PORTAL_PATH}{EQL_IQN}v$(x)-lun-0", None),
    (f"{PORTAL_PATH}iqn.2001-05.com.equallogic:0-8a0906-4a1c7e10-1e2000000385a3a1-vol1-lun-0",
     None),
    (f"{PORTAL_PATH}iqn.2005-10.org.freenas.ctl:vol1-lun-0", None),
    ("pci-0000:00:1f.2-ata-1", None),
    ("", None),
])
def test_helper_prints_the_volume_name_of_equallogic_paths_only(
        shell: List[str], id_path: str, volume: str) -> None:
    result = subprocess.run([*shell, str(HELPER), id_path], capture_output=True, text=True,
                            timeout=10, check=False)
    if volume is None:
        assert (result.returncode, result.stdout) == (1, "")
    else:
        assert (result.returncode, result.stdout) == (0, f"EQLISCSI_VOLUME={volume}\n")
    assert result.stderr == ""


def _udev_requirements() -> None:
    tools = ("udevadm", "unshare", "losetup", "mknod")
    problem = None
    if os.geteuid() != 0:
        problem = "needs root (mount namespace, loop device)"
    elif any(shutil.which(tool) is None for tool in tools):
        problem = f"needs {', '.join(tools)}"
    elif not Path("/usr/lib/udev/rules.d/60-persistent-storage.rules").exists():
        problem = "no stock udev rules in /usr/lib/udev/rules.d"
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"the udev rule tests must run in CI: {problem}")
    pytest.skip(problem)


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Tuple[str, Dict[str, str]]]:
    """A loop device on a small file, and its queue settings (restored afterwards)."""
    _udev_requirements()
    image = tmp_path / "disk.img"
    image.write_bytes(b"")
    os.truncate(image, 8 << 20)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True,
                            text=True, timeout=30, check=True).stdout.strip()
    queue = Path(f"/sys/block/{os.path.basename(device)}/queue")
    saved = {"read_ahead_kb": (queue / "read_ahead_kb").read_text().strip(),
             "scheduler": (queue / "scheduler").read_text().split("[")[1].split("]")[0]}
    try:
        yield device, saved
    finally:
        for name, value in saved.items():
            (queue / name).write_text(value)
        subprocess.run(["losetup", "--detach", device], timeout=30, check=False)


def _udevadm_test(tmp_path: Path, device: str, id_path: str, vendor: str) -> Tuple[str, str]:
    """``udevadm test --action=add`` of ``device`` with test-only ID_PATH/ID_VENDOR in a
    private mount namespace: (the links it made as ``path -> target`` lines, its output)."""
    name = os.path.basename(device)
    minor = os.minor(os.stat(device).st_rdev)
    (tmp_path / "59-eqliscsi-test.rules").write_text(
        f'KERNEL=="{name}", ENV{{ID_PATH}}="{id_path}", ENV{{ID_VENDOR}}="{vendor}"\n')
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    script = f"""
        set -e
        mount -t tmpfs eqliscsi-rules /etc/udev/rules.d
        cp {tmp_path}/59-eqliscsi-test.rules {RULES} /etc/udev/rules.d/
        mount -t tmpfs eqliscsi-overlay {overlay}
        mkdir {overlay}/upper {overlay}/work
        mount -t overlay eqliscsi-udev /usr/lib/udev \\
          -o lowerdir=/usr/lib/udev,upperdir={overlay}/upper,workdir={overlay}/work
        install -m 0755 {HELPER} /usr/lib/udev/
        mount -t tmpfs eqliscsi-dev /dev
        mknod -m 666 /dev/null c 1 3
        mknod -m 660 {device} b 7 {minor}
        mount -t tmpfs eqliscsi-run /run
        udevadm test --action=add /sys/class/block/{name} > {tmp_path}/udevadm.out 2>&1
        find /dev -type l -printf '%p -> %l\\n' | sort
    """
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh",
                             "-c", script], capture_output=True, text=True, timeout=60,
                            check=False)
    output = (tmp_path / "udevadm.out").read_text() if (tmp_path / "udevadm.out").exists() \
        else ""
    assert result.returncode == 0, result.stderr + output
    return result.stdout, output


def test_rules_give_equallogic_disks_aliases_and_tuning(
        tmp_path: Path, loop_device: Tuple[str, Dict[str, str]]) -> None:
    device, saved = loop_device
    name = os.path.basename(device)
    id_path = f"{PORTAL_PATH}{EQL_IQN}my-lunar-disk.3-lun-0"
    links, output = _udevadm_test(tmp_path, device, id_path, "EQLOGIC")
    assert f"/dev/disk/by-eql/my-lunar-disk.3 -> ../../{name}" in links.splitlines()
    assert f"/dev/iscsi/my-lunar-disk.3 -> ../{name}" in links.splitlines()
    assert f"/dev/disk/by-path/{id_path} -> ../../{name}" in links.splitlines()  # stock rules
    assert "61-eqliscsi.rules" in output
    queue = Path(f"/sys/block/{name}/queue")
    assert (queue / "read_ahead_kb").read_text().strip() == "1024" != saved["read_ahead_kb"]
    assert "[none]" in (queue / "scheduler").read_text()


def test_rules_leave_other_disks_alone(
        tmp_path: Path, loop_device: Tuple[str, Dict[str, str]]) -> None:
    device, saved = loop_device
    name = os.path.basename(device)
    id_path = f"{PORTAL_PATH}iqn.2005-10.org.freenas.ctl:vol1-lun-0"
    links, output = _udevadm_test(tmp_path, device, id_path, "FreeNAS")
    assert links.splitlines() == [f"/dev/block/7:{os.minor(os.stat(device).st_rdev)} -> "
                                  f"../{name}",
                                  *[line for line in links.splitlines()
                                    if line.startswith("/dev/disk/by-")]]
    assert "by-eql" not in links and "/dev/iscsi" not in links
    assert "eqliscsi-volume-name" not in output
    queue = Path(f"/sys/block/{name}/queue")
    assert (queue / "read_ahead_kb").read_text().strip() == saved["read_ahead_kb"]
