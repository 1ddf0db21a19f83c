"""Sizes and addresses as DRBD and drbd-proxy-ctl write them."""

from __future__ import annotations

import ipaddress
import re
import socket

# One size grammar for every part of drbdproxy: a decimal number and at most one binary unit.
# drbd-utils' m_strtoll reads a bare number as bytes here (memlimit's default unit), ``s`` as a
# 512-byte sector and k/M/G as binary multiples, and refuses anything else. Command lines and
# the control protocol also take what people type: T, a trailing B or iB (``128MiB``), blanks.
_SIZE = re.compile(r"^\s*(\d+)\s*(?:([sS])|([kKmMgGtT])([iI]?[bB])?)?\s*$")
_DRBD_SIZE = re.compile(r"^(\d+)([sSkKmMgG]?)$")
_UNITS = {"": 1, "s": 512, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, minimum: int = 0, drbd: bool = False) -> int:
    """``128M`` -> 134217728. Units are binary, as in DRBD; a bare number is bytes.

    ``drbd``: only what drbdadm itself accepts in drbd.conf (no T, no ``MB``/``MiB``, no
    blanks), so a file we accept is one drbdadm accepts too.

    :raises ValueError: a one-line message naming the bad text and what was expected.
    """
    m = (_DRBD_SIZE if drbd else _SIZE).match(text)
    if not m:
        units = "k, M or G" if drbd else "k/M/G"
        raise ValueError(f"bad size {text!r}: expected a number with an optional {units} suffix")
    unit = (m.group(2) or "") if drbd else (m.group(2) or m.group(3) or "")
    value = int(m.group(1)) * _UNITS[unit.lower()]
    if value < minimum:
        raise ValueError(f"bad size {text!r}: must be at least {minimum} bytes")
    return value


def parse_rate(text: str) -> int:
    """Bytes per second: a size with an optional ``/s`` (``10M``, ``10M/s``); 0 = unlimited."""
    body = text[:-2] if text.lower().endswith("/s") else text
    try:
        return parse_size(body)
    except ValueError:
        raise ValueError(f"bad rate {text!r}: expected bytes/s with an optional k/M/G suffix") from None


def format_size(n: float) -> str:
    """A short human-readable size: 1.5M, 12.0G, 512."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_drbd_size(n: int, unit: bool = False) -> str:
    """A size as drbd.conf writes it: ``128M`` when exact, else bytes.

    ``unit``: always with a unit, rounded down to whole KiB, for options whose bare number is
    not bytes (DRBD reads a bare ``congestion-fill`` in 512-byte sectors).
    """
    if unit:
        n -= n % 1024
    for suffix, size in (("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if n and n % size == 0:
            return f"{n // size}{suffix}"
    return f"{n // 1024}k" if unit else str(n)


def parse_address(text: str) -> tuple[str, int]:
    """``IP:PORT`` -> (ip, port). IPv6 with brackets or without (split at the last colon).

    An optional DRBD address family prefix (``ipv4 1.2.3.4:7789``) is accepted.

    :raises ValueError: with a message naming the bad text.
    """
    raw = text.strip()
    for family in ("ipv4 ", "ipv6 "):
        if raw.startswith(family):
            raw = raw[len(family) :].strip()
    host, sep, port = raw.rpartition(":")
    if not sep or not host:
        raise ValueError(f"bad address {text!r}: expected IP:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad address {text!r}: {host!r} is not an IP address") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad address {text!r}: port must be 1-65535")
    return str(ip), int(port)


def address_bytes(addr: tuple[str, int]) -> bytes:
    """An address as sockaddr-like bytes (IP, then port): the order DRBD 9 compares addresses in."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    return socket.inet_pton(family, addr[0]) + addr[1].to_bytes(2, "big")


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
