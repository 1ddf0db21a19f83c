"""Compression worker threads whose hand-offs are batched.

Twisted's ``deferToThreadPool`` costs a queue hand-off, a thread wake-up and a reactor wake-up (a
write to its waker pipe) for every job. At several thousand chunks a second on a saturated
2-core machine those context switches cost as much as a tenth of the compression itself. Here a
worker keeps taking jobs without sleeping while any wait, and finished jobs go back to the
reactor thread in one ``callFromThread`` for as many as finish before the reactor gets to them:
the busier the proxy, the fewer wake-ups per chunk.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

_Job = tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]


class Workers:
    """``threads`` daemon threads running ``submit``ted calls; results fire on the reactor thread.

    Jobs may finish in any order (the frame writers keep their own order). ``stop()`` lets the
    threads finish what they hold and end; jobs still queued then are dropped.
    """

    def __init__(self, reactor: Any, threads: int, name: str = "drbdproxy-codec") -> None:
        self._reactor = reactor
        self._count = threads
        self._name = name
        self._jobs: deque[_Job] = deque()
        self._done: list[tuple[Deferred[Any], bool, Any]] = []
        self._done_lock = threading.Lock()
        self._delivery_scheduled = False
        self._cond = threading.Condition(threading.Lock())
        self._threads: list[threading.Thread] = []
        self._running = False

    def start(self) -> None:
        self._running = True
        for i in range(self._count):
            thread = threading.Thread(target=self._work, name=f"{self._name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._jobs.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``fn(*args)`` in a worker; the Deferred fires (on the reactor thread) with its result."""
        d: Deferred[Any] = Deferred()
        with self._cond:
            self._jobs.append((d, fn, args))
            self._cond.notify()  # no system call unless a worker is waiting
        return d

    def _work(self) -> None:
        cond, jobs = self._cond, self._jobs
        while True:
            with cond:
                while self._running and not jobs:
                    cond.wait()
                if not self._running:
                    return
                d, fn, args = jobs.popleft()
            try:
                outcome: tuple[Deferred[Any], bool, Any] = (d, True, fn(*args))
            except BaseException:
                outcome = (d, False, Failure())
            with self._done_lock:  # the reactor is woken by the first result of a batch only
                self._done.append(outcome)
                wake, self._delivery_scheduled = not self._delivery_scheduled, True
            if wake:
                self._reactor.callFromThread(self._deliver)

    def _deliver(self) -> None:
        with self._done_lock:
            done, self._done = self._done, []
            self._delivery_scheduled = False
        for d, ok, value in done:
            if ok:
                d.callback(value)
            else:
                d.errback(value)
