"""A recursive-descent parser for drbd.conf (DRBD 8.4 and 9), proxy parts in full, the rest skipped.

It reads what drbdadm reads (drbd-utils user/v9/drbdadm_parser.c, user/v84/drbdadm_parser.c):

* top level: ``global { }``, ``common { }``, ``resource NAME { }``, ``skip ... { }`` and
  ``include "GLOB";`` (only there, as in drbdadm);
* in a resource: ``on HOST... { }``, ``stacked-on-top-of RES { }``, ``floating ADDR { }``,
  ``connection [NAME] { }``, ``proxy { }`` and ``template-file "FILE";``;
* in a host section: ``address``, ``proxy on HOST... { inside; outside; [options { }] }``;
* in a connection: ``host NAME [address A | port P] [via proxy on HOST... { }]``, ``path { }``.

Every other statement (``disk``, ``net { }``, ``volume 0 { }``, ``handlers { }``, ...) is skipped
as a unit: words up to ``;``, or up to a ``{ }`` block with its braces balanced.

Includes follow drbdadm: the pattern is relative to the directory of the including file, matches
are read in sorted order, a pattern with wildcards that matches nothing is fine, a plain file name
that does not exist is an error, and a file already read (by real path) is not read again, which
is also what ends an include cycle.
"""

from __future__ import annotations

import glob
import ipaddress
import os
from pathlib import Path as FsPath

from drbdproxy.config.lexer import ConfigError, Token, tokenize
from drbdproxy.config.model import (
    PROXY_OPTIONS,
    Address,
    Config,
    Connection,
    HostRef,
    HostSection,
    Location,
    Path,
    ProxyOption,
    ProxySection,
    ProxySettings,
    Resource,
    validate,
)
from drbdproxy.units import parse_size

__all__ = ["load", "loads"]

_FAMILIES = ("ipv4", "ipv6", "ssocks", "sdp", "sci")
_SIZE_OPTIONS = frozenset({"memlimit", "bwlimit", "sndbuf-size", "rcvbuf-size"})
# DRBD's limits for the proxy options that are also DRBD net options (drbd_limits.h).
_LIMITS = {
    "sndbuf-size": (0, 10 << 20, " bytes (10M)"),
    "rcvbuf-size": (0, 10 << 20, " bytes (10M)"),
    "ping-timeout": (1, 300, " tenths of a second"),
}


def load(path: str | os.PathLike[str]) -> Config:
    """Parse the drbd.conf at ``path`` and everything it includes.

    :raises ConfigError: ``FILE:LINE: what was expected, got what``.
    :raises OSError: if ``path`` itself cannot be read.
    """
    name = os.fspath(path)
    text = FsPath(name).read_text(encoding="utf-8", errors="replace")
    return loads(text, name)


def loads(text: str, path: str | os.PathLike[str] = "drbd.conf") -> Config:
    """Parse drbd.conf ``text`` as if read from ``path`` (includes are relative to its directory)."""
    builder = _Builder()
    builder.parse_file(text, os.fspath(path))
    return builder.config()


def _glob(pattern: str, base: str) -> list[str]:
    """glob(3) as drbdadm runs it from the including file's directory: sorted matches.

    The directory is not part of the pattern, so glob characters in its name mean nothing.
    """
    if os.path.isabs(pattern):
        return sorted(glob.glob(pattern))
    return sorted(os.path.join(base, m) for m in glob.glob(pattern, root_dir=base or None))


class _Stream:
    """The tokens of one file, with the look-ahead and error helpers the grammar needs."""

    def __init__(self, tokens: list[Token]) -> None:
        self._tokens = tokens
        self._pos = 0

    def peek(self) -> Token:
        return self._tokens[self._pos]

    def next(self) -> Token:
        token = self._tokens[self._pos]
        if token.kind != "eof":
            self._pos += 1
        return token

    def expect(self, kind: str, after: str, what: str | None = None) -> Token:
        """The next token, which must be of ``kind`` (a punctuation char, "word" or "string")."""
        token = self.next()
        if token.kind != kind:
            raise unexpected(token, what or f"'{kind}'", after)
        return token

    def expect_name(self, after: str, what: str = "a name") -> Token:
        """A bare word or a quoted string."""
        token = self.next()
        if token.kind not in ("word", "string"):
            raise unexpected(token, what, after)
        return token


def unexpected(token: Token, what: str, after: str | None = None) -> ConfigError:
    """``expected X after 'CONTEXT', got 'Y'`` at the token's place."""
    where = f" after '{after}'" if after else ""
    return ConfigError(token.file, token.line, f"expected {what}{where}, got {token.shown()}")


def _loc(token: Token) -> Location:
    return Location(token.file, token.line)


class _Builder:
    """Collects resources and the common section over the main file and its includes."""

    def __init__(self) -> None:
        self.resources: list[Resource] = []
        self.common: ProxySettings | None = None
        self.common_at: Location | None = None
        self.files: list[str] = []
        self._seen: set[str] = set()

    def config(self) -> Config:
        return Config(tuple(self.resources), self.common or ProxySettings(), tuple(self.files))

    # --- files and includes -------------------------------------------------------------------

    def parse_file(self, text: str, file: str) -> None:
        self._seen.add(os.path.realpath(file))
        self.files.append(file)
        stream = _Stream(tokenize(text, file))
        while not self._top_statement(stream):
            pass

    def _include(self, pattern: Token) -> None:
        base = os.path.dirname(pattern.file)
        matches = _glob(pattern.text, base)
        if not matches and not any(c in pattern.text for c in "*?["):
            full = os.path.join(base, pattern.text)
            raise ConfigError(pattern.file, pattern.line,
                              f"cannot open include file '{pattern.text}' (looked for {full})")
        for match in matches:
            if os.path.realpath(match) in self._seen:
                continue  # drbdadm reads each file once; this also ends include cycles
            try:
                text = FsPath(match).read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                raise ConfigError(pattern.file, pattern.line,
                                  f"cannot open include file '{match}': {exc.strerror}") from None
            self.parse_file(text, match)

    # --- top level ----------------------------------------------------------------------------

    def _top_statement(self, stream: _Stream) -> bool:
        """Parse one top-level statement; True at the end of the file."""
        token = stream.next()
        if token.kind == "eof":
            return True
        if token.is_word("global"):
            stream.expect("{", "global")
            _skip_block(stream, token, "global")
        elif token.is_word("common"):
            self._common(stream, token)
        elif token.is_word("resource"):
            self._resource(stream, token)
        elif token.is_word("skip"):
            _skip_section(stream, token)
        elif token.is_word("include"):
            pattern = stream.expect_name("include", "a file name or pattern in quotes")
            stream.expect(";", f'include "{pattern.text}"')
            self._include(pattern)
        else:
            raise unexpected(token, "'global', 'common', 'resource', 'skip' or 'include'")
        return False

    def _common(self, stream: _Stream, start: Token) -> None:
        if self.common_at is not None:
            raise _loc(start).error(f"a second 'common' section (the first is at {self.common_at})")
        stream.expect("{", "common")
        body = _ResourceBody(stream, "common", start, self, is_common=True)
        self.common, self.common_at = body.proxy, _loc(start)

    def _resource(self, stream: _Stream, start: Token) -> None:
        name = stream.expect_name("resource", "a resource name")
        stream.expect("{", f"resource {name.text}")
        for other in self.resources:
            if other.name == name.text:
                raise _loc(name).error(
                    f"resource '{name.text}' is defined twice (first at {other.location})")
        body = _ResourceBody(stream, name.text, start, self, is_common=False)
        resource = Resource(name.text, tuple(body.hosts), tuple(body.connections), body.proxy,
                            _loc(start), body.template)
        validate(resource)
        self.resources.append(resource)

    def template(self, file_token: Token) -> ProxySettings:
        """The proxy section of a ``template-file``, which holds one ``common { }`` section."""
        path = os.path.join(os.path.dirname(file_token.file), file_token.text)
        try:
            text = FsPath(path).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise _loc(file_token).error(
                f"cannot open template file '{file_token.text}': {exc.strerror}") from None
        stream = _Stream(tokenize(text, path))
        start = stream.next()
        if not start.is_word("common"):
            raise unexpected(start, "'common' (a template file holds one common section)")
        stream.expect("{", "common")
        return _ResourceBody(stream, "common", start, self, is_common=True).proxy


class _ResourceBody:
    """The statements of a ``resource`` (or ``common``) section, up to its closing brace."""

    def __init__(self, stream: _Stream, name: str, start: Token, builder: _Builder,
                 is_common: bool) -> None:
        self.hosts: list[HostSection] = []
        self.connections: list[Connection] = []
        self.proxy = ProxySettings()
        self.template: ProxySettings | None = None
        self._proxy_at: Location | None = None
        self._name, self._builder, self._common = name, builder, is_common
        label = "common" if is_common else f"resource {name}"
        while True:
            token = stream.next()
            if token.kind == "}":
                return
            if token.kind == "eof":
                raise unexpected(token, f"'}}' to close '{label}' (opened at line {start.line})")
            self._statement(stream, token)

    def _statement(self, stream: _Stream, token: Token) -> None:
        if token.is_word("on", "stacked-on-top-of", "floating", "connection") and self._common:
            raise _loc(token).error(
                f"'{token.text}' is not allowed in the common section, only in a resource")
        if token.is_word("on"):
            names = _host_names(stream, "on")
            self.hosts.append(_host_section(stream, names, token, "on"))
        elif token.is_word("stacked-on-top-of"):
            lower = stream.expect_name("stacked-on-top-of", "the name of the lower resource")
            stream.expect("{", f"stacked-on-top-of {lower.text}")
            self.hosts.append(_host_section(stream, (), token, "stacked"))
        elif token.is_word("floating"):
            self.hosts.append(_floating_section(stream, token))
        elif token.is_word("connection"):
            self.connections.append(_connection(stream, token))
        elif token.is_word("proxy"):
            self._proxy_section(stream, token)
        elif token.is_word("template-file"):
            file_token = stream.expect_name("template-file", "a file name in quotes")
            stream.expect(";", f'template-file "{file_token.text}"')
            self.template = self._builder.template(file_token)
        elif token.is_word("skip"):
            _skip_section(stream, token)
        else:
            _skip_statement(stream, token)

    def _proxy_section(self, stream: _Stream, token: Token) -> None:
        if self._proxy_at is not None:
            raise _loc(token).error(
                f"a second 'proxy' section in {self._name} (the first is at {self._proxy_at})")
        stream.expect("{", "proxy")
        self.proxy, self._proxy_at = _proxy_settings(stream, token, "proxy"), _loc(token)


# --- host sections ------------------------------------------------------------------------------


def _host_names(stream: _Stream, keyword: str) -> tuple[str, ...]:
    """``HOST [HOST...] {``: the names up to (and eating) the opening brace."""
    names: list[str] = []
    while True:
        token = stream.next()
        if token.kind in ("word", "string"):
            names.append(token.text)
        elif token.kind == "{" and names:
            return tuple(names)
        else:
            raise unexpected(token, "a host name" + (" or '{'" if names else ""),
                             " ".join([keyword, *names]))


def _host_section(stream: _Stream, names: tuple[str, ...], start: Token, kind: str) -> HostSection:
    """The body of ``on HOSTS { }`` or ``stacked-on-top-of RES { }`` (brace already eaten)."""
    address: Address | None = None
    proxy: ProxySection | None = None
    label = f"on {' '.join(names)}" if names else start.text
    while True:
        token = stream.next()
        if token.kind == "}":
            return HostSection(names, address, proxy, _loc(start), kind)
        if token.kind == "eof":
            raise unexpected(token, f"'}}' to close '{label}' (opened at line {start.line})")
        if token.is_word("address"):
            address = _address(stream, "address")
            stream.expect(";", f"address {address}")
        elif token.is_word("proxy"):
            proxy = _proxy_on(stream, token)
        elif token.is_word("skip"):
            _skip_section(stream, token)
        else:
            _skip_statement(stream, token)


def _floating_section(stream: _Stream, start: Token) -> HostSection:
    """``floating ADDR { ... }`` or ``floating ADDR;``: a host known by its address."""
    address = _address(stream, "floating")
    token = stream.next()
    if token.kind == ";":
        return HostSection((str(address),), address, None, _loc(start), "floating")
    if token.kind != "{":
        raise unexpected(token, "'{' or ';'", f"floating {address}")
    section = _host_section(stream, (str(address),), start, "floating")
    return HostSection(section.names, address, section.proxy, section.location, "floating")


# --- proxy sections -----------------------------------------------------------------------------


def _proxy_on(stream: _Stream, start: Token) -> ProxySection:
    """``proxy on HOST... { inside A; outside A; [options { }] }`` after the word ``proxy``."""
    on = stream.next()
    if not on.is_word("on"):
        raise unexpected(on, "'on'", "proxy")
    hosts = _host_names(stream, "proxy on")
    label = f"proxy on {' '.join(hosts)}"
    inside = outside = None
    settings = ProxySettings()
    while True:
        token = stream.next()
        if token.is_word("inside", "outside"):
            address = _address(stream, token.text)
            stream.expect(";", f"{token.text} {address}")
            if token.text == "inside":
                inside = address
            else:
                outside = address
        elif token.is_word("options"):
            stream.expect("{", f"{label} {{ options")
            settings = _proxy_settings(stream, token, "options")
        elif token.kind == "}":
            break
        else:
            raise unexpected(token, "'inside', 'outside', 'options' or '}'", f"{label} {{")
    for keyword, value in (("inside", inside), ("outside", outside)):
        if value is None:
            raise _loc(start).error(f"in section '{label} {{ ... }}': '{keyword}' keyword missing")
    assert inside is not None and outside is not None
    return ProxySection(hosts, inside, outside, settings, _loc(start))


def _proxy_settings(stream: _Stream, start: Token, label: str) -> ProxySettings:
    """The body of ``proxy { }`` or ``options { }``: proxy options and a ``plugin { }`` block."""
    options: list[ProxyOption] = []
    plugins: tuple[str, ...] = ()
    while True:
        token = stream.next()
        if token.kind == "}":
            return ProxySettings(tuple(options), plugins, _loc(start))
        if token.is_word(*PROXY_OPTIONS):
            options.append(_proxy_option(stream, token))
        elif token.is_word("plugin"):
            stream.expect("{", "plugin")
            plugins = _plugin_lines(stream)  # a later plugin block replaces an earlier one
        else:
            raise unexpected(token, f"a proxy option ({' | '.join(PROXY_OPTIONS)} | plugin) "
                                    "or '}'", f"{label} {{")


def _proxy_option(stream: _Stream, name: Token) -> ProxyOption:
    """``NAME VALUE;`` with the value checked the way the proxy will read it."""
    value = stream.next()
    if value.kind not in ("word", "string"):
        raise unexpected(value, f"a value for '{name.text}'", name.text)
    stream.expect(";", f"{name.text} {value.text}")
    _check_value(name, value)
    return ProxyOption(name.text, value.text, _loc(name))


def _check_value(name: Token, value: Token) -> None:
    """Sizes and counts must be numbers (k/M/G suffix allowed); compression also on or off.

    The socket buffer sizes and ping-timeout are DRBD net options too, and drbdadm holds them to
    DRBD's limits (drbd_limits.h); so do we, rather than let the proxy be told what DRBD refuses.
    (drbdadm-84 checks only the buffer sizes; a ping-timeout of 0 or above 300 is refused here
    for both.)
    """
    if name.text == "compression" and value.text in ("on", "off"):
        return  # DRBD 8.4 / proxy v1 wording; drbdadm 9 wants a number, drbdadm-84 passes it on
    try:
        number = parse_size(value.text, drbd=True)
    except ValueError:
        allowed = "a number, 'on' or 'off'" if name.text == "compression" else (
            "a size like 128M (a number with an optional k, M or G suffix)"
            if name.text in _SIZE_OPTIONS else "a number")
        raise _loc(value).error(f"'{name.text} {value.text}': the value must be {allowed}") from None
    low, high, unit = _LIMITS.get(name.text, (0, None, ""))
    if number < low or (high is not None and number > high):
        raise _loc(value).error(f"'{name.text} {value.text}' is out of range: DRBD allows "
                                f"{low} to {high}{unit}")


def _plugin_lines(stream: _Stream) -> tuple[str, ...]:
    """``LINE; LINE; ... }``: each line's words joined by single spaces, as drbdadm stores them."""
    lines: list[str] = []
    words: list[str] = []
    while True:
        token = stream.next()
        if token.kind == ";":
            if words:
                lines.append(" ".join(words))
            words = []
        elif token.kind == "}":
            if words:
                raise unexpected(token, "';'", " ".join(words))
            return tuple(lines)
        elif token.kind in ("eof", "{"):
            raise unexpected(token, "a plugin line ending in ';', or '}'", "plugin {")
        else:
            words.append(token.text)


# --- connections --------------------------------------------------------------------------------


def _connection(stream: _Stream, start: Token) -> Connection:
    """``connection [NAME] { host ...; path { } ... }`` after the word ``connection``."""
    name: str | None = None
    token = stream.next()
    if token.kind in ("word", "string"):
        name = token.text
        stream.expect("{", f"connection {name}")
    elif token.kind != "{":
        raise unexpected(token, "a connection name or '{'", "connection")
    label = "connection" + (f" {name}" if name else "")
    direct: list[HostRef] = []
    paths: list[Path] = []
    while True:
        token = stream.next()
        if token.kind == "}":
            break
        if token.is_word("host", "address"):
            direct.append(_host_ref(stream, token))
        elif token.is_word("path"):
            paths.append(_path(stream, token))
        elif token.is_word("proxy"):
            raise _loc(token).error(
                "a 'proxy' section is not allowed in a connection: put proxy options at resource "
                "level, or in 'via proxy on HOST { ... options { ... } }'")
        elif token.kind == "eof":
            raise unexpected(token, f"'}}' to close '{label}' (opened at line {start.line})")
        elif token.is_word("skip"):
            _skip_section(stream, token)
        else:
            _skip_statement(stream, token)
    if direct:
        paths.insert(0, Path(tuple(direct), _loc(start)))
    if not paths:
        raise _loc(start).error(f"'{label}' has no 'host' statements")
    return Connection(name, tuple(paths), _loc(start))


def _path(stream: _Stream, start: Token) -> Path:
    stream.expect("{", "path")
    hosts: list[HostRef] = []
    while True:
        token = stream.next()
        if token.kind == "}":
            return Path(tuple(hosts), _loc(start))
        if token.is_word("host", "address"):
            hosts.append(_host_ref(stream, token))
        else:
            raise unexpected(token, "'host' or '}'", "path {")


def _host_ref(stream: _Stream, start: Token) -> HostRef:
    """``host NAME [address A | port P] [via proxy on ... { } | ;]`` or ``address A ...``."""
    name: str | None = None
    address: Address | None = None
    port: int | None = None
    if start.is_word("address"):
        address = _address(stream, "address")
        said = f"address {address}"
    else:
        name = stream.expect_name("host", "a host name").text
        said = f"host {name}"
        if stream.peek().is_word("address"):
            stream.next()
            address = _address(stream, f"{said} address")
            said += f" address {address}"
        elif stream.peek().is_word("port"):
            stream.next()
            port = _port(stream.next(), f"{said} port")
            said += f" port {port}"
    token = stream.next()
    if token.kind == ";":
        return HostRef(name, address, port, None, _loc(start))
    if not token.is_word("via"):
        raise unexpected(token, "'via proxy on ...' or ';'", said)
    proxy_word = stream.next()
    if not proxy_word.is_word("proxy"):
        raise unexpected(proxy_word, "'proxy'", f"{said} via")
    return HostRef(name, address, port, _proxy_on(stream, proxy_word), _loc(start))


# --- addresses ----------------------------------------------------------------------------------


def _address(stream: _Stream, after: str) -> Address:
    """``[ipv4|ipv6|ssocks|sdp] IP:PORT``; IPv6 in brackets (``ipv6 [fd00::1]:7789``).

    drbdadm insists on the ``ipv6`` keyword before a bracketed address; ``[fd00::1]:7789`` alone
    is accepted here too, since it cannot mean anything else.
    """
    token = stream.next()
    family = "ipv4"
    if token.is_word(*_FAMILIES):
        family = "ssocks" if token.text == "sci" else token.text  # sci is ssocks' old name
        after = f"{after} {token.text}"
        token = stream.next()
    if token.kind == "[" or family == "ipv6":
        if token.kind != "[":
            raise unexpected(token, "'[' (IPv6 addresses go in brackets: ipv6 [fd00::1]:7789)",
                             after)
        host = _ip(stream.next(), 6, after + " [")
        stream.expect("]", f"{after} [{host}", "']'")
        family = "ipv6"
    else:
        host = _ip(token, 4 if family == "ipv4" else None, after)
    stream.expect(":", f"{after} {host}", "':' and a port")
    return Address(family, host, _port(stream.next(), f"{after} {host}:"))


def _ip(token: Token, version: int | None, after: str) -> str:
    """An IP address token, checked (IPv4 or IPv6 as asked), returned as written."""
    what = {4: "an IPv4 address", 6: "an IPv6 address", None: "an address"}[version]
    if token.kind != "word":
        raise unexpected(token, what, after)
    if version is not None:
        try:
            parsed = ipaddress.ip_address(token.text)
        except ValueError:
            raise unexpected(token, what, after) from None
        if parsed.version != version:
            raise unexpected(token, what, after)
    return token.text


def _port(token: Token, after: str) -> int:
    if token.kind != "word" or not token.text.isdigit() or not 0 < int(token.text) < 65536:
        raise unexpected(token, "a port number (1-65535)", after)
    return int(token.text)


# --- skipping what the proxy does not need -------------------------------------------------------


def _skip_statement(stream: _Stream, first: Token) -> None:
    """Skip ``WORDS... ;`` or ``WORDS... { ... }`` (braces balanced), starting after ``first``."""
    words = [first.text]
    if first.kind in ("{", ";", "]", ":", "["):
        raise unexpected(first, "a keyword")
    while True:
        token = stream.next()
        if token.kind == ";":
            return
        if token.kind == "{":
            _skip_block(stream, first, " ".join(words))
            return
        if token.kind in ("}", "eof"):
            raise unexpected(token, "';'", " ".join(words))
        words.append(token.text if token.kind != "string" else f'"{token.text}"')


def _skip_section(stream: _Stream, start: Token) -> None:
    """drbdadm's ``skip``: anything up to a ``{``, then that block, braces balanced."""
    while True:
        token = stream.next()
        if token.kind == "{":
            _skip_block(stream, start, "skip")
            return
        if token.kind == "eof":
            raise _loc(start).error("reached the end of the file inside this 'skip' section")


def _skip_block(stream: _Stream, start: Token, label: str) -> None:
    """Skip to the brace closing a block whose ``{`` was just read."""
    depth = 1
    while depth:
        token = stream.next()
        if token.kind == "{":
            depth += 1
        elif token.kind == "}":
            depth -= 1
        elif token.kind == "eof":
            raise unexpected(token, f"'}}' to close '{label}' (opened at line {start.line})")
