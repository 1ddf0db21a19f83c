"""Plugin auto's Twisted half (relay/compression.py) on a Clock, with a stand-in encoder whose
trials answer at once and a probe whose link and budget states the test sets."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel

from drbdproxy.codecs import CodecId, parse_plugin
from drbdproxy.codecs.adaptive import Measured, candidates
from helpers import DISK_TRIAL as DISK
from drbdproxy.link import Accepted, LinkRole
from drbdproxy.relay.compression import PERIOD, TICK, AutoCompression, Compression
from drbdproxy.relay.encoder import CompressionMeter
from helpers import logged

pytestmark = pytest.mark.unit



class Encoder:
    """Trials answer at once with ``measured``; counts how many were asked for."""

    def __init__(self, measured: dict[str, Measured]) -> None:
        self.meter = CompressionMeter()
        self.measured = measured
        self.trials = 0

    def trial(self, ladder, samples) -> Deferred[tuple[dict[str, Measured], float]]:
        self.trials += 1
        return succeed((dict(self.measured), 0.001))


@dataclass
class Probe:
    held: bool = False
    backlogged: bool = False
    sent: int = 0

    def linkHeld(self) -> bool:
        return self.held

    def linkSent(self) -> int:
        return self.sent

    def readsPaused(self) -> bool:
        return self.backlogged


def auto(encoder: Encoder, probe: Probe, clock: Clock, bwlimit: int = 0) -> AutoCompression:
    ladder = candidates(parse_plugin("auto"))
    return AutoCompression("r0", ladder, clock, encoder, probe, bwlimit,  # type: ignore[arg-type]
                           cores=2.0, cpu_clock=lambda: clock.seconds() * 0.3,
                           thread_clock=lambda: clock.seconds() * 0.2)


CHUNK = b"x" * (256 << 10)


def run(clock: Clock, a: AutoCompression, probe: Probe, seconds: float,
        wire_per_tick: int = 0) -> None:
    """Advance ``seconds`` a tick at a time; each tick a DRBD read goes by, whose chunk's
    encoding makes ``wire_per_tick`` bytes, which the link takes (none: no data)."""
    for _ in range(round(seconds / TICK)):
        if wire_per_tick:
            a.sample([CHUNK])
            a.encoded(int(CodecId.LZ4), len(CHUNK), wire_per_tick)
            probe.sent += wire_per_tick
        clock.advance(TICK)


def test_a_link_held_by_bwlimit_moves_auto_to_the_highest_ratio_and_logs_why():
    """Data flows, the link holds frames back every tick, the encoded chunks go out at about
    1 MB/s: within a period and its trial, auto leaves lz4 for zstd-9, and one info line says
    so with the measured rate and ratio."""
    clock, encoder, probe = Clock(), Encoder(DISK), Probe(held=True)
    a = auto(encoder, probe, clock, bwlimit=1_000_000)
    a.chooser.current = a.ladder[1]  # lz4
    with logged(LogLevel.info) as log:
        run(clock, a, probe, PERIOD + 2 * TICK, wire_per_tick=80_000)
    assert a.describe() == "auto:zstd-9"
    assert encoder.trials >= 1
    [line] = log.lines("compression of r0")
    assert "now zstd-9 (was lz4): link-bound" in line and "ratio 2.50" in line
    assert "link 0.80 MB/s" in line  # what it drained between looks that found it full


def test_an_idle_connection_holds_no_timer_and_the_next_read_starts_the_watch_again():
    """A period without data ends the watch (no delayed call left on the clock); the next DRBD
    read starts it again."""
    clock, encoder, probe = Clock(), Encoder(DISK), Probe()
    a = auto(encoder, probe, clock)
    assert clock.getDelayedCalls() == []
    a.sample([CHUNK])
    assert len(clock.getDelayedCalls()) == 1
    run(clock, a, probe, PERIOD + TICK)
    assert clock.getDelayedCalls() == []
    a.sample([CHUNK])
    assert len(clock.getDelayedCalls()) == 1
    a.stop()
    assert clock.getDelayedCalls() == []


def test_chunks_that_do_not_compress_switch_to_none_before_any_period_ends():
    """Encoded chunks as large as their raw data: auto is on none after 4 MiB of them, with
    no tick of the clock at all."""
    clock, encoder, probe = Clock(), Encoder(DISK), Probe()
    a = auto(encoder, probe, clock)
    a.sample([CHUNK])
    with logged(LogLevel.info) as log:
        for _ in range((4 << 20) // len(CHUNK)):
            a.encoded(int(CodecId.RAW), len(CHUNK), len(CHUNK))
    assert a.describe() == "auto:none"
    assert "incompressible data" in log.lines("compression of r0")[0]
    a.stop()


def test_samples_are_whole_chunks_of_data_never_drbds_small_packets():
    """A trial only ever sees chunks of 64 KiB or more: a read of small DRBD packets gives no
    sample, so no trial runs on headers."""
    clock, encoder, probe = Clock(), Encoder(DISK), Probe()
    a = auto(encoder, probe, clock)
    a.sample([b"h" * 32])
    clock.advance(TICK)
    assert encoder.trials == 0
    a.sample([CHUNK])
    clock.advance(TICK)
    assert encoder.trials == 1
    a.stop()


def accepted(*codecs: CodecId) -> Accepted:
    return Accepted(version=1, role=LinkRole.BULK, name="r0", session=bytes(16),
                    peer_codecs=frozenset(int(c) for c in codecs), peer_max_payload=1 << 20,
                    features=0, local_nonce=bytes(16), peer_nonce=bytes(16))


def test_a_connection_keeps_its_auto_choice_across_a_settings_change_and_a_new_link():
    """A bwlimit change or a new bulk link with the same codecs keeps auto's state (its current
    choice included); a peer that cannot decompress zstd gets a ladder without it; a plugin
    line other than auto gives that plugin's codec."""
    clock, encoder = Clock(), Encoder(DISK)
    c = Compression("r0", clock, encoder, Probe())  # type: ignore[arg-type]
    c.reset([parse_plugin("auto")], None, 0)
    assert c.describe() == "auto:zstd-3" and c.auto is not None
    first = c.auto
    first.chooser.current = first.ladder[-1]
    c.reset([parse_plugin("auto")], None, 1_000_000)
    assert c.auto is first and c.describe() == "auto:zstd-9"
    assert first.chooser.link_rate == 1_000_000
    first.chooser.link_rate = 900_000  # as if measured
    c.reset([parse_plugin("auto")], accepted(*CodecId), 1_000_000)  # a new link, same codecs
    assert c.auto is first and c.describe() == "auto:zstd-9"
    assert first.chooser.link_rate == 1_000_000  # the measurement was of the old link
    first.chooser.link_rate = 900_000
    c.reset([parse_plugin("auto")], accepted(*CodecId), 1_000_000)  # nothing changed
    assert first.chooser.link_rate == 900_000
    c.reset([parse_plugin("auto")], accepted(CodecId.RAW, CodecId.LZ4), 0)
    assert c.auto is not first and [x.name for x in c.auto.ladder] == ["none", "lz4"]
    c.reset([parse_plugin("zstd level 4")], None, 0)
    assert c.auto is None and c.describe() == "zstd level 4"
    assert clock.getDelayedCalls() == []


def test_a_replaced_auto_ignores_its_last_trial_and_never_restarts():
    """Once the connection has replaced it (another plugin line, another ladder), a trial that
    comes back late changes and logs nothing, and no DRBD read starts its watch again."""
    clock, probe = Clock(), Probe()
    pending: Deferred[tuple[dict[str, Measured], float]] = Deferred()

    class Late(Encoder):
        def trial(self, ladder, samples):
            self.trials += 1
            return pending

    encoder = Late(DISK)
    a = auto(encoder, probe, clock)
    a.sample([CHUNK])
    clock.advance(TICK)
    assert encoder.trials == 1
    a.close()
    with logged(LogLevel.info) as log:
        pending.callback(({name: Measured(m.cost, 1.0) for name, m in DISK.items()}, 0.001))
    assert log.lines() == [] and a.describe() == "auto:zstd-3"
    a.sample([CHUNK])
    assert clock.getDelayedCalls() == []
