"""The daemon's log events, filtered by a level that ``set loglevel`` changes at run time.

Every drbdproxy class logs through :func:`logger`, whose events pass one filter before they reach
the global log publisher (and from there whatever twistd writes to). Twisted's own events are not
affected by the filter.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])


def logger() -> Logger:
    """A Logger for a class attribute (``_log = logger()``), behind the run-time level filter."""
    return Logger(observer=_observer)


def set_level(level: str) -> None:
    """Show events of ``level`` and above from now on (debug, info, warn, error, critical)."""
    _predicate.setLogLevelForNamespace("", LEVELS[level])


def level() -> str:
    current = _predicate.logLevelForNamespace("")
    return next(name for name, value in LEVELS.items() if value is current)


class Persisting:
    """Failures that are normal for a while (a peer proxy still starting, DRBD connecting
    itself) and a problem once they go on: :meth:`failed` says for how long they have, and
    whether that is past ``grace`` seconds without a success (:meth:`ok`)."""

    def __init__(self, clock: Any, grace: float = 30.0) -> None:
        self._clock = clock
        self.grace = grace
        self._since: float | None = None

    def failed(self) -> tuple[float, bool]:
        """Seconds since the first failure after the last success (0 for that first one), and
        whether they are past the grace."""
        now = self._clock.seconds()
        if self._since is None:
            self._since = now
        failing = now - self._since
        return failing, failing >= self.grace

    def ok(self) -> None:
        self._since = None


class Summarised:
    """Log the first of a kind of event at once, then at most one summary per ``interval``
    seconds saying how many more came and what the last one was: a remote host that repeats
    something forever cannot fill the disk with log lines."""

    def __init__(self, log: Logger, clock: Any, interval: float = 10.0) -> None:
        self._log = log
        self._clock = clock
        self.interval = interval
        self._quiet_until = float("-inf")
        self._held = 0
        self._last: tuple[str, dict[str, Any]] | None = None
        self._summary: Any = None

    def warn(self, format: str, **fields: Any) -> None:
        now = self._clock.seconds()
        if now >= self._quiet_until and self._summary is None:
            self._log.warn(format, **fields)
            self._quiet_until = now + self.interval
            return
        self._held += 1
        self._last = (format, fields)
        if self._summary is None:
            delay = max(self._quiet_until - now, 0.0)
            self._summary = self._clock.callLater(delay, self._summarise)

    def _summarise(self) -> None:
        self._summary = None
        held, self._held = self._held, 0
        if not held or self._last is None:
            return
        format, fields = self._last
        self._log.warn("{held} more in the last {interval:g} s, the last: " + format,
                       held=held, interval=self.interval, **fields)
        self._quiet_until = self._clock.seconds() + self.interval

    def stop(self) -> None:
        """Say what is held back now, and schedule nothing more."""
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
            self._summarise()
