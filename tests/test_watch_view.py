"""drbd-proxy-ctl watch without a terminal: what it draws from a JSON document, how it fetches,
and that q quits (a fake screen and a fake session)."""

from __future__ import annotations

import json
from typing import Any, TextIO

from drbdproxy.control import watch as watch_module
from drbdproxy.control.watch import QUERY, Watch, bar, render

M = 1 << 20

CONNECTION: dict[str, Any] = {
    "name": "r0-bob-alice", "state": "Connected", "reconnects": 2, "link_rtt_ms": 0.25,
    "memlimit": 16 * M, "buffered": 4 * M, "buffered_peak": 16 * M, "reads_paused": True,
    "codec": "lz4 acceleration 1", "link_rate": 2 * M, "drain_seconds": 2.0,
    "compression_ratio": 2.0, "congestion_fill": int(16 * M * 0.9 * 2),
    "rates": {"to_peer": 8 * M, "to_peer_wire": 4 * M, "from_peer": 0, "from_peer_wire": 0},
}


def test_bar_shows_the_buffer_against_memlimit():
    """The bar has the width asked for and fills in proportion, never past its end."""
    assert bar(0, 100, 12) == "[" + "." * 10 + "]"
    assert bar(25, 100, 12) == "[" + "#" * 2 + "." * 8 + "]"
    assert bar(500, 100, 12) == "[" + "#" * 10 + "]"
    assert bar(5, 0, 4) == "[..]"


def test_render_shows_every_figure_of_a_connection():
    """State, buffer with bar and percentage, rates, ratio, drain time and the congestion-fill
    advice (in drbd.conf units) are all on screen."""
    text = "\n".join(render({"connections": [CONNECTION]}, None, None, "ctl.sock", 100, "12:00:00"))
    for needle in ("r0-bob-alice   Connected", "link rtt 0.2 ms", "reconnects 2",
                   "buffer  4.0M of 16.0M (25 %)", "[#", "DRBD reads paused (buffer full)",
                   "to peer 8.0M/s (link 4.0M/s, ratio 2.00)", "from peer 0/s",
                   "drain time 2.0 s at 2.0M/s", "congestion-fill advice 29491k", "q quits"):
        assert needle in text, needle


def test_render_picks_one_connection_or_says_why_not():
    """watch NAME shows only NAME; an unknown NAME, no connections and an unreachable daemon
    each get a line saying so."""
    other = dict(CONNECTION, name="r1-bob-alice")
    doc = {"connections": [CONNECTION, other]}
    text = "\n".join(render(doc, None, "r1-bob-alice", "s", 80, "t"))
    assert "r1-bob-alice" in text and "r0-bob-alice" not in text
    assert "no connection named 'r9'" in render(doc, None, "r9", "s", 80, "t")
    assert "no connections configured" in render({"connections": []}, None, None, "s", 80, "t")
    assert "daemon not reachable: refused" in render(None, "refused", None, "s", 80, "t")


def test_long_lines_are_wrapped_to_the_screen():
    """A long socket path or error message is wrapped, not cut: all of it stays readable."""
    path = "/tmp/" + "x" * 150 + "/none.ctl"
    lines = render(None, f"cannot reach drbd-proxy at {path}: No such file", None, path, 60, "t")
    assert all(len(line) < 60 for line in lines)
    assert path in "".join(line.strip() for line in lines)
    assert any(line.startswith("daemon not reachable") for line in lines)


class FakeSession:
    def __init__(self, replies: list[Any]) -> None:
        self.replies = replies
        self.sent: list[str] = []
        self.closed = False

    def request(self, command: str, deadline: float, out: TextIO, err: TextIO) -> bool:
        self.sent.append(command)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        out.write(reply + "\n")
        return True

    def close(self) -> None:
        self.closed = True


def test_fetch_asks_for_json_and_reconnects_after_a_failure():
    """Each fetch sends list connections -j; a failed session is closed, its error shown, and
    the next fetch opens a new one."""
    sessions = [FakeSession([json.dumps({"connections": [CONNECTION]}), OSError("gone")]),
                FakeSession([json.dumps({"connections": []})])]
    opened: list[FakeSession] = []

    def connect() -> FakeSession:
        opened.append(sessions.pop(0))
        return opened[-1]

    view = Watch(connect, "s", None)
    assert view.fetch() == ({"connections": [CONNECTION]}, None)
    assert view.fetch() == (None, "gone")
    assert opened[0].closed and opened[0].sent == [QUERY, QUERY]
    assert view.fetch() == ({"connections": []}, None)
    assert len(opened) == 2


class FakeScreen:
    """What curses.wrapper hands over: draws into rows, returns queued keys from getch."""

    def __init__(self, keys: list[int]) -> None:
        self.keys = keys
        self.rows: dict[int, str] = {}
        self.draws = 0

    def timeout(self, ms: int) -> None:
        self.timeout_ms = ms

    def getmaxyx(self) -> tuple[int, int]:
        return 24, 80

    def erase(self) -> None:
        self.rows = {}

    def addnstr(self, row: int, col: int, text: str, n: int) -> None:
        self.rows[row] = text[:n]

    def refresh(self) -> None:
        self.draws += 1

    def getch(self) -> int:
        return self.keys.pop(0)


def test_q_quits_after_redrawing_every_second(monkeypatch):
    """The loop redraws once per getch (which waits up to a second) until q; lines are cut to
    the screen's width."""
    monkeypatch.setattr(watch_module.curses, "curs_set", lambda n: None)
    session = FakeSession([json.dumps({"connections": [CONNECTION]})] * 3)
    screen = FakeScreen([-1, -1, ord("q")])
    assert Watch(lambda: session, "s", None).run(screen) == 0
    assert screen.draws == 3 and screen.timeout_ms == 1000
    assert screen.rows[3].startswith("r0-bob-alice")
    assert all(len(text) <= 79 for text in screen.rows.values())
