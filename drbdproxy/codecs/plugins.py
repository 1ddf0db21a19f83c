"""Plugin lines (``set plugin NAME IDX WORDS...``) and ``set compression NAME VALUE``, validated.

A plugin line is a name followed by ``key value`` pairs, exactly as drbdadm copies it from the
``plugin { ...; }`` block of drbd.conf: ``zstd level 4``, ``lzma contexts 4 level 9``, ``none``.
drbdadm itself checks nothing, so this is where a typo is caught, and every error names the word
that was not understood.

Accepted plugins and options (ranges inclusive; names and keys are case-insensitive and
stored lower-case; option order is kept as given, because drbdadm adjust compares lines):

==========  ==================================================================================
``lz4``     ``level`` 1-16 (default 2). 1 = fast mode with acceleration 4, 2 = plain LZ4 (fast
            mode, acceleration 1), 3-12 = LZ4HC at that level, 13-16 = LZ4HC 12 (lz4's maximum;
            the range is lz4frame's). LINBIT's "maximum" ``lz4 level 9`` is LZ4HC's default.
``zstd``    ``level`` 1-22 (default 3).
``zlib``    ``level`` 1-9 (default 6).
``lzma``    ``level`` 0-9 (xz preset, default 6); ``dict-size`` 4096-1610612736 bytes (k/M/G
            suffixes accepted, stored in bytes); ``lc``/``lp``/``pb`` 0-4 with lc + lp <= 4;
            ``nice-len`` 0-273 (below 2 keeps the preset's value); ``mf`` hc3|hc4|bt2|bt3|bt4;
            ``mode`` fast|normal; ``depth`` 0-1000 (0 = automatic). Accepted and stored but not
            used by the codec: ``contexts`` 1-253 (LINBIT's thread count; here the pipeline's
            worker pool sets parallelism), ``fallback-to-zlib`` off|on, ``numa-threshold`` 0-253.
``none``    no options; sends data uncompressed.
``auto``    ``max-level`` 1-22 (default 9): picks none, lz4 or a zstd level up to ``max-level``
            for each connection while it runs, from the link's measured rate and the speed and
            ratio of each choice on samples of the recent data (:mod:`drbdproxy.codecs.adaptive`).
==========  ==================================================================================

``set compression`` (the Proxy 1.x option): ``on`` = ``lz4`` (fast), ``off`` or ``0`` = ``none``,
``N`` in 1-22 = ``zstd level N``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "PluginError",
    "PluginSpec",
    "PLUGIN_NAMES",
    "DEFAULT_LEVELS",
    "AUTO_MAX_LEVEL",
    "parse_plugin",
    "compression_option",
]

# An optional sign is accepted so that "level -5" gets an out-of-range message, not "not a number".
_INTEGER = re.compile(r"[+-]?[0-9]+")
_SIZE = re.compile(r"([0-9]+)([kmg]?)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

#: liblzma's smallest dictionary: the least ``dict-size``, and the raw LZMA2 chunks' dictionary
#: is never below it.
LZMA_MIN_DICT = 4096

#: The level a plugin uses when its line has no ``level``.
DEFAULT_LEVELS: Mapping[str, int] = {"lz4": 2, "zstd": 3, "zlib": 6, "lzma": 6}
#: The highest zstd level ``auto`` tries when its line has no ``max-level``: above 9 zstd
#: gains a few per cent of ratio for several times the CPU, which pays only on very thin links.
AUTO_MAX_LEVEL = 9


class PluginError(ValueError):
    """A plugin line or compression value that is not understood; the message names the word."""


class _Check(Protocol):
    def __call__(self, plugin: str, key: str, word: str) -> str: ...


@dataclass(frozen=True)
class _Int:
    """An integer in ``lo..hi``; canonical form is plain decimal ("04" -> "4")."""

    lo: int
    hi: int

    def __call__(self, plugin: str, key: str, word: str) -> str:
        if not _INTEGER.fullmatch(word):
            expected = f"expected {self.lo}-{self.hi}"
            raise PluginError(f"{plugin}: {key} {word!r} is not a number ({expected})")
        return _in_range(plugin, key, word, int(word), self.lo, self.hi)


@dataclass(frozen=True)
class _Size:
    """A byte count in ``lo..hi`` with an optional binary k/M/G suffix; canonical form is bytes."""

    lo: int
    hi: int

    def __call__(self, plugin: str, key: str, word: str) -> str:
        m = _SIZE.fullmatch(word)
        if not m:
            expected = f"expected {self.lo}-{self.hi} bytes"
            raise PluginError(f"{plugin}: {key} {word!r} is not a size ({expected})")
        value = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
        return _in_range(plugin, key, word, value, self.lo, self.hi)


@dataclass(frozen=True)
class _Choice:
    """One of a few keywords, matched case-insensitively; canonical form is lower-case."""

    values: tuple[str, ...]

    def __call__(self, plugin: str, key: str, word: str) -> str:
        if word.lower() not in self.values:
            raise PluginError(f"{plugin}: {key} {word!r} is not one of {', '.join(self.values)}")
        return word.lower()


def _in_range(plugin: str, key: str, word: str, value: int, lo: int, hi: int) -> str:
    if not lo <= value <= hi:
        raise PluginError(f"{plugin}: {key} {word!r} out of range {lo}-{hi}")
    return str(value)


# Ranges for lzma are LINSTOR's whitelist (lcom properties.json), except level, which includes
# xz's preset 0.
_LZMA_OPTIONS: dict[str, _Check] = {
    "contexts": _Int(1, 253),
    "level": _Int(0, 9),
    "dict-size": _Size(LZMA_MIN_DICT, 1610612736),
    "lc": _Int(0, 4),
    "lp": _Int(0, 4),
    "pb": _Int(0, 4),
    "nice-len": _Int(0, 273),
    "mf": _Choice(("hc3", "hc4", "bt2", "bt3", "bt4")),
    "mode": _Choice(("fast", "normal")),
    "depth": _Int(0, 1000),
    "fallback-to-zlib": _Choice(("off", "on")),
    "numa-threshold": _Int(0, 253),
}

_SCHEMAS: dict[str, dict[str, _Check]] = {
    "lz4": {"level": _Int(1, 16)},
    "zstd": {"level": _Int(1, 22)},
    "zlib": {"level": _Int(1, 9)},
    "lzma": _LZMA_OPTIONS,
    "none": {},
    "auto": {"max-level": _Int(1, 22)},
}

#: Every plugin name parse_plugin accepts, in canonical (lower-case) spelling.
PLUGIN_NAMES: tuple[str, ...] = tuple(sorted(_SCHEMAS))


@dataclass(frozen=True)
class PluginSpec:
    """One validated plugin line: a lower-case name and its ``(key, value)`` options in order."""

    name: str
    options: tuple[tuple[str, str], ...] = ()

    def render(self) -> str:
        """The canonical line, as ``show proxy-settings`` prints it: ``zstd level 4``."""
        return " ".join([self.name, *(f"{key} {value}" for key, value in self.options)])

    __str__ = render

    def words(self) -> list[str]:
        """The line split into words, ready for :func:`parse_plugin` again."""
        return [self.name, *(word for pair in self.options for word in pair)]

    def get(self, key: str) -> str | None:
        """The value of option ``key``, or None when the line does not set it."""
        return dict(self.options).get(key)

    def get_int(self, key: str, default: int) -> int:
        """Option ``key`` as an integer, or ``default`` when the line does not set it."""
        value = self.get(key)
        return default if value is None else int(value)

    @property
    def compresses(self) -> bool:
        """False for ``none``: it leaves the choice to the next plugin in the list."""
        return self.name != "none"


def parse_plugin(words: Sequence[str]) -> PluginSpec:
    """Validate one plugin line (``["zstd", "level", "4"]``; a plain string is split on blanks).

    :raises PluginError: naming the first word that is not understood.
    """
    if isinstance(words, str):
        words = words.split()
    if not words:
        raise PluginError("empty plugin line: expected one of " + ", ".join(PLUGIN_NAMES))
    name = words[0].lower()
    schema = _SCHEMAS.get(name)
    if schema is None:
        raise PluginError(f"unknown plugin {words[0]!r} (known: {', '.join(PLUGIN_NAMES)})")
    return PluginSpec(name, _parse_options(name, schema, words[1:]))


def _parse_options(
    name: str, schema: Mapping[str, _Check], words: Sequence[str]
) -> tuple[tuple[str, str], ...]:
    options: dict[str, str] = {}
    given: dict[str, str] = {}  # key -> the word as written, for messages about combinations
    for i in range(0, len(words), 2):
        key_word = words[i]
        key = key_word.lower()
        if key not in schema:
            if not schema:
                raise PluginError(f"{name}: takes no options, got {key_word!r}")
            raise PluginError(f"{name}: unknown option {key_word!r} (known: {', '.join(schema)})")
        if key in options:
            raise PluginError(f"{name}: option {key_word!r} given twice")
        if i + 1 == len(words):
            raise PluginError(f"{name}: option {key_word!r} needs a value")
        options[key] = schema[key](name, key, words[i + 1])
        given[key] = words[i + 1]
    if name == "lzma":
        _check_lzma_literal_bits(options, given)
    return tuple(options.items())


def _check_lzma_literal_bits(options: Mapping[str, str], given: Mapping[str, str]) -> None:
    # LZMA2 refuses lc + lp > 4 ("Invalid or unsupported options" from liblzma, naming nothing),
    # so it is caught here, blaming whichever of the two came last on the line.
    if "lc" in options and "lp" in options and int(options["lc"]) + int(options["lp"]) > 4:
        last = [key for key in options if key in ("lc", "lp")][-1]
        raise PluginError(
            f"lzma: {last} {given[last]!r} makes lc + lp = "
            f"{int(options['lc']) + int(options['lp'])}, over LZMA2's limit of 4"
        )


def compression_option(value: str) -> list[PluginSpec]:
    """The plugin list that ``set compression NAME VALUE`` stands for.

    ``on`` -> ``[lz4]`` (fast), ``off`` or ``0`` -> ``[none]``, ``N`` in 1-22 -> ``[zstd level N]``.

    :raises PluginError: naming the value when it is none of these.
    """
    word = value.strip().lower()
    if word == "on":
        return [PluginSpec("lz4")]
    if word == "off":
        return [PluginSpec("none")]
    if not _INTEGER.fullmatch(word):
        raise PluginError(f"compression: {value!r} is not on, off or a number 0-22")
    level = int(word)
    if level == 0:
        return [PluginSpec("none")]
    if not 1 <= level <= 22:
        raise PluginError(f"compression: {value!r} out of range 0-22 (0 = none, N = zstd level N)")
    return [PluginSpec("zstd", (("level", str(level)),))]
