"""The interactive drbd-proxy-ctl shell in a real terminal (tmux), and telnet on a real TCP
control endpoint, against real daemons."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from daemon import Daemon, ProxyPair, wait_until
from helpers import free_ports, have, tool

PROMPT = "drbd-proxy> "  # capture-pane drops blanks at line ends: expect none after text
QUESTION = "Shut down drbd-proxy? [y/N]"
IAC, DO, WILL, WONT, DONT, SB, IP, TIMING_MARK, ECHO, NAWS = 255, 253, 251, 252, 254, 250, 244, 6, 1, 31
CTRL_C = bytes([IAC, IP, IAC, DO, TIMING_MARK])  # what telnet sends for Ctrl-C
BANNER = b"%hello drbdproxy 0.1.0 control; type help, or quit to leave\r\n"

needs_tmux = pytest.mark.skipif(not have("tmux"), reason="tmux is not installed (.ci/run installs it)")


class Terminal:
    """A private tmux server; each named session runs one command in a 200x50 terminal."""

    def __init__(self, home: Path) -> None:
        self._dir = tempfile.mkdtemp(prefix="tmux")  # a short path: AF_UNIX names are limited
        self._socket = os.path.join(self._dir, "s")
        self._env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TERM": "xterm"}

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self._socket, "-f", "/dev/null", *args], env=self._env,
                              capture_output=True, text=True, check=True, timeout=30).stdout

    def start(self, name: str, *argv: str) -> None:
        """Run ``argv``; when it ends, the pane shows ``[exit STATUS]`` and stays."""
        command = f"{shlex.join(argv)}; echo \"[exit $?]\"; exec cat"
        self._tmux("new-session", "-d", "-x", "200", "-y", "50", "-s", name, command)

    def type(self, name: str, text: str) -> None:
        self._tmux("send-keys", "-t", name, "-l", text)

    def key(self, name: str, *keys: str) -> None:
        self._tmux("send-keys", "-t", name, *keys)

    def screen(self, name: str) -> str:
        return self._tmux("capture-pane", "-p", "-t", name)

    def wait_for(self, name: str, text: str, count: int = 1) -> str:
        """The screen, once ``text`` shows on it (``count`` times); fails after 60 s."""
        try:
            wait_until(lambda: self.screen(name).count(text.rstrip(" ")) >= count, f"{text!r} on {name}")
        except AssertionError as e:
            raise AssertionError(f"{e}; the screen:\n{self.screen(name)}") from None
        return self.screen(name)

    def wait_for_line(self, name: str, line: str) -> str:
        """The screen, once a whole line of it is ``line``; fails after 60 s."""
        return self.wait_for(name, f"\n{line}\n")

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self._socket, "kill-server"], capture_output=True, timeout=30)
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(tmp_path)
    yield term
    term.close()


def ctl_shell(daemon: Daemon) -> tuple[str, ...]:
    return (tool("drbd-proxy-ctl"), "-s", str(daemon.socket))


def add(daemon: Daemon, name: str) -> None:
    """A connection that stays Connecting (nothing listens at its peer)."""
    ports = free_ports(4)
    daemon.ctl("-c", f"add connection {name} " + " ".join(f"127.0.0.1:{p}" for p in ports), check=True)


@needs_tmux
def test_tab_completes_commands_and_names(tmp_path: Path, terminal: Terminal) -> None:
    """Tab completes multi-word commands (show mem<Tab>, print st<Tab>) and connection names
    from the daemon (del connection r0-<Tab>); a double Tab lists the choices; the completed
    commands run. With no connection Connected, shutdown asks nothing: the shell says the
    daemon is shutting down, exits 0, and the daemon stops."""
    daemon = Daemon(tmp_path)
    try:
        add(daemon, "r0-bob-alice")
        add(daemon, "r1-carol-alice")
        terminal.start("ctl", *ctl_shell(daemon))
        terminal.wait_for("ctl", PROMPT)

        terminal.type("ctl", "show mem")
        terminal.key("ctl", "Tab")
        terminal.wait_for("ctl", PROMPT + "show memusage ")
        terminal.key("ctl", "Enter")
        terminal.wait_for("ctl", "r1-carol-alice: buffered 0 memlimit")

        terminal.type("ctl", "pri")
        terminal.key("ctl", "Tab")
        terminal.type("ctl", "st")
        terminal.key("ctl", "Tab")
        terminal.wait_for("ctl", PROMPT + "print statistics ")
        terminal.key("ctl", "Enter")
        terminal.wait_for("ctl", "r0-bob-alice.state Connecting")

        terminal.type("ctl", "del connection r")
        terminal.key("ctl", "Tab", "Tab")  # two choices: listed on a line of their own
        wait_until(lambda: any(line.split() == ["r0-bob-alice", "r1-carol-alice"]
                               for line in terminal.screen("ctl").splitlines()), "the two names listed")
        terminal.type("ctl", "0-")
        terminal.key("ctl", "Tab")
        terminal.wait_for("ctl", PROMPT + "del connection r0-bob-alice ")
        terminal.key("ctl", "Enter")
        wait_until(lambda: "r0-bob-alice" not in daemon.ctl("show", check=True).stdout, "the deletion")

        terminal.type("ctl", "shutdown")
        terminal.key("ctl", "Enter")
        screen = terminal.wait_for("ctl", "[exit 0]")
        assert "drbd-proxy is shutting down" in screen and QUESTION not in screen
        assert daemon.proc.wait(timeout=60) == 0
    finally:
        daemon.stop()
    history = [line.strip() for line in (tmp_path / ".drbd-proxy-ctl_history").read_text().splitlines()]
    assert history[-4:] == ["show memusage", "print statistics", "del connection r0-bob-alice", "shutdown"]


@needs_tmux
def test_shutdown_asks_first_while_a_connection_is_connected(tmp_path: Path, terminal: Terminal,
                                                             sims) -> None:
    """While DRBD replicates through the pair, shutdown in alice's shell names the Connected
    connection and asks; n leaves alice running. drbd-proxy-ctl -c shutdown at a terminal never
    asks (bob stops). Asked again, y stops alice, and the shell says so and exits 0. The y/n
    answers stay out of the history."""
    pair = ProxyPair(tmp_path)
    try:
        pair.wait_linked()
        primary_args, secondary_args = pair.sim_args("--rate", "2M", "--size", "1G", "--progress", "0.2")
        secondary = sims(*secondary_args)
        sims(*primary_args)
        secondary.wait_for_line("progress")
        wait_until(lambda: pair.state(pair.alice) == "Connected", "DRBD relayed through the pair")

        terminal.start("alice", *ctl_shell(pair.alice))
        terminal.wait_for("alice", PROMPT)
        terminal.type("alice", "shutdown")
        terminal.key("alice", "Enter")
        screen = terminal.wait_for("alice", QUESTION)
        assert "1 connection Connected (r0-bob-alice): shutdown terminates DRBD's replication." in screen
        terminal.type("alice", "n")
        terminal.key("alice", "Enter")
        terminal.wait_for("alice", "not shut down")
        assert pair.alice.proc.poll() is None and pair.state(pair.alice) == "Connected"

        terminal.type("alice", "shutdown")
        terminal.key("alice", "Enter")
        terminal.wait_for("alice", QUESTION, count=2)

        terminal.start("bob", *ctl_shell(pair.bob), "-c", "shutdown")
        screen = terminal.wait_for("bob", "[exit 0]")
        assert QUESTION not in screen
        assert pair.bob.proc.wait(timeout=60) == 0

        terminal.type("alice", "y")
        terminal.key("alice", "Enter")
        screen = terminal.wait_for("alice", "[exit 0]")
        assert "drbd-proxy is shutting down" in screen
        assert pair.alice.proc.wait(timeout=60) == 0
    finally:
        pair.stop()
    history = [line.strip() for line in (tmp_path / ".drbd-proxy-ctl_history").read_text().splitlines()]
    assert history[-1] == "shutdown" and "n" not in history and "y" not in history


@pytest.fixture
def tcp_daemon(tmp_path: Path) -> Iterator[tuple[Daemon, int]]:
    [port] = free_ports(1)
    daemon = Daemon(tmp_path, "tcp", "--control", f"tcp:{port}")
    yield daemon, port
    daemon.stop()


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_telnet_bytes_on_a_real_tcp_control_socket(tcp_daemon: tuple[Daemon, int]) -> None:
    """Raw telnet bytes on the daemon's TCP control socket: the %hello banner first; Ctrl-C
    (IAC IP IAC DO TIMING-MARK) after half a command is answered IAC WILL TIMING-MARK and the
    session goes on; DO ECHO and WILL NAWS are refused; an endless subnegotiation gets an error
    and the session is closed. drbd-proxy-ctl over the same endpoint is not confused."""
    daemon, port = tcp_daemon
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        assert read_exactly(sock, len(BANNER)) == BANNER
        sock.sendall(b"shutd" + CTRL_C)
        assert read_exactly(sock, 3) == bytes([IAC, WILL, TIMING_MARK])
        sock.sendall(bytes([IAC, DO, ECHO, IAC, WILL, NAWS]) + b"show version\r\n")
        expected = bytes([IAC, WONT, ECHO, IAC, DONT, NAWS]) + b"drbdproxy 0.1.0\r\n%ok\r\n"
        assert read_exactly(sock, len(expected)) == expected
        sock.sendall(bytes([IAC, SB, NAWS]) + b"\0" * 5000)
        error = b"%error telnet subnegotiation too long\r\n"
        assert read_exactly(sock, len(error) + 1) == error  # then the end of the session
    assert daemon.proc.poll() is None  # the half-typed shutdown never ran
    out = daemon.ctl("-s", f"tcp:127.0.0.1:{port}", "-c", "show version", "-c", "show", check=True)
    assert out.stdout == "drbdproxy 0.1.0\n" and out.stderr == ""


@needs_tmux
@pytest.mark.skipif(not have("telnet"), reason="telnet is not installed (apt-get install telnet)")
def test_ctrl_c_in_real_telnet_leaves_the_session_usable(tcp_daemon: tuple[Daemon, int],
                                                         terminal: Terminal) -> None:
    """In telnet against the TCP control endpoint, Ctrl-C on a half-typed line does not hang the
    session: the next command is answered, and quit ends it."""
    _, port = tcp_daemon
    terminal.start("telnet", "telnet", "127.0.0.1", str(port))
    terminal.wait_for("telnet", BANNER.decode().strip())
    terminal.type("telnet", "show ver")
    terminal.key("telnet", "C-c")
    terminal.type("telnet", "show version")
    terminal.key("telnet", "Enter")
    terminal.wait_for_line("telnet", "drbdproxy 0.1.0\n%ok")
    terminal.type("telnet", "quit")
    terminal.key("telnet", "Enter")
    screen = terminal.wait_for("telnet", "[exit ")
    assert screen.count("\n%ok\n") == 2 and "Connection closed by foreign host" in screen
