"""The shell's pieces in memory: completion from the daemon's help, and the shell loop from a pipe."""

from __future__ import annotations

import io
from typing import TextIO

import pytest

from drbdproxy.control.commands import help_lines
from drbdproxy.control.completion import candidates, connection_states, grammar
from drbdproxy.control.shell import Shell

NAMES = ["r0-bob-alice", "r0-carol-alice", "r1-bob-alice"]
GRAMMAR = grammar(help_lines())


def complete(line: str) -> list[str]:
    """What Tab offers at the end of ``line`` (the last word, possibly empty, is being typed)."""
    words = line.split(" ")
    return candidates(GRAMMAR, [w for w in words[:-1] if w], words[-1], lambda: NAMES)


@pytest.mark.parametrize("line, offered", [
    ("", ["add", "del", "help", "list", "print", "quit", "set", "show", "shutdown"]),
    ("sh", ["show", "shutdown"]),
    ("show mem", ["memusage"]),
    ("SHOW Mem", ["memusage"]),
    ("print ", ["details", "statistics"]),
    ("list sub", ["subconnections"]),
    ("show ", ["connections", "details", "hconnections", "hmemusage", "hsubconnections", "memusage",
               "proxy-settings", "subconnections", "version"]),
    ("del connection r0-", ["r0-bob-alice", "r0-carol-alice"]),
    ("del connection ", NAMES),
    ("set memlimit r1", ["r1-bob-alice"]),
    ("set compression r0-bob-alice o", ["off", "on"]),
    ("set link-cc r0-bob-alice ", ["bbr", "cubic", "reno", "system"]),
    ("set memlimit r0-bob-alice ", []),
    ("frobnicate ", []),
    ("quit ", []),
])
def test_completions(line: str, offered: list[str]) -> None:
    """Tab offers the keywords that may come next (multi-word commands, list|show alternatives,
    any case), connection names where a NAME goes, lowercase choices of a value, else nothing."""
    assert complete(line) == offered


def test_names_are_asked_only_where_a_name_goes() -> None:
    """Completing a keyword does not ask the daemon for connection names."""
    asked: list[int] = []
    candidates(GRAMMAR, ["show"], "mem", lambda: asked.append(1) or [])
    assert asked == []
    candidates(GRAMMAR, ["del", "connection"], "", lambda: asked.append(1) or [])
    assert asked == [1]


def test_grammar_ignores_lines_that_are_no_usage() -> None:
    """Blank lines and lines not starting with a lowercase keyword add no command."""
    assert grammar(["", "   ", "Usage: nothing", "quit        close this session"]) == grammar(["quit  x"])


def test_connection_states_from_statistics() -> None:
    """print statistics' NAME.state lines give each connection's state; other keys are skipped."""
    lines = ["r0-bob-alice.state Connected", "r0-bob-alice.memlimit 1024", "a.b.state Connecting",
             "r0-bob-alice.data.to_peer.packets.P_STATE 3", "broken.state"]
    assert connection_states(lines) == {"r0-bob-alice": "Connected", "a.b": "Connecting"}


class FakeSession:
    """Answers from ``replies`` (command -> ok), recording the commands."""

    def __init__(self, log: list[str], replies: dict[str, bool]) -> None:
        self.log, self.replies = log, replies

    def request(self, command: str, deadline: float, out: TextIO, err: TextIO) -> bool:
        self.log.append(command)
        out.write(f"ran {command}\n")
        return self.replies.get(command, True)

    def closed_by_peer(self) -> bool:
        return False

    def close(self) -> None:
        self.log.append("<closed>")


def piped(text: str, replies: dict[str, bool] | None = None) -> tuple[bool, list[str], str]:
    log: list[str] = []
    out = io.StringIO()
    shell = Shell(lambda: FakeSession(log, replies or {}), io.StringIO(text), out, io.StringIO(),
                  prompt="> ", history="/nonexistent", timeout=5)
    return shell.run(), log, out.getvalue()


def test_piped_shutdown_asks_nothing_and_ends_the_run() -> None:
    """From a pipe, shutdown is sent without a question, says nothing on stdout, and the lines
    after it are not sent (the daemon is going away)."""
    ok, log, out = piped("show\nshutdown\nshow memusage\n")
    assert ok and log == ["show", "shutdown", "<closed>"]
    assert out == "ran show\nran shutdown\n"


def test_piped_failure_stops_the_run() -> None:
    """From a pipe, the first failed command ends the run with False; blank lines are skipped."""
    ok, log, _ = piped("\nshow\n  \nbad\nshow\n", {"bad": False})
    assert not ok and log == ["show", "bad", "<closed>"]
