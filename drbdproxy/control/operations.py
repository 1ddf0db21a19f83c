"""The command objects: what each control command asks of the daemon (sans-IO).

:mod:`drbdproxy.control.commands` parses a line into one of these; :meth:`Command.call` names the
:class:`~drbdproxy.control.interface.IProxyControl` operation it stands for and does no I/O.
Read-side commands carry ``as_json`` (the line's ``-j``/``--json``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from drbdproxy.spec import ConnectionSpec

if TYPE_CHECKING:
    from drbdproxy.control.interface import IProxyControl


class Action(enum.Enum):
    """What the control session does after sending a command's reply."""

    REPLY = "reply"
    QUIT = "quit"  # close this session
    SHUTDOWN = "shutdown"  # call IProxyControl.shutdown()


class Command:
    """A parsed control command.

    ``mutates`` commands return optional warnings from :meth:`call`; the others return the data
    lines of the reply. Either may come as a Deferred when the implementation is asynchronous.
    """

    mutates: ClassVar[bool] = False
    action: ClassVar[Action] = Action.REPLY

    @property
    def warnings(self) -> tuple[str, ...]:
        """Warnings found while parsing, sent with the reply."""
        return ()

    def call(self, control: IProxyControl) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class AddConnection(Command):
    mutates = True
    spec: ConnectionSpec
    parse_warnings: tuple[str, ...] = ()

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.parse_warnings

    def call(self, control: IProxyControl) -> Any:
        return control.add_connection(self.spec)


@dataclass(frozen=True)
class DelConnection(Command):
    mutates = True
    name: str

    def call(self, control: IProxyControl) -> Any:
        return control.del_connection(self.name)


@dataclass(frozen=True)
class SetMemlimit(Command):
    mutates = True
    name: str
    size: int

    def call(self, control: IProxyControl) -> Any:
        return control.set_memlimit(self.name, self.size)


@dataclass(frozen=True)
class SetOption(Command):
    """``set OPTION NAME VALUE`` for every option of :data:`OPTIONS` but memlimit."""

    mutates = True
    name: str
    option: str
    value: int

    def call(self, control: IProxyControl) -> Any:
        return control.set_option(self.name, self.option, self.value)


@dataclass(frozen=True)
class SetPlugin(Command):
    """``set plugin NAME IDX WORDS...``; ``words`` is None for ``END`` (truncate at ``index``)."""

    mutates = True
    name: str
    index: int
    words: tuple[str, ...] | None

    def call(self, control: IProxyControl) -> Any:
        return control.set_plugin(self.name, self.index, None if self.words is None else list(self.words))


@dataclass(frozen=True)
class SetLoglevel(Command):
    mutates = True
    level: str

    def call(self, control: IProxyControl) -> Any:
        return control.set_loglevel(self.level)


@dataclass(frozen=True)
class Show(Command):
    as_json: bool = False

    def call(self, control: IProxyControl) -> Any:
        return control.show(self.as_json) if self.as_json else control.show()


@dataclass(frozen=True)
class ShowProxySettings(Command):
    name: str
    as_json: bool = False

    def call(self, control: IProxyControl) -> Any:
        if self.as_json:
            return control.proxy_settings(self.name, True)
        return control.proxy_settings(self.name)


@dataclass(frozen=True)
class ShowMemusage(Command):
    human: bool = False
    as_json: bool = False

    def call(self, control: IProxyControl) -> Any:
        if self.as_json:
            return control.memusage(self.human, True)
        return control.memusage(self.human)


@dataclass(frozen=True)
class ShowVersion(Command):
    as_json: bool = False

    def call(self, control: IProxyControl) -> Any:
        return control.version(True) if self.as_json else control.version()


@dataclass(frozen=True)
class ListConnections(Command):
    human: bool = False
    as_json: bool = False

    def call(self, control: IProxyControl) -> Any:
        if self.as_json:
            return control.connections(self.human, True)
        return control.connections(self.human)


@dataclass(frozen=True)
class ListSubconnections(Command):
    human: bool = False
    as_json: bool = False

    def call(self, control: IProxyControl) -> Any:
        if self.as_json:
            return control.subconnections(self.human, True)
        return control.subconnections(self.human)


@dataclass(frozen=True)
class ListDetails(Command):
    as_json: bool = False

    def call(self, control: IProxyControl) -> Any:
        return control.details(True) if self.as_json else control.details()


@dataclass(frozen=True)
class PrintStatistics(Command):
    as_json: bool = False

    def call(self, control: IProxyControl) -> Any:
        return control.statistics(True) if self.as_json else control.statistics()


@dataclass(frozen=True)
class Quit(Command):
    action = Action.QUIT

    def call(self, control: IProxyControl) -> Any:
        return None


@dataclass(frozen=True)
class Shutdown(Command):
    """Replied to first; the session then calls ``IProxyControl.shutdown()``."""

    action = Action.SHUTDOWN

    def call(self, control: IProxyControl) -> Any:
        return None
