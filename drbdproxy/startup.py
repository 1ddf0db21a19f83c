"""The daemon's start-up: endpoints bound when it starts, each failure one line and exit status 1.

``makeService`` only builds :class:`Listening` services; they bind in ``privilegedStartService``
(before twistd sheds privileges), so a port in use, a control socket another daemon answers on, or
an endpoint the reactor refuses is a :class:`StartupFailed`, printed as one line, never a traceback.
What the options tell at once (files, endpoint syntax) is a :class:`StartupError` before that.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
from typing import Any, NoReturn

from twisted.application.service import IService, MultiService, Service
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure

from drbdproxy.admin.logs import logger

#: The control endpoint of a daemon started by drbd-proxy.socket (systemd passes the socket).
SYSTEMD_CONTROL = "systemd:domain=UNIX:index=0"


class StartupError(SystemExit):
    """A file, value or endpoint the daemon cannot start with: one line on stderr, exit status 1.

    (A usage.UsageError would make twistd print its whole option summary first.)
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"drbd-proxy: {message}")


def systemd_passed_sockets() -> bool:
    """systemd passed this process listening sockets (socket activation), as Twisted's systemd
    endpoint sees them: it takes LISTEN_FDS out of the environment as it is imported."""
    return bool(endpoints._SystemdParser._sddaemon.inheritedDescriptors())


def check_endpoint(what: str, description: str, reactor: Any = None) -> str:
    """``description`` after checking that it parses (nothing listens yet).

    :raises StartupError: naming ``what`` the endpoint is for.
    """
    if description.startswith("systemd:") and not systemd_passed_sockets():
        raise StartupError(f"{what} endpoint {description}: systemd passed no socket"
                           " (start the daemon through drbd-proxy.socket)")
    if reactor is None:
        from twisted.internet import reactor
    try:
        endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise StartupError(f"bad {what} endpoint {description!r}: {e}") from None
    return description


def _reason(failure: Failure) -> str:
    error = failure.value
    if isinstance(error, CannotListenError) and isinstance(error.socketError, OSError):
        return (error.socketError.strerror or str(error.socketError)).lower()
    return str(error) or type(error).__name__


class Listening(Service):
    """One endpoint of the daemon (control, metrics, manhole), bound when the daemon starts."""

    _log = logger()
    port: IListeningPort | None = None

    def __init__(self, what: str, description: str, factory: Any, reactor: Any) -> None:
        self.what = what
        self.description = description
        self.factory = factory
        self._reactor = reactor

    def prepare(self) -> None:
        """Make the endpoint bindable (subclasses: directories, stale sockets)."""

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is not None:
            return
        self.prepare()
        try:
            endpoint = endpoints.serverFromString(self._reactor, self.description)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            fail(self._log, f"bad {self.what} endpoint {self.description!r}: {e}")
        # Our endpoints (tcp, unix, ssl, systemd) listen at once; the Deferred has fired.
        outcome: list[Any] = []
        endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome or isinstance(outcome[0], Failure):
            reason = _reason(outcome[0]) if outcome else "it did not listen at once"
            fail(self._log, f"cannot listen for {self.what} on {self.description}: {reason}")
        self.port = outcome[0]
        self.bound()

    def bound(self) -> None:
        """The port listens (subclasses: ownership of a socket file)."""

    def startService(self) -> None:
        super().startService()
        if self.port is None:  # started without privilegedStartService (tests, embedding)
            self.privilegedStartService()

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


class ControlSocket(Listening):
    """The control endpoint: its socket directory is created, a stale socket file (of a daemon
    that was killed) is removed, and one a live daemon answers on is an error, not stolen."""

    def __init__(self, description: str, factory: Any, reactor: Any,
                 path: str | None = None, gid: int | None = None) -> None:
        super().__init__("control", description, factory, reactor)
        self._path = path
        self._gid = gid

    def prepare(self) -> None:
        if not self._path:
            return
        directory = os.path.dirname(self._path)
        if directory:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        clear_stale_socket(self._path, self._log)

    def bound(self) -> None:
        if self._path and self._gid is not None:
            os.chown(self._path, -1, self._gid)
            os.chmod(self._path, 0o660)


def clear_stale_socket(path: str, log: Any) -> None:
    """Remove the unix socket file at ``path`` if nothing accepts on it any more.

    :raises StartupError: a live process answers on it, or it is not a socket.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        fail(log, f"control socket {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        log.info("removed stale control socket {path}", path=path)
        return
    except OSError as e:
        fail(log, f"control socket {path}: {e.strerror or e}")
    finally:
        probe.close()
    fail(log, f"control socket {path} is in use: a drbd-proxy is running"
              f" (drbd-proxy-ctl -s {path} show version)")


class StartupFailed(Exception):
    """An endpoint the daemon could not bind as it started.

    An Exception, not a SystemExit: twistd's daemonizing parent waits for the child to report
    one (and would wait forever otherwise). Uncaught, it prints as its one line (see :func:`fail`).
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"drbd-proxy: {message}")


def fail(log: Any, message: str) -> NoReturn:
    """Stop start-up: the reason goes to the log (a daemon's log file, the journal) and, when it
    ends the process, as one line to the original stderr (twistd has redirected sys.stderr)."""
    log.critical("start-up failed: {reason}", reason=message)
    sys.excepthook = _one_line
    raise StartupFailed(message)


def _one_line(kind: type[BaseException], value: BaseException, traceback: Any) -> None:
    if not isinstance(value, StartupFailed):
        sys.__excepthook__(kind, value, traceback)
    elif sys.__stderr__ is not None:
        sys.__stderr__.write(f"{value}\n")
        sys.__stderr__.flush()


def notify_ready(environ: dict[str, str] | None = None) -> None:
    """Tell systemd the daemon is ready (sd_notify READY=1), for a Type=notify unit."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return
    target = "\0" + address[1:] if address[0] == "@" else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(b"READY=1", target)
        except OSError:
            pass  # systemd went away: nothing to tell


class Guarded(MultiService):
    """A listening service built elsewhere (metrics, manhole) whose bind errors are start-up
    errors like the control socket's."""

    _log = logger()

    def __init__(self, what: str, description: str, service: IService) -> None:
        super().__init__()
        self.what = what
        self.description = description
        service.setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            fail(self._log, f"cannot listen for {self.what} on {self.description}:"
                            f" {_reason(Failure(e))}")
