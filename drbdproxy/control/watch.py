"""``drbd-proxy-ctl watch [NAME]``: a live full-screen view of the connections, for operators.

Once a second it asks the daemon for ``list connections -j`` (one request on one control
session, reopened if the daemon drops it) and draws, per connection: its state, the buffer as
a bar against memlimit, the rates to and from the peer, the compression ratio, the drain time
and the congestion-fill advice. ``q`` quits. Standard library only (curses), like the client.

The session comes from the caller (``drbd-proxy-ctl``), so this module does not import it.
"""

from __future__ import annotations

import curses
import io
import json
import textwrap
import time
from typing import Any, Callable, Protocol, Sequence, TextIO

from drbdproxy.units import format_drbd_size, format_size

#: Seconds between two requests (and two redraws).
REFRESH = 1.0
#: Seconds one request may take before the view says the daemon does not answer.
REQUEST_TIMEOUT = 4.5
QUERY = "list connections -j"
QUIT_KEYS = (ord("q"), ord("Q"))


class ControlSession(Protocol):
    """What watch needs of a drbd-proxy-ctl session."""

    def request(self, command: str, deadline: float, out: TextIO, err: TextIO) -> bool: ...

    def close(self) -> None: ...


def bar(used: int, limit: int, width: int) -> str:
    """``[#####.....]`` of ``width`` characters: how full the buffer is."""
    inner = max(width - 2, 1)
    filled = min(inner, round(inner * used / limit)) if limit > 0 else 0
    return "[" + "#" * filled + "." * (inner - filled) + "]"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{format_size(value)}/s"


def connection_lines(c: dict[str, Any], width: int) -> list[str]:
    """The lines of one connection (a ``list connections -j`` object)."""
    rtt = f"{c['link_rtt_ms']:.1f} ms" if c["link_rtt_ms"] is not None else "-"
    used, limit = c["buffered"], c["memlimit"]
    share = f"{100 * used / limit:.0f} %" if limit else "-"
    reads = "paused (buffer full)" if c["reads_paused"] else "running"
    rates, ratio = c["rates"], c["compression_ratio"]
    ratio_text = f"{ratio:.2f}" if ratio is not None else "-"
    drain = c["drain_seconds"]
    link = c["link_rate"]
    drain_text = "-" if drain is None else f"{drain:.1f} s"
    if drain is not None and link:
        drain_text += f" at {format_size(link)}/s"
    head = f"buffer  {format_size(used)} of {format_size(limit)} ({share})"
    return [
        f"{c['name']}   {c['state']}   link rtt {rtt}   reconnects {c['reconnects']}"
        f"   {c['codec']}",
        f"  {head}  " + bar(used, limit, max(width - len(head) - 6, 12)),
        f"  peak {format_size(c['buffered_peak'])}   DRBD reads {reads}",
        f"  to peer {_rate(rates['to_peer'])} (link {_rate(rates['to_peer_wire'])},"
        f" ratio {ratio_text})   from peer {_rate(rates['from_peer'])}",
        f"  drain time {drain_text}   congestion-fill advice"
        f" {format_drbd_size(c['congestion_fill'], unit=True)} (90 % of memlimit x ratio)",
    ] + _why_down(c)


def _why_down(c: dict[str, Any]) -> list[str]:
    """While the peer proxy is away, why (the last error) and when this side dials it next."""
    if c.get("state") != "Connecting" or not c.get("last_error"):
        return []
    retry = c.get("retry_in")
    when = "" if retry is None else f"   next dial in {retry:.1f} s"
    return [f"  down: {c['last_error']}{when}"]


def render(doc: dict[str, Any] | None, error: str | None, name: str | None, target: str,
           width: int, clock: str) -> list[str]:
    """The whole screen as lines, long ones wrapped to ``width``."""
    lines = [f"drbd-proxy-ctl watch   {clock}   every {REFRESH:g} s, q quits", f"control socket {target}", ""]
    connections = (doc or {}).get("connections", [])
    if error is not None:
        lines += [f"daemon not reachable: {error}", "(trying again every second)"]
    elif name is not None and not any(c["name"] == name for c in connections):
        lines.append(f"no connection named {name!r}")
    elif not connections:
        lines.append("no connections configured")
    for c in connections if error is None else ():
        if name is None or c["name"] == name:
            lines += connection_lines(c, width) + [""]
    return [part for line in lines for part in _wrap(line, width)]


def _wrap(line: str, width: int) -> list[str]:
    if len(line) < width:
        return [line]
    return textwrap.wrap(line, max(width - 1, 10), subsequent_indent="    ", break_on_hyphens=False)


class Watch:
    """The request-and-draw loop on a curses screen."""

    def __init__(self, connect: Callable[[], ControlSession], target: str,
                 name: str | None) -> None:
        self._connect = connect
        self._target = target
        self._name = name
        self._session: ControlSession | None = None

    def fetch(self) -> tuple[dict[str, Any] | None, str | None]:
        """The daemon's answer to :data:`QUERY`, or the reason there is none."""
        out, err = io.StringIO(), io.StringIO()
        try:
            if self._session is None:
                self._session = self._connect()
            ok = self._session.request(QUERY, time.monotonic() + REQUEST_TIMEOUT, out, err)
        except Exception as e:  # any failure of the session: show it, reconnect next time
            self.close()
            return None, str(e) or type(e).__name__
        if not ok:
            return None, err.getvalue().strip() or "the daemon refused the request"
        try:
            return json.loads(out.getvalue()), None
        except ValueError:
            return None, "the daemon's answer is not JSON (an older drbdproxy?)"

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def run(self, screen: Any) -> int:
        try:
            curses.curs_set(0)
        except curses.error:
            pass  # a terminal without an invisible cursor
        screen.timeout(int(REFRESH * 1000))
        while True:
            doc, error = self.fetch()
            height, width = screen.getmaxyx()
            lines = render(doc, error, self._name, self._target, width, time.strftime("%H:%M:%S"))
            screen.erase()
            for row, line in enumerate(lines[:height]):
                screen.addnstr(row, 0, line, max(width - 1, 1))
            screen.refresh()
            if screen.getch() in QUIT_KEYS:  # waits up to REFRESH for a key
                return 0


def watch(connect: Callable[[], ControlSession], target: str, words: Sequence[str],
          err: TextIO) -> int:
    """``drbd-proxy-ctl watch [NAME]``; returns the exit status."""
    if len(words) > 1:
        err.write(f"drbd-proxy-ctl: error: watch takes at most one NAME, got {' '.join(words)!r}"
                  " (see --help)\n")
        return 2
    view = Watch(connect, target, words[0] if words else None)
    try:
        return int(curses.wrapper(view.run))
    except curses.error as e:
        err.write(f"drbd-proxy-ctl: watch needs a terminal: {e}\n")
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        view.close()
