"""TgtBackend against real tgtd targets, with real libiscsi initiators (qemu, iscsi-ls)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.eqlsim.backend import AccessRule, Connection, Publication
from tests.eqlsim.iscsi import (
    BackendUnavailable,
    TgtBackend,
    acl_address,
    parse_target_show,
    pick_free_group_ip,
    port_is_free,
    scsi_id,
)
from tests.iscsi_tools import (
    DEFAULT_INITIATOR,
    Chap,
    can_login,
    discover,
    established_connections,
    inquiry,
    iscsi_session,
    lun_size,
    read_bytes,
    read_session,
    require_iscsi,
    write_pattern,
)

MIB = 1 << 20
HOST1 = DEFAULT_INITIATOR
HOST2 = "iqn.2024-01.org.example:host2"
PREFIX = "iqn.2001-05.com.equallogic:0-8a0906-0a1b2c3d4-"
VOL1 = PREFIX + "00000000000000a1-vol1"
VOL2 = PREFIX + "00000000000000b2-vol2"
LUN = TgtBackend.data_lun

iscsi = pytest.mark.iscsi


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` every 20 ms until true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def started_backend(state_dir: Path) -> TgtBackend:
    backend = TgtBackend(state_dir, pick_free_group_ip())
    backend.start()
    return backend


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[TgtBackend]:
    require_iscsi()
    backend = started_backend(tmp_path / "state")
    try:
        yield backend
    finally:
        backend.stop()


def published(backend: TgtBackend, obj_id: str, size: int, publication: Publication) -> str:
    """Create an object, publish it, return its IQN."""
    backend.create(obj_id, size)
    backend.publish(obj_id, publication)
    return publication.iqn


# ---- pure helpers (no root needed) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*.*.*.*", "ALL"),
        ("10.1.1.*", "10.1.1.0/24"),
        ("10.1.*.*", "10.1.0.0/16"),
        ("10.*.*.*", "10.0.0.0/8"),
        ("10.1.1.5", "10.1.1.5"),
        ("10.1.1.0/24", "10.1.1.0/24"),
    ],
)
def test_acl_address_translates_equallogic_wildcards(pattern: str, expected: str) -> None:
    assert acl_address(pattern) == expected


@pytest.mark.parametrize("pattern", ["10.*.1.*", "10.1.1", "10.1.1.x", "*.1.1.1"])
def test_acl_address_rejects_other_patterns(pattern: str) -> None:
    with pytest.raises(ValueError):
        acl_address(pattern)


def test_parse_target_show_reads_sessions_luns_accounts_and_acls() -> None:
    text = """Target 3: iqn.2001-05.com.equallogic:x-vol1
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 61
            Initiator: iqn.2024-01.org.example:host1 alias: none
            Connection: 0
                IP Address: 127.0.0.1
    LUN information:
        LUN: 0
            Type: controller
        LUN: 1
            Type: disk
            Size: 67 MB, Block size: 512
            Readonly: Yes
            Backing store path: /data/v1.img
    Account information:
        chapuser
        mutual (outgoing)
    ACL information:
        10.1.0.0/16
        iqn.2024-01.org.example:host1
Target 4: iqn.2001-05.com.equallogic:x-vol2
    System information:
    I_T nexus information:
    LUN information:
    Account information:
    ACL information:
"""
    targets = parse_target_show(text)
    assert sorted(targets) == [3, 4]
    vol1 = targets[3]
    assert vol1.name == "iqn.2001-05.com.equallogic:x-vol1"
    assert [(n.sid, n.initiator, n.connections) for n in vol1.nexuses] == [
        (61, "iqn.2024-01.org.example:host1", [(0, "127.0.0.1")])
    ]
    assert vol1.luns[1]["Backing store path"] == "/data/v1.img"
    assert vol1.luns[1]["Readonly"] == "Yes"
    assert vol1.accounts == {"chapuser"}
    assert vol1.acls == {"10.1.0.0/16", "iqn.2024-01.org.example:host1"}
    assert targets[4].nexuses == [] and targets[4].acls == set()


def test_pick_free_group_ip_is_a_bindable_loopback_address() -> None:
    ip = pick_free_group_ip()
    assert ip.startswith("127.0.0.") and 20 <= int(ip.rsplit(".", 1)[1]) <= 250
    assert port_is_free(ip)


def test_group_ip_must_be_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        TgtBackend(tmp_path, "192.0.2.10")


# ---- real targets ---------------------------------------------------------------------------


@iscsi
def test_data_written_over_iscsi_lands_in_the_file_and_in_a_clone(backend: TgtBackend) -> None:
    iqn = published(backend, "v1", 32 * MIB, Publication(VOL1, unrestricted=True))
    write_pattern(backend.portal, iqn, LUN, MIB, 16 * MIB, 0x5A)
    write_pattern(backend.portal, iqn, LUN, 17 * MIB + 3, 5, 0xC3)  # unaligned

    expected = b"\x5a" * (16 * MIB) + bytes(3) + b"\xc3" * 5
    assert read_bytes(backend.portal, iqn, LUN, MIB, len(expected)) == expected
    with open(backend.path("v1"), "rb") as data:
        data.seek(MIB)
        assert data.read(len(expected)) == expected

    backend.copy("v1", "c1")
    clone = Publication(VOL2, unrestricted=True)
    backend.publish("c1", clone)
    assert read_bytes(backend.portal, VOL2, LUN, MIB, len(expected)) == expected
    write_pattern(backend.portal, VOL2, LUN, MIB, 4096, 0x11)
    assert read_bytes(backend.portal, iqn, LUN, MIB, 4096) == b"\x5a" * 4096

    backend.copy("c1", "v1")  # onto a published object (restore): tgtd re-opens the file
    assert read_bytes(backend.portal, iqn, LUN, MIB, 4096) == b"\x11" * 4096

    fields = inquiry(backend.portal, iqn, LUN)
    assert (fields["Vendor"], fields["Product"], fields["Revision"]) == (
        "EQLOGIC",
        "100E-00",
        "10.0",
    )
    assert scsi_id("v1") != scsi_id("c1")


@iscsi
def test_read_only_publication_refuses_writes(backend: TgtBackend) -> None:
    iqn = published(backend, "v1", 4 * MIB, Publication(VOL1, unrestricted=True, read_only=True))
    with pytest.raises(RuntimeError, match="write protected"):
        write_pattern(backend.portal, iqn, LUN, 0, 4096, 0x01)
    assert read_bytes(backend.portal, iqn, LUN, 0, 4096) == bytes(4096)
    backend.publish("v1", Publication(VOL1, unrestricted=True))
    write_pattern(backend.portal, iqn, LUN, 0, 4096, 0x01)


@iscsi
def test_acl_by_initiator_name(backend: TgtBackend) -> None:
    iqn = published(backend, "v1", 4 * MIB, Publication(VOL1, rules=(AccessRule(HOST1),)))
    assert can_login(backend.portal, iqn, LUN, HOST1)
    assert not can_login(backend.portal, iqn, LUN, HOST2)
    assert discover(backend.portal, HOST1) == [iqn]
    assert discover(backend.portal, HOST2) == []

    backend.publish("v1", Publication(VOL1, rules=(AccessRule(HOST2),)))
    assert not can_login(backend.portal, iqn, LUN, HOST1)
    assert can_login(backend.portal, iqn, LUN, HOST2)


@iscsi
def test_acl_by_address_wildcard(backend: TgtBackend) -> None:
    # Initiators on loopback connect from 127.0.0.1.
    allowed = Publication(VOL1, rules=(AccessRule(ipaddress="127.0.0.*"),))
    iqn = published(backend, "v1", 4 * MIB, allowed)
    assert can_login(backend.portal, iqn, LUN, HOST2)
    assert discover(backend.portal, HOST2) == [iqn]

    backend.publish("v1", Publication(VOL1, rules=(AccessRule(ipaddress="10.1.*.*"),)))
    assert not can_login(backend.portal, iqn, LUN, HOST2)
    assert discover(backend.portal, HOST2) == []

    backend.publish("v1", Publication(VOL1, rules=(AccessRule(ipaddress="*.*.*.*"),)))
    assert can_login(backend.portal, iqn, LUN, HOST2)


@iscsi
def test_chap_required_when_a_record_names_a_chap_user(backend: TgtBackend) -> None:
    rule = AccessRule(HOST1, chap_user="chapuser")
    iqn = published(
        backend,
        "v1",
        4 * MIB,
        Publication(VOL1, rules=(rule,), chap_secrets={"chapuser": "secretsecret12"}),
    )
    good, wrong = Chap("chapuser", "secretsecret12"), Chap("chapuser", "wrongwrong12")
    assert not can_login(backend.portal, iqn, LUN, HOST1)
    assert not can_login(backend.portal, iqn, LUN, HOST1, chap=wrong)
    assert can_login(backend.portal, iqn, LUN, HOST1, chap=good)
    assert not can_login(backend.portal, iqn, LUN, HOST2, chap=good)  # ACL still applies
    write_pattern(backend.portal, iqn, LUN, 0, 4096, 0x7E, chap=good)
    assert read_bytes(backend.portal, iqn, LUN, 0, 4096, chap=good) == b"\x7e" * 4096

    changed = Chap("chapuser", "newsecret1234")
    backend.publish(
        "v1", Publication(VOL1, rules=(rule,), chap_secrets={"chapuser": changed.secret})
    )
    assert not can_login(backend.portal, iqn, LUN, HOST1, chap=good)
    assert can_login(backend.portal, iqn, LUN, HOST1, chap=changed)

    backend.publish("v1", Publication(VOL1, rules=(AccessRule(HOST1),)))
    assert can_login(backend.portal, iqn, LUN, HOST1)


@iscsi
def test_chap_only_and_unsatisfiable_records(backend: TgtBackend) -> None:
    good = Chap("chapuser", "secretsecret12")
    chap_only = Publication(
        VOL1, rules=(AccessRule(chap_user="chapuser"),), chap_secrets={"chapuser": good.secret}
    )
    iqn = published(backend, "v1", MIB, chap_only)
    assert can_login(backend.portal, iqn, LUN, HOST2, chap=good)
    assert not can_login(backend.portal, iqn, LUN, HOST2)

    # A record naming a CHAP user without a secret (unknown or disabled) admits nobody.
    backend.publish("v1", Publication(VOL1, rules=(AccessRule(HOST1, chap_user="ghost"),)))
    assert not can_login(backend.portal, iqn, LUN, HOST1)
    assert not can_login(backend.portal, iqn, LUN, HOST1, chap=Chap("ghost", "anything1234"))


@iscsi
def test_new_iqn_replaces_the_target(backend: TgtBackend) -> None:
    published(backend, "v1", MIB, Publication(VOL1, unrestricted=True))
    write_pattern(backend.portal, VOL1, LUN, 0, 512, 0x33)
    backend.publish("v1", Publication(VOL2, unrestricted=True))
    assert discover(backend.portal, HOST1) == [VOL2]
    assert read_bytes(backend.portal, VOL2, LUN, 0, 512) == b"\x33" * 512


@iscsi
def test_chap_secret_change_keeps_other_targets_bound(backend: TgtBackend) -> None:
    rule = AccessRule(HOST1, chap_user="shared")
    old, new = Chap("shared", "oldsecret1234"), Chap("shared", "newsecret1234")
    for obj_id, iqn in (("v1", VOL1), ("v2", VOL2)):
        published(
            backend,
            obj_id,
            MIB,
            Publication(iqn, rules=(rule,), chap_secrets={"shared": old.secret}),
        )
    backend.publish("v1", Publication(VOL1, rules=(rule,), chap_secrets={"shared": new.secret}))
    # v2 was not republished: it uses the same (global) account, now with the new secret.
    assert not can_login(backend.portal, VOL2, LUN, HOST1)
    assert can_login(backend.portal, VOL2, LUN, HOST1, chap=new)


@iscsi
def test_connections_and_unpublish_drops_the_session(backend: TgtBackend) -> None:
    iqn = published(backend, "v1", 4 * MIB, Publication(VOL1, unrestricted=True))
    write_pattern(backend.portal, iqn, LUN, 0, 4096, 0x42)
    with (
        iscsi_session(backend.portal, iqn, LUN, HOST1) as sock,
        iscsi_session(backend.portal, iqn, LUN, HOST2),
    ):
        assert read_session(sock, 0, 4096) == b"\x42" * 4096
        assert sorted(backend.connections("v1"), key=lambda c: c.initiator) == [
            Connection(HOST1, "127.0.0.1"),
            Connection(HOST2, "127.0.0.1"),
        ]
        assert established_connections(backend.portal) == 2

        backend.unpublish("v1")
        assert backend.connections("v1") == []
        assert wait_for(lambda: established_connections(backend.portal) == 0)
        assert discover(backend.portal, HOST1) == []
        assert not can_login(backend.portal, iqn, LUN, HOST1)
    backend.unpublish("v1")  # idempotent


@iscsi
def test_resize_is_visible_to_a_new_login_and_keeps_data(backend: TgtBackend) -> None:
    iqn = published(backend, "v1", 16 * MIB, Publication(VOL1, unrestricted=True))
    write_pattern(backend.portal, iqn, LUN, 15 * MIB, MIB, 0x99)
    with iscsi_session(backend.portal, iqn, LUN, HOST1) as sock:
        backend.resize("v1", 48 * MIB)
        assert lun_size(backend.portal, iqn, LUN) == 48 * MIB
        assert read_bytes(backend.portal, iqn, LUN, 15 * MIB, 2 * MIB) == (
            b"\x99" * MIB + bytes(MIB)
        )
        # The open session stays logged in and keeps working on the re-added LUN.
        assert backend.connections("v1") == [Connection(HOST1, "127.0.0.1")]
        assert read_session(sock, 15 * MIB, 4096) == b"\x99" * 4096


@iscsi
def test_stop_leaves_no_process_socket_or_lock(tmp_path: Path) -> None:
    require_iscsi()
    backend = started_backend(tmp_path / "state")
    try:
        pid, control = backend.pid, backend.socket_path
        assert pid is not None and control is not None and control.exists()
        published(backend, "v1", MIB, Publication(VOL1, unrestricted=True))
        with iscsi_session(backend.portal, VOL1, LUN, HOST1):
            backend.stop()
        backend.start()  # the same instance starts again, with nothing published
        assert discover(backend.portal, HOST1) == []
        restarted_control = backend.socket_path
        backend.stop()
    finally:
        backend.stop()
    assert restarted_control is not None and not restarted_control.exists()
    assert not Path(f"/proc/{pid}").exists()
    assert not control.exists() and not Path(f"{control}.lock").exists()
    assert not control.parent.exists()
    assert not backend.pid_path.exists()
    assert port_is_free(backend.group_ip)


@iscsi
def test_two_backends_do_not_interfere(tmp_path: Path) -> None:
    require_iscsi()
    first = started_backend(tmp_path / "a")
    try:
        second = started_backend(tmp_path / "b")
        try:
            assert first.portal != second.portal
            for backend, byte in ((first, 0xA1), (second, 0xB2)):
                published(backend, "v1", MIB, Publication(VOL1, unrestricted=True))
                write_pattern(backend.portal, VOL1, LUN, 0, 4096, byte)
            second.publish("v1", Publication(VOL1, rules=(AccessRule(HOST2),)))
            assert discover(first.portal, HOST1) == [VOL1]
            assert discover(second.portal, HOST1) == []
            first.stop()
            assert read_bytes(second.portal, VOL1, LUN, 0, 4096, HOST2) == b"\xb2" * 4096
        finally:
            second.stop()
    finally:
        first.stop()
    with open(tmp_path / "a" / "data" / "v1.img", "rb") as data:
        assert data.read(4096) == b"\xa1" * 4096


@iscsi
def test_start_refuses_a_busy_portal(tmp_path: Path) -> None:
    require_iscsi()
    ip = pick_free_group_ip()
    with socket.create_server((ip, 3260)):
        backend = TgtBackend(tmp_path, ip)
        with pytest.raises(BackendUnavailable, match="busy"):
            backend.start()
        assert backend.pid is None


@iscsi
def test_start_replaces_a_tgtd_left_by_a_crashed_run(tmp_path: Path) -> None:
    require_iscsi()
    crashed = started_backend(tmp_path)
    try:
        stale_pid = crashed.pid
        assert stale_pid is not None
        restarted = TgtBackend(tmp_path, crashed.group_ip)
        restarted.start()
        try:
            assert wait_for(lambda: not _running(stale_pid))
            published(restarted, "v1", MIB, Publication(VOL1, unrestricted=True))
            assert can_login(restarted.portal, VOL1, LUN)
        finally:
            restarted.stop()
    finally:
        crashed.stop()


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
