"""Collector tuning: rare young collections, and start-up objects frozen once the reactor runs."""

from __future__ import annotations

import gc
from typing import Any, Callable, Iterator

import pytest

from drbdproxy.runtime.collector import YOUNG_THRESHOLD, tune_gc


class _StartingReactor:
    """Records callWhenRunning hooks, like a reactor before run()."""

    def __init__(self) -> None:
        self.hooks: list[Callable[[], Any]] = []

    def callWhenRunning(self, f: Callable[..., Any], *args: Any) -> None:
        self.hooks.append(lambda: f(*args))


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_young_collections_are_rare_and_freezing_waits_for_the_reactor(restored_gc: None) -> None:
    """tune_gc raises the young threshold at once but freezes nothing until the reactor runs;
    then what start-up built is in the permanent generation, out of every collection's walk."""
    reactor = _StartingReactor()
    gc.unfreeze()
    tune_gc(reactor)
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0 and len(reactor.hooks) == 1
    built_at_startup = [object(), {"a": [1]}]
    assert any(o is built_at_startup for o in gc.get_objects())
    reactor.hooks[0]()
    assert gc.get_freeze_count() > 0
    # Frozen: in no generation, so no collection walks it.
    assert not any(o is built_at_startup for o in gc.get_objects())
