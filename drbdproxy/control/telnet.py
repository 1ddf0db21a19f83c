"""Telnet commands in a control session over TCP (RFC 854, 855, 860), sans-IO.

``telnet HOST PORT`` sends commands among the typed bytes: Ctrl-C becomes IAC IP followed by
IAC DO TIMING-MARK, and telnet then discards everything it receives until the TIMING-MARK is
answered. Read raw, those bytes would be part of a command line and never answered, and the
session would hang for good. :class:`TelnetFilter` takes them out of the stream:

- IP (interrupt process) and EL (erase line) cancel the line being typed;
- DO TIMING-MARK is answered WILL TIMING-MARK (it only marks a point in the stream);
- any other DO x is refused WONT x and any WILL x DONT x: the session enables no option, so it
  never starts a negotiation and answers only requests, which cannot loop (RFC 854);
  DONT and WONT need no answer;
- IAC IAC is one data byte 255; subnegotiations (IAC SB ... IAC SE) are skipped;
- every other command (NOP, AYT, AO, BRK, DM, GA, ...) is ignored.

The filter keeps a few bytes of state, never the input: a subnegotiation longer than
``max_subnegotiation`` bytes ends in :data:`OVERRUN` (the session closes, as for a line too long).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
IP, EL = 244, 248
TIMING_MARK = 6
MAX_SUBNEGOTIATION = 4096


class Event(enum.Enum):
    """What the session does about a command, besides the data and the answers."""

    CANCEL_LINE = "cancel line"  # IP or EL: drop the line typed so far
    OVERRUN = "subnegotiation too long"  # close the session


class _State(enum.Enum):
    DATA = "data"
    IAC = "iac"  # after IAC
    OPTION = "option"  # after IAC DO|DONT|WILL|WONT: the option byte
    SB = "sb"  # inside a subnegotiation
    SB_IAC = "sb-iac"  # IAC inside a subnegotiation


@dataclass(frozen=True)
class Answer:
    """Bytes the session writes back to the client: a negotiation answer."""

    data: bytes


#: One item of :meth:`TelnetFilter.feed`: data for the line reader, an event or an answer.
Item = bytes | Event | Answer


class TelnetFilter:
    """Splits a telnet byte stream into data, answers and events, in stream order."""

    def __init__(self, max_subnegotiation: int = MAX_SUBNEGOTIATION) -> None:
        self._state = _State.DATA
        self._verb = 0
        self._skipped = 0
        self._max = max_subnegotiation

    def feed(self, data: bytes) -> list[Item]:
        """The items in ``data``, in order. A command split between two calls is kept."""
        items: list[Item] = []
        i, n = 0, len(data)
        while i < n:
            if self._state is _State.DATA:
                j = data.find(IAC, i)
                if j < 0:
                    items.append(data[i:])
                    break
                if j > i:
                    items.append(data[i:j])
                self._state = _State.IAC
                i = j + 1
            else:
                self._command(data[i], items)
                i += 1
        return self._merged(items)

    def _command(self, byte: int, items: list[Item]) -> None:
        state = self._state
        if state is _State.IAC:
            if byte == IAC:
                items.append(bytes([IAC]))  # escaped data byte 255
                self._state = _State.DATA
            elif byte in (DO, DONT, WILL, WONT):
                self._verb, self._state = byte, _State.OPTION
            elif byte == SB:
                self._skipped, self._state = 0, _State.SB
            else:
                if byte in (IP, EL):
                    items.append(Event.CANCEL_LINE)
                self._state = _State.DATA
        elif state is _State.OPTION:
            self._state = _State.DATA
            if self._verb == DO:
                items.append(Answer(bytes([IAC, WILL if byte == TIMING_MARK else WONT, byte])))
            elif self._verb == WILL:
                items.append(Answer(bytes([IAC, DONT, byte])))
        elif state is _State.SB:
            if byte == IAC:
                self._state = _State.SB_IAC
            else:
                self._skip(items)
        elif state is _State.SB_IAC:
            if byte == SE:
                self._state = _State.DATA
            else:  # IAC IAC (an escaped 255) or a stray command byte: still inside
                self._state = _State.SB
                self._skip(items)

    def _skip(self, items: list[Item]) -> None:
        self._skipped += 1
        if self._skipped > self._max:
            items.append(Event.OVERRUN)
            self._state = _State.DATA

    @staticmethod
    def _merged(items: list[Item]) -> list[Item]:
        """Adjacent data pieces as one (an escaped 255 between two runs of text)."""
        out: list[Item] = []
        for item in items:
            if isinstance(item, bytes) and out and isinstance(out[-1], bytes):
                out[-1] += item
            else:
                out.append(item)
        return out
