"""An SSH manhole: a Python prompt inside the running daemon, for public keys only.

``manhole_service(endpoint, keys_file, namespace)`` builds it the way buildbot's
``AuthorizedKeysManhole`` does, on ``twisted.conch.manhole_ssh``:

- **Who may log in**: the public keys of ``keys_file`` (authorized_keys format: one
  ``ssh-ed25519 AAAA... comment`` per line; ``#`` comments; lines with options in front are not
  understood and are skipped with an error in the log). The file is read once, at start-up, and
  refused if group or others may write it; any user name is accepted with an authorized key.
  There are no passwords.
- **Host key**: an ed25519 key in ``manhole_host_ed25519_key`` (OpenSSH format), in
  ``host_key_dir`` if given, else **in the directory of the keys file**. It is generated at the
  first start with mode 0600 and reused after; one readable by group or others is refused, as
  sshd refuses it.
- **Namespace**: ``namespace()`` is called for every session, so each one sees the live objects
  of that moment; ``show(obj)`` is added to it.
- **Where**: a Twisted server endpoint string; a bare port number means that port on loopback.
  Keys are always required, so a non-loopback endpoint is allowed: it is still keys-only.

The interpreter runs on the reactor thread: a slow expression stalls the whole proxy.
Every problem found at start-up is a ``ManholeError`` (a ``ValueError``) with a one-line message.
"""

from __future__ import annotations

import os
import stat
import sys
from typing import IO, Any, Callable, Iterable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker, readAuthorizedKeyFile
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import keys
from twisted.cred import portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from drbdproxy.admin.endpoints import check_endpoint as _check_endpoint

DEFAULT_ENDPOINT = "tcp:6022:interface=127.0.0.1"
HOST_KEY_NAME = "manhole_host_ed25519_key"
#: Attribute values longer than this are cut in ``show()`` output.
_SHOW_WIDTH = 200

_log = Logger()

Namespace = Callable[[], dict[str, Any]]


class ManholeError(ValueError):
    """The manhole cannot start: bad endpoint, no usable keys, or an unsafe host key."""


# -- configuration checks ------------------------------------------------------------------------
def check_endpoint(endpoint: str, reactor: Any = None) -> str:
    """The endpoint description, after checking that it parses (it does not listen).

    :raises ManholeError: an empty or unparsable endpoint string.
    """
    return _check_endpoint(endpoint, "manhole", DEFAULT_ENDPOINT, ManholeError, _reactor(reactor))


def load_authorized_keys(path: str) -> list[keys.Key]:
    """Every public key of an authorized_keys file.

    :raises ManholeError: the file is missing, unreadable, writable by others or holds no key.
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            found = list(readAuthorizedKeyFile(f))
    except OSError as e:
        raise ManholeError(f"cannot read manhole keys file {path}: {e.strerror}") from None
    if mode & (stat.S_IWGRP | stat.S_IWOTH):  # as sshd's StrictModes: anyone could add a key
        raise ManholeError(f"manhole keys file {path} is writable by others "
                           f"(mode {stat.S_IMODE(mode):o}): chmod go-w it")
    if not found:
        raise ManholeError(f"manhole keys file {path} holds no public key")
    return found


def load_host_key(directory: str) -> keys.Key:
    """The manhole's host key in ``directory``, generated (mode 0600) if there is none.

    :raises ManholeError: the key is readable by others, unreadable or not a key.
    """
    path = os.path.join(directory, HOST_KEY_NAME)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        _generate_host_key(path)
        return _read_private_key(path)
    except OSError as e:
        raise ManholeError(f"manhole host key {path}: {e.strerror}") from None


def _generate_host_key(path: str) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    _log.info("generated manhole host key {path}", path=path)


def _read_private_key(path: str) -> keys.Key:
    with open(path, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ManholeError(f"manhole host key {path} is accessible by others "
                               f"(mode {stat.S_IMODE(mode):o}): chmod 600 it")
        data = f.read()
    try:
        return keys.Key.fromString(data)
    except (keys.BadKeyError, ValueError) as e:
        raise ManholeError(f"manhole host key {path} is not a private key: {e}") from None


# -- the namespace -------------------------------------------------------------------------------
def show(obj: Any, file: IO[str] | None = None) -> None:
    """Print the public attributes of ``obj``, one ``name = value`` a line, then its methods."""
    out = file if file is not None else sys.stdout
    methods = []
    for name in sorted(n for n in dir(obj) if not n.startswith("_")):
        try:
            value = getattr(obj, name)
        except Exception as e:  # a property may fail; show that instead
            print(f"{name} = <{type(e).__name__}: {e}>", file=out)
            continue
        if callable(value) and not isinstance(value, type):
            methods.append(name)
            continue
        text = repr(value)
        if len(text) > _SHOW_WIDTH:
            text = text[:_SHOW_WIDTH - 3] + "..."
        print(f"{name} = {text}", file=out)
    if methods:
        print(f"methods: {', '.join(methods)}", file=out)


def session_namespace(namespace: Namespace) -> dict[str, Any]:
    """What one manhole session starts with: ``namespace()`` of this moment plus ``show``."""
    ns: dict[str, Any] = {"show": show}
    ns.update(namespace())
    return ns


# -- conch glue ----------------------------------------------------------------------------------
@implementer(IAuthorizedKeysDB)
class _AuthorizedKeys:
    """The same in-memory keys for every user name: the manhole has no accounts."""

    def __init__(self, authorized: Iterable[keys.Key]) -> None:
        self._keys = tuple(authorized)

    def getAuthorizedKeys(self, avatarId: bytes) -> tuple[keys.Key, ...]:
        return self._keys


@implementer(ICredentialsChecker)
class _LoggingChecker:
    """``SSHPublicKeyChecker`` that also logs each refused key, with its fingerprint."""

    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, checker: SSHPublicKeyChecker) -> None:
        self._checker = checker

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        d: Deferred[bytes | tuple[()]] = self._checker.requestAvatarId(credentials)
        d.addErrback(self._refused, credentials)
        return d

    def _refused(self, failure: Failure, credentials: Any) -> Failure:
        if failure.check(UnauthorizedLogin):
            _log.warn("manhole login as {user} refused: {reason} ({fingerprint})",
                      user=credentials.username.decode("utf-8", "replace"),
                      reason=failure.getErrorMessage(), fingerprint=_fingerprint(credentials))
        return failure


def _fingerprint(credentials: Any) -> str:
    try:
        key = keys.Key.fromString(credentials.blob)
    except (keys.BadKeyError, ValueError):
        return "unparsable key"
    return str(key.fingerprint(keys.FingerprintFormats.SHA256_BASE64))


class _ManholeSession(manhole_ssh.TerminalSession):
    """A terminal session that also works without a pty (``ssh -T host < script``).

    Without a pty request the terminal is 80x24; the client's end of input ends the session.
    """

    width, height = 80, 24
    _terminal: manhole_ssh.TerminalSessionTransport | None = None

    def openShell(self, proto: Any) -> None:
        self._terminal = self.transportFactory(
            proto, self.chainedProtocolFactory(), IConchUser(self.original),
            self.width, self.height,
        )

    def windowChanged(self, newWindowSize: tuple[int, ...]) -> None:
        self.height, self.width = newWindowSize[:2]
        if self._terminal is not None:
            self._terminal.chainedProtocol.terminalProtocol.terminalSize(self.width, self.height)

    def eofReceived(self) -> None:
        # Exit status 0, then close after what is already written: ``ssh host < script`` is 0.
        if self._terminal is not None:
            self._terminal.proto.processEnded(Failure(ProcessDone(0)))


@implementer(portal.IRealm)
class _ManholeRealm(manhole_ssh.TerminalRealm):
    sessionFactory = _ManholeSession

    def requestAvatar(self, avatarId: bytes | tuple[()], mind: Any, *interfaces: Any) -> Any:
        assert isinstance(avatarId, bytes)  # only a public key logs in: never anonymous
        _log.info("manhole login as {user}", user=avatarId.decode("utf-8", "replace"))
        return super().requestAvatar(avatarId, mind, *interfaces)


def _realm(namespace: Namespace) -> _ManholeRealm:
    realm = _ManholeRealm()

    def terminal() -> insults.ServerProtocol:
        return insults.ServerProtocol(manhole.ColoredManhole, session_namespace(namespace))

    # Any callable making the protocol will do; Twisted's unannotated default is the class.
    realm.chainedProtocolFactory = terminal  # type: ignore[assignment]
    return realm


def ssh_factory(authorized: Iterable[keys.Key], host_key: keys.Key,
                namespace: Namespace) -> manhole_ssh.ConchFactory:
    """The SSH server factory: public-key logins only, one fresh namespace per session."""
    checker = _LoggingChecker(SSHPublicKeyChecker(_AuthorizedKeys(authorized)))
    factory = manhole_ssh.ConchFactory(portal.Portal(_realm(namespace), [checker]))
    # Instance attributes: ConchFactory's class-level dicts are shared by every instance.
    # (ConchFactory annotates both dicts' values as bytes; conch uses Key objects since 15.0.)
    factory.publicKeys = {b"ssh-ed25519": host_key.public()}
    factory.privateKeys = {b"ssh-ed25519": host_key}  # type: ignore[dict-item]
    factory.noisy = False  # "Starting factory <...object at 0x...>" says nothing useful
    return factory


class ManholeService(MultiService):
    """The manhole's listening service; ``factory`` is its SSH server factory."""

    def __init__(self, description: str, factory: manhole_ssh.ConchFactory, reactor: Any) -> None:
        super().__init__()
        self.description = description
        self.factory = factory
        strports.service(description, factory, reactor=reactor).setServiceParent(self)

    def startService(self) -> None:
        super().startService()  # raises at once if the port cannot be bound
        _log.info("manhole listening via SSH on {endpoint}", endpoint=self.description)


def manhole_service(endpoint: str, keys_file: str, namespace: Namespace,
                    reactor: Any = None, host_key_dir: str | None = None) -> IService:
    """An SSH manhole on ``endpoint`` for the keys of ``keys_file``.

    :param endpoint: Twisted server endpoint string (``DEFAULT_ENDPOINT``); a bare port number
        means that port on 127.0.0.1.
    :param keys_file: authorized_keys-format file, read now.
    :param namespace: called once per session; its dict (plus ``show``) is the session's locals.
    :param host_key_dir: where the host key lives; default: the directory of ``keys_file``.
    :raises ManholeError: bad endpoint, unreadable or empty keys file, unusable host key.
    """
    reactor = _reactor(reactor)
    description = check_endpoint(endpoint, reactor)
    authorized = load_authorized_keys(keys_file)
    directory = host_key_dir or os.path.dirname(os.path.abspath(keys_file))
    host_key = load_host_key(directory)
    return ManholeService(description, ssh_factory(authorized, host_key, namespace), reactor)


def _reactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor as default

        return default
    return reactor
