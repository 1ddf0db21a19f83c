"""``drbd-proxy``: the daemon's launcher (``/usr/sbin/drbd-proxy``), twistd with our plugin.

``drbd-proxy [TWISTD-OPTIONS] [DRBD-PROXY-OPTIONS]`` runs ``twistd [TWISTD-OPTIONS] drbd-proxy
[DRBD-PROXY-OPTIONS]`` in this process (the options may come in any order), with two things a
service manager wants that plain twistd lacks: a start-up failure of the daemonized process reaches
the caller whole (twistd cuts it to 100 bytes inside a repr), and a ``--logfile`` is rotated with a
bound (:data:`LOG_KEEP` old files of :data:`LOG_ROTATE_BYTES`) instead of growing old files forever.
"""

from __future__ import annotations

import os
import select
import sys
from typing import Any, NoReturn, Sequence

from twisted.application import app
from twisted.logger import textFileLogObserver
from twisted.python import logfile
from twisted.python.util import untilConcludes
from twisted.scripts._twistd_unix import ServerOptions, UnixApplicationRunner, UnixAppLogger

from drbdproxy import __version__
from drbdproxy.startup import StartupFailed

PROG = "drbd-proxy"
TAPNAME = "drbd-proxy"
LOG_ROTATE_BYTES = 10_000_000
LOG_KEEP = 5
#: A status message up to PIPE_BUF is written atomically, so the waiting parent reads it whole.
_STATUS_MAX = select.PIPE_BUF


def _option_table(options: Any) -> tuple[dict[str, bool], dict[str, bool]]:
    """An Options class's long and short option names, each mapped to whether it takes a value."""
    long = {name.rstrip("="): name.endswith("=") for name in options.longOpt}
    short: dict[str, bool] = {}
    letters = options.shortOpt
    for i, letter in enumerate(letters):
        if letter != ":":
            short[letter] = letters[i + 1:i + 2] == ":"
    return long, short


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Our arguments as (twistd's, the plugin's): an option twistd knows and the plugin does not
    goes to twistd, everything else to the plugin (which reports what it does not know)."""
    from drbdproxy.tap import Options

    t_long, t_short = _option_table(ServerOptions())
    p_long, p_short = _option_table(Options())
    for name in ("help", "version"):  # ours, not twistd's
        t_long.pop(name, None)
    twistd: list[str] = []
    plugin: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        valued: bool | None = None
        if arg.startswith("--") and "=" not in arg:
            name = arg[2:]
            valued = t_long[name] if name in t_long and name not in p_long else None
        elif arg.startswith("--"):
            name = arg[2:].split("=", 1)[0]
            valued = False if name in t_long and name not in p_long else None
        elif arg.startswith("-") and len(arg) >= 2 and arg[1] in t_short and arg[1] not in p_short:
            valued = t_short[arg[1]] and len(arg) == 2
        target = plugin if valued is None else twistd
        target.append(arg)
        if valued and args:
            target.append(args.pop(0))
    return twistd, plugin


class _Logger(UnixAppLogger):
    """twistd's logger, with a log file rotated by size and a bounded number of old files."""

    def _getLogObserver(self) -> Any:
        to_file = not self._syslog and self._logfilename != "-" and not (
            self._nodaemon and not self._logfilename)
        if not to_file:
            return super()._getLogObserver()
        log = logfile.LogFile.fromFullPath(self._logfilename or "twistd.log",
                                           rotateLength=LOG_ROTATE_BYTES, maxRotatedFiles=LOG_KEEP)
        return textFileLogObserver(log)


class _Runner(UnixApplicationRunner):
    """twistd's runner; a start-up failure of the daemonized child (drbdproxy.startup) reaches
    the waiting parent whole, and the parent prints it as it is."""

    loggerFactory = _Logger

    def _formatChildException(self, exception: BaseException) -> bytes:
        # The waiting parent exits as soon as it reads this message: remove the pid file first.
        self.removePID(self.config["pidfile"])
        self.config["pidfile"] = ""
        if not isinstance(exception, StartupFailed):
            return bytes(super()._formatChildException(exception))
        return b"1 " + str(exception).encode("utf-8", "replace")[:_STATUS_MAX - 2]

    def _waitForStart(self, readPipe: int) -> int:
        data = untilConcludes(os.read, readPipe, _STATUS_MAX)
        if data == b"0":
            return 0
        message = data[2:].decode("utf-8", "replace") or f"{PROG}: the daemon exited while starting"
        stderr = sys.__stderr__
        if stderr is not None:
            untilConcludes(stderr.write, message + "\n")
        return 1


def _run(config: ServerOptions) -> None:
    runner = _Runner(config)
    runner.run()
    if runner._exitSignal is not None:
        app._exitWithSignal(runner._exitSignal)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--version" in args:
        print(f"drbdproxy {__version__}")
        raise SystemExit(0)
    twistd, plugin = split_argv(args)
    sys.argv = [PROG, *twistd, TAPNAME, *plugin]
    app.run(_run, ServerOptions)
    raise SystemExit(0)
