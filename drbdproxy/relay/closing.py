"""One close discipline for every transport: let buffered bytes go, but never wait forever.

Twisted's ``loseConnection()`` waits until the write buffer is empty, and while a streaming
producer is registered and paused it waits for the producer too: a far side that stops reading
would hold the socket open for good. So, as Twisted's HTTPChannel does: unregister the producer,
``loseConnection()``, and ``abortConnection()`` once a bound has passed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class BoundedClose:
    """Closes one transport within ``bound`` seconds of :meth:`close`, whatever the far side does.

    The owning protocol calls :meth:`connectionLost` from its own, so the timer goes with it.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._abort: IDelayedCall | None = None
        self.closing = False

    def close(self, transport: Any, bound: float, last_words: bytes = b"") -> None:
        """Write ``last_words``, then close after what is buffered; abort after ``bound``."""
        if self.closing or transport is None:
            return
        self.closing = True
        if last_words:
            transport.write(last_words)
        unregister_producer(transport)
        transport.loseConnection()
        self._abort = self._clock.callLater(bound, self._abortNow, transport)

    def abort(self, transport: Any) -> None:
        """Drop the connection now, buffered bytes and all."""
        self.closing = True
        self._abortNow(transport)

    def _abortNow(self, transport: Any) -> None:
        self._cancel()
        if transport is not None:
            transport.abortConnection()

    def connectionLost(self) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self._abort = None


def unregister_producer(transport: Any) -> None:
    """Unregister the transport's producer, if it has one."""
    try:
        transport.unregisterProducer()
    except RuntimeError:  # a transport that refuses when none is registered (StringTransport)
        pass
