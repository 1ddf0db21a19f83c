"""The packet scanner counts exactly what the full decoder decodes, whatever the chunking."""

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from drbdproxy.drbd.decoder import PacketDecoder
from drbdproxy.drbd.scanner import PacketScanner
from test_drbd_decoder import STREAM


def expected() -> Counter:
    return Counter(p.name for p in PacketDecoder().feed(STREAM))


def scan(sizes) -> PacketScanner:
    scanner = PacketScanner()
    pos = 0
    for size in sizes:
        scanner.feed(STREAM[pos : pos + size])
        pos += size
    scanner.feed(STREAM[pos:])
    return scanner


def test_one_shot_counts_match_the_decoder():
    """Fed at once, the scanner's per-type counts equal the decoder's packets."""
    assert scan([]).counts == expected()


def test_byte_at_a_time_counts_match():
    """Headers split at every possible byte are still counted once each."""
    scanner = PacketScanner()
    for i in range(len(STREAM)):
        scanner.feed(STREAM[i : i + 1])
    assert scanner.counts == expected() and scanner.opaque is None


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=70000), max_size=60))
def test_random_chunking_counts_match(sizes):
    """Any chunking gives the same counts."""
    assert scan(sizes).counts == expected()


def test_a_stream_that_stops_being_drbd_becomes_opaque():
    """After a DRBD initial packet, random bytes (like DRBD 9 with kTLS): counting stops there."""
    scanner = PacketScanner()
    scanner.feed(bytes.fromhex("83740267fff20000"))
    scanner.feed(b"\x16\x03\x01\x02\x00" + bytes(200))  # a TLS ClientHello
    scanner.feed(STREAM)
    assert scanner.counts == Counter({"P_INITIAL_DATA": 1})
    assert scanner.opaque is not None and "magic" in scanner.opaque and "offset 8" in scanner.opaque
