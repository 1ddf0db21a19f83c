"""The control command language: every command form parses, every malformed form is explained."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drbdproxy.spec import COMPRESSION_ON, ConnectionSpec
from drbdproxy.control.commands import (
    OPTIONS,
    TABLE,
    Action,
    AddConnection,
    Command,
    CommandError,
    DelConnection,
    Help,
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
    help_lines,
    parse_command,
)

ADD = "add connection r0-bob-vm 127.0.0.12:7788 192.168.23.2:7790 192.168.23.1:7790 127.0.0.11:7789"
SPEC = ConnectionSpec("r0-bob-vm", ("127.0.0.12", 7788), ("192.168.23.2", 7790),
                      ("192.168.23.1", 7790), ("127.0.0.11", 7789))
M = 1 << 20


@pytest.mark.parametrize(("line", "command"), [
    (ADD, AddConnection(SPEC)),
    ("del connection r0-bob-vm", DelConnection("r0-bob-vm")),
    ("set memlimit r0 128M", SetMemlimit("r0", 128 * M)),
    ("set memlimit r0 4096", SetMemlimit("r0", 4096)),
    ("set read-loops r0 8", SetOption("r0", "read-loops", 8)),
    ("set compression r0 on", SetOption("r0", "compression", COMPRESSION_ON)),
    ("set compression r0 off", SetOption("r0", "compression", 0)),
    ("set compression r0 3", SetOption("r0", "compression", 3)),
    ("set bwlimit r0 10M", SetOption("r0", "bwlimit", 10 * M)),
    ("set bwlimit r0 512k/s", SetOption("r0", "bwlimit", 512 << 10)),
    ("set bwlimit r0 0", SetOption("r0", "bwlimit", 0)),
    ("set sndbuf-size r0 1M", SetOption("r0", "sndbuf-size", M)),
    ("set rcvbuf-size r0 2M", SetOption("r0", "rcvbuf-size", 2 * M)),
    ("set ping-timeout r0 30", SetOption("r0", "ping-timeout", 30)),
    ("set link-cc r0 CUBIC", SetOption("r0", "link-cc", 2)),
    ("set plugin r0 0 zstd level 4", SetPlugin("r0", 0, ("zstd", "level", "4"))),
    ("set plugin r0 1 lzma contexts 4 level 9", SetPlugin("r0", 1, ("lzma", "contexts", "4", "level", "9"))),
    ("set plugin r0 2 none", SetPlugin("r0", 2, ("none",))),
    ("set plugin r0 1 END", SetPlugin("r0", 1, None)),
    ("set plugin r0 1 end", SetPlugin("r0", 1, None)),
    ("set plugin r0 1 End", SetPlugin("r0", 1, None)),
    ("set loglevel debug", SetLoglevel("debug")),
    ("set loglevel warning", SetLoglevel("warn")),
    ("set loglevel critical", SetLoglevel("critical")),
    ("show", Show()),
    ("show proxy-settings r0-bob-vm", ShowProxySettings("r0-bob-vm")),
    ("show memusage", ShowMemusage(False)),
    ("show hmemusage", ShowMemusage(True)),
    ("show version", ShowVersion()),
    ("list connections", ListConnections(False)),
    ("list hconnections", ListConnections(True)),
    ("list subconnections", ListSubconnections(False)),
    ("list hsubconnections", ListSubconnections(True)),
    ("list details", ListDetails()),
    ("show connections", ListConnections(False)),
    ("show hconnections", ListConnections(True)),
    ("show subconnections", ListSubconnections(False)),
    ("show hsubconnections", ListSubconnections(True)),
    ("show details", ListDetails()),
    ("print details", ListDetails()),
    ("print statistics", PrintStatistics()),
    ("show -j", Show(as_json=True)),
    ("show proxy-settings r0 --json", ShowProxySettings("r0", as_json=True)),
    ("show proxy-settings -j r0", ShowProxySettings("r0", as_json=True)),
    ("show memusage -J", ShowMemusage(False, as_json=True)),
    ("show hmemusage --json", ShowMemusage(True, as_json=True)),
    ("show version -j", ShowVersion(as_json=True)),
    ("list connections -j", ListConnections(False, as_json=True)),
    ("list hconnections -j", ListConnections(True, as_json=True)),
    ("list subconnections --json", ListSubconnections(False, as_json=True)),
    ("print details -j", ListDetails(as_json=True)),
    ("print statistics -j", PrintStatistics(as_json=True)),
    ("help", Help()),
    ("quit", Quit()),
    ("shutdown", Shutdown()),
])
def test_every_command_form_parses(line: str, command: object) -> None:
    """Each documented command form parses into the expected command object and values."""
    assert parse_command(line) == command


@pytest.mark.parametrize(("line", "message"), [
    ("", "empty command"),
    ("frobnicate", "unknown command 'frobnicate' (try help)"),
    ("add", "add: expected one of connection"),
    ("add r0", "add: expected one of connection, got 'r0'"),
    ("add connection r0 1.2.3.4:1",
     "add connection: expected NAME LISTEN_INSIDE CONNECT_PEER_OUTSIDE LISTEN_OUTSIDE CONNECT_DRBD"),
    ("add connection r0 1.2.3.4 1.2.3.4:1 1.2.3.4:1 1.2.3.4:1",
     "add connection: LISTEN_INSIDE: bad address '1.2.3.4': expected IP:PORT"),
    ("add connection r0 1.2.3.4:1 1.2.3.4:1 1.2.3.4:1 host:7789",
     "add connection: CONNECT_DRBD: bad address 'host:7789'"),
    ("add connection r0 1.2.3.4:1 1.2.3.4:0 1.2.3.4:1 1.2.3.4:1",
     "add connection: CONNECT_PEER_OUTSIDE: bad address '1.2.3.4:0': port must be 1-65535"),
    (ADD + " trailing", "add connection: unexpected argument 'trailing': options are written --opt=value"),
    (ADD + " --memlimit=12Q", "add connection: --memlimit: bad size '12Q'"),
    (ADD + " --memlimit", "add connection: option --memlimit needs a value: --memlimit=SIZE"),
    (ADD + " --ping-timeout=1.5", "add connection: --ping-timeout: bad ping-timeout '1.5'"),
    ("del connection", "del connection: expected NAME"),
    ("del connection a b", "del connection: expected NAME, got extra 'b'"),
    ("set", "set: expected one of memlimit, read-loops, compression, bwlimit"),
    ("set frob r0 1", "set: expected one of memlimit, read-loops"),
    ("set memlimit r0", "set memlimit: expected NAME SIZE"),
    ("set memlimit r0 12Q", "set memlimit: bad size '12Q'"),
    ("set memlimit r0 0", "set memlimit: bad size '0': must be at least 1 bytes"),
    ("set memlimit r0 1M 2M", "set memlimit: expected NAME SIZE, got extra '2M'"),
    ("set read-loops r0 -1", "set read-loops: bad read-loops '-1': expected an integer >= 1"),
    ("set read-loops r0 0", "set read-loops: bad read-loops '0'"),
    ("set compression r0 maybe", "set compression: bad compression 'maybe': expected on, off or a number"),
    ("set bwlimit r0 fast", "set bwlimit: bad rate 'fast'"),
    ("set sndbuf-size r0 1X", "set sndbuf-size: bad size '1X'"),
    ("set ping-timeout r0 0", "set ping-timeout: bad ping-timeout '0': expected an integer >= 1"),
    ("set link-cc r0 vegas", "set link-cc: bad link-cc 'vegas': expected one of system|bbr|cubic|reno"),
    ("set ping-timeout r0 2.5", "set ping-timeout: bad ping-timeout '2.5'"),
    ("set plugin r0", "set plugin: expected NAME IDX WORDS...|END"),
    ("set plugin r0 1", "set plugin: expected NAME IDX WORDS...|END"),
    ("set plugin r0 x lz4", "set plugin: bad index 'x': expected an integer >= 0"),
    ("set plugin r0 -1 lz4", "set plugin: bad index '-1'"),
    ("set plugin r0 1 END lz4", "set plugin: nothing may follow END, got 'lz4'"),
    ("set loglevel", "set loglevel: expected LEVEL"),
    ("set loglevel loud", "set loglevel: bad level 'loud': expected one of debug, info, warn, error, critical"),
    ("show frob", "show: expected nothing or one of proxy-settings, memusage"),
    ("show proxy-settings", "show proxy-settings: expected NAME"),
    ("show memusage now", "show memusage: takes no arguments, got 'now'"),
    ("list", "list: expected one of connections, hconnections, subconnections, hsubconnections, details"),
    ("list frob", "list: expected one of connections"),
    ("print", "print: expected one of details, statistics"),
    ("set memlimit r0 1M -j", "set memlimit: -j/--json is for the show, list and print commands"),
    ("help --json", "help: -j/--json is for the show, list and print commands"),
    ("show proxy-settings -j", "show proxy-settings: expected NAME"),
    ("list connections -j extra", "list connections: takes no arguments, got 'extra'"),
    ("quit now", "quit: takes no arguments, got 'now'"),
    ("shutdown -f", "shutdown: takes no arguments, got '-f'"),
])
def test_malformed_input_is_explained(line: str, message: str) -> None:
    """Malformed or unknown input raises CommandError (a ValueError) saying what was expected."""
    with pytest.raises(CommandError) as caught:
        parse_command(line)
    assert isinstance(caught.value, ValueError)
    assert message in str(caught.value)


def test_add_connection_options_are_parsed_and_unknown_ones_warned() -> None:
    """Known --opt=value options are converted like `set`; unknown ones only produce a warning."""
    command = parse_command(ADD + " --memlimit=128M --read-loops=8 --compression=on --bwlimit=10M"
                            " --sndbuf-size=1M --rcvbuf-size=2M --ping-timeout=30 --frob=1 --Nodelay")
    assert isinstance(command, AddConnection)
    assert command.spec.options == {"memlimit": 128 * M, "read-loops": 8, "compression": COMPRESSION_ON,
                                    "bwlimit": 10 * M, "sndbuf-size": M, "rcvbuf-size": 2 * M,
                                    "ping-timeout": 30}
    assert command.warnings == ("add connection: unknown option --frob=1 ignored",
                                "add connection: unknown option --Nodelay ignored")
    assert parse_command(ADD).warnings == ()


@pytest.mark.parametrize(("text", "address"), [
    ("fd00::1:7789", ("fd00::1", 7789)),
    ("[fd00::1]:7789", ("fd00::1", 7789)),
    ("::1:7788", ("::1", 7788)),
    ("[::1]:7788", ("::1", 7788)),
    ("fe80::a:b:c:d:1", ("fe80::a:b:c:d", 1)),
    ("10.0.0.1:7789", ("10.0.0.1", 7789)),
])
def test_ipv6_addresses_with_and_without_brackets(text: str, address: tuple[str, int]) -> None:
    """IPv6 addresses are split at the last colon, with or without brackets, in every position."""
    line = f"add connection r0 {text} {text} {text} {text}"
    spec = parse_command(line).spec  # type: ignore[attr-defined]
    assert (spec.listen_inside, spec.connect_peer_outside, spec.listen_outside, spec.connect_drbd) == (address,) * 4


@pytest.mark.parametrize(("line", "command"), [
    ("SHOW MEMUSAGE", ShowMemusage(False)),
    ("Show Proxy-Settings R0", ShowProxySettings("R0")),
    ("SET MemLimit R0 1m", SetMemlimit("R0", M)),
    ("Set Compression r0 ON", SetOption("r0", "compression", COMPRESSION_ON)),
    ("SET PLUGIN r0 0 LZ4 Level 9", SetPlugin("r0", 0, ("LZ4", "Level", "9"))),
    ("LIST HSubConnections", ListSubconnections(True)),
    ("Print Statistics", PrintStatistics()),
    ("ADD CONNECTION R0 1.2.3.4:1 1.2.3.4:2 1.2.3.4:3 1.2.3.4:4 --MEMLIMIT=1M",
     AddConnection(ConnectionSpec("R0", ("1.2.3.4", 1), ("1.2.3.4", 2), ("1.2.3.4", 3),
                                  ("1.2.3.4", 4), {"memlimit": M}))),
    ("  show\tversion  ", ShowVersion()),
    ("set loglevel DEBUG", SetLoglevel("debug")),
])
def test_keywords_are_case_insensitive(line: str, command: object) -> None:
    """Keywords and fixed values match in any case; names and plugin words keep their case."""
    assert parse_command(line) == command


# The argv drbdadm passes (reference/drbd-proxy-product.md section 3, machine-and-baselines.md 2).
DRBDADM_STRINGS = [
    "add connection r0-bob-vm 127.0.0.12:7788 192.168.23.2:7790 192.168.23.1:7790 127.0.0.11:7789",
    "set memlimit r0-bob-vm 100M",
    "set compression r0-bob-vm on",
    "del connection r0-bob-vm",
    "set plugin r0-bob-vm 0 lz4 level 9",
    "set plugin r0-bob-vm 1 END",
    "set compression r0-bob-vm 1",
    "set plugin r0-bob-vm 0 zlib level 6",
    "set plugin r0-bob-vm 2 END",
    "set ping-timeout r0-bob-vm 30",
    "set rcvbuf-size r0-bob-vm 1M",
    "set sndbuf-size r0-bob-vm 1M",
    "set bwlimit r0-bob-vm 10M",
    "set read-loops r0-bob-vm 8",
    "set memlimit r0-bob-vm 128M",
    "add connection r0-vm-bob 127.0.0.22:7788 192.168.23.1:7790 192.168.23.2:7790 127.0.0.21:7789",
    "add connection r0-peer-undertest 10.0.1.1:7789 10.0.2.2:7789 10.0.2.1:7789 10.0.0.1:7789 --memlimit=128M",
    "set plugin r0-peer-undertest 0 zstd level 4",
    "set plugin r0-peer-undertest 1 end",
    "show proxy-settings r0-peer-undertest",
    "add connection proxy_2sites_3nodes-charlie-alpha fd00::1:7789 fd00::2:7789 fd00::3:7789 fd00::4:7789",
]


@pytest.mark.parametrize("line", DRBDADM_STRINGS)
def test_drbdadm_strings_parse(line: str) -> None:
    """Every command string drbdadm 8.4/9.x is documented to send parses without warnings."""
    assert parse_command(line).warnings == ()


def test_drbdadm_dry_run_line_parses() -> None:
    """The shell-escaped `drbdadm -d` output of proxy-up, split like a shell, parses command by command."""
    dry = ("drbd-proxy-ctl -c set\\ memlimit\\ r0-bob-vm\\ 100M -c set\\ plugin\\ r0-bob-vm\\ 0\\ lz4\\ level\\ 9"
           " set\\ plugin\\ r0-bob-vm\\ 1\\ END")
    argv = shlex.split(dry)[1:]
    commands = [a for a in argv if a != "-c"]
    assert [parse_command(c) for c in commands] == [
        SetMemlimit("r0-bob-vm", 100 * M),
        SetPlugin("r0-bob-vm", 0, ("lz4", "level", "9")),
        SetPlugin("r0-bob-vm", 1, None),
    ]


def test_session_actions_and_mutation_flags() -> None:
    """quit and shutdown carry their session action; exactly the add/del/set commands mutate."""
    assert parse_command("quit").action is Action.QUIT
    assert parse_command("shutdown").action is Action.SHUTDOWN
    assert parse_command("show").action is Action.REPLY
    for line in DRBDADM_STRINGS:
        assert parse_command(line).mutates == (not line.startswith("show"))
    assert not parse_command("print statistics").mutates


def test_help_has_one_line_per_command_with_apply_timing() -> None:
    """help renders one line per table entry, and says for each set option when it applies."""
    lines = help_lines()[:len(TABLE)]
    assert all(len(line.split("\n")) == 1 for line in lines)
    by_command = {line.split()[1]: line for line in lines if line.startswith("set ")}
    expected = {"memlimit": "applies live", "plugin": "applies live at the next chunk",
                "compression": "applies live at the next chunk", "bwlimit": "applies live",
                "ping-timeout": "applies live", "read-loops": "applies never",
                "sndbuf-size": "applies on reconnect", "rcvbuf-size": "applies on reconnect"}
    for option, timing in expected.items():
        assert timing in by_command[option], option
    for word in ("add connection", "del connection", "show proxy-settings", "list|show connections",
                 "list|show|print details", "print statistics", "quit", "shutdown", "help"):
        assert any(line.startswith(word) for line in lines), word
    assert set(OPTIONS) | {"plugin", "loglevel"} == set(by_command)


def test_help_states_the_defaults_and_the_json_flag() -> None:
    """After the commands, help names every default (lz4 compression, 16M memlimit, ...) and -j."""
    lines = help_lines()
    assert lines[len(TABLE)] == ""
    defaults = next(line for line in lines if line.startswith("defaults: "))
    for text in ("memlimit 16M", "compression lz4", "bwlimit 0", "ping-timeout 100 (10 s)",
                 "link-cc bbr"):
        assert text in defaults, text
    assert any("-j or --json" in line for line in lines[len(TABLE):])
    assert "list|show connections [-j]" in "\n".join(lines)
    assert "add connection NAME" in lines[0] and "[-j]" not in lines[0]


def test_every_table_spelling_parses_to_its_entry() -> None:
    """The table is self-consistent: each spelling with placeholder arguments builds a command."""
    samples = {"NAME": "r0", "SIZE": "1M", "N": "1", "on|off|N": "on", "RATE": "1M", "TENTHS": "5",
               "IDX": "0", "LEVEL": "info", "WORDS...|END": "END", "[--opt=value]...": "",
               "LISTEN_INSIDE": "1.1.1.1:1", "CONNECT_PEER_OUTSIDE": "1.1.1.1:2",
               "LISTEN_OUTSIDE": "1.1.1.1:3", "CONNECT_DRBD": "1.1.1.1:4",
               "system|bbr|cubic|reno": "bbr"}
    for entry in TABLE:
        args = " ".join(samples[m] for m in entry.syntax.split())
        commands = [parse_command(f"{spelling} {args}") for spelling in entry.spellings]
        assert all(isinstance(c, Command) for c in commands), entry.spellings
        assert all(c == commands[0] for c in commands), entry.spellings


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=80))
def test_arbitrary_text_parses_or_raises_command_error(text: str) -> None:
    """Whatever the input, the parser returns a command or raises CommandError, nothing else."""
    try:
        parse_command(text)
    except CommandError as e:
        assert str(e)
