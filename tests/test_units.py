"""Sizes and rates: one parser (drbdproxy.units) for drbd.conf, the control protocol and drbd-sim."""

from __future__ import annotations

import pytest

from drbdproxy.units import parse_rate, parse_size

K, M, G = 1 << 10, 1 << 20, 1 << 30


@pytest.mark.parametrize("text, size", [
    ("100", 100), ("100k", 100 * K), ("100K", 100 * K), ("128m", 128 * M),
    ("128M", 128 * M), ("1g", G), ("1G", G), ("8s", 4096), ("0", 0),
])
def test_drbd_grammar_like_drbd_utils(text, size):
    """drbd.conf sizes are binary, `s` is a 512-byte sector, a bare number is bytes (m_strtoll)."""
    assert parse_size(text, drbd=True) == size
    assert parse_size(text) == size  # the lenient grammar reads them the same


@pytest.mark.parametrize("text", ["1T", "100MB", "100MiB", "0x10", "-1", "on", "", " 1M", "1.5M"])
def test_drbd_grammar_refuses_what_drbdadm_refuses(text):
    """T, MB, MiB, hex, blanks and fractions are refused by drbdadm, so drbd=True refuses them."""
    with pytest.raises(ValueError, match="bad size"):
        parse_size(text, drbd=True)


@pytest.mark.parametrize("text, size", [
    ("1T", 1 << 40), ("100MB", 100 * M), ("100MiB", 100 * M), ("4kib", 4 * K), (" 16M ", 16 * M),
    ("16 M", 16 * M), ("2s", 1024),
])
def test_typed_sizes_take_what_people_write(text, size):
    """Command lines and the control protocol also take T, a B or iB suffix and blanks."""
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["12Q", "1.5M", "-1", "M", "1sB", "1MBs", "", "0x10"])
def test_bad_sizes_get_one_line(text):
    """Anything else is a one-line ValueError naming the text and the expected form."""
    with pytest.raises(ValueError) as caught:
        parse_size(text)
    assert str(caught.value) == f"bad size {text!r}: expected a number with an optional k/M/G suffix"


def test_minimum_is_checked_after_the_unit():
    """A minimum is in bytes: 1k passes a 1024 floor, 1023 does not, with its own message."""
    assert parse_size("1k", minimum=1024) == 1024
    with pytest.raises(ValueError, match=r"^bad size '1023': must be at least 1024 bytes$"):
        parse_size("1023", minimum=1024)


@pytest.mark.parametrize("text, rate", [("10M", 10 * M), ("10M/s", 10 * M), ("512k/S", 512 * K),
                                        ("0", 0)])
def test_rates_take_an_optional_per_second(text, rate):
    """A rate is a size with an optional /s; 0 means unlimited."""
    assert parse_rate(text) == rate


def test_a_bad_rate_says_rate():
    """A bad rate's message says a rate was expected, not a size."""
    with pytest.raises(ValueError, match=r"^bad rate 'fast': expected bytes/s"):
        parse_rate("fast")
