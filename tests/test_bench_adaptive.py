"""The P9 benchmark's arithmetic and report: link ceilings, codec names, the auto verdict per
column, the corpus it builds, and Ctrl-C held while a process or namespace has no cleanup yet."""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import adaptive  # noqa: E402

RATES = ["10mbit", "1gbit", "loopback"]
CHOICES = ["none", "lz4", "zstd-3", "auto"]


def cell(rate: str, choice: str, goodput: float | None, run: int = 1, codec: str = "?",
         workload: str = "disk") -> dict:
    r = dict(run=run, rate=rate, workload=workload, choice=choice)
    if goodput is None:
        r["error"] = "drbd-sim primary ended early"
    else:
        r.update(goodput=goodput, ratio=2.0, codec=codec, codecs={codec: 4})
    return r


def sample_results() -> list[dict]:
    """auto within 5 % of the best at 10 Mbit/s and loopback, 10 % short at 1 Gbit/s."""
    out = []
    for run, jitter in ((1, 0.0), (2, 0.1), (3, -0.1)):
        for rate, none, lz4, zstd, auto, codec in (
                ("10mbit", 1.2, 2.2, 2.6, 2.55, "zstd-3"),
                ("1gbit", 119, 200, 150, 180, "lz4"),
                ("loopback", 900, 580, 330, 880, "none")):
            out += [cell(rate, "none", none + jitter, run, "none"),
                    cell(rate, "lz4", lz4 + jitter, run, "lz4"),
                    cell(rate, "zstd-3", zstd + jitter, run, "zstd-3"),
                    cell(rate, "auto", auto + jitter, run, codec)]
    return out


def test_rates_give_labels_ceilings_and_a_bucket_for_tbf():
    """A shaped rate's TCP ceiling is 1448 of every 1500 bytes; tbf's bucket is a millisecond of
    the rate, never under 32kbit."""
    assert adaptive.rate_label("10mbit") == "10 Mbit/s"
    assert adaptive.rate_label("1gbit") == "1 Gbit/s"
    assert adaptive.rate_label("loopback") == "loopback"
    assert adaptive.ceiling("100mbit") == pytest.approx(12.0667, abs=1e-3)
    assert adaptive.ceiling("loopback") is None
    assert [adaptive.tbf_burst(r) for r in ("10mbit", "100mbit", "1gbit")] == [
        "32kbit", "100kbit", "1000kbit"]


def test_codec_names_are_shortened_for_the_table():
    """print statistics' codec, auto's prefix dropped, as the table shows it."""
    assert adaptive.short_codec("auto:zstd-level-3") == "zstd-3"
    assert adaptive.short_codec("zstd-level-9") == "zstd-9"
    assert adaptive.short_codec("lz4-acceleration-1") == "lz4"
    assert adaptive.short_codec("auto:none") == "none"
    assert adaptive.short_codec(None) == "?"


def test_verdict_per_column_compares_auto_with_the_best_fixed_choice():
    """Medians per cell; the best fixed choice may differ per column; >= 0.95 holds."""
    v = adaptive.verdicts(sample_results(), "disk", RATES, CHOICES)
    assert (v["10mbit"]["best"], v["1gbit"]["best"], v["loopback"]["best"]) == (
        "zstd-3", "lz4", "none")
    assert v["10mbit"]["ratio"] == pytest.approx(2.55 / 2.6)
    assert v["10mbit"]["holds"] and v["loopback"]["holds"]
    assert v["1gbit"]["ratio"] == pytest.approx(0.9) and v["1gbit"]["holds"] is False


def test_verdict_without_auto_or_with_failed_runs():
    """No auto result: no verdict. A failed run is left out of the median, not counted as 0."""
    results = [cell("10mbit", "lz4", 2.0), cell("10mbit", "lz4", None, run=2),
               cell("10mbit", "auto", None)]
    v = adaptive.verdicts(results, "disk", ["10mbit"], ["lz4", "auto"])["10mbit"]
    assert v["best"] == "lz4" and v["best_mb_s"] == 2.0
    assert v["ratio"] is None and v["holds"] is None
    table = "\n".join(adaptive.workload_table(results, "disk", ["10mbit"], ["lz4", "auto"]))
    assert "| `lz4` | 2.00 (1/2 runs) |" in table
    assert "| `auto` | failed |" in table


def test_table_shows_choices_by_rate_with_auto_codec_and_the_target():
    """Rows are choices, columns rates; auto's cell names the codec it ended on; the last rows
    are the best fixed choice, auto / best fixed and whether the target holds."""
    lines = adaptive.workload_table(sample_results(), "disk", RATES, CHOICES)
    assert lines[0] == ("| choice | 10 Mbit/s (link 1.21 MB/s) | 1 Gbit/s (link 120.67 MB/s)"
                        " | loopback |")
    rows = {line.split(" | ")[0].strip("| "): line for line in lines[2:]}
    assert rows["`zstd level 3`"] == "| `zstd level 3` | 2.60 | 150.00 | 330.00 |"
    assert rows["`auto`"] == "| `auto` | 2.55 (zstd-3) | 180.00 (lz4) | 880.00 (none) |"
    assert rows["best fixed"] == "| best fixed | zstd-3 2.60 | lz4 200.00 | none 900.00 |"
    assert rows["**auto / best fixed**"] == (
        "| **auto / best fixed** | **0.98** | **0.90** | **0.98** |")
    assert rows["auto ≥ 0.95 × best"] == "| auto ≥ 0.95 × best | holds | **MISSES** | holds |"


def test_auto_codec_note_counts_the_runs_only_when_they_differ():
    """One codec at the end of every run: its name; several: each with its count."""
    runs = [cell("1gbit", "auto", 9.0, codec="zstd-3") for _ in range(2)]
    assert adaptive._codec_note(runs) == "zstd-3"
    runs.append(cell("1gbit", "auto", 9.0, codec="lz4"))
    runs.append(cell("1gbit", "auto", None))
    assert adaptive._codec_note(runs) == "zstd-3 ×2, lz4 ×1"


def test_report_states_the_target_plainly(tmp_path):
    """The section says whether auto >= 0.95 x best fixed holds in every column, and where not."""
    env = dict(rates=RATES, workloads=["disk"], choices=CHOICES, warmup=5, window=12, runs=3,
               memlimit=None, started="2026-12-05 00:00:00 UTC", seconds=10, command="x",
               nproc=2, load="0.1", kernel="k", python="3.11", versions="v", cc="bbr",
               wmem="w", rmem="r", tree="t")
    text = adaptive.report(sample_results(), env, tmp_path / "b.md", None)
    assert "in every column: **does not hold**." in text
    assert ("- disk: auto ≥ 0.95 × the best fixed choice holds at 10 Mbit/s (0.98 of zstd-3)"
            in text)
    assert "**misses** at 1 Gbit/s (0.90 of lz4)" in text
    assert "Failed runs: none" in text
    env["choices"] = CHOICES[:3]
    text = adaptive.report([r for r in sample_results() if r["choice"] != "auto"], env,
                           tmp_path / "b.md", None)
    assert "`auto` was not measured" in text


def test_corpus_is_tar_streams_of_each_source_cut_at_equal_shares(tmp_path):
    """Each source gets an equal share of what is left; a short one leaves more to the next."""
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir()
    big.mkdir()
    (small / "a.txt").write_bytes(b"x" * 1000)
    for i in range(40):
        (big / f"f{i:02}").write_bytes(bytes([i]) * 10_000)
    path = tmp_path / "corpus.tar"
    parts = adaptive.build_corpus(path, 200_000, (str(small), str(big) + "*"))
    assert [p["source"] for p in parts] == [str(small), str(big) + "*"]
    assert parts[0]["bytes"] < 100_000  # all of small: a tar of one 1000-byte file
    assert parts[0]["bytes"] + parts[1]["bytes"] == 200_000 == path.stat().st_size
    with tarfile.open(path) as tar:  # it starts as small's tar stream
        assert tar.next().name.endswith("small")


def test_an_interrupt_waits_for_the_critical_section():
    """A signal inside critical() is raised as KeyboardInterrupt only once the section ends (its
    cleanup is registered by then); outside one it is raised at once."""
    interrupts = adaptive.Interrupts()
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.critical():
            interrupts._handler(2, None)
            steps.append("started and registered")
    assert steps == ["started and registered"]
    with pytest.raises(KeyboardInterrupt):
        interrupts._handler(2, None)
