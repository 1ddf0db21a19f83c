"""drbd-proxy-ctl, run as a real process against a small fake control server on a UNIX socket."""

from __future__ import annotations

import io
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

import drbdproxy
from drbdproxy.control import ctl

PACKAGE_ROOT = str(Path(drbdproxy.__file__).resolve().parent.parent)
CLOSE = object()  # reply script entry: close the connection instead of answering


class _Handler(socketserver.StreamRequestHandler):
    server: FakeDaemon  # type: ignore[assignment]

    def handle(self) -> None:
        if self.server.greeting:
            self.wfile.write(self.server.greeting)
            if self.server.greeting_only:
                return
        for raw in self.rfile:
            command = raw.decode().rstrip("\r\n")
            self.server.received.append(command)
            reply = self.server.replies.get(command, ["%ok"])
            if reply is CLOSE:
                return
            self.wfile.write("".join(line + "\n" for line in reply).encode())  # type: ignore[union-attr]
            if command == "quit":
                return


class FakeDaemon(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Answers each command line from ``replies`` (default ``%ok``), recording what it received."""

    daemon_threads = True

    def __init__(self, address: object, family: int = socket.AF_UNIX) -> None:
        self.address_family = family
        super().__init__(address, _Handler)  # type: ignore[arg-type]
        self.received: list[str] = []
        self.replies: dict[str, object] = {}
        self.greeting = b""  # sent on connect, as the daemon's %hello on TCP
        self.greeting_only = False  # then close


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "ctl.sock"
    if len(str(path)) < 100:
        yield path
        return
    short = Path(tempfile.mkdtemp(prefix="ctl"))  # AF_UNIX paths are limited to 108 bytes
    yield short / "ctl.sock"
    shutil.rmtree(short)


def _serve(server: FakeDaemon) -> Iterator[FakeDaemon]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def daemon(sock_path: Path) -> Iterator[FakeDaemon]:
    yield from _serve(FakeDaemon(str(sock_path)))


def run_ctl(*args: str, env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``python -m drbdproxy.control.ctl ARGS`` with this checkout's package on the path."""
    environ = {k: v for k, v in os.environ.items() if k != ctl.SOCKET_ENV}
    environ["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + environ.get("PYTHONPATH", "")
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "drbdproxy.control.ctl", *args], input=stdin,
                          capture_output=True, text=True, env=environ, timeout=60)


def test_repeated_c_runs_each_command_in_order(daemon: FakeDaemon, sock_path: Path) -> None:
    """Each -c is one command, sent in order on one session; data lines go to stdout verbatim."""
    daemon.replies["show proxy-settings r0"] = ["proxy {", "    memlimit 100M;", "}", "%ok"]
    result = run_ctl("-s", str(sock_path), "-c", "set memlimit r0 100M", "-c", "show proxy-settings r0")
    assert (result.returncode, result.stderr) == (0, "")
    assert daemon.received == ["set memlimit r0 100M", "show proxy-settings r0"]
    assert result.stdout == "proxy {\n    memlimit 100M;\n}\n"


def test_drbdadm_922_bare_trailing_command(daemon: FakeDaemon, sock_path: Path) -> None:
    """drbdadm 9.22's argv, whose last 'set plugin ... END' has no -c, runs all three commands."""
    result = run_ctl("-s", str(sock_path), "-c", "set memlimit r0-bob-vm 100M",
                     "-c", "set plugin r0-bob-vm 0 lz4 level 9", "set plugin r0-bob-vm 1 END")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert daemon.received == ["set memlimit r0-bob-vm 100M", "set plugin r0-bob-vm 0 lz4 level 9",
                               "set plugin r0-bob-vm 1 END"]


def test_bare_words_form_one_command(daemon: FakeDaemon, sock_path: Path) -> None:
    """Without -c the positional words, --opt=value ones included, are joined into one command."""
    assert run_ctl("-s", str(sock_path), "show", "memusage").returncode == 0
    result = run_ctl("-s", str(sock_path), "add", "connection", "r0", "::1:1", "::1:2", "::1:3", "::1:4",
                     "--memlimit=128M")
    assert result.returncode == 0
    assert daemon.received == ["show memusage", "add connection r0 ::1:1 ::1:2 ::1:3 ::1:4 --memlimit=128M"]


def test_stops_at_first_failure(daemon: FakeDaemon, sock_path: Path) -> None:
    """The first %error stops the run: exit 1, its message on stderr, later commands never sent."""
    daemon.replies["del connection r9"] = ["%error no connection 'r9'"]
    result = run_ctl("-s", str(sock_path), "-c", "show", "-c", "del connection r9", "-c", "shutdown")
    assert result.returncode == 1
    assert result.stderr == "drbd-proxy-ctl: no connection 'r9'\n"
    assert daemon.received == ["show", "del connection r9"]


def test_escaped_data_lines_are_printed_unescaped(daemon: FakeDaemon, sock_path: Path) -> None:
    """A data line sent as %%... is printed with one % removed; other lines exactly as sent."""
    daemon.replies["print statistics"] = ["%%ok", "%%%x", "50%", "", "r0.state Connected", "%ok"]
    result = run_ctl("-s", str(sock_path), "print", "statistics")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "%ok\n%%x\n50%\n\nr0.state Connected\n"


def test_warnings_go_to_stderr(daemon: FakeDaemon, sock_path: Path) -> None:
    """%warn lines are printed on stderr with the warning prefix and do not fail the command."""
    daemon.replies["set memlimit r0 1M"] = ["%warn lowering applies as the buffer drains", "%ok"]
    result = run_ctl("-s", str(sock_path), "-c", "set memlimit r0 1M")
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == "drbd-proxy-ctl: warning: lowering applies as the buffer drains\n"


def test_socket_from_environment(daemon: FakeDaemon, sock_path: Path) -> None:
    """$DRBD_PROXY_CTL_SOCKET chooses the socket when -s is not given."""
    result = run_ctl("show", env={ctl.SOCKET_ENV: str(sock_path)})
    assert result.returncode == 0
    assert daemon.received == ["show"]


def test_commands_from_a_pipe(daemon: FakeDaemon, sock_path: Path) -> None:
    """With no command and a non-terminal stdin, each input line is one command, no prompt printed."""
    daemon.replies["show version"] = ["drbdproxy 0.1.0", "%ok"]
    result = run_ctl("-s", str(sock_path), stdin="show\n\nshow version\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, "drbdproxy 0.1.0\n", "")
    assert daemon.received == ["show", "show version"]


def test_missing_socket_exits_3(sock_path: Path) -> None:
    """A socket that does not exist gives exit 3 and a message naming it."""
    result = run_ctl("-s", str(sock_path), "show")
    assert result.returncode == 3
    assert str(sock_path) in result.stderr
    assert result.stderr.startswith("drbd-proxy-ctl: cannot reach drbd-proxy at ")


def test_refused_socket_exits_3(sock_path: Path) -> None:
    """A socket file nobody listens on (a dead daemon's leftover) gives exit 3."""
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(sock_path))
    try:
        result = run_ctl("-s", str(sock_path), "-c", "show")
    finally:
        leftover.close()
    assert result.returncode == 3
    assert str(sock_path) in result.stderr


def test_daemon_closing_without_reply_exits_3(daemon: FakeDaemon, sock_path: Path) -> None:
    """A session closed before the terminator line is a communication failure: exit 3."""
    daemon.replies["show"] = CLOSE
    result = run_ctl("-s", str(sock_path), "show")
    assert result.returncode == 3
    assert "closed the connection before replying" in result.stderr


@pytest.mark.parametrize("args", [
    ["--bogus"],
    ["-c"],
    ["-c", ""],
    ["-c", "show\nshutdown"],
    ["-s", "tcp:nohost"],
])
def test_usage_errors_exit_2(args: list[str], sock_path: Path) -> None:
    """Bad options, a missing argument, an empty or multi-line command, a bad socket: exit 2."""
    result = run_ctl(*args, env={ctl.SOCKET_ENV: str(sock_path)})
    assert result.returncode == 2
    assert result.stderr.startswith("drbd-proxy-ctl: error: ")


def test_help(sock_path: Path) -> None:
    """-h prints the usage with the exit codes and exits 0 without contacting a daemon."""
    result = run_ctl("-h", env={ctl.SOCKET_ENV: str(sock_path)})
    assert result.returncode == 0
    assert result.stdout.startswith("usage: drbd-proxy-ctl [-s SOCKET] [-c COMMAND]... [WORDS...]")
    assert "3 the daemon could not be reached" in result.stdout


def test_tcp_endpoint() -> None:
    """-s tcp:HOST:PORT talks to a TCP control endpoint."""
    server = FakeDaemon(("127.0.0.1", 0), socket.AF_INET)
    for srv in _serve(server):
        port = srv.server_address[1]
        result = run_ctl("-s", f"tcp:127.0.0.1:{port}", "show", "version")
        assert result.returncode == 0
        assert srv.received == ["show version"]


GREETING = b"%hello drbdproxy 0.1.0 control; type help, or quit to leave\r\n"


def test_tcp_endpoint_with_a_banner() -> None:
    """On TCP the daemon greets first with a %hello line: -c commands and piped commands still
    get exactly their own replies, and the greeting is printed nowhere."""
    server = FakeDaemon(("127.0.0.1", 0), socket.AF_INET)
    server.greeting = GREETING
    server.replies = {"show": ["r0: inside", "%ok"], "show version": ["drbdproxy 0.1.0", "%ok"]}
    for srv in _serve(server):
        target = f"tcp:127.0.0.1:{srv.server_address[1]}"
        result = run_ctl("-s", target, "-c", "show version", "-c", "show")
        assert (result.returncode, result.stdout, result.stderr) == (0, "drbdproxy 0.1.0\nr0: inside\n", "")
        result = run_ctl("-s", target, stdin="show\nshow version\n")
        assert (result.returncode, result.stdout, result.stderr) == (0, "r0: inside\ndrbdproxy 0.1.0\n", "")


def test_a_greeting_left_unread_does_not_hide_a_closed_session() -> None:
    """A session whose daemon greeted and then closed (its idle timeout) counts as closed, though
    the greeting was never read; the greeting is kept for the next reply to skip."""
    server = FakeDaemon(("127.0.0.1", 0), socket.AF_INET)
    server.greeting, server.greeting_only = GREETING, True
    for srv in _serve(server):
        session = ctl.Session(f"tcp:127.0.0.1:{srv.server_address[1]}", 5)
        try:
            deadline = time.monotonic() + 30
            while not session.closed_by_peer():  # the close is an event we can only poll for
                assert time.monotonic() < deadline, "the fake daemon never closed"
                time.sleep(0.01)
            assert session._buffer == GREETING
        finally:
            session.close()


def test_quit_then_more_commands_opens_a_new_session(daemon: FakeDaemon, sock_path: Path) -> None:
    """A command after -c quit is sent on a fresh session rather than failing on the closed one."""
    result = run_ctl("-s", str(sock_path), "-c", "quit", "-c", "show")
    assert result.returncode == 0
    assert daemon.received == ["quit", "show"]


def test_no_answer_within_the_timeout_exits_3(sock_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon that accepts but never answers makes the run end with exit 3 (in-process, short limit)."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock_path))
    listener.listen(1)
    monkeypatch.setattr(ctl, "TIMEOUT", 0.2)
    out, err = io.StringIO(), io.StringIO()
    try:
        status = ctl.run(["-s", str(sock_path), "show"], out=out, err=err)
    finally:
        listener.close()
    assert status == 3
    assert "did not answer in time" in err.getvalue()


@pytest.mark.parametrize(("argv", "commands"), [
    (["-c", "a b", "-c", "c"], ["a b", "c"]),
    (["-c", "a", "b c", "-c", "d"], ["a", "b c", "d"]),
    (["-ca", "--command=b", "--command", "c"], ["a", "b", "c"]),
    (["show", "memusage"], ["show memusage"]),
    (["set", "memlimit", "r0", "--", "-1"], ["set memlimit r0 -1"]),
    ([], []),
])
def test_argument_parsing(argv: list[str], commands: list[str]) -> None:
    """-c, --command and bare arguments combine into the documented list of commands, in order."""
    assert ctl.parse_args(argv, environ={}).commands == commands


def test_socket_option_forms() -> None:
    """-s, -sPATH and --socket=PATH override $DRBD_PROXY_CTL_SOCKET, which overrides the default."""
    env = {ctl.SOCKET_ENV: "/env.sock"}
    assert ctl.parse_args(["show"], environ={}).target == ctl.DEFAULT_SOCKET
    assert ctl.parse_args(["show"], environ=env).target == "/env.sock"
    assert ctl.parse_args(["-s", "/a", "show"], environ=env).target == "/a"
    assert ctl.parse_args(["-s/b", "show"], environ=env).target == "/b"
    assert ctl.parse_args(["--socket=/c", "show"], environ=env).target == "/c"


# --- a daemon that refuses the session, a listen backlog that is full --------------------------


@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_a_refused_session_reports_the_daemons_error(sock_path: Path, family: str) -> None:
    """The daemon answered %error and closed before the command was written (a full session
    table): the write fails (EPIPE on a unix socket), yet the daemon's own message is reported
    and the command counts as failed (exit 1), not as a lost connection."""
    if family == "unix":
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(sock_path))
        target = str(sock_path)
    else:
        listener = socket.create_server(("127.0.0.1", 0))
        target = f"tcp:127.0.0.1:{listener.getsockname()[1]}"
    listener.listen(1)
    out, err = io.StringIO(), io.StringIO()
    try:
        session = ctl.Session(target, 5.0)
        refused, _ = listener.accept()
        refused.sendall(b"%error too many control sessions\n")
        refused.close()
        ok = session.request("show", time.monotonic() + 5.0, out, err)
        session.close()
    finally:
        listener.close()
    assert ok is False
    assert (out.getvalue(), err.getvalue()) == ("", "drbd-proxy-ctl: too many control sessions\n")


def test_a_session_closed_without_a_word_is_still_a_lost_connection(sock_path: Path) -> None:
    """When the write fails and the daemon said nothing, the client reports the lost connection
    (exit 3 from run), as before."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock_path))
    listener.listen(1)
    try:
        session = ctl.Session(str(sock_path), 5.0)
        listener.accept()[0].close()
        with pytest.raises(ctl.Unreachable, match="lost the connection to drbd-proxy at .*: Broken pipe"):
            session.request("show", time.monotonic() + 5.0, io.StringIO(), io.StringIO())
        session.close()
    finally:
        listener.close()


class SlowDaemon(FakeDaemon):
    """A FakeDaemon with a listen backlog of 0: one pending connection fills it (EAGAIN after)."""

    request_queue_size = 0


def fill_backlog(path: Path) -> socket.socket:
    """Connect without being accepted, so that the next connect to ``path`` fails with EAGAIN."""
    filler = socket.socket(socket.AF_UNIX)
    filler.setblocking(False)
    filler.connect(str(path))
    probe = socket.socket(socket.AF_UNIX)
    probe.setblocking(False)
    with pytest.raises(BlockingIOError):
        probe.connect(str(path))
    probe.close()
    return filler


def test_a_full_backlog_is_retried_until_the_daemon_accepts(sock_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """connect() fails with EAGAIN while the unix socket's backlog is full: the client waits a
    little and tries again, and the command runs once the daemon catches up."""
    server = SlowDaemon(str(sock_path))
    filler = fill_backlog(sock_path)
    served: list[Iterator[FakeDaemon]] = []
    pauses: list[float] = []

    def pause(seconds: float) -> None:  # the client's backoff: the daemon catches up meanwhile
        pauses.append(seconds)
        if not served:
            served.append(_serve(server))
            next(served[0])

    monkeypatch.setattr(ctl, "time", SimpleNamespace(monotonic=time.monotonic, sleep=pause))
    out, err = io.StringIO(), io.StringIO()
    try:
        status = ctl.run(["-s", str(sock_path), "show"], out=out, err=err)
    finally:
        filler.close()
        for gen in served:
            next(gen, None)
        if not served:
            server.server_close()
    assert (status, err.getvalue()) == (0, "")
    assert pauses and all(0 < p <= 0.2 for p in pauses)
    assert server.received == ["show"]


def test_a_backlog_full_for_2_seconds_is_one_clear_line(sock_path: Path) -> None:
    """A daemon that never accepts: drbd-proxy-ctl keeps trying for 2 s, then exits 3 with one
    line saying the socket accepts no more connections (not a bare EAGAIN)."""
    server = SlowDaemon(str(sock_path))  # listening, never serving
    filler = fill_backlog(sock_path)
    try:
        started = time.monotonic()
        result = run_ctl("-s", str(sock_path), "show")
        took = time.monotonic() - started
    finally:
        filler.close()
        server.server_close()
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        f"drbd-proxy-ctl: cannot reach drbd-proxy at {sock_path}: its control socket accepts no more"
        " connections (listen backlog full for 2 s: is the daemon stuck or flooded with connections?)"]
    assert ctl.CONNECT_RETRY == 2.0 <= took < ctl.TIMEOUT + 1
