"""The control command language: one line in, one command object out (sans-IO).

Every command is one row of :data:`TABLE`: its spellings, its positional parameters (each with a
converter), an optional variadic tail, the command class it builds and a one-line description.
:func:`parse_command` matches the longest keyword prefix (case-insensitively) and converts the
arguments; :func:`help_lines` renders ``help`` from the same table.

The command objects live in :mod:`drbdproxy.control.operations` and are re-exported here.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, cast

from drbdproxy.spec import (
    COMPRESSION_ON,
    DEFAULT_LINK_CC,
    DEFAULT_MEMLIMIT,
    DEFAULT_PING_TIMEOUT,
    LINK_CC,
    Address,
    ConnectionSpec,
)
from drbdproxy.control.operations import (
    Action,
    AddConnection,
    Command,
    DelConnection,
    ListConnections,
    ListDetails,
    ListSubconnections,
    PrintStatistics,
    Quit,
    SetLoglevel,
    SetMemlimit,
    SetOption,
    SetPlugin,
    Show,
    ShowMemusage,
    ShowProxySettings,
    ShowVersion,
    Shutdown,
)
from drbdproxy.units import format_drbd_size, parse_address, parse_rate, parse_size

if TYPE_CHECKING:
    from drbdproxy.control.interface import IProxyControl

__all__ = [
    "OPTIONS", "TABLE", "Action", "AddConnection", "Command", "CommandError", "DelConnection",
    "Help", "ListConnections", "ListDetails", "ListSubconnections", "PrintStatistics", "Quit",
    "SetLoglevel", "SetMemlimit", "SetOption", "SetPlugin", "Show", "ShowMemusage",
    "ShowProxySettings", "ShowVersion", "Shutdown", "help_lines", "parse_command",
]

LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


class CommandError(ValueError):
    """A control line that is malformed or unknown; the message says what was expected."""


# --- value converters: str -> value, ValueError with a short message on bad input -----------

_INT = re.compile(r"^[0-9]+$")


def _integer(what: str, minimum: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        if not _INT.match(text) or int(text) < minimum:
            raise ValueError(f"bad {what} {text!r}: expected an integer >= {minimum}")
        return int(text)

    return convert


def _choice(what: str, words: Sequence[str]) -> Callable[[str], int]:
    """One of ``words`` -> its index."""
    def convert(text: str) -> int:
        try:
            return list(words).index(text.lower())
        except ValueError:
            raise ValueError(f"bad {what} {text!r}: expected one of {'|'.join(words)}") from None

    return convert


def _size(minimum: int) -> Callable[[str], int]:
    return functools.partial(parse_size, minimum=minimum)


def _compression(text: str) -> int:
    """``on`` -> COMPRESSION_ON, ``off`` -> 0, a number as given (a zstd level; 0 = off)."""
    word = text.lower()
    if word == "on":
        return COMPRESSION_ON
    if word == "off":
        return 0
    if not _INT.match(text):
        raise ValueError(f"bad compression {text!r}: expected on, off or a number")
    return int(text)


def _address(metavar: str) -> Callable[[str], Address]:
    def convert(text: str) -> Address:
        try:
            return parse_address(text)
        except ValueError as e:
            raise ValueError(f"{metavar}: {e}") from None

    return convert


def _name(text: str) -> str:
    return text


def _loglevel(text: str) -> str:
    level = text.lower()
    level = "warn" if level == "warning" else level
    if level not in LOG_LEVELS:
        raise ValueError(f"bad level {text!r}: expected one of {', '.join(LOG_LEVELS)}")
    return level


@dataclass(frozen=True)
class OptionSpec:
    """A per-connection proxy option, as ``set OPTION NAME VALUE`` and ``--OPTION=VALUE``."""

    name: str
    metavar: str
    convert: Callable[[str], int]
    applies: str
    description: str


OPTIONS: Mapping[str, OptionSpec] = {
    o.name: o
    for o in (
        OptionSpec("memlimit", "SIZE", _size(1), "live",
                   "buffer limit, k/M/G; lowering keeps what is buffered"),
        OptionSpec("read-loops", "N", _integer("read-loops", 1), "never",
                   "accepted for drbdadm, no effect: each read from DRBD takes up to 512 KiB"),
        OptionSpec("compression", "on|off|N", _compression, "live at the next chunk",
                   "compress the link (0/off = no)"),
        OptionSpec("bwlimit", "RATE", parse_rate, "live",
                   "link bandwidth limit, bytes/s with k/M/G (0 = none)"),
        OptionSpec("sndbuf-size", "SIZE", _size(0), "on reconnect",
                   "link socket send buffer (0 = auto: the kernel's, grown as root while it"
                   " limits a long link)"),
        OptionSpec("rcvbuf-size", "SIZE", _size(0), "on reconnect",
                   "link socket receive buffer (0 = auto)"),
        OptionSpec("ping-timeout", "TENTHS", _integer("ping-timeout", 1), "live",
                   "link ping timeout, tenths of a second"),
        OptionSpec("link-cc", "|".join(LINK_CC), _choice("link-cc", LINK_CC), "live",
                   "TCP congestion control of the link (default bbr where the kernel has it)"),
    )
}


@dataclass(frozen=True)
class Help(Command):
    def call(self, control: IProxyControl) -> Any:
        return help_lines()


# --- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    metavar: str
    convert: Callable[[str], Any]


@dataclass(frozen=True)
class Tail:
    """The variadic end of a command: at least ``minimum`` words, converted as one list."""

    metavar: str
    convert: Callable[[list[str]], Any]
    minimum: int = 0


@dataclass(frozen=True)
class Entry:
    spellings: tuple[str, ...]
    params: tuple[Param, ...]
    build: Callable[..., Command]
    description: str
    tail: Tail | None = None
    title: str = ""  # how help shows the keywords; default: the first spelling
    #: A read-side command: ``-j``/``--json`` after its keywords asks for a JSON document.
    json: bool = False

    @property
    def syntax(self) -> str:
        """The arguments, e.g. ``NAME SIZE``."""
        words = [p.metavar for p in self.params] + ([self.tail.metavar] if self.tail else [])
        return " ".join(words)

    @property
    def usage(self) -> str:
        flag = "[-j]" if self.json else ""
        return " ".join(filter(None, (self.title or self.spellings[0], self.syntax, flag)))


def _add_options(words: list[str]) -> tuple[dict[str, int], tuple[str, ...]]:
    options: dict[str, int] = {}
    warnings: list[str] = []
    for word in words:
        if not word.startswith("--"):
            raise ValueError(f"unexpected argument {word!r}: options are written --opt=value")
        key, sep, value = word[2:].partition("=")
        key = key.lower()
        spec = OPTIONS.get(key)
        if spec is None:
            warnings.append(f"add connection: unknown option {word} ignored")
            continue
        if not value:
            raise ValueError(f"option --{key} needs a value: --{key}={spec.metavar}")
        try:
            options[key] = spec.convert(value)
        except ValueError as e:
            raise ValueError(f"--{key}: {e}") from None
    return options, tuple(warnings)


def _build_add(name: str, li: Address, cpo: Address, lo: Address, cd: Address,
               tail: tuple[dict[str, int], tuple[str, ...]]) -> AddConnection:
    options, warnings = tail
    return AddConnection(ConnectionSpec(name, li, cpo, lo, cd, options), warnings)


def _plugin_words(words: list[str]) -> tuple[str, ...] | None:
    if words[0].lower() != "end":
        return tuple(words)
    if len(words) > 1:
        raise ValueError(f"nothing may follow END, got {' '.join(words[1:])!r}")
    return None


def _set_option(option: str) -> Callable[[str, int], SetOption]:
    return lambda name, value: SetOption(name, option, value)


_NAME = Param("NAME", _name)

TABLE: tuple[Entry, ...] = (
    Entry(("add connection",),
          (_NAME, Param("LISTEN_INSIDE", _address("LISTEN_INSIDE")),
           Param("CONNECT_PEER_OUTSIDE", _address("CONNECT_PEER_OUTSIDE")),
           Param("LISTEN_OUTSIDE", _address("LISTEN_OUTSIDE")),
           Param("CONNECT_DRBD", _address("CONNECT_DRBD"))),
          _build_add,
          "add a proxied DRBD connection; options: " + ", ".join(f"--{o}=" for o in OPTIONS),
          tail=Tail("[--opt=value]...", _add_options)),
    Entry(("del connection",), (_NAME,), DelConnection,
          "remove a connection: close its DRBD sockets, free its buffer"),
    *(
        Entry((f"set {o.name}",), (_NAME, Param(o.metavar, o.convert)),
              SetMemlimit if o.name == "memlimit" else _set_option(o.name),
              f"{o.description} (applies {o.applies})")
        for o in OPTIONS.values()
    ),
    Entry(("set plugin",), (_NAME, Param("IDX", _integer("index", 0))), SetPlugin,
          "compression plugin IDX: lz4|zstd|zlib level N, lzma ..., none, auto [max-level N]"
          " (picks none, lz4 or zstd while it runs); END truncates"
          " the list there (applies live at the next chunk)",
          tail=Tail("WORDS...|END", _plugin_words, minimum=1)),
    Entry(("set loglevel",), (Param("LEVEL", _loglevel),), SetLoglevel,
          f"daemon log level: {' '.join(LOG_LEVELS)} (applies live)"),
    Entry(("show",), (), Show, "configured connections", json=True),
    Entry(("show proxy-settings",), (_NAME,), ShowProxySettings,
          "the connection's drbd.conf proxy { } block (for drbdadm adjust)", json=True),
    Entry(("show memusage",), (), ShowMemusage,
          "per connection: buffered bytes, memlimit, peak, drain time, congestion-fill advice",
          json=True),
    Entry(("show hmemusage",), (), lambda: ShowMemusage(True), "show memusage, human-readable sizes",
          json=True),
    Entry(("show version",), (), ShowVersion, "daemon version", json=True),
    Entry(("list connections", "show connections"), (), ListConnections,
          "configured connections: Status, buffer, rates, ratio (tab-separated, header first)",
          title="list|show connections", json=True),
    Entry(("list hconnections", "show hconnections"), (), lambda: ListConnections(True),
          "the same, aligned, human-readable sizes", title="list|show hconnections", json=True),
    Entry(("list subconnections", "show subconnections"), (), ListSubconnections,
          "established DRBD sockets: bytes, rates, compression ratio (tab-separated)",
          title="list|show subconnections", json=True),
    Entry(("list hsubconnections", "show hsubconnections"), (), lambda: ListSubconnections(True),
          "the same, aligned, human-readable sizes", title="list|show hsubconnections", json=True),
    Entry(("list details", "show details", "print details"), (), ListDetails,
          "per DRBD socket, counters for each DRBD packet type", title="list|show|print details",
          json=True),
    Entry(("print statistics",), (), PrintStatistics, "all counters, one 'key value' per line",
          json=True),
    Entry(("help",), (), Help, "this list (keywords are case-insensitive)"),
    Entry(("quit",), (), Quit, "close this control session"),
    Entry(("shutdown",), (), Shutdown, "stop the daemon, closing every DRBD connection"),
)


def _index(table: Sequence[Entry]) -> tuple[dict[tuple[str, ...], Entry], dict[tuple[str, ...], list[str]]]:
    by_words: dict[tuple[str, ...], Entry] = {}
    children: dict[tuple[str, ...], list[str]] = {}
    for entry in table:
        for spelling in entry.spellings:
            words = tuple(spelling.split())
            assert words not in by_words, f"duplicate command {spelling!r}"
            by_words[words] = entry
            for n in range(1, len(words)):
                nxt = children.setdefault(words[:n], [])
                if words[n] not in nxt:
                    nxt.append(words[n])
    return by_words, children


_BY_WORDS, _CHILDREN = _index(TABLE)
_DEPTH = max(len(k) for k in _BY_WORDS)


def parse_command(line: str) -> Command:
    """Parse one control line (without its line end) into a command.

    :raises CommandError: with a message naming what was expected.
    """
    words = line.split()
    if not words:
        raise CommandError("empty command (try help)")
    keys = tuple(w.lower() for w in words[:_DEPTH])
    for n in range(len(keys), 0, -1):
        entry = _BY_WORDS.get(keys[:n])
        if entry is not None:
            return _apply(entry, keys[:n], words[n:])
    for n in range(len(keys), 0, -1):
        if keys[:n] in _CHILDREN:
            prefix, choices = " ".join(keys[:n]), ", ".join(_CHILDREN[keys[:n]])
            got = f", got {words[n]!r}" if n < len(words) else ""
            raise CommandError(f"{prefix}: expected one of {choices}{got}")
    raise CommandError(f"unknown command {words[0]!r} (try help)")


JSON_FLAGS = ("-j", "--json")


def _apply(entry: Entry, keys: tuple[str, ...], args: list[str]) -> Command:
    spelled = " ".join(keys)
    as_json = any(a.lower() in JSON_FLAGS for a in args)
    if as_json:
        if not entry.json:
            raise CommandError(f"{spelled}: -j/--json is for the show, list and print commands")
        args = [a for a in args if a.lower() not in JSON_FLAGS]
    fixed = len(entry.params)
    if entry.tail is None and len(args) > fixed:
        if keys in _CHILDREN and not fixed:
            raise CommandError(f"{spelled}: expected nothing or one of {', '.join(_CHILDREN[keys])},"
                               f" got {args[0]!r}")
        if not fixed:
            raise CommandError(f"{spelled}: takes no arguments, got {' '.join(args)!r}")
        raise CommandError(f"{spelled}: expected {entry.syntax}, got extra {' '.join(args[fixed:])!r}")
    if len(args) < fixed + (entry.tail.minimum if entry.tail else 0):
        raise CommandError(f"{spelled}: expected {entry.syntax}")
    values: list[Any] = []
    try:
        for param, text in zip(entry.params, args):
            values.append(param.convert(text))
        if entry.tail is not None:
            values.append(entry.tail.convert(args[fixed:]))
    except ValueError as e:
        raise CommandError(f"{spelled}: {e}") from None
    command = entry.build(*values)
    # Every entry marked json builds a dataclass with an as_json field.
    return dataclasses.replace(cast(Any, command), as_json=True) if as_json else command


def help_lines() -> list[str]:
    """The ``help`` reply: one line per command of :data:`TABLE`, with its description."""
    width = 34
    lines = [f"{e.usage:<{width}} {e.description}" if len(e.usage) <= width
             else f"{e.usage}  {e.description}" for e in TABLE]
    return lines + [
        "",
        f"defaults: memlimit {format_drbd_size(DEFAULT_MEMLIMIT)}, compression lz4 (until plugins"
        " or compression are set; off: set compression NAME off), bwlimit 0 (none),"
        f" ping-timeout {DEFAULT_PING_TIMEOUT} ({DEFAULT_PING_TIMEOUT / 10:g} s),"
        f" link-cc {LINK_CC[DEFAULT_LINK_CC]}, sndbuf-size and rcvbuf-size 0 (the kernel's)",
        "sizes: a number of bytes with an optional k, M, G or T suffix (binary; s = 512 bytes)",
        "-j or --json after a show, list or print command: one JSON document instead of text",
    ]
