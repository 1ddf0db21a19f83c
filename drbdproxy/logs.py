"""The daemon's log events, filtered by a level that ``set loglevel`` changes at run time.

Every drbdproxy class logs through :func:`logger`, whose events pass one filter before they reach
the global log publisher (and from there whatever twistd writes to). Twisted's own events are not
affected by the filter.
"""

from __future__ import annotations

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
