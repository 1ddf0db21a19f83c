"""The control socket: a thin ``LineReceiver`` over :class:`ControlDispatcher`.

Reply framing (``docs/control-protocol.md``): zero or more data lines, then exactly one terminator,
``%ok`` or ``%error MESSAGE``. Warnings come as ``%warn MESSAGE`` lines before the terminator. A
data line that begins with ``%`` is sent with one more ``%`` in front, so a line that begins with
a single ``%`` is always a control line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from drbdproxy import __version__
from drbdproxy.relay.closing import BoundedClose
from drbdproxy.relay.sockets import IStreamTransport
from drbdproxy.admin.logs import logger
from drbdproxy.control.commands import Action, Command, CommandError, parse_command
from drbdproxy.control.interface import ControlError, IProxyControl
from drbdproxy.control.telnet import Answer, Event, TelnetFilter

MAX_LINE = 4096
IDLE_TIMEOUT = 30.0  # seconds without input before a session is dropped: forgotten sessions free their slot
MAX_SESSIONS = 64
SHUTDOWN_GRACE = 2.0  # seconds the ``%ok`` of ``shutdown`` may take to reach the client
CLOSE_TIMEOUT = 5.0  # seconds a closing session may take to deliver its last bytes before it is aborted
#: Greets a TCP session (someone at telnet): a control line, which clients ignore (see the module doc).
BANNER = f"%hello drbdproxy {__version__} control; type help, or quit to leave"


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


def _text_lines(result: Any) -> list[str]:
    """An implementation's result (None, a str or an iterable of str) as single lines."""
    if result is None:
        return []
    items: Iterable[Any] = [result] if isinstance(result, str) else result
    lines: list[str] = []
    for item in items:
        lines.extend(str(item).splitlines() or [""])
    return lines


@dataclass(frozen=True)
class Reply:
    """One command's reply, before framing."""

    lines: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    error: str | None = None
    action: Action = Action.REPLY

    def framed(self) -> list[str]:
        """The reply's lines on the wire (without line ends), terminator last."""
        out = [("%" + line) if line.startswith("%") else line for line in self.lines]
        out += [f"%warn {_one_line(w)}" for w in self.warnings]
        out.append("%ok" if self.error is None else f"%error {_one_line(self.error)}")
        return out

    def encode(self, eol: bytes = b"\n") -> bytes:
        return b"".join(line.encode("utf-8", "replace") + eol for line in self.framed())


class ControlDispatcher:
    """Runs control lines against an :class:`IProxyControl`; every outcome becomes a :class:`Reply`."""

    _log = logger()

    def __init__(self, control: IProxyControl) -> None:
        self._control = control

    def dispatch(self, text: str) -> Deferred[Reply]:
        """The reply to one control line. The Deferred never fails; it may have fired already."""
        try:
            command = parse_command(text)
        except CommandError as e:
            self._log.info("control command {command} rejected: {error}", command=text, error=str(e))
            return succeed(Reply(error=str(e)))
        d: Deferred[Any] = maybeDeferred(command.call, self._control)
        return d.addCallbacks(self._succeeded, self._failed,
                              callbackArgs=(text, command), errbackArgs=(text,))

    def _succeeded(self, result: Any, text: str, command: Command) -> Reply:
        if command.mutates:
            self._log.info("control: {command}", command=text)
            return Reply(warnings=command.warnings + tuple(_text_lines(result)), action=command.action)
        return Reply(lines=tuple(_text_lines(result)), action=command.action)

    def _failed(self, failure: Failure, text: str) -> Reply:
        if failure.check(ControlError):
            message = str(failure.value)
            self._log.info("control command {command} refused: {error}", command=text, error=message)
            return Reply(error=message)
        self._log.failure("control command {command} failed", failure=failure, command=text)
        return Reply(error=f"internal error: {failure.type.__name__}: {failure.value}")

    def shutdown(self) -> None:
        """Call the implementation's shutdown(), logging (never raising) its failure."""
        self._log.info("control: shutdown requested")
        d: Deferred[Any] = maybeDeferred(self._control.shutdown)
        d.addErrback(lambda f: self._log.failure("shutdown failed", failure=f))


_COMMAND = "command"  # pause reason: a command's reply is still pending
_WRITE = "write"  # pause reason: the transport's write buffer is full


@implementer(IHalfCloseableProtocol, IPushProducer)
class ControlProtocol(LineReceiver, TimeoutMixin):
    """One control session. Lines in, framed replies out, one command at a time.

    Registered as a streaming producer with its transport: while the transport's write buffer is
    full (a client that does not read), it stops reading commands from that client.

    When the client ends its input (``printf 'show\\n' | socat - UNIX-CONNECT:...``), the session
    answers what it has read, a last line without a line end included, then closes.
    ``shutdown`` closes the session after its ``%ok`` and calls the implementation's shutdown()
    once that reply has been delivered (or after :data:`SHUTDOWN_GRACE` seconds).

    A TCP session is telnet's: it starts with the factory's banner line, and telnet commands are
    taken out of its input (:mod:`drbdproxy.control.telnet`). UNIX sockets get neither: their
    clients are drbd-proxy-ctl and scripts, and a byte 255 there stays data.

    Every close (``quit``, ``shutdown``, a line too long, the end of input, the client's reading
    side gone, a refused session) goes through one :class:`~drbdproxy.relay.closing.BoundedClose`: what
    is buffered may still go out, but a client that does not read is aborted after the factory's
    ``close_timeout`` seconds. The idle timeout aborts at once.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE
    factory: ControlFactory
    #: Set by Twisted before connectionMade: a TCP or UNIX socket's transport.
    transport: IStreamTransport
    _log = logger()

    def __init__(self) -> None:
        self._pauses: set[str] = set()
        self._waiting = False
        self._open = False
        self._eof = False
        self._eol = b"\n"
        self._shutdownGuard: IDelayedCall | None = None
        self._closer: BoundedClose | None = None  # made in connectionMade, from the factory's clock
        self._telnet: TelnetFilter | None = None

    def callLater(self, period: float, func: Any) -> IDelayedCall:  # TimeoutMixin's clock
        return self.factory.clock.callLater(period, func)

    def connectionMade(self) -> None:
        self._closer = BoundedClose(self.factory.clock)
        if not self.factory.sessionStarted(self):
            self._log.warn("control: refusing a session, {limit} already open", limit=self.factory.max_sessions)
            self._close(Reply(error="too many control sessions").encode())
            return
        self._open = True
        self.transport.registerProducer(self, True)
        self.setTimeout(self.factory.idle_timeout)
        if ITCPTransport.providedBy(self.transport):
            self._telnet = TelnetFilter(MAX_LINE)
            self._eol = b"\r\n"  # telnet's, until the client's first line says otherwise
            if self.factory.banner:
                self.transport.write(self.factory.banner.encode("utf-8") + b"\r\n")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._open = False
        self.setTimeout(None)
        self.factory.sessionEnded(self)
        if self._closer is not None:
            self._closer.connectionLost()
        if self._shutdownGuard is not None:
            self._shutdown()

    # IHalfCloseableProtocol

    def readConnectionLost(self) -> None:
        self._eof = True
        self._finishIfDone()

    def writeConnectionLost(self) -> None:
        self._close()

    def _close(self, last_words: bytes = b"") -> None:
        """Write ``last_words`` and close after what is buffered; abort after ``close_timeout`` s."""
        if self._closer is None:
            return  # never connected
        self.setTimeout(None)  # closing has its own, shorter bound
        self._closer.close(self.transport, self.factory.close_timeout, last_words)

    @property
    def _closing(self) -> bool:
        """A close has begun (ours, or the transport's)."""
        return (self._closer is not None and self._closer.closing) or bool(self.transport.disconnecting)

    def _finishIfDone(self) -> None:
        """After the client's end of input: answer a last unterminated line, then close."""
        if not self._eof or self._pauses or not self._open or self._closing:
            return
        last = self.clearLineBuffer()
        if last.strip():
            self.lineReceived(last)
            if self._pauses:
                return  # its reply comes later; _unpause calls us again
        self._close()

    def dataReceived(self, data: bytes) -> None:
        if not self._open or self._closing:
            return
        self.resetTimeout()
        if self._telnet is None:
            super().dataReceived(data)
            return
        for item in self._telnet.feed(data):
            if self._closing:
                return  # e.g. quit in the data before this item
            if isinstance(item, bytes):
                super().dataReceived(item)
            elif isinstance(item, Answer):
                self.transport.write(item.data)
            elif item is Event.CANCEL_LINE:
                self._cancelLine()
            else:
                self._log.info("control: telnet subnegotiation too long, closing the session")
                self._close(Reply(error="telnet subnegotiation too long").encode(self._eol))

    def _cancelLine(self) -> None:
        """Telnet's Ctrl-C: drop the line typed so far; complete lines waiting their turn stay."""
        rest = self.clearLineBuffer()
        whole = rest[: rest.rfind(self.delimiter) + 1]
        if whole:
            LineReceiver.dataReceived(self, whole)

    def lineReceived(self, line: bytes) -> None:
        if self._closing:
            return  # a line after quit or shutdown in the same packet: not run
        self._eol = b"\r\n" if line.endswith(b"\r") else b"\n"
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            self._send(Reply(error="line is not valid UTF-8"))
            return
        if not text:
            return
        self._waiting = True
        self.factory.dispatcher.dispatch(text).addCallback(self._send)
        if self._waiting:  # the implementation answers later: read nothing more until then
            self._pause(_COMMAND)

    def _send(self, reply: Reply) -> None:
        self._waiting = False
        if not self._open:
            return  # the client went away while its command ran
        data = reply.encode(self._eol)
        if reply.action is Action.QUIT:
            self._close(data)
        elif reply.action is Action.SHUTDOWN:
            # Stopping the daemon drops unsent replies: first let %ok reach the client.
            self._shutdownGuard = self.callLater(SHUTDOWN_GRACE, self._shutdown)
            self._close(data)
        else:
            self.transport.write(data)
            self.resetTimeout()
        self._unpause(_COMMAND)

    def _shutdown(self) -> None:
        guard, self._shutdownGuard = self._shutdownGuard, None
        if guard is None:
            return
        if guard.active():
            guard.cancel()
        self.factory.dispatcher.shutdown()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._log.info("control: line over {limit} bytes, closing the session", limit=self.MAX_LENGTH)
        self._close(Reply(error="line too long").encode(self._eol))

    def timeoutConnection(self) -> None:
        self._log.info("control: session idle for {timeout} s, closing it", timeout=self.factory.idle_timeout)
        if self._closer is None:
            self.transport.abortConnection()
        else:
            self._closer.abort(self.transport)

    # IPushProducer, as the transport's producer: pause and resume arbitrate between reasons.

    def pauseProducing(self) -> None:
        self._pause(_WRITE)

    def resumeProducing(self) -> None:
        self._unpause(_WRITE)

    def _pause(self, reason: str) -> None:
        if not self._pauses:
            self.paused = True
            if not self._closing:
                self.transport.pauseProducing()
        self._pauses.add(reason)

    def _unpause(self, reason: str) -> None:
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if self._pauses:
            return
        self.paused = False
        if self._open and not self._closing:
            self.transport.resumeProducing()
            LineReceiver.dataReceived(self, b"")  # the lines that arrived while paused
            self._finishIfDone()


class ControlFactory(ServerFactory):
    """Control sessions for one :class:`IProxyControl`.

    :param idle_timeout: seconds without input after which a session is closed (None: never;
        default :data:`IDLE_TIMEOUT`, 30).
    :param max_sessions: sessions open at once; more are answered ``%error`` and closed.
    :param close_timeout: seconds a closing session may take to deliver its last bytes; then it
        is aborted.
    :param clock: for the idle and close timeouts; the global reactor by default.
    :param banner: the first line of a TCP session (a ``%`` control line; empty: none).
    """

    # Recent Twisted types Factory as generic in its protocol, and ControlProtocol (whose factory
    # is a ControlFactory) only fits a ServerFactory[ControlProtocol]: a subscript that fails at
    # run time on Twisted 23.8, which setup.py allows.
    protocol = ControlProtocol  # type: ignore[assignment]
    #: Twisted would log "Starting factory <...object at 0x...>": the ready line says it better.
    noisy = False

    def __init__(self, control: IProxyControl, *, idle_timeout: float | None = IDLE_TIMEOUT,
                 max_sessions: int = MAX_SESSIONS, close_timeout: float = CLOSE_TIMEOUT,
                 clock: IReactorTime | None = None, banner: str = BANNER) -> None:
        if not IProxyControl.providedBy(control):
            raise TypeError(f"{control!r} does not provide IProxyControl")
        self.control = control
        self.dispatcher = ControlDispatcher(control)
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self.close_timeout = close_timeout
        self.banner = banner
        self._clock = clock
        self.sessions: set[ControlProtocol] = set()

    @property
    def clock(self) -> IReactorTime:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        return self._clock

    def sessionStarted(self, session: ControlProtocol) -> bool:
        if len(self.sessions) >= self.max_sessions:
            return False
        self.sessions.add(session)
        return True

    def sessionEnded(self, session: ControlProtocol) -> None:
        self.sessions.discard(session)
