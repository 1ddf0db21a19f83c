"""Fuzzing the control socket: parse_command on hostile lines, ControlProtocol on hostile streams.

The command parser gets structure-aware lines (real keywords in any case, then tricky arguments:
huge numbers, Unicode digits, odd addresses, --options, END) joined by every kind of blank, and
arbitrary text. A ControlProtocol on a StringTransport, with a fake IProxyControl that answers
now, later (Deferreds), with warnings, refusals or crashes, gets arbitrary byte streams split at
random points; its replies are checked against a model of the framing in docs/control-protocol.md.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from zope.interface import implementer

from drbdproxy.spec import COMPRESSION_ON
from drbdproxy.control.commands import (
    TABLE,
    AddConnection,
    Command,
    CommandError,
    Help,
    Quit,
    SetMemlimit,
    SetOption,
    SetPlugin,
    Shutdown,
    help_lines,
    parse_command,
)
from drbdproxy.control.interface import ControlError, IProxyControl
from drbdproxy.control.protocol import MAX_LINE, ControlFactory, ControlProtocol

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- lines ------------------------------------------------------------------------------------

KEYWORDS = sorted({spelling for entry in TABLE for spelling in entry.spellings})
#: Every character str.split() treats as a blank, and a few it does not (NUL, ZWSP, BOM).
BLANKS = [" ", "\t", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\xa0", "\u1680",
          "\u2000", "\u2028", "\u2029", "\u202f", "\u3000", " " * 300, "\t \t"]
NOT_BLANKS = ["\x00", "\u200b", "\ufeff", "\x1b[2J"]
TRICKY = [
    "r0", "r0-bob-vm", "0", "1", "-1", "+1", "1M", "1MiB", "1mb", "12Q", "1e3", "0x10", "1.5M",
    "9" * 5000, "0" * 4400 + "1", "1" + "0" * 30 + "T", "١٢٣", "１２", "²", "٣M", "𝟗",
    "1.2.3.4:7789", "[fd00::1]:7789", "fd00::1:7789", "::1:1", "::1", ":7789", "1.2.3.4:",
    "1.2.3.4:0", "1.2.3.4:65536", "1.2.3.4:١٢", "1.2.3.4:²", "[::1]:" + "9" * 5000,
    "fe80::1%eth0:1", "fe80::1%" + "x" * 300 + ":1", "ipv4", "1.2.3.4:7789\x00",
    "--memlimit=1M", "--memlimit=", "--memlimit", "--=", "--", "---", "--MEMLIMIT=1m",
    "--bwlimit=1M/s", "--compression=on", "--ping-timeout=0", "--frob=1", "--memlimit=1M=2",
    "END", "end", "EnD", "none", "lz4", "level", "on", "off", "ON", "warning", "debug", "İ",
    "'", '"', "\\", "%ok", "%error", "%%", "x" * 5000,
]
words = st.one_of(st.sampled_from(TRICKY), st.sampled_from(NOT_BLANKS),
                  st.text(min_size=1, max_size=12).filter(lambda w: not w.isspace()))


def case_mangled(keyword: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(keyword), max_size=len(keyword)).map(
        lambda flips: "".join(c.upper() if f else c for c, f in zip(keyword, flips)))


@st.composite
def command_lines(draw) -> str:
    """A real keyword spelling (any case) and up to 10 tricky words, joined by any blanks."""
    keyword = draw(st.sampled_from(KEYWORDS).flatmap(case_mangled))
    parts = keyword.split(" ") + draw(st.lists(words, max_size=10))
    if draw(st.integers(0, 4)) == 0:
        parts = parts[: draw(st.integers(0, len(parts)))]  # truncated: a keyword prefix, or nothing
    blanks = st.sampled_from(BLANKS)
    line = "".join(draw(blanks) + p for p in parts) + draw(st.sampled_from(["", "\r", " ", "\x00"]))
    return line if draw(st.booleans()) else line.lstrip()


any_lines = st.one_of(command_lines(), st.text(max_size=200),
                      st.lists(st.sampled_from(BLANKS + NOT_BLANKS + ["a", "\r"]), max_size=40).map("".join))


def outcome(line: str) -> Command | tuple[str, str]:
    try:
        return parse_command(line)
    except CommandError as e:
        return ("error", str(e))


@FUZZ
@given(any_lines)
def test_parse_command_raises_only_command_error(line):
    """Any line, keyword-led or not (Unicode, control characters, NULs, \\r, 5000-character
    words, 4400-digit numbers, Unicode digits, runs of every kind of blank): parse_command returns
    a Command or raises CommandError with a message; the kind and amount of blanks between words
    never change the result; and what it accepts has sane values."""
    try:
        command = parse_command(line)
    except CommandError as e:
        assert str(e).strip()
    else:
        assert isinstance(command, Command)
        check_values(command)
    assert outcome(line) == outcome(" ".join(line.split()))


def check_values(command: Command) -> None:
    """The converters never let an out-of-range value through."""
    if isinstance(command, AddConnection):
        spec = command.spec
        for host, port in (spec.listen_inside, spec.connect_peer_outside, spec.listen_outside,
                           spec.connect_drbd):  # fmt: skip
            assert isinstance(host, str) and host and 0 < port < 65536
        assert all(isinstance(v, int) for v in spec.options.values())
    elif isinstance(command, SetMemlimit):
        assert command.size >= 1
    elif isinstance(command, SetOption):
        assert command.value >= 0 or command.option == "compression" and command.value == COMPRESSION_ON
    elif isinstance(command, SetPlugin):
        assert command.index >= 0 and (command.words is None or command.words)


# --- the session --------------------------------------------------------------------------------

BEHAVIOURS = ["ok", "warn", "refuse", "crash", "later", "later", "later-refuse"]
DATA_LINES = ["a line", "%looks like a terminator", "", "two\nlines", "%ok"]


@implementer(IProxyControl)
class FakeControl:
    """Every operation takes the next behaviour of ``script`` (cycling): answer now, with data
    lines or warnings; refuse (ControlError) or crash (RuntimeError) with a multi-line message; or
    answer later through a Deferred kept in ``pending``."""

    def __init__(self, script: list[str]) -> None:
        self.script = script or ["ok"]
        self.calls = 0
        self.pending: list[tuple[Deferred, str]] = []
        self.shutdowns = 0

    def next_behaviour(self) -> str:
        behaviour = self.script[self.calls % len(self.script)]
        self.calls += 1
        return behaviour

    def _answer(self, mutating: bool) -> Any:
        behaviour = self.next_behaviour()
        if behaviour == "refuse":
            raise ControlError("refused:\nno such\tthing")
        if behaviour == "crash":
            raise RuntimeError("boom\r\nbang")
        if behaviour.startswith("later"):
            d: Deferred = Deferred()
            self.pending.append((d, behaviour))
            return d
        if behaviour == "warn":
            return ["careful\nnow", "%w"]
        return None if mutating else DATA_LINES

    def fire_one(self) -> bool:
        if not self.pending:
            return False
        d, behaviour = self.pending.pop(0)
        if behaviour == "later-refuse":
            d.errback(ControlError("refused later"))
        else:
            d.callback(["late answer"])
        return True

    def add_connection(self, spec):
        return self._answer(True)

    def del_connection(self, name):
        return self._answer(True)

    def set_memlimit(self, name, size):
        return self._answer(True)

    def set_option(self, name, option, value):
        return self._answer(True)

    def set_plugin(self, name, index, words):
        return self._answer(True)

    def set_loglevel(self, level):
        return self._answer(True)

    def show(self):
        return self._answer(False)

    def proxy_settings(self, name):
        return self._answer(False)

    def memusage(self, human):
        return self._answer(False)

    def connections(self, human):
        return self._answer(False)

    def subconnections(self, human):
        return self._answer(False)

    def details(self):
        return self._answer(False)

    def statistics(self):
        return self._answer(False)

    def version(self):
        return self._answer(False)

    def shutdown(self):
        self.shutdowns += 1


def one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def expected_replies(stream: bytes, eof: bool, script: list[str]) -> tuple[list[tuple[bytes, bool]], str | None]:
    """The model: ([(terminator, reply uses \\r\\n)], why the session was closed, if it was).

    Complete lines are answered in order; blank ones get nothing; a line over MAX_LINE bytes (its
    \\r included) gets ``%error line too long`` and ends the session, as do quit and shutdown after
    their ``%ok``. At end of input a last unterminated line is answered too.
    """
    *lines, tail = stream.split(b"\n")
    if eof or len(tail) > MAX_LINE:
        lines.append(tail)
    replies: list[tuple[bytes, bool]] = []
    calls = 0
    for line in lines:
        if len(line) > MAX_LINE:
            replies.append((b"%error line too long", None))
            return replies, "too long"
        crlf = line.endswith(b"\r")
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            replies.append((b"%error line is not valid UTF-8", crlf))
            continue
        if not text:
            continue
        try:
            command = parse_command(text)
        except CommandError as e:
            replies.append((b"%error " + one_line(str(e)).encode("utf-8", "replace"), crlf))
            continue
        if isinstance(command, (Help, Quit, Shutdown)):
            replies.append((b"%ok", crlf))
            if not isinstance(command, Help):
                return replies, type(command).__name__.lower()
            continue
        behaviour = (script or ["ok"])[calls % len(script or ["ok"])]
        calls += 1
        terminator = {
            "refuse": b"%error refused: no such thing",
            "crash": b"%error internal error: RuntimeError: boom bang",
            "later-refuse": b"%error refused later",
        }.get(behaviour, b"%ok")
        replies.append((terminator, crlf))
    return replies, "eof" if eof else None


def parse_output(out: bytes) -> list[tuple[bytes, list[bytes]]]:
    """The session's output as replies: (terminator, [every line of the reply with its ending])."""
    assert out == b"" or out.endswith(b"\n"), "output ends in the middle of a line"
    replies, current = [], []
    for raw in out.split(b"\n")[:-1]:
        current.append(raw + b"\n")
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if line == b"%ok" or line.startswith(b"%error "):
            replies.append((line, current))
            current = []
        else:
            assert line.startswith((b"%warn ", b"%%")) or not line.startswith(b"%"), line
    assert current == [], f"lines after the last terminator: {current}"
    return replies


# --- streams --------------------------------------------------------------------------------

GOOD = ["show", "show version", "help", "list details", "print statistics", "show memusage",
        "set memlimit r0 128M", "set plugin r0 0 zstd level 3", "set plugin r0 1 END",
        "add connection r0 1.2.3.4:1 [::1]:2 ::1:3 10.0.0.1:4 --memlimit=1M --frob=2",
        "del connection r0", "set loglevel info", "SHOW HCONNECTIONS", "quit", "shutdown"]


@st.composite
def request_streams(draw) -> bytes:
    """Many lines (valid, fuzzed, arbitrary text or bytes, blank, near and over MAX_LINE bytes)
    with \\n or \\r\\n, and maybe an unterminated last line."""
    long_line = st.builds(
        lambda prefix, n: prefix + b"n" * max(0, n - len(prefix)),
        st.sampled_from([b"", b"show proxy-settings ", b"\xff", b"show "]),
        st.sampled_from([MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, MAX_LINE + 2, 6000]),
    )
    good = st.sampled_from(GOOD[:-2]).map(str.encode)
    line = st.one_of(
        good,
        good,
        command_lines().map(lambda s: s.encode("utf-8")),
        st.text(max_size=80).map(lambda s: s.encode("utf-8")),
        st.binary(max_size=80),
        st.sampled_from([b"", b"   ", b"\t", b"\r", b"\x00", b"\xc2\x85", b"\xe3\x80\x80", b"\xff\xfe"]),
        st.integers(0, 5).flatmap(lambda k: long_line if k == 0 else st.just(b"show version")),
    )
    parts = draw(st.lists(st.tuples(line, st.sampled_from([b"\n", b"\r\n"])), min_size=1, max_size=25))
    if draw(st.integers(1, 10)) == 5:  # now and then the session ends itself: quit or shutdown
        parts.insert(draw(st.integers(0, len(parts))), (draw(st.sampled_from([b"quit", b"SHUTDOWN"])), b"\n"))
    stream = b"".join(text + eol for text, eol in parts)
    if draw(st.booleans()):
        stream += draw(line)
    return stream


chunk_sizes = st.lists(st.one_of(st.integers(1, 8), st.integers(1, 3000)), max_size=30)
HELP_BYTES = sum(len(line.encode()) + 2 for line in help_lines()) + 8
#: Each reply: at most the help text (the longest fixed reply) or the line echoed twice in repr()
#: (at most 4 bytes per input byte each), plus a fixed allowance for framing and the fake's lines.
AMPLIFICATION, PER_LINE = 8, HELP_BYTES + 512


class Session:
    def __init__(self, control: FakeControl) -> None:
        self.factory = ControlFactory(control, clock=Clock())
        self.protocol: ControlProtocol = self.factory.buildProtocol(UNIXAddress(None))  # type: ignore[assignment]
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)


@FUZZ
@given(request_streams(), chunk_sizes, st.lists(st.sampled_from(BEHAVIOURS), max_size=8),
       st.sampled_from([None, "eof", "eof-while-waiting"]))
def test_session_answers_every_line_once_in_order(stream, sizes, script, eof):
    """Any byte stream, split anywhere, with an implementation that answers now or later, warns,
    refuses or crashes: nothing raises; every non-blank line gets exactly one terminator (%ok or
    %error MESSAGE), in order, each reply in the line ending its request used; data lines never
    look like terminators; the session closes only after an over-long line, quit, shutdown or end
    of input, and writes nothing after closing; the output stays within a fixed factor of the
    input. Later lines wait while a reply is pending (the session pauses its transport), also
    when the client ends its input meanwhile."""
    control = FakeControl(script)
    with capturedLogs():
        session = Session(control)
        transport = session.transport
        pos, closed_at = 0, None
        for size in sizes + [len(stream)]:
            while transport.producerState == "paused" and control.fire_one():
                pass
            if transport.disconnecting:
                closed_at = closed_at or len(transport.value())
                break
            assert transport.producerState == "producing"
            session.protocol.dataReceived(stream[pos : pos + size])
            pos += size
            if pos >= len(stream):
                break
        if eof == "eof-while-waiting" and not transport.disconnecting:
            session.protocol.readConnectionLost()  # the reply still pending must come all the same
        while control.fire_one():
            pass
        if eof == "eof" and not transport.disconnecting:
            session.protocol.readConnectionLost()
            while control.fire_one():
                pass
        if transport.disconnecting and closed_at is None:
            closed_at = len(transport.value())
        # Closed: more input is ignored.
        if transport.disconnecting:
            session.protocol.dataReceived(b"show\nhelp\n")
            assert len(transport.value()) == closed_at
        session.protocol.connectionLost()

    out = transport.value()
    replies = parse_output(out)
    expected, closer = expected_replies(stream, eof is not None, script)
    event(f"closed by: {closer}")
    event(f"replies: {min(len(replies), 10)}{'+' if len(replies) >= 10 else ''}")
    event("some answered later" if control.calls and any(b.startswith("later") for b in script[: control.calls])
          else "all answered at once")
    assert [t for t, _ in replies] == [t for t, _ in expected]
    for (_, lines), (_, crlf) in zip(replies, expected):
        if crlf is not None:
            assert all(line.endswith(b"\r\n") == crlf for line in lines), lines
    assert transport.disconnecting == (closer is not None)
    assert control.shutdowns == (closer == "shutdown")
    n_lines = stream.count(b"\n") + 1
    assert len(out) <= AMPLIFICATION * len(stream) + PER_LINE * n_lines


@FUZZ
@given(st.lists(st.sampled_from([b"help", b"frobnicate", b"show \x00\x01\x02", b"x" * 4000,
                                 b"add connection r0 " + b"\x01" * 1000 + b":1 1.1.1.1:1 ::1:1 ::1:1",
                                 b"set plugin r0 \x1b" + b"\x02" * 3000 + b" lz4"]), max_size=20))
def test_output_is_bounded_by_the_input(lines):
    """Lines that produce the longest replies there are (help, errors quoting control characters
    from the line): the output never exceeds 8 bytes per input byte plus a fixed amount per line."""
    stream = b"".join(line + b"\n" for line in lines)
    control = FakeControl(["ok"])
    with capturedLogs():
        session = Session(control)
        session.protocol.dataReceived(stream)
        session.protocol.connectionLost()
    out = session.transport.value()
    assert len(parse_output(out)) == len(lines)
    assert len(out) <= AMPLIFICATION * len(stream) + PER_LINE * len(lines)
