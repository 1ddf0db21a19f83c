"""The P8 benchmark's arithmetic: what it reads from ss, the goodput window, and the P8 ratio."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import p8report  # noqa: E402
import wansites  # noqa: E402

# Two sockets as `ss -tmiHn state established` printed them in namespace A during a P8 run
# (150 ms, 1 % loss): alice's bulk link (BBR, its send buffer at tcp_wmem's 4 MiB maximum and
# limiting it) and a socket on loopback.
SS = """\
0       3598280 10.77.0.1:7802  10.77.0.2:52897
\t skmem:(r0,rb131072,t0,tb4194304,f3512,w3719752,o0,bl0,d0) bbr wscale:10,10 rto:352 \
rtt:151.628/0.351 ato:40 mss:1448 pmtu:1500 rcvmss:536 advmss:1448 cwnd:2476 ssthresh:1322 \
bytes_sent:218028941 bytes_retrans:2423952 bytes_acked:213008725 bytes_received:491 \
bbr:(bw:92499568bps,mrtt:150,pacing_gain:1,cwnd_gain:2) send 189160208bps lastsnd:4 \
delivery_rate 91404800bps delivered:148252 app_limited busy:25924ms rwnd_limited:104ms(0.4%) \
sndbuf_limited:4044ms(15.6%) unacked:1793 retrans:15/1674 lost:15 sacked:1087 rcv_space:14480 \
rcv_ssthresh:64088 notsent:1002016 minrtt:150 snd_wnd:11105280
0       0       127.0.0.1:57811 127.0.0.1:7801
\t skmem:(r0,rb131072,t0,tb3939840,f0,w0,o0,bl0,d0) cubic wscale:10,10 rto:204 \
rtt:1.055/2.085 ato:40 mss:32768 cwnd:18 bytes_acked:841 bytes_received:880 busy:140ms \
rcv_space:65495 minrtt:0.004 snd_wnd:65536
"""


def test_parse_ss_reads_buffers_window_and_congestion_control():
    """parse_ss gives each socket's addresses, congestion control, skmem buffers, cwnd, bytes
    in flight and the busy/limited times ss prints."""
    link, local = wansites.parse_ss(SS)
    assert (link["local"], link["peer"]) == ("10.77.0.1:7802", "10.77.0.2:52897")
    assert link["cc"] == "bbr" and local["cc"] == "cubic"
    assert (link["tb"], link["rb"], link["w"]) == (4194304, 131072, 3719752)
    assert (link["cwnd"], link["mss"], link["unacked"]) == (2476, 1448, 1793)
    assert link["rtt_ms"] == 151.628 and link["notsent"] == 1002016
    assert (link["busy_ms"], link["sndbuf_limited_ms"], link["rwnd_limited_ms"]) == (
        25924, 4044, 104)
    assert link["retrans"] == 15 and link["bytes_acked"] == 213008725
    assert "sndbuf_limited_ms" not in local and local["tb"] == 3939840


def test_summarize_takes_the_limited_share_over_the_window_only():
    """The limited shares are the difference between the first and last sample over the busy
    time between them (ss counts from the socket's start), a limit ss omits counting as 0."""
    first = dict(busy_ms=10_000, sndbuf_limited_ms=4_000, cwnd=100, mss=1000, unacked=50,
                 tb=1 << 20)
    last = dict(busy_ms=12_000, sndbuf_limited_ms=4_500, cwnd=300, mss=1000, unacked=250,
                tb=4 << 20, cc="bbr")
    s = wansites.summarize([first, dict(busy_ms=11_000, cwnd=200, mss=1000), last])
    assert s["sndbuf_limited"] == pytest.approx(0.25)
    assert s["rwnd_limited"] == 0
    assert s["cwnd_bytes"] == 200_000 and s["inflight_max"] == 250_000
    assert s["sndbuf_max"] == 4 << 20 and s["cc"] == "bbr" and s["samples"] == 3
    assert wansites.summarize([]) == {}


def test_window_rate_counts_only_after_the_warmup():
    """Goodput is measured from the first progress sample after the warm-up to the last one;
    too few samples is an error, not a number."""
    points = [(100.0 + t, int(t * 5e6) if t < 2 else int(10e6 + (t - 2) * 12e6))
              for t in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)]
    assert wansites.window_rate(points, 100.0, 2.0) == pytest.approx(12.0)
    with pytest.raises(RuntimeError, match="too few"):
        wansites.window_rate(points, 100.0, 3.9)


def _cell(setup: str, goodput: float, ratio: float | None, run: int = 1) -> dict:
    return dict(run=run, host_cc="cubic", rtt=150.0, loss=1.0, setup=setup, goodput=goodput,
                ratio=ratio, ceiling=12.0, snd=dict(cc="cubic", cwnd_bytes=2e6,
                                                     sndbuf_limited=0.5),
                rcv=dict(rcvbuf_max=8e6))


def test_report_gives_p8_as_goodput_over_ceiling_times_ratio(tmp_path):
    """The P8 table divides the proxied goodput by link ceiling x compression ratio (the median
    of the runs), shows the direct baseline beside it, and the gain over it."""
    results = [_cell("direct", 0.12, None), _cell("proxy, link-cc bbr", 21.6, 2.0),
               _cell("proxy, link-cc bbr", 19.2, 2.0, run=2),
               _cell("proxy, link-cc cubic", 0.24, 2.0)]
    args = argparse.Namespace(window=8, warmup=3, img_dir=str(tmp_path), out=str(tmp_path / "b.md"))
    env = dict(started="now", load="0", seconds=1, command="p8", nproc=2, kernel="k",
               python="3", wmem=["4096", "16384", "4194304"], rmem=["4096", "131072", "33554432"])
    text = p8report.report(results, args, env)
    row = next(line for line in text.splitlines() if line.startswith("| 150 ms | 1 % |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2] == "0.12 (0.01)"  # direct, and its share of the ceiling
    assert cells[3] == "20.40 (19.20–21.60)"
    assert cells[5] == "0.85 (0.80–0.90)"  # 20.4 / (12 x 2)
    assert cells[6] == "170.0×"
    assert cells[8] == "0.01"  # 0.24 / 24
    # BDP: the ceiling back to the link rate (x 1500/1448), times 150 ms; cwnd 2 MB
    assert "| cubic | 150 ms | 1 % | direct | cubic | 1.86 | 2.00 |" in text


def test_mathis_bound_of_one_stream():
    """The one-stream bound the report holds the cubic link against: MSS/RTT x 1.22/sqrt(p),
    0.118 MB/s at 150 ms and 1 % loss with a 1448-byte MSS; none without loss."""
    assert p8report.mathis(150, 1) == pytest.approx(1448 / 0.15 * 1.22 / 0.1 / 1e6)
    assert round(p8report.mathis(150, 1), 3) == 0.118
    assert p8report.mathis(150, 0) is None
