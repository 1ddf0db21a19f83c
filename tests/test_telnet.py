"""Telnet on a TCP control session, in memory: the banner, Ctrl-C, option refusals, bounds."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from zope.interface import alsoProvides

from drbdproxy import __version__
from drbdproxy.control.protocol import BANNER, MAX_LINE, ControlFactory
from drbdproxy.control.telnet import (
    DO,
    DONT,
    IAC,
    IP,
    SB,
    SE,
    TIMING_MARK,
    WILL,
    WONT,
    Answer,
    Event,
    TelnetFilter,
)
from test_control_protocol import FakeControl, Session

CTRL_C = bytes([IAC, IP, IAC, DO, TIMING_MARK])  # what telnet sends for Ctrl-C
WILL_TM = bytes([IAC, WILL, TIMING_MARK])
ECHO, NAWS, TTYPE = 1, 31, 24
HELLO = BANNER.encode() + b"\r\n"


def tcp_session(factory: ControlFactory) -> Session:
    """A session whose transport says it is TCP, as a real TCP control endpoint's does."""
    transport = StringTransport()
    alsoProvides(transport, ITCPTransport)
    return Session(factory, transport)


@pytest.fixture
def control() -> FakeControl:
    return FakeControl()


@pytest.fixture
def factory(control: FakeControl) -> ControlFactory:
    return ControlFactory(control, clock=Clock())


@pytest.fixture
def tcp(factory: ControlFactory) -> Session:
    s = tcp_session(factory)
    assert s.take() == HELLO
    yield s
    s.close()


# --- the filter -------------------------------------------------------------------------------

def test_ctrl_c_is_a_cancel_then_a_timing_mark_answer() -> None:
    """IAC IP then IAC DO TIMING-MARK: the typed text, a line cancel, and WILL TIMING-MARK."""
    assert TelnetFilter().feed(b"show ver" + CTRL_C) == [b"show ver", Event.CANCEL_LINE, Answer(WILL_TM)]


def test_options_are_refused_and_refusals_not_answered() -> None:
    """DO x -> WONT x, WILL x -> DONT x; DONT and WONT get no answer (no negotiation loop)."""
    data = bytes([IAC, DO, ECHO, IAC, WILL, NAWS, IAC, DONT, ECHO, IAC, WONT, NAWS])
    assert TelnetFilter().feed(data) == [Answer(bytes([IAC, WONT, ECHO])), Answer(bytes([IAC, DONT, NAWS]))]


def test_escaped_255_is_data_and_other_commands_vanish() -> None:
    """IAC IAC is one data byte 255, joined with the text around it; NOP, AYT, AO, BRK, GA vanish."""
    data = b"a" + bytes([IAC, IAC]) + b"b" + bytes([IAC, 241, IAC, 246, IAC, 245, IAC, 243, IAC, 249]) + b"c"
    assert TelnetFilter().feed(data) == [b"a\xffbc"]


def test_subnegotiation_is_skipped_whole() -> None:
    """IAC SB ... IAC SE, with an escaped 255 inside, leaves only the text around it."""
    data = b"sh" + bytes([IAC, SB, TTYPE, 0]) + b"xterm" + bytes([IAC, IAC, IAC, SE]) + b"ow\n"
    assert TelnetFilter().feed(data) == [b"show\n"]


def test_an_endless_subnegotiation_overruns_without_keeping_it() -> None:
    """A subnegotiation longer than the bound ends in OVERRUN; the filter keeps no input meanwhile."""
    f = TelnetFilter(max_subnegotiation=100)
    assert f.feed(bytes([IAC, SB]) + b"x" * 100) == []
    assert f.feed(b"x") == [Event.OVERRUN]
    assert f.feed(b"after") == [b"after"]


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=200).map(lambda b: b.replace(b"\xfa", b"")) | st.lists(
    st.sampled_from([b"abc", b"\n", CTRL_C, bytes([IAC, IAC]), bytes([IAC, DO, ECHO]), bytes([IAC]),
                     bytes([IAC, WILL]), bytes([IAC, SB, 1, 2]), bytes([IAC, SE])]), max_size=30
).map(b"".join), st.lists(st.integers(1, 7), max_size=40))
def test_items_do_not_depend_on_packet_boundaries(stream: bytes, sizes: list[int]) -> None:
    """Any stream, split anywhere: the same data, answers and events in the same order, and no
    more data bytes than came in."""
    whole = TelnetFilter().feed(stream)
    f, pieces, pos = TelnetFilter(), [], 0
    for size in sizes + [len(stream)]:
        pieces += f.feed(stream[pos : pos + size])
        pos += size
    assert TelnetFilter._merged(pieces) == whole
    assert sum(len(i) for i in whole if isinstance(i, bytes)) <= len(stream)


# --- the session --------------------------------------------------------------------------------

def test_tcp_session_starts_with_the_banner(factory: ControlFactory) -> None:
    """A TCP session's first line is the %hello control line, in telnet's CRLF."""
    s = tcp_session(factory)
    assert s.take() == f"%hello drbdproxy {__version__} control; type help, or quit to leave\r\n".encode()
    s.close()


def test_unix_session_has_no_banner_and_no_telnet(factory: ControlFactory) -> None:
    """On a UNIX socket nothing is said first, and a byte 255 stays data (an invalid UTF-8 line)."""
    s = Session(factory)
    assert s.take() == b""
    assert s.send(b"show" + CTRL_C + b"\n") == b"%error line is not valid UTF-8\n"
    s.close()


def test_no_banner_when_empty(control: FakeControl) -> None:
    """ControlFactory(banner="") greets nobody."""
    s = tcp_session(ControlFactory(control, clock=Clock(), banner=""))
    assert s.take() == b""
    s.close()


def test_ctrl_c_cancels_the_line_and_the_session_goes_on(tcp: Session, control: FakeControl) -> None:
    """telnet's Ctrl-C after typing half a command: WILL TIMING-MARK comes back at once (telnet
    stops discarding output), the half line never runs, the next line does."""
    assert tcp.send(b"del connection r0-b" + CTRL_C) == WILL_TM
    assert tcp.send(b"show version\r\n") == b"drbdproxy 0.1.0\r\n%ok\r\n"
    assert control.calls == [("version",)]


def test_ctrl_c_byte_by_byte(tcp: Session, control: FakeControl) -> None:
    """The same, every byte in a packet of its own."""
    out = b"".join(tcp.send(bytes([b])) for b in b"shutdown" + CTRL_C + b"show version\r\n")
    assert out == WILL_TM + b"drbdproxy 0.1.0\r\n%ok\r\n"
    assert control.calls == [("version",)]


def test_ctrl_c_keeps_the_lines_waiting_their_turn(tcp: Session, control: FakeControl) -> None:
    """While a command's reply is pending, Ctrl-C drops only the unfinished line: the complete
    lines sent before it still run, in order."""
    pending: Deferred[Any] = Deferred()
    control.results["set_memlimit"] = lambda name, size: pending
    out = tcp.send(b"set memlimit r0 1M\r\nshow version\r\nshutd" + CTRL_C)
    assert out == WILL_TM
    pending.callback(None)
    assert tcp.take() == b"%ok\r\ndrbdproxy 0.1.0\r\n%ok\r\n"
    assert [c[0] for c in control.calls] == ["set_memlimit", "version"]
    assert not tcp.transport.disconnecting


def test_refusals_on_the_session(tcp: Session) -> None:
    """A client's DO ECHO and WILL NAWS are refused on the wire; commands around them work."""
    data = b"sh" + bytes([IAC, DO, ECHO]) + b"ow ver" + bytes([IAC, WILL, NAWS]) + b"sion\r\n"
    assert tcp.send(data) == bytes([IAC, WONT, ECHO, IAC, DONT, NAWS]) + b"drbdproxy 0.1.0\r\n%ok\r\n"


def test_an_endless_subnegotiation_closes_the_session(tcp: Session) -> None:
    """A subnegotiation over MAX_LINE bytes is refused like a line too long: an error, then the
    session closes; what was sent of it was never kept."""
    with capturedLogs() as logs:
        out = tcp.send(bytes([IAC, SB, NAWS]) + b"\0" * (MAX_LINE - 1))  # MAX_LINE bytes skipped
        assert out == b"" and not tcp.transport.disconnecting
        assert tcp.protocol.clearLineBuffer() == b""
        assert tcp.send(b"\0" * 10) == b"%error telnet subnegotiation too long\r\n"
    assert tcp.transport.disconnecting
    assert any("subnegotiation too long" in e["log_format"] for e in logs)


def test_quit_before_telnet_commands_ends_it(tcp: Session) -> None:
    """After quit in the same packet, later telnet commands get no answer: the session is closing."""
    assert tcp.send(b"quit\r\n" + bytes([IAC, DO, ECHO])) == b"%ok\r\n"
    assert tcp.transport.disconnecting
