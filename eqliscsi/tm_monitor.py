"""``monitor`` of an eqliscsi system datastore (run by the DS MAD like DS ``monitor``).

stdout: ``USED_MB``, ``TOTAL_MB`` and ``FREE_MB`` of EQL_POOL (the system datastore's
settings), as DS ``monitor`` prints them.

When the message asks for VM disk sizes (``MONITOR_VM_DISKS`` 1), one ``volume show``
lists every volume; the clones (``<volume>-v<vm>-d<disk>``) and volatile volumes
(``vm<vm>-disk<disk>``) become one ``VM=[ID=<vm>, MONITOR="<base64>"]`` line per VM, the
base64 text being ``DISK_SIZE=[ID=<disk>,SIZE=<MB>]`` lines (the volume's size; group
snapshots are not listed: that would cost one CLI command per volume).  OpenNebula 5.12
and later take these lines only from the monitor daemon, so they are handed to
OpenNebula's own ``send_to_monitor`` (``<remotes>/scripts_common.sh``: reads
monitord.conf, compresses, encrypts if configured, sends over UDP); older versions read
``VM=[ID=<vm>,POLL="DISK_SIZE=..."]`` lines from stdout, which are printed then.  2014
clones (``<volume>-<vm>``) do not name their disk and are not reported.
"""

from __future__ import annotations

import base64
import subprocess
from typing import Dict, List, Tuple

from eqliscsi.action_xml import parse_action_data
from eqliscsi.ds_actions import action_config, group_client
from eqliscsi.group import VolumeSummary
from eqliscsi.oned import Action, log_warn, one_version
from eqliscsi.tm_common import volume_vm_disk

POLL_UNTIL = (5, 12)  # versions before this read VM disk sizes from stdout
SEND_TIMEOUT = 60.0
SEND_SCRIPT = 'source "$1" && send_to_monitor MONITOR_VM 0 -1 "$2"'


def tm_monitor(action: Action) -> str:
    """Capacity of the system datastore's pool, and the sizes of the VMs' volumes."""
    invocation = action.ds_invocation()
    data = parse_action_data(invocation.xml)
    config = action_config(action, data.datastore)
    wants_disks = data.text("MONITOR_VM_DISKS").strip() == "1"
    version = one_version(action.remotes_dir)
    polled = version is not None and version < POLL_UNTIL
    with group_client(config) as group:
        capacity = group.pool_capacity(config.pool)
        volumes = group.list_volumes() if wants_disks or polled else []
    lines = [f"USED_MB={capacity.used_mb}", f"TOTAL_MB={capacity.total_mb}",
             f"FREE_MB={capacity.free_mb}"]
    disks = vm_disk_sizes(volumes)
    if polled:
        lines += [f'VM=[ID={vm_id},POLL="{" ".join(entries)}"]'
                  for vm_id, entries in disks.items()]
    elif wants_disks:
        _send_to_monitor(action, monitor_vm_lines(disks))
    return "\n".join(lines)


def vm_disk_sizes(volumes: List[VolumeSummary]) -> Dict[int, List[str]]:
    """VM id -> its ``DISK_SIZE=[ID=<disk>,SIZE=<MB>]`` entries, in VM and disk order."""
    found: List[Tuple[int, int, int]] = []
    for volume in volumes:
        owner = volume_vm_disk(volume.name)
        if owner is not None:
            found.append((*owner, volume.size_mb))
    disks: Dict[int, List[str]] = {}
    for vm_id, disk_id, size_mb in sorted(found):
        disks.setdefault(vm_id, []).append(f"DISK_SIZE=[ID={disk_id},SIZE={size_mb}]")
    return disks


def monitor_vm_lines(disks: Dict[int, List[str]]) -> List[str]:
    """The MONITOR_VM lines: ``VM=[ID=<vm>, MONITOR="<base64 of the entries>"]``."""
    lines = []
    for vm_id, entries in disks.items():
        encoded = base64.b64encode("".join(f"{entry}\n" for entry in entries).encode())
        lines.append(f'VM=[ID={vm_id}, MONITOR="{encoded.decode()}"]')
    return lines


def _send_to_monitor(action: Action, lines: List[str]) -> None:
    """Hand the lines to OpenNebula's ``send_to_monitor``; a failure is only logged."""
    if not lines:
        return
    library = action.remotes_dir / "scripts_common.sh"
    if not library.is_file():
        log_warn(f"VM disk sizes not sent: no {library} (OpenNebula's send_to_monitor)")
        return
    try:
        done = subprocess.run(["bash", "-c", SEND_SCRIPT, "send_to_monitor", str(library),
                               "\n".join(lines)], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=SEND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log_warn(f"VM disk sizes not sent: {exc}")
        return
    if done.returncode != 0:
        error = done.stderr.decode("utf-8", "replace").strip().splitlines()
        log_warn(f"VM disk sizes not sent: send_to_monitor failed (exit {done.returncode}): "
                 f"{' / '.join(error[-3:]) or 'no message'}")
