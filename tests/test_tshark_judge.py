"""tshark's DRBD dissector, an independent judge, agrees with what drbd-sim says it sent."""

from __future__ import annotations

from collections import Counter

from capture import Capture, needs_tshark
from drbdproxy.drbd.packets import packet_name
from helpers import free_ports, sim_pair_args

pytestmark = needs_tshark


def test_tshark_decodes_a_sim_run_exactly_as_the_sims_count_it(sims, tmp_path):
    """Capture a sim-to-sim run: every packet is DRBD to tshark, none malformed, same counts."""
    p_port, s_port = free_ports(2)
    capture = Capture(tmp_path / "sim.pcap", [p_port, s_port])
    try:
        primary_args, secondary_args = sim_pair_args(
            p_port, s_port, "--size", "8M", "--block-size", "4k", "--epoch", "300"
        )
        secondary = sims(*secondary_args)
        primary = sims(*primary_args)
        (prc, p), (src, s) = primary.report(), secondary.report()
        assert (prc, src) == (0, 0), (p["error"], s["error"])
    finally:
        stderr = capture.stop()
    assert "dropped" not in stderr or " 0 packets dropped" in stderr or "(0.0%)" in stderr, stderr

    seen: Counter[str] = Counter()
    for (commands,) in capture.fields("drbd.command"):
        for value in commands.split(","):
            seen[packet_name(int(value, 16))] += 1
    sent = Counter(p["packets_sent"]) + Counter(s["packets_sent"])
    assert seen == sent
    assert sent["P_DATA"] == 2048 and seen["P_BARRIER"] == 7
    assert Counter(p["packets_received"]) + Counter(s["packets_received"]) == sent
    malformed = capture.fields("frame.number", display_filter="_ws.malformed || _ws.expert.severity >= error")
    assert malformed == []
