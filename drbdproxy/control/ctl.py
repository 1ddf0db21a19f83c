"""``drbd-proxy-ctl``: send control commands to a running drbd-proxy daemon.

Standard library only (``socket``), so that it starts fast: drbdadm gives it 5 seconds.
Reply framing is described in ``docs/control-protocol.md``.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import NoReturn, Sequence, TextIO

from drbdproxy.control.shell import Shell

PROG = "drbd-proxy-ctl"
DEFAULT_SOCKET = "/run/drbd-proxy/drbd-proxy-ctl.socket"
SOCKET_ENV = "DRBD_PROXY_CTL_SOCKET"
TIMEOUT = 4.5  # overall, for command-line use: drbdadm kills us after 5 s
CONNECT_RETRY = 2.0  # seconds to keep trying a unix socket whose listen backlog is full (EAGAIN)
LAST_WORDS_WAIT = 1.0  # seconds to read what the daemon said before closing, after a failed write
INTERACTIVE_TIMEOUT = 30.0  # per command, in the shell
PROMPT = "drbd-proxy> "
HISTORY = "~/.drbd-proxy-ctl_history"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

HELP = f"""\
usage: {PROG} [-s SOCKET] [-c COMMAND]... [WORDS...]

Send commands to the drbd-proxy daemon over its control socket and print the replies.

  -c, --command COMMAND  run COMMAND (one argument, e.g. -c "show memusage"); may repeat,
                         the commands run in order and the first failure stops the rest.
                         With any -c, every other argument is one more command too
                         (drbdadm 9.22 passes its last "set plugin NAME N END" that way).
  WORDS...               without -c, the words form one command: {PROG} show memusage
  watch [NAME]           a live full-screen view of each connection (state, buffer, rates,
                         ratio, drain time, congestion-fill advice), every second; q quits
  -s, --socket SOCKET    the daemon's control socket: a UNIX socket path, unix:PATH, or
                         tcp:HOST:PORT; default ${SOCKET_ENV}, else {DEFAULT_SOCKET}
  -h, --help             show this help and exit
      --version          print drbdproxy's version and exit

With no command, {PROG} runs an interactive shell ("help" lists the daemon's commands,
Tab completes them and connection names, "quit" or end of input leaves; "shutdown" asks first
while a connection is Connected). Commands read from a pipe run like -c commands.

Data lines go to standard output exactly as the daemon sends them; warnings and errors go to
standard error. Exit status: 0 every command succeeded, 1 a command failed (or the daemon
refused the session: too many control sessions), 2 usage error,
3 the daemon could not be reached (or did not answer within {TIMEOUT} s; a full listen
backlog is retried for {CONNECT_RETRY:g} s first).
"""


class UsageError(Exception):
    pass


class Unreachable(Exception):
    pass


class Options:
    def __init__(self, target: str, commands: list[str], show_help: bool = False) -> None:
        self.target = target
        self.commands = commands
        self.show_help = show_help


_VALUED = {"-s": "socket", "--socket": "socket", "-c": "command", "--command": "command"}


def parse_args(argv: Sequence[str], environ: dict[str, str] | None = None) -> Options:
    """Parse the command line. Positional words may contain ``--opt=value`` (add connection).

    :raises UsageError: with a message for the user.
    """
    env = os.environ if environ is None else environ
    target = env.get(SOCKET_ENV) or DEFAULT_SOCKET
    items: list[tuple[str, str]] = []  # ("command", text) for -c, ("word", text) for positional
    args = list(argv)
    only_words = False
    while args:
        arg = args.pop(0)
        if only_words or not arg.startswith("-") or arg == "-":
            items.append(("word", arg))
            continue
        if arg == "--":
            only_words = True
        elif arg in ("-h", "--help"):
            return Options(target, [], show_help=True)
        elif arg == "--version" and not items:
            from drbdproxy import __version__
            print(f"drbdproxy {__version__}")
            raise SystemExit(EXIT_OK)
        elif arg in _VALUED:
            if not args:
                raise UsageError(f"option {arg} needs an argument")
            kind, value = _VALUED[arg], args.pop(0)
            items.append((kind, value))
        elif arg.startswith(("--socket=", "--command=")):
            name, _, value = arg.partition("=")
            items.append((_VALUED[name], value))
        elif arg[:2] in ("-s", "-c"):
            items.append((_VALUED[arg[:2]], arg[2:]))
        elif any(kind == "word" for kind, _ in items):
            items.append(("word", arg))  # e.g. --memlimit=128M in bare words
        else:
            raise UsageError(f"unknown option {arg!r}")
    for kind, value in items:
        if kind == "socket":
            target = value
    dash_c = any(kind == "command" for kind, _ in items)
    if dash_c:
        commands = [value for kind, value in items if kind in ("command", "word")]
    else:
        words = [value for kind, value in items if kind == "word"]
        commands = [" ".join(words)] if words else []
    for command in commands:
        if not command.strip():
            raise UsageError("empty command")
        if "\n" in command or "\r" in command:
            raise UsageError(f"a command must be one line: {command!r}")
    if not target:
        raise UsageError("empty socket name")
    return Options(target, commands)


def _address(target: str) -> tuple[int, str | tuple[str, int]]:
    """(address family, connect address) of a socket name."""
    if target.startswith("tcp:"):
        host, sep, port = target[4:].rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"bad socket {target!r}: expected tcp:HOST:PORT")
        return socket.AF_UNSPEC, (host, int(port))
    path = target[5:] if target.startswith("unix:") else target
    return socket.AF_UNIX, path


def _connect(family: int, address: str | tuple[str, int], timeout: float) -> socket.socket:
    """A socket connected to ``address``.

    A unix socket whose listen backlog is full refuses at once with EAGAIN (``BlockingIOError``):
    a daemon busy for a moment. Try again with a short backoff for up to :data:`CONNECT_RETRY`
    seconds (never beyond ``timeout``); then the last BlockingIOError is raised.
    """
    give_up = time.monotonic() + min(CONNECT_RETRY, timeout)
    pause = 0.01
    while True:
        try:
            if family == socket.AF_UNIX:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                try:
                    sock.connect(address)
                except BaseException:
                    sock.close()
                    raise
                return sock
            assert not isinstance(address, str)  # other families come with (host, port)
            return socket.create_connection(address, timeout)
        except BlockingIOError:
            left = give_up - time.monotonic()
            if left <= 0:
                raise
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.2)


class Session:
    """One connection to the daemon's control socket."""

    def __init__(self, target: str, timeout: float) -> None:
        self.target = target
        self._buffer = b""
        family, address = _address(target)
        try:
            self._sock = _connect(family, address, timeout)
        except TimeoutError:
            raise Unreachable(f"cannot reach drbd-proxy at {target}: timed out") from None
        except BlockingIOError:
            raise Unreachable(f"cannot reach drbd-proxy at {target}: its control socket accepts no"
                              f" more connections (listen backlog full for {CONNECT_RETRY:g} s:"
                              f" is the daemon stuck or flooded with connections?)") from None
        except OSError as e:
            hint = "" if target.startswith("tcp:") else f" (is drbd-proxy running? choose the socket with -s or ${SOCKET_ENV})"
            raise Unreachable(f"cannot reach drbd-proxy at {target}: {e.strerror or e}{hint}") from None

    def close(self) -> None:
        self._sock.close()

    def closed_by_peer(self) -> bool:
        """True when the daemon has closed this session (e.g. after its idle timeout).

        What it sent meanwhile (a TCP session's ``%hello`` line) is kept, for the next reply to
        skip: left unread, it would hide the end of the session behind it.
        """
        self._sock.setblocking(False)
        try:
            while len(self._buffer) < 65536:
                data = self._sock.recv(65536)
                if not data:
                    return True
                self._buffer += data
            return False
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        finally:
            self._sock.setblocking(True)

    def request(self, command: str, deadline: float, out: TextIO, err: TextIO) -> bool:
        """Send one command, print its reply as it arrives; True if it ended in ``%ok``."""
        self._settimeout(deadline)
        try:
            self._sock.sendall(command.encode("utf-8") + b"\n")
        except TimeoutError:
            raise Unreachable(f"drbd-proxy at {self.target} did not accept a command in time") from None
        except OSError as e:
            # The daemon may have said why before it closed (e.g. "too many control sessions").
            said = self._last_error(deadline)
            if said is None:
                raise Unreachable(f"lost the connection to drbd-proxy at {self.target}:"
                                  f" {e.strerror or e}") from None
            out.flush()
            err.write(f"{PROG}: {said}\n")
            return False
        while True:
            line = self._readline(deadline)
            if line == "%ok":
                return True
            if line.startswith("%error"):
                out.flush()
                err.write(f"{PROG}: {line[6:].strip() or 'command failed'}\n")
                return False
            if line.startswith("%warn"):
                out.flush()
                err.write(f"{PROG}: warning: {line[5:].strip()}\n")
            elif line.startswith("%%"):
                out.write(line[1:] + "\n")
            elif line.startswith("%"):
                continue  # a control line of a later protocol version: ignored
            else:
                out.write(line + "\n")

    def _last_error(self, deadline: float) -> str | None:
        """After a failed write: the message of a ``%error`` line the daemon sent before it closed.

        Reads what is left, until such a line, the end of input, a read error, 64 KiB or at most
        :data:`LAST_WORDS_WAIT` seconds; None when the daemon said nothing of the kind.
        """
        deadline = min(deadline, time.monotonic() + LAST_WORDS_WAIT)
        data, self._buffer = self._buffer, b""
        while True:
            lines = data.split(b"\n")
            for line in lines[:-1]:
                text = line.rstrip(b"\r").decode("utf-8", "replace")
                if text.startswith("%error"):
                    return text[6:].strip() or "command failed"
            data = lines[-1]
            if len(data) > 65536:
                return None
            try:
                self._settimeout(deadline)
                chunk = self._sock.recv(65536)
            except (Unreachable, OSError):
                chunk = b""
            if not chunk:
                if not data:
                    return None
                chunk = b"\n"  # a last line without its line end counts too
            data += chunk

    def _settimeout(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Unreachable(f"drbd-proxy at {self.target} did not answer in time")
        self._sock.settimeout(remaining)

    def _readline(self, deadline: float) -> str:
        while b"\n" not in self._buffer:
            self._settimeout(deadline)
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                raise Unreachable(f"drbd-proxy at {self.target} did not answer in time") from None
            except OSError as e:
                raise Unreachable(f"lost the connection to drbd-proxy at {self.target}: {e.strerror or e}") from None
            if not data:
                raise Unreachable(f"drbd-proxy at {self.target} closed the connection before replying")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.rstrip(b"\r").decode("utf-8", "replace")


def run_commands(target: str, commands: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Run commands in order within :data:`TIMEOUT`, stopping at the first failure."""
    deadline = time.monotonic() + TIMEOUT
    session = Session(target, TIMEOUT)
    try:
        for i, command in enumerate(commands):
            if i and _is_quit(commands[i - 1]):  # that session is over: open another
                session.close()
                session = Session(target, max(deadline - time.monotonic(), 0.01))
            if not session.request(command, deadline, out, err):
                return EXIT_FAILED
        return EXIT_OK
    finally:
        session.close()


def _is_quit(command: str) -> bool:
    return command.split()[0].lower() == "quit"


def shell(target: str, stdin: TextIO, out: TextIO, err: TextIO) -> int:
    """The interactive shell (or, from a pipe, one command per line, stopping at a failure)."""
    ok = Shell(lambda: Session(target, TIMEOUT), stdin, out, err,
               prompt=PROMPT, history=HISTORY, timeout=INTERACTIVE_TIMEOUT).run()
    return EXIT_OK if ok else EXIT_FAILED


def run(argv: Sequence[str], stdin: TextIO | None = None, out: TextIO | None = None,
        err: TextIO | None = None) -> int:
    """The whole program; returns its exit status."""
    stdin, out, err = stdin or sys.stdin, out or sys.stdout, err or sys.stderr
    try:
        options = parse_args(argv)
        if options.show_help:
            out.write(HELP)
            return EXIT_OK
        _address(options.target)
        if len(options.commands) == 1 and options.commands[0].split()[0].lower() == "watch":
            from drbdproxy.control.watch import watch  # curses, only for the live view

            target = options.target
            return watch(lambda: Session(target, TIMEOUT), target, options.commands[0].split()[1:], err)
        if options.commands:
            return run_commands(options.target, options.commands, out, err)
        return shell(options.target, stdin, out, err)
    except UsageError as e:
        err.write(f"{PROG}: error: {e} (see --help)\n")
        return EXIT_USAGE
    except Unreachable as e:
        out.flush()
        err.write(f"{PROG}: {e}\n")
        return EXIT_UNREACHABLE


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point: ``drbd-proxy-ctl = drbdproxy.control.ctl:main``."""
    try:
        status = run(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()
    except KeyboardInterrupt:
        status = 130
    except BrokenPipeError:  # e.g. piped into head: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = EXIT_FAILED
    sys.exit(status)


if __name__ == "__main__":
    main()
