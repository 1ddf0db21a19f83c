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
