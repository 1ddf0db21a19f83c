"""The ``drbd-proxy-ctl`` shell: commands typed at a terminal, or read from a pipe one per line.

At a terminal: readline history, Tab completion of command words and connection names (asked of
the daemon: its ``help`` and ``print statistics``), and a question before ``shutdown`` while a
connection is Connected. From a pipe nothing is asked and the first failure stops the run.
Standard library only, like the rest of the client; the socket session comes from ``ctl``.
"""

from __future__ import annotations

import io
import os
import time
from typing import Callable, Protocol, TextIO

from drbdproxy.control.completion import Grammar, candidates, connection_states, grammar

QUERY_TIMEOUT = 2.0  # seconds for what the shell asks the daemon by itself (completions, states)
SHUTTING_DOWN = "drbd-proxy is shutting down"


class ControlSession(Protocol):
    """What the shell needs of a connection to the daemon (``ctl.Session``)."""

    def request(self, command: str, deadline: float, out: TextIO, err: TextIO) -> bool: ...

    def closed_by_peer(self) -> bool: ...

    def close(self) -> None: ...


class Shell:
    """One run of the shell. ``connect`` opens a session (raising when the daemon is unreachable).

    :param prompt: shown at a terminal; :param history: readline's history file (``~`` expanded);
    :param timeout: seconds each typed command may take.
    """

    def __init__(self, connect: Callable[[], ControlSession], stdin: TextIO, out: TextIO,
                 err: TextIO, *, prompt: str, history: str, timeout: float) -> None:
        self._connect = connect
        self._stdin, self._out, self._err = stdin, out, err
        self._prompt, self._history, self._timeout = prompt, history, timeout
        self.interactive = stdin.isatty()
        self._session: ControlSession | None = None
        self._grammar: Grammar | None = None
        self._matches: list[str] = []

    def run(self) -> bool:
        """Read and run commands until ``quit``, ``shutdown`` or the end of input.

        False when a command from a pipe failed (at a terminal the shell goes on).
        """
        history = self._start_readline() if self.interactive else None
        self._session = self._connect()  # an unreachable daemon is reported before any prompt
        try:
            while True:
                command = self._next_command()
                if command is None:
                    return True
                if not command:
                    continue
                verb = command.split()[0].lower()
                if verb == "shutdown" and self.interactive and not self._shutdown_confirmed():
                    continue
                ok = self._live().request(command, time.monotonic() + self._timeout, self._out, self._err)
                self._out.flush()
                if not ok and not self.interactive:
                    return False
                if ok and verb == "shutdown":
                    if self.interactive:  # from a pipe, stdout is the commands' output only
                        self._out.write(f"{SHUTTING_DOWN}\n")
                    return True  # there is no daemon left to send more commands to
                if ok and verb == "quit":
                    return True
        finally:
            if self._session is not None:
                self._session.close()
            if history is not None:
                import readline

                try:
                    readline.write_history_file(history)
                except OSError:
                    pass

    def _next_command(self) -> str | None:
        """The next line, stripped ("" for nothing to run); None at the end of input."""
        if not self.interactive:
            line = self._stdin.readline()
            return line.strip() if line else None
        try:
            return input(self._prompt).strip()
        except EOFError:
            self._out.write("\n")
            return None
        except KeyboardInterrupt:  # Ctrl-C drops the line being typed, as in a shell
            self._out.write("\n")
            return ""

    def _live(self) -> ControlSession:
        """The session, opened anew if the daemon has closed it (its idle timeout)."""
        if self._session is None or self._session.closed_by_peer():
            if self._session is not None:
                self._session.close()
            self._session = None
            self._session = self._connect()
        return self._session

    def _query(self, command: str) -> list[str] | None:
        """The data lines of a command the shell runs by itself, quietly; None if it failed."""
        out, err = io.StringIO(), io.StringIO()
        try:
            ok = self._live().request(command, time.monotonic() + QUERY_TIMEOUT, out, err)
        except Exception:  # unreachable or slow: a completion must never end the shell
            if self._session is not None:
                self._session.close()  # it may hold half a reply: the next command opens another
            self._session = None
            return None
        return out.getvalue().splitlines() if ok else None

    def _shutdown_confirmed(self) -> bool:
        """Ask before stopping a daemon that relays Connected DRBD connections."""
        statistics = self._query("print statistics")
        states = connection_states(statistics or [])
        connected = sorted(name for name, state in states.items() if state == "Connected")
        if statistics is not None and not connected:
            return True
        if connected:
            what = (f"{len(connected)} connection{'s' if len(connected) > 1 else ''} Connected"
                    f" ({', '.join(connected)}): shutdown terminates DRBD's replication")
        else:
            what = "could not read the connection states"
        try:
            answer = input(f"{what}. Shut down drbd-proxy? [y/N] ")
            self._forget_last_input()
        except (EOFError, KeyboardInterrupt):
            answer = ""
            self._out.write("\n")
        if answer.strip().lower() in ("y", "yes"):
            return True
        self._out.write("not shut down\n")
        return False

    # readline

    def _start_readline(self) -> str | None:
        """Load the history, set up Tab completion; the history file's path (None: no readline)."""
        try:
            import readline
        except ImportError:  # pragma: no cover - not on every platform
            return None
        path = os.path.expanduser(self._history)
        try:
            readline.read_history_file(path)
        except OSError:
            pass
        readline.set_history_length(1000)
        readline.set_completer(self._complete)
        readline.set_completer_delims(" \t")  # connection names have dashes
        libedit = "libedit" in (readline.__doc__ or "")
        readline.parse_and_bind("bind ^I rl_complete" if libedit else "tab: complete")
        return path

    @staticmethod
    def _forget_last_input() -> None:
        """Keep an answer (y/n) out of the command history."""
        try:
            import readline
        except ImportError:  # pragma: no cover
            return
        length = readline.get_current_history_length()
        if length:
            readline.remove_history_item(length - 1)

    def _complete(self, text: str, state: int) -> str | None:
        """readline's completer: the ``state``-th completion of ``text``."""
        if state == 0:
            import readline

            words = readline.get_line_buffer()[: readline.get_begidx()].split()
            # Python's readline appends nothing to a sole match: the blank comes with each word.
            self._matches = [word + " " for word in self._completions(words, text)]
        return self._matches[state] if state < len(self._matches) else None

    def _completions(self, words: list[str], text: str) -> list[str]:
        if self._grammar is None:
            lines = self._query("help")
            if lines is None:
                return []  # asked again at the next Tab
            self._grammar = grammar(lines)
        return candidates(self._grammar, words, text,
                          lambda: connection_states(self._query("print statistics") or []))
