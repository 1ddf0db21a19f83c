"""The control session: reply framing, errors, session handling and flow control, in memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.testing import StringTransport
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from zope.interface import implementer
from zope.interface.verify import verifyObject

from drbdproxy.spec import ConnectionSpec
from drbdproxy.control.commands import help_lines
from drbdproxy.control.interface import ControlError, IProxyControl
from drbdproxy.control.protocol import (
    CLOSE_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_LINE,
    SHUTDOWN_GRACE,
    ControlFactory,
    ControlProtocol,
)

M = 1 << 20


def _json(as_json: bool) -> tuple[str, ...]:
    """How a call with -j is recorded: one more "json" argument (none without it)."""
    return ("json",) if as_json else ()


@implementer(IProxyControl)
class FakeControl:
    """Records every call; ``results[name]`` is returned, raised (an exception) or called."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.results: dict[str, Any] = {
            "show": ["r0-bob-vm 127.0.0.12:7788 192.168.23.2:7790"],
            "version": ["drbdproxy 0.1.0"],
        }

    def _call(self, name: str, *args: Any) -> Any:
        self.calls.append((name, *args))
        result = self.results.get(name)
        if isinstance(result, BaseException):
            raise result
        return result(*args) if callable(result) else result

    def add_connection(self, spec: ConnectionSpec) -> Any:
        return self._call("add_connection", spec)

    def del_connection(self, name: str) -> Any:
        return self._call("del_connection", name)

    def set_memlimit(self, name: str, size: int) -> Any:
        return self._call("set_memlimit", name, size)

    def set_option(self, name: str, option: str, value: int) -> Any:
        return self._call("set_option", name, option, value)

    def set_plugin(self, name: str, index: int, words: list[str] | None) -> Any:
        return self._call("set_plugin", name, index, words)

    def set_loglevel(self, level: str) -> Any:
        return self._call("set_loglevel", level)

    def show(self, as_json: bool = False) -> Any:
        return self._call("show", *_json(as_json))

    def proxy_settings(self, name: str, as_json: bool = False) -> Any:
        return self._call("proxy_settings", name, *_json(as_json))

    def memusage(self, human: bool, as_json: bool = False) -> Any:
        return self._call("memusage", human, *_json(as_json))

    def connections(self, human: bool, as_json: bool = False) -> Any:
        return self._call("connections", human, *_json(as_json))

    def subconnections(self, human: bool, as_json: bool = False) -> Any:
        return self._call("subconnections", human, *_json(as_json))

    def details(self, as_json: bool = False) -> Any:
        return self._call("details", *_json(as_json))

    def statistics(self, as_json: bool = False) -> Any:
        return self._call("statistics", *_json(as_json))

    def version(self, as_json: bool = False) -> Any:
        return self._call("version", *_json(as_json))

    def shutdown(self) -> Any:
        return self._call("shutdown")


class Session:
    """One ControlProtocol on a StringTransport, built by a factory like the daemon's."""

    def __init__(self, factory: ControlFactory, transport: StringTransport | None = None) -> None:
        self.factory = factory
        self.protocol: ControlProtocol = factory.buildProtocol(UNIXAddress(None))  # type: ignore[assignment]
        self.transport = StringTransport() if transport is None else transport
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> bytes:
        """Feed bytes, return (and clear) what the session wrote."""
        self.protocol.dataReceived(data)
        return self.take()

    def take(self) -> bytes:
        out = self.transport.value()
        self.transport.clear()
        return out

    def close(self) -> None:
        self.protocol.connectionLost()


@pytest.fixture
def control() -> FakeControl:
    return FakeControl()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def factory(control: FakeControl, clock: Clock) -> ControlFactory:
    return ControlFactory(control, clock=clock)


@pytest.fixture
def session(factory: ControlFactory) -> Session:
    s = Session(factory)
    yield s
    s.close()


def test_fake_provides_the_interface(control: FakeControl) -> None:
    """The fake used below implements every IProxyControl method with the declared signature."""
    assert verifyObject(IProxyControl, control)


def test_factory_refuses_an_object_without_the_interface() -> None:
    """ControlFactory checks its argument provides IProxyControl, failing at wiring time."""
    with pytest.raises(TypeError):
        ControlFactory(object())


def test_data_lines_then_ok(session: Session) -> None:
    """A read command's reply is its data lines, then the %ok terminator."""
    assert session.send(b"show\n") == b"r0-bob-vm 127.0.0.12:7788 192.168.23.2:7790\n%ok\n"


def test_mutating_command_reaches_the_implementation(session: Session, control: FakeControl) -> None:
    """add connection passes the parsed ConnectionSpec to add_connection and answers %ok."""
    line = b"add connection r0 fd00::1:7789 [fd00::2]:7789 10.0.0.1:7790 10.0.0.2:7789 --memlimit=128M\n"
    assert session.send(line) == b"%ok\n"
    assert control.calls == [("add_connection", ConnectionSpec(
        "r0", ("fd00::1", 7789), ("fd00::2", 7789), ("10.0.0.1", 7790), ("10.0.0.2", 7789),
        {"memlimit": 128 * M}))]


@pytest.mark.parametrize(("line", "call"), [
    (b"del connection r0", ("del_connection", "r0")),
    (b"set memlimit r0 100M", ("set_memlimit", "r0", 100 * M)),
    (b"set bwlimit r0 10M", ("set_option", "r0", "bwlimit", 10 * M)),
    (b"set plugin r0 0 lz4 level 9", ("set_plugin", "r0", 0, ["lz4", "level", "9"])),
    (b"set plugin r0 1 END", ("set_plugin", "r0", 1, None)),
    (b"set loglevel debug", ("set_loglevel", "debug")),
    (b"show proxy-settings r0", ("proxy_settings", "r0")),
    (b"show memusage", ("memusage", False)),
    (b"list hconnections", ("connections", True)),
    (b"show subconnections", ("subconnections", False)),
    (b"list details", ("details",)),
    (b"print details", ("details",)),
    (b"list connections -j", ("connections", False, "json")),
    (b"show proxy-settings r0 --json", ("proxy_settings", "r0", "json")),
    (b"print statistics -j", ("statistics", "json")),
    (b"print statistics", ("statistics",)),
    (b"show version", ("version",)),
])
def test_each_command_reaches_its_operation(session: Session, control: FakeControl,
                                            line: bytes, call: tuple[Any, ...]) -> None:
    """Every command calls exactly its IProxyControl operation with the converted arguments."""
    assert session.send(line + b"\n").endswith(b"%ok\n")
    assert control.calls == [call]


def test_help_is_answered_from_the_command_table(session: Session, control: FakeControl) -> None:
    """help needs no implementation: its data lines are the command table's help lines."""
    expected = "".join(line + "\n" for line in help_lines()) + "%ok\n"
    assert session.send(b"help\n") == expected.encode()
    assert control.calls == []


def test_parse_warning_comes_before_ok(session: Session) -> None:
    """An unknown --opt of add connection is not an error: a %warn line precedes %ok."""
    out = session.send(b"add connection r0 1.1.1.1:1 1.1.1.1:2 1.1.1.1:3 1.1.1.1:4 --frob=1\n")
    assert out == b"%warn add connection: unknown option --frob=1 ignored\n%ok\n"


def test_implementation_warnings_are_sent(session: Session, control: FakeControl) -> None:
    """Warnings returned by a mutating operation are sent as %warn lines before %ok."""
    control.results["set_memlimit"] = ["lowering applies as the buffer drains"]
    assert session.send(b"set memlimit r0 1M\n") == b"%warn lowering applies as the buffer drains\n%ok\n"


def test_percent_data_lines_are_escaped(session: Session, control: FakeControl) -> None:
    """A data line starting with % gets one more %, so no data line can look like a terminator."""
    control.results["statistics"] = ["%ok", "%error x", "%%x", "50%", "", "a\nb"]
    out = session.send(b"print statistics\n")
    assert out == b"%%ok\n%%error x\n%%%x\n50%\n\na\nb\n%ok\n"


def test_control_error_becomes_error_reply(session: Session, control: FakeControl) -> None:
    """A ControlError from the implementation is answered %error with its message."""
    control.results["del_connection"] = ControlError("no connection 'r9'")
    assert session.send(b"del connection r9\n") == b"%error no connection 'r9'\n"


def test_unknown_command_keeps_the_session_usable(session: Session) -> None:
    """Unknown and malformed lines get %error and the next command on the session still works."""
    out = session.send(b"frobnicate\nset memlimit r0 12Q\nshow version\n")
    assert out == (b"%error unknown command 'frobnicate' (try help)\n"
                   b"%error set memlimit: bad size '12Q': expected a number with an optional k/M/G suffix\n"
                   b"drbdproxy 0.1.0\n%ok\n")
    assert not session.transport.disconnecting


def test_invalid_utf8_is_an_error(session: Session) -> None:
    """Bytes that are not UTF-8 get %error, not an exception out of the protocol."""
    assert session.send(b"show \xff\xfe\nshow version\n") == (
        b"%error line is not valid UTF-8\ndrbdproxy 0.1.0\n%ok\n")


def test_blank_lines_get_no_reply(session: Session, control: FakeControl) -> None:
    """Empty and whitespace-only lines are ignored without any reply."""
    assert session.send(b"\n   \n\r\n\t\r\n") == b""
    assert control.calls == []


def test_crlf_lines_are_accepted_and_mirrored(session: Session) -> None:
    """Telnet's \\r\\n line ends work, and the reply uses them too."""
    assert session.send(b"show version\r\n") == b"drbdproxy 0.1.0\r\n%ok\r\n"
    assert session.send(b"show version\n") == b"drbdproxy 0.1.0\n%ok\n"


def test_replies_do_not_depend_on_packet_boundaries(factory: ControlFactory) -> None:
    """The same byte stream gives the same replies whether it arrives whole or byte by byte."""
    stream = b"show\r\nadd connection r0 ::1:1 ::1:2 ::1:3 ::1:4 --x=1\nfrob\n\nset plugin r0 1 end\n"
    whole = Session(factory)
    expected = whole.send(stream)
    for size in (1, 2, 3, 7):
        s = Session(factory)
        out = b"".join(s.send(stream[i:i + size]) for i in range(0, len(stream), size))
        assert out == expected, size
        s.close()
    whole.close()


def test_overlong_line_closes_only_that_session(factory: ControlFactory) -> None:
    """A line over MAX_LINE gets '%error line too long' and that session is closed; others go on."""
    a, b = Session(factory), Session(factory)
    assert a.send(b"x" * (MAX_LINE + 1) + b"\nshow version\n") == b"%error line too long\n"
    assert a.transport.disconnecting
    assert b.send(b"show version\n") == b"drbdproxy 0.1.0\n%ok\n"
    assert not b.transport.disconnecting
    a.close()
    b.close()


def test_overlong_partial_line_is_refused_before_its_end(session: Session) -> None:
    """Input without a line end is not buffered past MAX_LINE: the session is closed at once."""
    assert session.send(b"y" * (MAX_LINE + 2)) == b"%error line too long\n"
    assert session.transport.disconnecting


def test_line_of_max_length_is_accepted(session: Session) -> None:
    """A command exactly MAX_LINE bytes long is still parsed (drbdadm's buffer is 4096 bytes)."""
    line = b"show proxy-settings " + b"n" * (MAX_LINE - len(b"show proxy-settings "))
    assert len(line) == MAX_LINE
    assert session.send(line + b"\n") == b"%ok\n"


def test_quit_replies_ok_and_closes(session: Session, control: FakeControl) -> None:
    """quit answers %ok, closes the session, and later lines in the same packet are not run."""
    assert session.send(b"quit\nshow\n") == b"%ok\n"
    assert session.transport.disconnecting
    assert control.calls == []


def test_shutdown_replies_before_stopping_the_daemon(session: Session, control: FakeControl) -> None:
    """shutdown writes %ok and closes the session; shutdown() runs once the reply has gone out."""
    control.results["shutdown"] = lambda: session.transport.value()
    assert session.send(b"shutdown\n") == b"%ok\n"
    assert session.transport.disconnecting
    assert control.calls == []
    session.close()
    assert control.calls == [("shutdown",)]
    session.close()
    assert control.calls == [("shutdown",)]


def test_shutdown_happens_even_if_the_client_never_reads(session: Session, control: FakeControl,
                                                         clock: Clock) -> None:
    """If the %ok cannot be delivered, shutdown() still runs after SHUTDOWN_GRACE seconds, once."""
    session.send(b"shutdown\n")
    clock.advance(SHUTDOWN_GRACE - 0.1)
    assert control.calls == []
    clock.advance(0.1)
    assert control.calls == [("shutdown",)]
    session.close()
    assert control.calls == [("shutdown",)]


def test_implementation_exception_is_logged_and_answered(session: Session, control: FakeControl) -> None:
    """An unexpected exception becomes '%error internal error: ...', is logged as a failure with the
    command as a structured field, and the session stays usable."""
    control.results["connections"] = ZeroDivisionError("division by zero")
    with capturedLogs() as events:
        out = session.send(b"list connections\nshow version\n")
    assert out == (b"%error internal error: ZeroDivisionError: division by zero\n"
                   b"drbdproxy 0.1.0\n%ok\n")
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1
    assert failures[0]["log_format"] == "control command {command} failed"
    assert failures[0]["command"] == "list connections"
    assert failures[0]["log_failure"].check(ZeroDivisionError)


def test_failing_shutdown_is_logged_not_raised(session: Session, control: FakeControl) -> None:
    """An exception from the implementation's shutdown() is logged, never raised into the reactor."""
    control.results["shutdown"] = RuntimeError("boom")
    with capturedLogs() as events:
        session.send(b"shutdown\n")
        session.close()
    assert [e["log_failure"].value.args for e in events if "log_failure" in e] == [("boom",)]


def test_mutations_are_logged_with_structured_fields(session: Session) -> None:
    """Each successful mutating command produces one log event carrying the command as a field."""
    with capturedLogs() as events:
        session.send(b"set memlimit r0 1M\nshow\n")
    assert [(e["log_format"], e["command"]) for e in events] == [("control: {command}", "set memlimit r0 1M")]


def test_deferred_result_holds_later_commands(session: Session, control: FakeControl) -> None:
    """An operation returning a Deferred is answered when it fires; pipelined commands wait, reading
    from the client is paused meanwhile, and replies stay in order."""
    pending: Deferred[Any] = Deferred()
    control.results["set_memlimit"] = lambda name, size: pending
    assert session.send(b"set memlimit r0 1M\nshow version\n") == b""
    assert session.transport.producerState == "paused"
    assert control.calls == [("set_memlimit", "r0", M)]
    pending.callback(["applied"])
    assert session.take() == b"%warn applied\n%ok\ndrbdproxy 0.1.0\n%ok\n"
    assert session.transport.producerState == "producing"


def test_failed_deferred_is_an_error_reply(session: Session, control: FakeControl) -> None:
    """A Deferred failing with ControlError is answered %error with its message."""
    control.results["del_connection"] = lambda name: fail(ControlError(f"no connection {name!r}"))
    assert session.send(b"del connection r7\n") == b"%error no connection 'r7'\n"


def test_client_gone_while_command_runs(session: Session, control: FakeControl) -> None:
    """If the client disconnects before a Deferred result fires, the reply is dropped quietly."""
    pending: Deferred[Any] = Deferred()
    control.results["show"] = lambda: pending
    session.send(b"show\n")
    session.close()
    pending.callback(["late"])
    assert session.take() == b""


def test_registered_as_streaming_producer(session: Session) -> None:
    """The session registers itself as its transport's streaming producer (for write backpressure)."""
    assert session.transport.producer is session.protocol
    assert session.transport.streaming is True


def test_full_write_buffer_pauses_reading(session: Session, control: FakeControl) -> None:
    """While the transport says its write buffer is full, no command is read or answered."""
    session.protocol.pauseProducing()  # what the transport does above its buffer limit
    assert session.transport.producerState == "paused"
    assert session.send(b"show version\nshow version\n") == b""
    assert control.calls == []
    session.protocol.resumeProducing()
    assert session.take() == b"drbdproxy 0.1.0\n%ok\n" * 2
    assert session.transport.producerState == "producing"


def test_pause_reasons_are_arbitrated(session: Session, control: FakeControl) -> None:
    """A reply arriving while the write buffer is full does not resume reading; both must clear."""
    pending: Deferred[Any] = Deferred()
    control.results["show"] = lambda: pending
    session.send(b"show\nshow version\n")
    session.protocol.pauseProducing()
    pending.callback(["r0"])
    assert session.transport.producerState == "paused"
    assert session.take() == b"r0\n%ok\n"
    assert control.calls == [("show",)]
    session.protocol.resumeProducing()
    assert session.take() == b"drbdproxy 0.1.0\n%ok\n"


def test_end_of_input_answers_the_last_line_then_closes(factory: ControlFactory) -> None:
    """When the client half-closes, its last line (even without a line end) is answered, then closed."""
    s = Session(factory)
    assert IHalfCloseableProtocol.providedBy(s.protocol)
    assert s.send(b"show version\nshow version") == b"drbdproxy 0.1.0\n%ok\n"
    s.protocol.readConnectionLost()
    assert s.take() == b"drbdproxy 0.1.0\n%ok\n"
    assert s.transport.disconnecting
    s.close()


def test_end_of_input_waits_for_a_pending_reply(session: Session, control: FakeControl) -> None:
    """A half-close while a command runs closes the session only after that reply is written."""
    pending: Deferred[Any] = Deferred()
    control.results["show"] = lambda: pending
    session.send(b"show\n")
    session.protocol.readConnectionLost()
    assert not session.transport.disconnecting
    pending.callback(["r0"])
    assert session.take() == b"r0\n%ok\n"
    assert session.transport.disconnecting


def test_idle_session_times_out(session: Session, clock: Clock) -> None:
    """A session that sends nothing for the idle timeout is aborted; any input restarts the clock."""
    clock.advance(IDLE_TIMEOUT - 1)
    session.send(b"sh")
    clock.advance(IDLE_TIMEOUT - 1)
    assert not session.transport.disconnecting
    clock.advance(1)
    assert session.transport.disconnected


def test_a_silent_session_is_dropped_at_30_seconds_by_default(control: FakeControl, clock: Clock) -> None:
    """With the default idle timeout (the daemon's), a client that connects and sends nothing is
    cut off at 30 s, not before, and its slot is free again."""
    assert IDLE_TIMEOUT == 30.0
    factory = ControlFactory(control, clock=clock, max_sessions=1)
    silent = Session(factory)
    clock.advance(29.9)
    assert not silent.transport.disconnecting and not silent.transport.disconnected
    assert Session(factory).take() == b"%error too many control sessions\n"
    clock.advance(0.1)
    assert silent.transport.disconnected
    silent.close()  # what the transport reports after the abort
    assert Session(factory).send(b"show version\n") == b"drbdproxy 0.1.0\n%ok\n"


def test_connection_lost_cancels_the_idle_timer(factory: ControlFactory, clock: Clock) -> None:
    """Closing a session leaves no pending timer behind."""
    s = Session(factory)
    assert clock.getDelayedCalls()
    s.close()
    assert clock.getDelayedCalls() == []


def test_session_limit(control: FakeControl, clock: Clock) -> None:
    """Beyond max_sessions a new session is answered %error and closed; a freed slot is reusable."""
    factory = ControlFactory(control, clock=clock, max_sessions=1)
    first = Session(factory)
    second = Session(factory)
    assert second.take() == b"%error too many control sessions\n"
    assert second.transport.disconnecting
    second.close()
    first.close()
    third = Session(factory)
    assert third.send(b"show version\n") == b"drbdproxy 0.1.0\n%ok\n"
    third.close()


# --- closing within a bound -------------------------------------------------------------------

BOUND = 3.0  # the tests' close_timeout: a binary fraction, so the clock lands on it exactly


class RecordingTransport(StringTransport):
    """A StringTransport that records its close calls in order and, like every StringTransport,
    never reports the connection lost: a close ends only if the session aborts it.

    With ``full`` set every write overfills the write buffer: the registered streaming producer
    is paused, as a real transport pauses it above its buffer limit when the client does not read.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.full = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.full:
            self.fill()

    def fill(self) -> None:
        """The write buffer is over its limit: pause the registered streaming producer."""
        if self.producer is not None and self.streaming:
            self.calls.append("pauseProducer")
            self.producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self.calls.append("unregisterProducer")
        super().unregisterProducer()

    def loseConnection(self) -> None:
        self.calls.append("loseConnection")
        super().loseConnection()

    def abortConnection(self) -> None:
        self.calls.append("abortConnection")
        self.disconnecting = self.disconnected = True


@dataclass(frozen=True)
class CloseCase:
    """One way a session closes: ``start`` opens a session on the transport and makes it close;
    with ``stalled`` the client has stopped reading (where ``pauses``, a paused producer shows it)."""

    start: Callable[[ControlFactory, RecordingTransport, bool], Session]
    last_words: bytes
    pauses: bool = True


def _by_line(line: bytes) -> Callable[[ControlFactory, RecordingTransport, bool], Session]:
    def start(factory: ControlFactory, transport: RecordingTransport, stalled: bool) -> Session:
        s = Session(factory, transport)
        transport.full = stalled  # the reply is what overfills the buffer
        s.protocol.dataReceived(line)
        return s
    return start


def _by_end_of_input(factory: ControlFactory, transport: RecordingTransport, stalled: bool) -> Session:
    # A producer paused before the close would hold the last reply (and the close) until the
    # client reads again; the stall here is the loss that never comes.
    s = Session(factory, transport)
    s.protocol.dataReceived(b"show version")
    s.protocol.readConnectionLost()
    return s


def _by_reading_side_gone(factory: ControlFactory, transport: RecordingTransport, stalled: bool) -> Session:
    s = Session(factory, transport)
    if stalled:
        transport.fill()  # the buffer was full already when the client shut its reading side
    s.protocol.writeConnectionLost()
    return s


def _by_refusal(factory: ControlFactory, transport: RecordingTransport, stalled: bool) -> Session:
    factory.max_sessions = 0
    transport.full = stalled  # no producer to pause: a refused session never registers one
    return Session(factory, transport)


CLOSES = {
    "quit": CloseCase(_by_line(b"quit\nshow\n"), b"%ok\n"),
    "shutdown": CloseCase(_by_line(b"shutdown\n"), b"%ok\n"),
    "line-too-long": CloseCase(_by_line(b"x" * (MAX_LINE + 1) + b"\n"), b"%error line too long\n"),
    "end-of-input": CloseCase(_by_end_of_input, b"drbdproxy 0.1.0\n%ok\n", pauses=False),
    "reading-side-gone": CloseCase(_by_reading_side_gone, b""),
    "refused": CloseCase(_by_refusal, b"%error too many control sessions\n", pauses=False),
}


@pytest.fixture
def bounded(control: FakeControl, clock: Clock) -> ControlFactory:
    return ControlFactory(control, clock=clock, close_timeout=BOUND)


def test_close_timeout_defaults_to_a_few_seconds(control: FakeControl) -> None:
    """ControlFactory's close_timeout defaults to CLOSE_TIMEOUT, 5 s; the keyword overrides it."""
    assert CLOSE_TIMEOUT == 5.0
    assert ControlFactory(control).close_timeout == CLOSE_TIMEOUT
    assert ControlFactory(control, close_timeout=BOUND).close_timeout == BOUND


@pytest.mark.parametrize("case", CLOSES.values(), ids=CLOSES.keys())
def test_close_writes_the_reply_then_unregisters_then_loses(bounded: ControlFactory, clock: Clock,
                                                           case: CloseCase) -> None:
    """Every closing path writes its reply first, then unregisters the session as producer, then
    calls loseConnection() (which a registered, paused producer would hold up forever), and does not
    abort a client that reads: the abort waits for the bound."""
    transport = RecordingTransport()
    s = case.start(bounded, transport, False)
    assert transport.value() == case.last_words
    assert transport.calls == ["unregisterProducer", "loseConnection"]
    assert transport.producer is None
    assert transport.disconnecting and not transport.disconnected
    s.close()


@pytest.mark.parametrize("case", CLOSES.values(), ids=CLOSES.keys())
def test_client_that_does_not_read_is_aborted_at_the_bound(bounded: ControlFactory, clock: Clock,
                                                          case: CloseCase) -> None:
    """A client that stopped reading (its session's producer paused by a full buffer, and the
    connection never lost) is aborted exactly close_timeout seconds after the close, not before;
    the session then leaves no timer behind."""
    transport = RecordingTransport()
    s = case.start(bounded, transport, True)
    assert transport.value() == case.last_words
    expected = ["unregisterProducer", "loseConnection"]
    assert transport.calls == (["pauseProducer"] + expected if case.pauses else expected)
    clock.advance(BOUND - 0.5)
    assert "abortConnection" not in transport.calls
    assert not transport.disconnected
    clock.advance(0.5)
    assert transport.calls[-1] == "abortConnection"
    assert transport.calls.count("abortConnection") == 1
    assert transport.disconnected
    s.close()  # what the transport reports after the abort
    clock.advance(IDLE_TIMEOUT)
    assert transport.calls.count("abortConnection") == 1
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("case", CLOSES.values(), ids=CLOSES.keys())
def test_normal_close_cancels_the_abort_timer(bounded: ControlFactory, clock: Clock, case: CloseCase) -> None:
    """While closing, the only timers are the abort at the bound (and shutdown's grace): the idle
    timer is gone. A close that completes (connectionLost) cancels the abort: nothing stays pending
    on the clock and nothing is aborted later."""
    transport = RecordingTransport()
    s = case.start(bounded, transport, False)
    pending = sorted(call.getTime() for call in clock.getDelayedCalls())
    assert pending == ([SHUTDOWN_GRACE, BOUND] if case is CLOSES["shutdown"] else [BOUND])
    s.close()
    assert clock.getDelayedCalls() == []
    clock.advance(BOUND)
    assert "abortConnection" not in transport.calls


def test_default_bound_is_close_timeout(factory: ControlFactory, clock: Clock) -> None:
    """Without close_timeout, a client that does not read its quit reply is aborted after
    CLOSE_TIMEOUT seconds, not before."""
    transport = RecordingTransport()
    s = CLOSES["quit"].start(factory, transport, True)
    clock.advance(CLOSE_TIMEOUT - 0.5)
    assert not transport.disconnected
    clock.advance(0.5)
    assert transport.disconnected
    s.close()


def test_idle_timeout_aborts_at_once(bounded: ControlFactory, clock: Clock) -> None:
    """The idle timeout is no graceful close: it aborts straight away, without loseConnection()
    first and without arming the close bound."""
    transport = RecordingTransport()
    s = Session(bounded, transport)
    clock.advance(IDLE_TIMEOUT)
    assert transport.calls == ["abortConnection"]
    assert clock.getDelayedCalls() == []
    s.close()
    assert clock.getDelayedCalls() == []


def test_later_lines_and_closes_do_nothing_while_closing(bounded: ControlFactory, clock: Clock,
                                                         control: FakeControl) -> None:
    """Once a close has begun, further input, an end of input or a lost reading side neither runs
    commands nor writes nor starts a second close or timer."""
    transport = RecordingTransport()
    s = CLOSES["quit"].start(bounded, transport, False)
    s.protocol.dataReceived(b"shutdown\nshow\n")
    s.protocol.readConnectionLost()
    s.protocol.writeConnectionLost()
    assert control.calls == []
    assert transport.value() == b"%ok\n"
    assert transport.calls == ["unregisterProducer", "loseConnection"]
    assert len(clock.getDelayedCalls()) == 1
    s.close()
