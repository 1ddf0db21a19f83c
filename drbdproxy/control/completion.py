"""Tab completion for the ``drbd-proxy-ctl`` shell: what may come next on a command line (pure).

The grammar comes from the running daemon's ``help`` reply, so the shell completes exactly the
commands that daemon knows. Each help line starts with a usage (``set memlimit NAME SIZE``,
``list|show connections``) and, after two blanks or more, a description. In a usage, lowercase
words are keywords (``a|b`` are alternatives), ``NAME`` is a connection name and any other
metavariable is free text; a metavariable written with lowercase alternatives
(``on|off|N``) offers those alternatives.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, NamedTuple, Sequence

_KEYWORD = re.compile(r"[a-z][a-z0-9-]*$")
_DESCRIPTION = re.compile(r"\s{2,}")
NAME = "NAME"


class Slot(NamedTuple):  # not a dataclass: importing dataclasses adds ~14 ms to the start of ctl
    """One word of a command: keyword alternatives, a connection name, or free text."""

    words: tuple[str, ...] = ()
    free: bool = False  # any word fits (``words`` are only suggestions)
    name: bool = False  # a connection name: suggestions come from the daemon

    def accepts(self, word: str) -> bool:
        return self.free or self.name or word.lower() in self.words


Grammar = list[tuple[Slot, ...]]


def _slot(token: str) -> Slot:
    if token == NAME:
        return Slot(name=True)
    alternatives = token.split("|")
    keywords = tuple(a for a in alternatives if _KEYWORD.match(a))
    return Slot(keywords, free=len(keywords) < len(alternatives))


def grammar(help_lines: Iterable[str]) -> Grammar:
    """Each command of a ``help`` reply as its sequence of slots (lines without a usage skipped)."""
    commands: Grammar = []
    for line in help_lines:
        usage = _DESCRIPTION.split(line.strip(), maxsplit=1)[0]
        tokens = usage.split()
        if tokens and _KEYWORD.match(tokens[0].split("|")[0]):
            commands.append(tuple(_slot(t) for t in tokens))
    return commands


def candidates(commands: Grammar, words: Sequence[str], text: str,
               names: Callable[[], Iterable[str]]) -> list[str]:
    """The completions of ``text``, the word being typed after ``words``, sorted.

    Keywords match case-insensitively; connection names (asked of ``names`` only when one may
    come next) as written.
    """
    found: set[str] = set()
    want_names = False
    for slots in commands:
        if len(slots) <= len(words) or not all(s.accepts(w) for s, w in zip(slots, words)):
            continue
        slot = slots[len(words)]
        want_names |= slot.name
        found.update(w for w in slot.words if w.startswith(text.lower()))
    if want_names:
        found.update(n for n in names() if n.startswith(text))
    return sorted(found)


def connection_states(statistics: Iterable[str]) -> dict[str, str]:
    """Connection name -> state, from ``print statistics`` lines (``NAME.state STATE``)."""
    states: dict[str, str] = {}
    for line in statistics:
        key, _, value = line.partition(" ")
        if key.endswith(".state") and value:
            states[key[: -len(".state")]] = value.strip()
    return states
