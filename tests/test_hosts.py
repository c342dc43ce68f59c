"""The hypervisor hosts test world (tests/hosts) against a simulated group with real targets.

Real here: OpenSSH (``ssh -F <config> hostN`` as the unprivileged ``oneadmin``, key
authentication, one sshd per host in its own mount namespace), sudo with the project's
``sudoers/eqliscsi``, oneadmin's ``disk`` group, the open-iscsi node database (the real
iscsiadm binary), the iSCSI logins (libiscsi with each host's IQN and CHAP, against the
group's tgtd targets), the loop block device ``dd`` writes to, and the group volume the
bytes land in.
Standing in for the kernel (which has no SCSI subsystem here): ``/usr/sbin/iscsiadm`` on
the hosts is ``tests/hosts/iscsiadm``, which logs in through qemu-nbd -> nbdfuse -> loop
device and makes the ``/dev/disk/by-path`` link and device permissions udev would.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from eqliscsi.group import GroupClient, GroupSettings
from tests import iscsi_tools
from tests.conftest import RunningSim
from tests.eqlsim.iscsi import port_is_free
from tests.hosts.world import Host, HostWorld, IscsidStub

pytestmark = pytest.mark.iscsi

MIB = 1 << 20
CHAP_USER = "host1chap"
CHAP_SECRET = "host1secret0123"
LUN = 1  # tgtd keeps LUN 0 for its controller (tests/eqlsim/iscsi.py)

Group = Tuple[RunningSim, GroupClient, str]


@pytest.fixture
def group(sim_factory, tmp_path: Path) -> Iterator[Group]:
    """A simulated group with real targets, its client, and its portal IP."""
    iscsi_tools.require_iscsi()
    sim = sim_factory(iscsi=True)
    settings = GroupSettings(
        host=sim.host,
        port=sim.port,
        user=sim.user,
        password=sim.password,
        known_hosts=str(sim.write_known_hosts(tmp_path / "known_hosts")),
        slot_dir=str(tmp_path / "slots"),
    )
    with GroupClient(settings) as client:
        yield sim, client, client.group_ip()


def sudo_iscsiadm(host: Host, args: str) -> subprocess.CompletedProcess[str]:
    return host.ssh(f"sudo iscsiadm {args}")


def chap_volume(client: GroupClient, name: str, size_mb: int, iqn: str) -> str:
    """A volume only ``iqn`` may use, with CHAP; its target IQN."""
    target = client.create_volume(name, size_mb)
    client.create_chap_user(CHAP_USER, CHAP_SECRET)
    client.create_access(name, initiator=iqn, chap_user=CHAP_USER)
    return target


def set_chap(host: Host, target: str, ip: str, secret: str = CHAP_SECRET) -> None:
    result = sudo_iscsiadm(
        host,
        f"-m node -T {target} -p {ip} -o update -n node.session.auth.authmethod -v CHAP "
        f"-n node.session.auth.username -v {CHAP_USER} -n node.session.auth.password -v {secret}",
    )
    assert result.returncode == 0, result.stderr


def group_size(ip: str, target: str, iqn: str) -> int:
    """The LUN's size as a fresh login from the test process sees it."""
    return iscsi_tools.lun_size(
        f"{ip}:3260", target, LUN, iqn, iscsi_tools.Chap(CHAP_USER, CHAP_SECRET)
    )


def by_path_name(ip: str, target: str) -> str:
    return f"ip-{ip}:3260-iscsi-{target}-lun-{LUN}"


def test_hosts_are_ssh_hosts_with_private_state(hosts: HostWorld):
    root_initiator = Path("/etc/iscsi/initiatorname.iscsi").read_text()
    for host in hosts.hosts:
        result = host.ssh("id -un; hostname; cat /etc/iscsi/initiatorname.iscsi; echo $HOME")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [
            "oneadmin",
            host.name,
            f"InitiatorName={host.iqn}",
            "/var/lib/one",
        ]
        assert "disk" in host.ssh("id -Gn").stdout.split()  # as OpenNebula's packages do
        assert host.iqn == f"iqn.2024-01.org.example:{host.name}"
    host1, host2 = hosts.hosts
    assert hosts.names == ["host1", "host2"]
    assert host1.ssh("getent hosts host2").stdout.split() == ["127.0.0.12", "host2"]
    assert (host1.address, host2.address) == ("127.0.0.11", "127.0.0.12")
    # Plain `ssh host2` through the wrapper directory, as a driver would call it.
    env = dict(os.environ, PATH=f"{hosts.bin_dir}:{os.environ['PATH']}")
    plain = subprocess.run(
        ["ssh", "host2", "hostname"], env=env, capture_output=True, text=True, timeout=30
    )
    assert plain.stdout == "host2\n"
    # OpenNebula's way: a script on stdin of `ssh host bash -s`.
    script = "set -e\nmkdir -p /var/lib/one/datastores/0/7\necho $((6 * 7))\n"
    assert host1.ssh("bash -s", input=script).stdout == "42\n"
    assert host2.ssh("test -e /var/lib/one/datastores/0/7").returncode == 1
    # sudo only for the driver's commands (the project's sudoers/eqliscsi).
    assert host1.ssh("sudo -n iscsiadm --version").stdout.startswith("iscsiadm version 2.1.8")
    denied = host1.ssh("sudo -n id")
    assert denied.returncode == 1 and "password is required" in denied.stderr
    assert Path("/etc/iscsi/initiatorname.iscsi").read_text() == root_initiator
    # Names that are not hosts go nowhere (connection refused on an unused loopback).
    stray = subprocess.run(
        [*hosts.ssh_argv("frontend.example.org", "true")], capture_output=True, timeout=30
    )
    assert stray.returncode == 255


def test_login_write_logout_lands_in_the_group_volume(group: Group, hosts: HostWorld):
    _, client, ip = group
    host1, host2 = hosts.hosts
    target = chap_volume(client, "vol1", 32, host1.iqn)
    link = by_path_name(ip, target)
    device = f"/dev/disk/by-path/{link}"

    discovered = sudo_iscsiadm(host1, f"-m discovery -t st -p {ip}")
    assert discovered.returncode == 0, discovered.stderr
    assert discovered.stdout == f"{ip}:3260,1 {target}\n"
    assert sudo_iscsiadm(host1, "-m node").stdout == f"{ip}:3260,1 {target}\n"
    set_chap(host1, target, ip)

    login = sudo_iscsiadm(host1, f"-m node -T {target} -p {ip} --login")
    assert login.returncode == 0, login.stderr
    where = f"[iface: default, target: {target}, portal: {ip},3260]"
    assert login.stdout == f"Logging in to {where}\nLogin to {where} successful.\n"
    loop = host1.by_path()[link].replace("../../", "")
    assert re.fullmatch(r"loop\d+", loop)
    # udev's permissions, on this host only: qemu (oneadmin, group disk) can open it.
    assert host1.ssh(f"stat -L -c '%A %U %G' {device}").stdout == "brw-rw---- root disk\n"
    assert os.stat(f"/dev/{loop}").st_mode & 0o777 == 0o600
    size = host1.ssh(f"/usr/sbin/blockdev --getsize64 {device}")
    assert int(size.stdout) == group_size(ip, target, host1.iqn)

    again = sudo_iscsiadm(host1, f"-m node -T {target} -p {ip} -l")
    assert again.returncode == 15
    assert "1 session requested, but 1 already present." in again.stderr

    sessions = sudo_iscsiadm(host1, "-m session")
    assert sessions.stdout == f"tcp: [1] {ip}:3260,1 {target} (non-flash)\n"
    tree = sudo_iscsiadm(host1, "-m session -P 3").stdout
    assert f"Iface Initiatorname: {host1.iqn}" in tree
    assert f"\t\t\tAttached scsi disk {loop}\t\tState: running" in tree

    # The device is private to host1's mount namespace.
    assert host1.root(["readlink", "-f", device]).stdout == f"/dev/{loop}\n"
    assert host2.by_path() == {}
    assert host2.root(["ls", "/dev/disk/by-path"]).stdout == ""
    assert host2.ssh("ls /dev/disk/by-path").stdout == ""
    assert not Path(device).exists()

    # An OpenNebula disk link, then 1 MiB of 0xAB at 4 MiB through it, as oneadmin.
    disk = "/var/lib/one/datastores/0/7/disk.0"
    write = host1.ssh(
        f"mkdir -p {Path(disk).parent} && ln -s {device} {disk} && "
        f"head -c {MIB} /dev/zero | tr '\\0' '\\253' | "
        f"dd of={disk} bs=1M seek=4 oflag=direct status=none"
    )
    assert write.returncode == 0, write.stderr

    logout = sudo_iscsiadm(host1, f"-m node -T {target} -p {ip} --logout")
    assert logout.returncode == 0, logout.stderr
    assert logout.stdout.endswith(f"portal: {ip},3260] successful.\n")
    assert host1.by_path() == {}
    assert sudo_iscsiadm(host1, "-m session").stderr == "iscsiadm: No active sessions.\n"
    twice = sudo_iscsiadm(host1, f"-m node -T {target} -p {ip} -u")
    assert (twice.returncode, twice.stderr) == (21, "iscsiadm: No matching sessions found\n")

    chap = iscsi_tools.Chap(CHAP_USER, CHAP_SECRET)
    data = iscsi_tools.read_bytes(f"{ip}:3260", target, LUN, 4 * MIB, MIB, host1.iqn, chap)
    assert data == b"\xab" * MIB
    calls = host1.iscsiadm_calls()
    assert {(c["uid"], c["sudo_user"]) for c in calls} == {(0, "oneadmin")}


def test_hosts_without_access_or_secret_cannot_log_in(group: Group, hosts: HostWorld):
    _, client, ip = group
    host1, host2 = hosts.hosts
    target = chap_volume(client, "vol1", 16, host1.iqn)

    hidden = sudo_iscsiadm(host2, f"-m discovery -t st -p {ip}")
    assert (hidden.returncode, hidden.stderr) == (21, "iscsiadm: No portals found\n")
    assert sudo_iscsiadm(host2, "-m node").returncode == 21
    assert sudo_iscsiadm(host2, f"-m node -T {target} -p {ip} -l").returncode == 21
    new = sudo_iscsiadm(host2, f"-m node -o new -T {target} -p {ip}:3260,1")
    assert new.returncode == 0, new.stderr
    set_chap(host2, target, ip)
    refused = sudo_iscsiadm(host2, f"-m node -T {target} -p {ip} -l")
    assert refused.returncode == 19  # tgt answers "target not found" (02/03)
    assert "initiator reported error (19 - encountered non-retryable" in refused.stderr
    assert host2.by_path() == {} and host2.sessions() == []

    assert sudo_iscsiadm(host1, f"-m discovery -t st -p {ip}").returncode == 0
    set_chap(host1, target, ip, secret="wrong-secret-0")
    wrong = sudo_iscsiadm(host1, f"-m node -T {target} -p {ip} -l")
    assert wrong.returncode == 24
    assert "iSCSI login failed due to authorization failure" in wrong.stderr
    assert host1.by_path() == {} and host1.sessions() == []
    assert host1.ssh("iscsiadm -m node -T x -p 127.0.0.1 -l").returncode == 13  # no sudo


def test_rescan_shows_the_new_size(group: Group, hosts: HostWorld):
    _, client, ip = group
    host1 = hosts.host("host1")
    target = chap_volume(client, "vol1", 16, host1.iqn)
    device = f"/dev/disk/by-path/{by_path_name(ip, target)}"
    assert sudo_iscsiadm(host1, f"-m discovery -t st -p {ip}").returncode == 0
    set_chap(host1, target, ip)
    assert sudo_iscsiadm(host1, f"-m node -T {target} -p {ip} -l").returncode == 0
    write = host1.ssh(
        f"head -c {MIB} /dev/zero | tr '\\0' '\\315' | dd of={device} bs=1M oflag=direct "
        "status=none"
    )
    assert write.returncode == 0, write.stderr
    old_size = int(host1.ssh(f"/usr/sbin/blockdev --getsize64 {device}").stdout)

    client.extend_volume("vol1", 100)
    new_size = group_size(ip, target, host1.iqn)
    assert new_size > old_size
    assert int(host1.ssh(f"/usr/sbin/blockdev --getsize64 {device}").stdout) == old_size
    rescan = sudo_iscsiadm(host1, f"-m node -T {target} -p {ip} -R")
    assert rescan.returncode == 0, rescan.stderr
    assert rescan.stdout == f"Rescanning session [sid: 1, target: {target}, portal: {ip},3260]\n"
    assert int(host1.ssh(f"/usr/sbin/blockdev --getsize64 {device}").stdout) == new_size
    other_bytes = host1.ssh(
        f"dd if={device} bs=1M count=1 iflag=direct status=none | tr -d '\\315' | wc -c"
    )
    assert other_bytes.stdout.strip() == "0"
    assert sudo_iscsiadm(host1, "-m session -r 1 --rescan").returncode == 0
    assert sudo_iscsiadm(host1, "-m session -r 7 -R").returncode == 22

    assert sudo_iscsiadm(host1, "-m session -u").returncode == 0
    none = sudo_iscsiadm(host1, f"-m node -T {target} -R")
    assert (none.returncode, none.stderr) == (21, "iscsiadm: No session found.\n")


def test_discovery_keeps_node_records_in_step_with_the_group(group: Group, hosts: HostWorld):
    _, client, ip = group
    host1 = hosts.host("host1")
    first = client.create_volume("vol1", 16)
    second = client.create_volume("vol2", 16)
    client.create_access("vol1", initiator=host1.iqn)
    record = client.create_access("vol2", initiator=host1.iqn)
    # The 2014 add-on's commands: discovery with an iface, -o new -o delete; logout by -T -I.
    assert sudo_iscsiadm(host1, "-m iface -I eql0 -o new").returncode == 0
    discover = f"-m discoverydb -t st -p {ip} -I eql0 -o new -o delete --discover"
    assert sorted(sudo_iscsiadm(host1, discover).stdout.splitlines()) == sorted(
        [f"{ip}:3260,1 {first}", f"{ip}:3260,1 {second}"]
    )
    tree = sudo_iscsiadm(host1, "-m node -P 1").stdout
    assert f"Target: {second}\n\tPortal: {ip}:3260,1\n\t\tIface Name: eql0\n" in tree
    assert tree.count("Iface Name: eql0") == 2
    assert sudo_iscsiadm(host1, f"-m node -T {second} -p {ip} -I eql0 -l").returncode == 0
    busy = sudo_iscsiadm(host1, f"-m node -T {second} -p {ip} -o delete")
    assert busy.returncode == 15 and "a session is using it" in busy.stderr
    assert sudo_iscsiadm(host1, f"-m node -T {second} -I eql0 -u").returncode == 0

    client.delete_access("vol2", record)
    assert sudo_iscsiadm(host1, discover).stdout == f"{ip}:3260,1 {first}\n"
    assert sudo_iscsiadm(host1, "-m node").stdout == f"{ip}:3260,1 {first}\n"
    login = sudo_iscsiadm(host1, f"-m discovery -t st -p {ip} -I eql0 -o new -l")
    assert login.returncode == 0, login.stderr
    assert login.stdout.endswith(f"portal: {ip},3260] successful.\n")
    assert [s["target"] for s in host1.sessions()] == [first]

    dead = next(f"127.0.0.{n}" for n in range(2, 11) if port_is_free(f"127.0.0.{n}"))
    unreachable = sudo_iscsiadm(host1, f"-m discovery -t st -p {dead}")
    assert unreachable.returncode == 4
    assert "encountered connection failure" in unreachable.stderr
    assert sudo_iscsiadm(host1, f"-m node -o new -T {first} -p {dead}:3260,1").returncode == 0
    assert sudo_iscsiadm(host1, f"-m node -T {first} -p {dead} -l").returncode == 8


def test_shared_datastores_and_a_clean_teardown(group: Group, hosts_factory):
    _, client, ip = group
    world = hosts_factory(shared_datastores=True, multiplex=False)
    host1, host2 = world.hosts
    assert (
        host1.ssh(
            "mkdir -p /var/lib/one/datastores/0/9 && touch /var/lib/one/datastores/0/9/x"
        ).returncode
        == 0
    )
    assert host2.ssh("test -f /var/lib/one/datastores/0/9/x").returncode == 0

    target = client.create_volume("vol1", 16)
    client.create_access("vol1", initiator=host1.iqn)
    assert sudo_iscsiadm(host1, f"-m discovery -t st -p {ip}").returncode == 0
    assert sudo_iscsiadm(host1, f"-m node -T {target} -p {ip} -l").returncode == 0
    (device,) = host1.sessions()[0]["devices"]

    world.stop()  # still logged in: the hosts' init logs out
    assert world.leftovers() == []
    assert [host.exit_status for host in world.hosts] == [0, 0]
    losetup = subprocess.run(["losetup", "-a"], capture_output=True, text=True, timeout=30)
    assert device["stack"] not in losetup.stdout
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=30)
    assert device["stack"] not in processes.stdout and str(world.base_dir) not in processes.stdout
    assert str(world.base_dir) not in Path("/proc/mounts").read_text()


def test_iscsid_stub_waits_for_late_requests():
    """iscsiadm writes its request to iscsid after connect, on a busy machine much later:
    the stub must not hang up first (iscsiadm then died of SIGPIPE: rc 243 in bursts), and
    a client that never writes must not hold up the others."""
    stub = IscsidStub(f"\0eqliscsi-test-iscsid-stub-{os.getpid()}".encode())
    stub.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent, socket.socket(
            socket.AF_UNIX, socket.SOCK_STREAM
        ) as late:
            silent.connect(stub.name)
            late.connect(stub.name)
            late.settimeout(10)
            time.sleep(IscsidStub.IDLE * 10)
            late.sendall(bytes(16104))  # the size of iscsiadm 2.1.8's request
            assert late.recv(1) == b""  # then it hangs up: iscsiadm reads iscsid.conf itself
    finally:
        stub.stop()
