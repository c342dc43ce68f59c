"""pytest fixtures for test hosts (load with ``pytest_plugins = ["tests.hosts.fixtures"]``).

``hosts`` is a fresh ``HostWorld`` of two hosts per test (host1/host2 at 127.0.0.11/12,
user oneadmin, ``hosts.ssh_config`` for ``ssh -F``); ``hosts_factory(count=..., **options)``
starts others.  All are stopped at teardown, and a host world that leaves processes, loop
devices or mounts behind fails the test.  Without root or the tools the tests are skipped,
under CI=true they fail instead.

Request the group (``sim_factory``) before ``hosts``: fixtures end in reverse order, so
the hosts then log out while the targets still exist (a logout after the group is gone
still works, but waits for qemu-nbd, which does not hear SIGTERM while reconnecting).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

from tests.hosts.world import HostWorld, generate_key, missing_requirements


def require_hosts() -> None:
    """Skip when test hosts cannot run here; fail instead when running in CI."""
    reason = missing_requirements()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"test hosts must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def host_client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The front-end's ssh key for oneadmin on every test host (one per test session)."""
    require_hosts()
    return generate_key(tmp_path_factory.mktemp("frontend-ssh") / "id_ed25519", "eqliscsi-tests")


@pytest.fixture
def hosts_factory(tmp_path: Path, host_client_key: Path) -> Iterator[Callable[..., HostWorld]]:
    """Start host worlds: ``factory(count=2, shared_datastores=False, multiplex=True,
    sudoers=(PROJECT_SUDOERS,))``."""
    worlds: List[HostWorld] = []

    def factory(count: int = 2, **options: Any) -> HostWorld:
        world = HostWorld(
            tmp_path / f"hosts{len(worlds) + 1}", count, client_key=host_client_key, **options
        )
        worlds.append(world)
        world.start()
        return world

    yield factory
    leftovers = []
    for world in reversed(worlds):
        world.stop()
        leftovers += world.leftovers()
    assert not leftovers, f"test hosts left behind: {leftovers}"


@pytest.fixture
def hosts(hosts_factory: Callable[..., HostWorld]) -> HostWorld:
    """Two fresh test hosts, host1 and host2."""
    return hosts_factory()
