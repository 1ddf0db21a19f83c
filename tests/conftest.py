"""Shared fixtures: free loopback ports and drbd-sim processes that are always cleaned up."""

from __future__ import annotations

import pytest

from helpers import SimProcess


@pytest.fixture
def sims():
    started: list[SimProcess] = []

    def start(*args: str, prefix: tuple[str, ...] = ()) -> SimProcess:
        proc = SimProcess(list(args), prefix)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def pytest_configure(config):
    config.addinivalue_line("markers", "unit: fast, in one process, no real peers (run: pytest -m unit)")
    config.addinivalue_line("markers", "e2e: runs real processes (daemons, drbd-sim, drbdadm, tshark)")


#: What a test module uses when it runs real processes.
_PROCESS_HELPERS = ("Daemon", "ProxyPair", "SimProcess", "subprocess", "tool", "netns")


def pytest_collection_modifyitems(config, items):
    """Mark every test unit or e2e: end-to-end when it starts real processes (the sims fixture,
    or a module that uses the daemon, drbd-sim, subprocess or namespace helpers)."""
    for item in items:
        module = vars(item.module)
        e2e = "sims" in item.fixturenames or any(name in module for name in _PROCESS_HELPERS)
        item.add_marker(pytest.mark.e2e if e2e else pytest.mark.unit)
