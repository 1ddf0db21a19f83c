"""The compression workers: results come back on the reactor thread, in batches, errors included."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

import pytest

from drbdproxy.codecs import codec_for, decode_chunk, parse_plugin
from drbdproxy.link import data_checksum
from drbdproxy.relay.encoder import INLINE_LIMIT, ChunkEncoder, Encoded
from drbdproxy.relay.workers import Workers


class ThreadReactor:
    """Stands in for the reactor: calls made from worker threads wait here until the test runs them."""

    def __init__(self) -> None:
        self.calls: queue.Queue[Callable[[], Any]] = queue.Queue()
        self.wakeups = 0

    def callFromThread(self, fn: Callable[..., Any], *args: Any) -> None:
        self.wakeups += 1
        self.calls.put(lambda: fn(*args))

    def run_one(self) -> None:
        self.calls.get(timeout=30)()


def test_results_fire_on_the_reactor_thread_only_when_it_runs_the_delivery() -> None:
    """A job's Deferred fires when the reactor runs what the worker handed back, not before."""
    reactor = ThreadReactor()
    workers = Workers(reactor, threads=2)
    workers.start()
    try:
        results: list[tuple[int, str]] = []
        d = workers.submit(lambda x: x * 2, 21)
        d.addCallback(lambda v: results.append((v, threading.current_thread().name)))
        reactor.run_one()
        assert results == [(42, threading.current_thread().name)]
    finally:
        workers.stop()


def test_an_exception_in_a_job_errbacks_its_deferred() -> None:
    """A job that raises fails its own Deferred with that exception; the workers keep going."""
    reactor = ThreadReactor()
    workers = Workers(reactor, threads=1)
    workers.start()
    try:
        failures: list[Any] = []
        workers.submit(lambda: 1 // 0).addErrback(failures.append)
        reactor.run_one()
        assert failures and failures[0].check(ZeroDivisionError)
        after: list[int] = []
        workers.submit(lambda: 7).addCallback(after.append)
        reactor.run_one()
        assert after == [7]
    finally:
        workers.stop()


def test_results_finished_before_the_reactor_looks_come_back_in_one_wakeup() -> None:
    """Ten jobs that finish while the reactor is busy cost one reactor wake-up, and all ten fire."""
    reactor = ThreadReactor()
    workers = Workers(reactor, threads=2)
    workers.start()
    gate = threading.Event()
    finished = threading.Semaphore(0)

    def job(i: int) -> int:
        gate.wait(30)
        finished.release()
        return i

    results: list[int] = []
    for i in range(10):
        workers.submit(job, i).addCallback(results.append)
    gate.set()
    for _ in range(10):
        assert finished.acquire(timeout=30)
    workers.stop()  # joins the threads: every outcome has been handed back
    assert reactor.wakeups == 1
    reactor.run_one()
    assert sorted(results) == list(range(10))


def test_stop_ends_every_thread() -> None:
    """stop() returns once every worker thread has ended, with or without work done."""
    workers = Workers(ThreadReactor(), threads=3, name="test-workers")
    workers.start()
    workers.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("test-workers")]


@pytest.mark.parametrize("plugin", ["lz4", "zstd level 3", "none"])
def test_chunk_encoder_compresses_large_chunks_in_a_worker_and_the_rest_inline(plugin: str) -> None:
    """Big compressible chunks come back through a worker, raw and small ones at once, all
    decoding to the input with a matching CRC-32C."""
    reactor = ThreadReactor()
    workers = Workers(reactor, threads=2)
    workers.start()
    try:
        encoder = ChunkEncoder(workers)
        codec = codec_for([] if plugin == "none" else [parse_plugin(plugin)])
        for data in (b"tiny meta packet", b"disk block " * 20000):
            results = encoder.encodeAll(codec, [data])
            threaded = plugin != "none" and len(data) >= INLINE_LIMIT
            assert isinstance(results, list) is not threaded
            if not isinstance(results, list):
                got: list[list[Encoded]] = []
                results.addCallback(got.append)
                reactor.run_one()
                results = got[0]
            (result,) = results
            assert decode_chunk(result.codec, result.payload, result.raw_length) == data
            assert result.crc32c == data_checksum(data)
    finally:
        workers.stop()
