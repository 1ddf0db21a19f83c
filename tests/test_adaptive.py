"""Plugin auto's decisions (codecs/adaptive.py), fed measurements by hand: no sockets, no clock."""

from __future__ import annotations

import random

import pytest

from drbdproxy.codecs import CodecId, PluginError, parse_plugin
from helpers import DISK_TRIAL
from drbdproxy.codecs.adaptive import (
    DWELL,
    AutoChooser,
    Bound,
    Measured,
    Period,
    candidates,
    trial,
)

pytestmark = pytest.mark.unit

MB = 1e6
DISK = DISK_TRIAL


def chooser(ceiling: float | None = None, cores: float = 2.0, on: str = "lz4") -> AutoChooser:
    """A chooser that has seen a trial of disk-like data, on candidate ``on``."""
    c = AutoChooser(candidates(parse_plugin("auto")), cores, ceiling)
    assert c.current.name == "zstd-3"  # where every connection starts
    c.current = next(x for x in c.ladder if x.name == on)
    assert c.trialDone(dict(DISK)) is None
    return c


def link_bound(rate: float, ratio: float = 1.9, seconds: float = 2.0,
               burst: int = 0) -> Period:
    """A period in which the link drained ``rate`` bytes a second while it held frames back;
    ``burst`` more bytes went into the sockets' buffers before it first held them back."""
    wire = int(rate * seconds)
    return Period(seconds, int(wire * ratio), wire + burst, link_held=0.9, backlogged=0.0,
                  reactor_busy=0.2, cpu_rate=0.3, drained=rate)


def cpu_bound(raw_rate: float, cpu_rate: float, ratio: float = 1.9,
              relay_cost: float | None = None, link_held: float = 0.0) -> Period:
    raw = int(raw_rate * 2)
    return Period(2.0, raw, int(raw / ratio), link_held=link_held, backlogged=0.8,
                  reactor_busy=0.6, cpu_rate=cpu_rate, relay_cost=relay_cost)


def demand(raw_rate: float) -> Period:
    raw = int(raw_rate * 2)
    return Period(2.0, raw, raw // 2, link_held=0.0, backlogged=0.0, reactor_busy=0.2,
                  cpu_rate=0.2)


def test_the_plugin_line_takes_max_level_and_refuses_what_it_does_not_know():
    """`auto` and `auto max-level N` (1-22) parse; anything else is one clear error."""
    assert parse_plugin("auto").render() == "auto"
    assert parse_plugin("AUTO Max-Level 06").render() == "auto max-level 6"
    for line, message in [("auto max-level 0", "out of range 1-22"),
                          ("auto max-level 23", "out of range 1-22"),
                          ("auto level 3", "unknown option 'level'"),
                          ("auto max-level", "needs a value")]:
        with pytest.raises(PluginError, match=message):
            parse_plugin(line)


def test_the_ladder_goes_up_to_max_level_and_only_to_what_the_peer_decompresses():
    """none, lz4 and zstd levels up to max-level (the level itself included), lightest first;
    a peer that cannot read zstd leaves none and lz4."""
    names = [c.name for c in candidates(parse_plugin("auto"))]
    assert names == ["none", "lz4", "zstd-1", "zstd-3", "zstd-6", "zstd-9"]
    names = [c.name for c in candidates(parse_plugin("auto max-level 4"))]
    assert names == ["none", "lz4", "zstd-1", "zstd-3", "zstd-4"]
    peer = {int(CodecId.RAW), int(CodecId.LZ4)}
    assert [c.name for c in candidates(parse_plugin("auto"), peer)] == ["none", "lz4"]


@pytest.mark.parametrize("line, peer, start", [
    ("auto", None, "zstd-3"),
    ("auto max-level 2", None, "zstd-2"),
    ("auto max-level 1", None, "zstd-1"),
    ("auto", {int(CodecId.RAW), int(CodecId.LZ4)}, "lz4"),
    ("auto", {int(CodecId.RAW)}, "none"),
])
def test_auto_starts_on_zstd_3_or_the_nearest_the_ladder_has(line, peer, start):
    """Before anything is measured auto compresses with zstd level 3, or what comes closest
    within max-level and what the peer decompresses."""
    assert AutoChooser(candidates(parse_plugin(line), peer), 2.0).current.name == start


def test_a_trial_measures_cost_and_ratio_of_every_candidate_on_the_samples():
    """On text-like samples every compressor has a ratio above 1 and a CPU cost; zstd-9
    squeezes more than lz4; none costs nothing and its ratio counts only the frame headers."""
    rng = random.Random(7)
    words = [bytes(rng.choices(b"etaoinshrdlu", k=rng.randint(2, 8))) for _ in range(300)]
    samples = [b" ".join(rng.choices(words, k=20000))[: 128 << 10] for _ in range(2)]
    ticks = iter(range(1000))
    measured, spent = trial(candidates(parse_plugin("auto")), samples,
                            cpu_clock=lambda: next(ticks) * 1e-3)
    assert measured["none"].cost == 0 and 0.999 < measured["none"].ratio < 1
    assert measured["zstd-9"].ratio > measured["lz4"].ratio > 1.5
    assert all(m.cost > 0 for name, m in measured.items() if name != "none")
    assert spent == pytest.approx(6e-3)  # one tick of the fake clock per candidate


def test_a_thin_link_gets_the_highest_ratio_the_cpu_affords():
    """Link-bound at 1 MB/s on lz4: zstd-9 moves 2.5 MB/s where lz4 moves 1.9, and the CPU
    easily affords it: auto moves there and says why, with the rates and ratios."""
    c = chooser()
    choice = c.period(link_bound(1 * MB), now=0)
    assert choice is not None and choice.candidate.name == "zstd-9"
    assert choice.previous.name == "lz4"
    assert "link-bound" in choice.reason and "ratio 2.50" in choice.reason
    assert "1.00 MB/s" in choice.reason


def test_a_cpu_bound_connection_on_an_unknown_link_moves_to_a_lighter_codec():
    """CPU-bound on zstd-9 with the link's rate unknown: a lighter codec moves more, so auto
    steps down, planning with the CPU it really got: 50 MB/s at zstd-9's cost per byte."""
    c = chooser(on="zstd-9")
    choice = c.period(cpu_bound(50 * MB, cpu_rate=0.9, relay_cost=1 / (800 * MB)), now=0)
    assert choice is not None and choice.candidate.name in ("none", "lz4")
    got = 50 * MB * (c.relay_cost + DISK["zstd-9"].cost)
    assert c.cores == pytest.approx(got)  # the first measurement replaces the guess


def test_once_the_link_is_known_a_cpu_bound_codec_is_weighed_against_it():
    """The link was measured at 100 MB/s: none would move 100 MB/s at most, lz4 190; on lz4,
    CPU-bound at 150 MB/s, auto stays (none is slower), and it does not flap back to none."""
    c = chooser(on="none")
    c.period(link_bound(100 * MB, ratio=1.0), now=0)
    assert c.link_rate == pytest.approx(100 * MB)
    c.current = next(x for x in c.ladder if x.name == "lz4")
    for now in range(2, 40, 2):
        choice = c.period(cpu_bound(150 * MB, cpu_rate=1.2, relay_cost=1 / (600 * MB)), now=now)
        assert choice is None, choice
    assert c.predict("none", 40) == pytest.approx(100 * MB)
    assert c.predict("lz4", 40) == pytest.approx(150 * MB, rel=0.05)


def test_what_a_candidate_achieved_caps_its_prediction_so_a_bad_guess_is_not_repeated():
    """The model predicted zstd-1 at the link's limit, but it achieved only 60 MB/s CPU-bound;
    lz4 achieved 100: auto goes back to lz4 and does not try zstd-1 again while that
    measurement holds."""
    c = chooser()
    c.link_rate = 60 * MB
    lz4 = c.current
    c._achieved["lz4"] = (100 * MB, 0.0)
    c.current = next(x for x in c.ladder if x.name == "zstd-1")
    c._settled = DWELL
    choice = c.period(cpu_bound(60 * MB, cpu_rate=1.8, ratio=2.2), now=1)
    assert choice is not None and choice.candidate is lz4
    for now in range(3, 50, 2):
        c._settled = DWELL
        again = c.period(cpu_bound(100 * MB, cpu_rate=1.8), now=now)
        assert again is None or again.candidate.name != "zstd-1", again


def test_a_small_gain_does_not_switch_and_a_change_is_kept_for_the_dwell_periods():
    """A candidate predicted 3 % better is not worth a change (hysteresis 4 %); right after
    a change, even a clearly better one waits DWELL periods."""
    near = {**DISK, "zstd-9": Measured(DISK["zstd-9"].cost, 1.9 * 1.03)}
    near = {name: m for name, m in near.items() if name in ("none", "lz4", "zstd-9")}
    c = AutoChooser(candidates(parse_plugin("auto")), 2.0)
    c.current = next(x for x in c.ladder if x.name == "lz4")
    c.trialDone(near)
    assert c.period(link_bound(1 * MB), now=0) is None
    c.measured = dict(DISK)
    c._settled = 0
    assert c.period(link_bound(1 * MB), now=2) is None  # settled 1 < DWELL
    assert c.period(link_bound(1 * MB), now=4) is not None


def test_a_period_limited_by_nothing_changes_nothing():
    """A connection that carries all DRBD writes tells nothing about what would be faster."""
    c = chooser()
    for now in range(0, 20, 2):
        assert c.period(demand(5 * MB), now=now) is None
    assert c.current.name == "lz4"
    assert demand(5 * MB).bound is Bound.DEMAND


def test_incompressible_samples_switch_to_none_at_once_and_compressible_ones_choose_again():
    """A first trial in which nothing saves 3 % switches to none without waiting for a period; while
    data stays incompressible no period moves away from none; once samples compress again, the
    next limited period chooses afresh."""
    c = AutoChooser(candidates(parse_plugin("auto")), 2.0)
    flat = {name: Measured(m.cost, 0.999 if name == "none" else 1.01) for name, m in DISK.items()}
    choice = c.trialDone(flat)
    assert choice is not None and choice.candidate.name == "none"
    assert "incompressible" in choice.reason
    for now in range(0, 10, 2):
        assert c.period(link_bound(1 * MB, ratio=1.0), now=now) is None
    assert c.trialDone(dict(DISK)) is None and not c.incompressible
    again = c.period(link_bound(1 * MB, ratio=1.0), now=12)
    assert again is not None and again.candidate.name == "zstd-9"


def test_live_traffic_that_does_not_compress_switches_to_none_at_once():
    """lz4 turned 4 MiB into 4 MiB: switch to none now; a compressing run does not, nor does
    a short run of incompressible chunks."""
    c = chooser()
    assert c.live(4 << 20, 2 << 20) is None
    assert c.live(1 << 20, 1 << 20) is None  # too little to judge
    choice = c.live(4 << 20, 4 << 20)
    assert choice is not None and choice.candidate.name == "none"
    assert c.live(4 << 20, 4 << 20) is None  # already none


def test_bwlimit_stands_in_for_the_link_rate_and_caps_what_is_learnt():
    """With bwlimit 1 MB/s the link's rate is known before it is measured, and a burst the
    token bucket let through never raises it above bwlimit."""
    c = chooser(ceiling=1 * MB)
    assert c.link_rate == 1 * MB
    c.period(demand(3 * MB), now=0)  # 1.5 MB/s of wire in a burst
    assert c.link_rate == 1 * MB
    c.linkChanged(None)
    assert c.link_rate is None


def test_the_link_rate_is_what_it_drained_while_full_not_what_filled_its_buffers():
    """A first period that also filled the sockets' buffers (8 MB more on the wire) teaches
    the rate the link drained while full, not the burst; a CPU-bound period in which the link
    never held anything back and took more shows the link got faster; one in which it held
    frames back does not."""
    c = chooser(on="zstd-9")
    c.period(link_bound(1.2 * MB, ratio=2.5, burst=8_000_000), now=0)
    assert c.link_rate == pytest.approx(1.2 * MB)
    c.period(cpu_bound(50 * MB, cpu_rate=1.0, ratio=2.5, link_held=0.3), now=2)
    assert c.link_rate == pytest.approx(1.2 * MB)
    c.period(cpu_bound(50 * MB, cpu_rate=1.0, ratio=2.5), now=4)
    assert c.link_rate == pytest.approx(20 * MB)


def test_trials_are_averaged_so_sampling_noise_does_not_move_the_choice():
    """Two trials whose ratios differ by 10 % plan with their mean. One trial whose samples
    all happen to be incompressible (mixed data) is not taken for incompressible data; trial
    after trial of them is."""
    c = chooser()
    noisy = {name: Measured(m.cost, m.ratio * 1.1) for name, m in DISK.items()}
    c.trialDone(noisy)
    assert c.measured["zstd-9"].ratio == pytest.approx(2.5 * 1.05)
    flat = {name: Measured(m.cost, 1.0) for name, m in DISK.items()}
    assert c.trialDone(flat) is None and c.current.name == "lz4"
    choices = [c.trialDone(flat) for _ in range(8)]
    assert [x.candidate.name for x in choices if x is not None] == ["none"]


def test_the_cpu_is_learnt_only_from_settled_compression_bound_periods_and_relearnt_later():
    """The period right after a change (still the old codec's frames) and a period limited by
    the reactor on none teach nothing about the CPUs; a settled compression-bound one does. A
    minute later the guess is back, so a heavier codec may be tried again."""
    c = chooser(on="zstd-9")
    c._settled = 0
    c.period(cpu_bound(50 * MB, cpu_rate=0.9), now=0)  # the drain period after a change
    assert c.cores == 2.0 and "zstd-9" not in c._achieved
    c.current = next(x for x in c.ladder if x.name == "none")
    reactor = Period(2.0, 400_000_000, 400_000_000, link_held=0.0, backlogged=0.0,
                     reactor_busy=0.95, cpu_rate=1.0, relay_cost=1 / (200 * MB))
    c.period(reactor, now=2)
    assert c.cores == 2.0
    c.current = next(x for x in c.ladder if x.name == "zstd-9")
    c._settled = DWELL
    c.period(cpu_bound(50 * MB, cpu_rate=0.9), now=4)
    assert c.cores < 2.0
    c.period(demand(1 * MB), now=4 + 61)
    assert c.cores == 2.0


def test_a_link_of_unknown_rate_or_a_stalled_peer_moves_nothing():
    """Held back by a link whose rate is not measured yet (no two looks in a row found it
    full), auto waits instead of planning as if the link were unlimited; a period in which the
    held link drained nothing (the peer stalled) teaches no rate of 0."""
    c = chooser(on="zstd-3")
    held = Period(2.0, 4_000_000, 2_000_000, link_held=0.9, backlogged=0.0, reactor_busy=0.1,
                  cpu_rate=0.1, drained=None)
    assert c.period(held, now=0) is None and c.period(held, now=2) is None
    stalled = Period(2.0, 0, 0, link_held=1.0, backlogged=0.0, reactor_busy=0.0, cpu_rate=0.0,
                     drained=0.0)
    assert c.period(stalled, now=4) is None
    assert c.link_rate is None and c.current.name == "zstd-3"
