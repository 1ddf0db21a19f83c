"""Tokens of a drbd.conf file, the way drbd-utils' flex scanner (drbdadm_scanner.fl) cuts them.

The scanner knows six kinds of token, and the parser needs no more:

* ``word``: a bare word, number, size, path or IP address: ``resource``, ``128M``,
  ``/dev/drbd0``, ``10.0.0.1``, ``fd00::1``. drbd-utils splits these into STRING, INTEGER,
  IPADDR and IPADDR6 tokens; the parser here looks at the text instead.
* ``string``: a double-quoted string, its text already unescaped (``"a\\"b"`` is ``a"b``).
  A quoted string may not span lines, exactly as in drbd-utils.
* the punctuation ``{ } ; [ ] :``, each its own kind;
* ``other``: any other single character (drbdadm's TK_ELSE); only generic sections may hold them;
* ``eof``: the end of the file.

``#`` starts a comment that runs to the end of the line, outside quoted strings.
Nothing here knows the grammar; :mod:`.parser` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ConfigError", "Token", "tokenize", "PUNCTUATION"]

PUNCTUATION = frozenset("{};[]:")

# A bare word: drbd-utils' STRING class [a-zA-Z0-9/._-]. Numbers, sizes and IPv4 addresses are
# words too; the parser decides what a word means where it stands.
_WORD = re.compile(r"[A-Za-z0-9/._-]+")
# An IPv6 address has at least two colons (``::1``, ``fd00::1``, ``::ffff:10.0.0.1``), optionally a
# ``%scope``. The flex scanner has a rule for it and takes the longest match, so ``fd00::1`` is one
# token, not ``fd00`` ``:`` ``:`` ``1``; we do the same. An IPv4 ``IP:PORT`` never matches (one
# colon), so addresses still split into ``10.0.0.1`` ``:`` ``7789``.
_IPV6 = re.compile(r"(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f.]*(?:%[A-Za-z0-9/._-]+)?")
# A quoted string: no raw newline inside, backslash escapes any character but a newline.
_DQSTRING = re.compile(r'"((?:[^"\\\n]|\\[^\n])*)"')
_ESCAPE = re.compile(r"\\(.)")
_SPACE = re.compile(r"[ \t\r\f\v]+")


class ConfigError(ValueError):
    """A drbd.conf that cannot be used, with the place to look: ``FILE:LINE: what is wrong``.

    ``file`` and ``line`` are also attributes, for callers that want them apart.
    """

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}")
        self.file = file
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Token:
    """One token: its kind, its text (unescaped for strings), and where it stands."""

    kind: str  # "word", "string", one of PUNCTUATION, "other" or "eof"
    text: str
    file: str
    line: int

    def shown(self) -> str:
        """The token as an error message quotes it: ``'}'``, ``'"a b"'``, ``end of file``."""
        if self.kind == "eof":
            return "end of file"
        if self.kind == "string":
            return "'\"" + self.text + "\"'"
        return f"'{self.text}'"

    def is_word(self, *texts: str) -> bool:
        """True for a bare word, or for one of the given bare words."""
        return self.kind == "word" and (not texts or self.text in texts)


def tokenize(text: str, file: str) -> list[Token]:
    """Cut ``text`` (the contents of ``file``) into tokens, ending with one ``eof`` token.

    :raises ConfigError: for a quoted string left open at the end of its line.
    """
    tokens: list[Token] = []
    pos, line, end = 0, 1, len(text)
    while pos < end:
        char = text[pos]
        if char == "\n":
            line += 1
            pos += 1
        elif char in " \t\r\f\v":
            space = _SPACE.match(text, pos)
            assert space is not None  # it matches the character just seen
            pos = space.end()
        elif char == "#":
            newline = text.find("\n", pos)
            pos = end if newline < 0 else newline
        elif char == '"':
            match = _DQSTRING.match(text, pos)
            if match is None:
                raise ConfigError(file, line, "a quoted string is not closed on its line "
                                              "(drbd.conf strings may not span lines)")
            tokens.append(Token("string", _ESCAPE.sub(r"\1", match.group(1)), file, line))
            pos = match.end()
        elif char in PUNCTUATION and not _ipv6_at(text, pos):
            tokens.append(Token(char, char, file, line))
            pos += 1
        else:
            pos = _word_or_other(text, pos, file, line, tokens)
    tokens.append(Token("eof", "", file, line))
    return tokens


def _ipv6_at(text: str, pos: int) -> bool:
    """True if an IPv6 address starting with ``::`` begins at ``pos`` (``::1`` is one token)."""
    return text.startswith("::", pos) and _IPV6.match(text, pos) is not None


def _word_or_other(text: str, pos: int, file: str, line: int, tokens: list[Token]) -> int:
    """Append the word (or IPv6 address, or single odd character) at ``pos``; return the new pos."""
    word = _WORD.match(text, pos)
    ipv6 = _IPV6.match(text, pos)
    # Longest match wins, as in flex: "fd00::1" is an address, "fd00" alone would be a word.
    best = max((m for m in (word, ipv6) if m is not None), key=lambda m: m.end(), default=None)
    if best is None:
        tokens.append(Token("other", text[pos], file, line))
        return pos + 1
    tokens.append(Token("word", best.group(0), file, line))
    return best.end()
