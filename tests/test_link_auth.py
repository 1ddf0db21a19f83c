"""Link authentication (HMAC_AUTH): both handshake machines driven against each other over real
decoders, attacks on the AUTH exchange, the proof's exact input, and ``load_secret``."""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drbdproxy.link import (
    AUTH_PROOF_SIZE,
    Accepted,
    Auth,
    ClientHandshake,
    Data,
    ErrorCode,
    ErrorFrame,
    Feature,
    FrameType,
    Hello,
    LinkDecoder,
    LinkError,
    LinkProtocolError,
    LinkRole,
    Open,
    Pending,
    Phase,
    Ping,
    Reject,
    Rejected,
    RejectReason,
    ServerHandshake,
    Side,
    StreamKind,
    Welcome,
    load_secret,
    new_session,
)
from drbdproxy.link.auth import (
    MIN_SECRET_SIZE,
    PROOF_INPUT_SIZE,
    make_proof,
    proof_input,
    transcript_hash,
)

import lookups

#: A second meta link for a name replaces the first: these tests handshake one name repeatedly.
Registry = functools.partial(lookups.Registry, refuse_duplicate_meta=False)

NAME = "r0-bob-alice"
LZ4, ZSTD, ZLIB = 1, 3, 4
SECRET = b"correct horse battery staple"
HMAC_AUTH = int(Feature.HMAC_AUTH)


def client(secret: bytes | None = SECRET, role: LinkRole = LinkRole.META, **kw) -> ClientHandshake:
    session = kw.pop("session", None) or new_session()
    return ClientHandshake(NAME, role, session, [LZ4, ZSTD], secret=secret, **kw)


def server(secret: bytes | None = SECRET, lookup=None, **kw) -> ServerHandshake:
    return ServerHandshake(lookup or Registry(NAME), [LZ4, ZLIB], secret=secret, **kw)


def pieces(data: bytes, chunk: int) -> list[bytes]:
    if not chunk:
        return [data]
    return [data[i : i + chunk] for i in range(0, len(data), chunk)]


class End:
    """One end of a link, handling received bytes exactly as the Twisted integrator does."""

    def __init__(self, handshake: ClientHandshake | ServerHandshake) -> None:
        self.handshake = handshake
        self.rx = handshake.decoder()
        self.result: object = None  # Pending, Accepted, Rejected, LinkProtocolError or LinkError
        self.after: list = []  # frames decoded once Accepted: the established link's
        self.dead = False

    def deliver(self, data: bytes, chunk: int = 0) -> bytes:
        """Feed ``data`` (in ``chunk``-byte feeds; 0: at once); return what this end writes."""
        out = b""
        for piece in pieces(data, chunk):
            for item in self.rx.feed(piece):
                if self.dead:
                    return out
                if isinstance(item, LinkError):
                    self.result, self.dead = item, True
                    return out + item.frame().encode()
                if isinstance(self.result, Accepted):
                    self.after.append(item)
                    continue
                try:
                    if isinstance(self.handshake, ClientHandshake):
                        outcome = self.handshake.receive(item)
                        reply = outcome.send if isinstance(outcome, Pending) else b""
                    else:
                        reply, outcome = self.handshake.receive(item)
                except LinkProtocolError as e:
                    self.result, self.dead = e, True
                    return out + (b"" if e.from_peer else e.frame().encode())
                out += reply
                self.result = outcome
                if isinstance(outcome, Rejected):
                    self.dead = True
                    return out
        return out


class Link:
    """A client and a server exchanging bytes until neither has anything left to say."""

    def __init__(self, c: ClientHandshake, s: ServerHandshake, chunk: int = 0) -> None:
        self.client, self.server = End(c), End(s)
        self.from_client: list[bytes] = []  # every write, in order
        self.from_server: list[bytes] = []
        to_server, to_client = c.hello(), b""
        self.from_client.append(to_server)
        while to_server or to_client:
            if to_server:
                data, to_server = to_server, b""
                to_client = self.server.deliver(data, chunk)
                self.from_server += [to_client] if to_client else []
            if to_client:
                data, to_client = to_client, b""
                to_server = self.client.deliver(data, chunk)
                self.from_client += [to_server] if to_server else []


def frame_types(writes: list[bytes]) -> list[FrameType]:
    """The frame types in a list of writes (a fresh permissive parse of the headers)."""
    wire, types = b"".join(writes), []
    while wire:
        ftype, length = wire[2], struct.unpack(">I", wire[8:12])[0]
        types.append(FrameType(ftype))
        wire = wire[12 + length :]
    return types


# --- success ---------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [0, 1, 7], ids=["one-shot", "byte-at-a-time", "7-bytes"])
@pytest.mark.parametrize("role", [LinkRole.META, LinkRole.BULK])
def test_mutual_authentication_succeeds(chunk, role):
    """With the same secret, HELLO, WELCOME, AUTH (client), AUTH (server) cross the link and both
    ends are Accepted, authenticated and ESTABLISHED, however the bytes are cut into feeds."""
    registry = Registry(NAME)
    session = new_session()
    registry.control[NAME] = session  # a bulk link must name the live control session
    link = Link(client(role=role, session=session), server(lookup=registry), chunk)
    got_c, got_s = link.client.result, link.server.result
    assert isinstance(got_c, Accepted) and isinstance(got_s, Accepted)
    assert got_c.authenticated and got_s.authenticated
    assert got_c.features == got_s.features == HMAC_AUTH
    assert (got_c.session, got_c.role, got_c.name) == (got_s.session, role, NAME) == (session, got_s.role, NAME)
    assert frame_types(link.from_client) == [FrameType.HELLO, FrameType.AUTH]
    assert frame_types(link.from_server) == [FrameType.WELCOME, FrameType.AUTH]
    assert link.client.rx.phase is link.server.rx.phase is Phase.ESTABLISHED
    assert registry.calls == [(NAME, role, session)]


def test_each_receive_step_reports_pending_until_the_peers_proof():
    """Step by step: the server's HELLO answer and the client's WELCOME answer are Pending (the
    client's carries its AUTH); only the peer's verified proof gives Accepted."""
    c, s = client(), server()
    c_rx, s_rx = c.decoder(), s.decoder()
    (hello,) = s_rx.feed(c.hello())
    welcome_bytes, step = s.receive(hello)
    assert step == Pending() and s.outcome is None and s_rx.phase is Phase.AUTHENTICATING
    (welcome,) = c_rx.feed(welcome_bytes)
    step = c.receive(welcome)
    assert isinstance(step, Pending) and c.outcome is None and c_rx.phase is Phase.AUTHENTICATING
    (client_auth,) = s_rx.feed(step.send)
    assert isinstance(client_auth, Auth) and len(client_auth.proof) == AUTH_PROOF_SIZE
    server_auth_bytes, got_s = s.receive(client_auth)
    assert isinstance(got_s, Accepted) and s.outcome is got_s and s_rx.phase is Phase.ESTABLISHED
    (server_auth,) = c_rx.feed(server_auth_bytes)
    got_c = c.receive(server_auth)
    assert isinstance(got_c, Accepted) and c.outcome is got_c and c_rx.phase is Phase.ESTABLISHED
    assert client_auth.proof != server_auth.proof


def test_frames_pipelined_after_the_servers_auth_are_established():
    """The server may send right after its AUTH: the same feed's next frames are the link's."""
    c, s = client(), server()
    end_c, end_s = End(c), End(s)
    client_auth = end_c.deliver(end_s.deliver(c.hello()))
    after = Ping(1, 2).encode() + Open(2, StreamKind.META, Side.SERVER).encode()
    assert end_c.deliver(end_s.deliver(client_auth) + after) == b""
    assert isinstance(end_c.result, Accepted)
    assert end_c.after == [Ping(1, 2), Open(2, StreamKind.META, Side.SERVER)]


def test_without_secrets_nothing_changes_on_the_wire():
    """No secret on either end: HELLO and WELCOME are byte for byte the pre-authentication frames,
    no AUTH crosses, and receive() is never Pending."""
    session, c_nonce, s_nonce = new_session(), b"c" * 32, b"s" * 32
    link = Link(client(None, session=session, nonce=c_nonce), server(None, nonce=s_nonce), chunk=1)
    assert link.from_client == [Hello(1, 1, LinkRole.META, NAME, session, (LZ4, ZSTD), c_nonce).encode()]
    assert link.from_server == [Welcome(1, session, (LZ4, ZLIB), s_nonce).encode()]
    assert isinstance(link.client.result, Accepted) and isinstance(link.server.result, Accepted)
    assert not link.client.result.authenticated and link.client.result.features == 0
    assert link.client.rx.phase is link.server.rx.phase is Phase.ESTABLISHED


# --- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [0, 1])
def test_wrong_secret_is_auth_failed_and_the_client_is_never_accepted(chunk):
    """Different secrets: the server answers the client's AUTH with REJECT AUTH_FAILED (without
    asking its lookup or sending its own proof) and the client ends Rejected, not Accepted."""
    registry = Registry(NAME)
    link = Link(client(b"one secret"), server(b"another secret", registry), chunk)
    got_c, got_s = link.client.result, link.server.result
    assert isinstance(got_s, Rejected) and got_s.reason is RejectReason.AUTH_FAILED
    assert isinstance(got_c, Rejected) and got_c.reason is RejectReason.AUTH_FAILED
    assert "secret" in got_c.message
    assert frame_types(link.from_server) == [FrameType.WELCOME, FrameType.REJECT]
    assert registry.calls == [] and link.client.rx.phase is Phase.CLOSED


def test_client_without_secret_gets_auth_required():
    """A client without a secret offers no HMAC_AUTH: a server with a secret answers REJECT
    AUTH_REQUIRED right away, before its lookup."""
    registry = Registry(NAME)
    link = Link(client(None), server(SECRET, registry))
    got_c = link.client.result
    assert isinstance(got_c, Rejected) and got_c.reason is RejectReason.AUTH_REQUIRED
    assert "--link-secret" in got_c.message and link.server.result == got_c
    assert registry.calls == []


def test_client_offering_the_feature_without_a_secret_fails_when_the_server_agrees():
    """A client that offers HMAC_AUTH but has no secret cannot prove anything: when a server with
    a secret agrees, the client fails the link with HANDSHAKE_FAILED instead of hanging."""
    link = Link(client(None, features=HMAC_AUTH), server(SECRET))
    err = link.client.result
    assert isinstance(err, LinkProtocolError) and err.code is ErrorCode.HANDSHAKE_FAILED
    assert "no link secret" in err.message and not isinstance(link.server.result, Accepted)


def test_client_with_secret_fails_closed_against_a_server_without_one():
    """A client with a secret meets a server without one (which never agrees to HMAC_AUTH): the
    client refuses the unauthenticated link with HANDSHAKE_FAILED and tells the server why."""
    link = Link(client(SECRET), server(None, features=HMAC_AUTH))
    err = link.client.result
    assert isinstance(err, LinkProtocolError) and err.code is ErrorCode.HANDSHAKE_FAILED
    assert "link secret" in err.message and "HMAC_AUTH" in err.message
    assert link.client.handshake.outcome is None
    assert link.server.after == [ErrorFrame(ErrorCode.HANDSHAKE_FAILED, err.message)]


def test_lookup_refusals_come_after_the_proof():
    """With a secret, an unknown connection is refused only once the client proved the secret:
    REJECT UNKNOWN_CONNECTION replaces the server's AUTH, so nobody unauthenticated learns names."""
    registry = Registry("some-other-connection")
    link = Link(client(), server(lookup=registry))
    got_c = link.client.result
    assert isinstance(got_c, Rejected) and got_c.reason is RejectReason.UNKNOWN_CONNECTION
    assert frame_types(link.from_client) == [FrameType.HELLO, FrameType.AUTH]
    assert frame_types(link.from_server) == [FrameType.WELCOME, FrameType.REJECT]
    assert len(registry.calls) == 1


def test_a_fake_server_reflecting_the_clients_proof_is_refused():
    """A server without the secret agrees to HMAC_AUTH and sends the client's own AUTH back: the
    client raises AUTH_FAILED (the proofs carry the prover's side) and is never Accepted."""
    c = client()
    c_rx = c.decoder()
    hello = LinkDecoder(Side.SERVER).feed(c.hello())[0]
    welcome = Welcome(1, hello.session, (), b"f" * 32, HMAC_AUTH)
    (frame,) = c_rx.feed(welcome.encode())
    step = c.receive(frame)
    assert isinstance(step, Pending)
    (reflected,) = c_rx.feed(step.send)  # the fake server echoes the client's AUTH frame
    with pytest.raises(LinkProtocolError) as info:
        c.receive(reflected)
    assert info.value.code is ErrorCode.AUTH_FAILED and not info.value.from_peer
    assert c.outcome is None


def test_the_server_label_proof_sent_as_the_clients_is_refused():
    """A proof made for the server's side of this very link is no good as the client's proof."""
    c, s = client(), server()
    s_rx = s.decoder()
    (hello,) = s_rx.feed(c.hello())
    welcome_bytes, _ = s.receive(hello)
    (welcome,) = c.decoder().feed(welcome_bytes)
    reflected = Auth(make_proof(SECRET, Side.SERVER, hello, welcome))
    (frame,) = s_rx.feed(reflected.encode())
    reply, got = s.receive(frame)
    assert isinstance(got, Rejected) and got.reason is RejectReason.AUTH_FAILED
    assert c.decoder().feed(welcome_bytes + reply)[1] == Reject(RejectReason.AUTH_FAILED, got.message)


def test_a_replayed_client_conversation_is_refused():
    """Recorded client bytes (HELLO, AUTH) of a good link, replayed verbatim to a server: its new
    nonce makes the recorded proof wrong, so the replay ends in AUTH_FAILED."""
    registry = Registry(NAME)
    good = Link(client(), server(lookup=registry))
    assert isinstance(good.server.result, Accepted)
    replay = End(server(lookup=registry))
    replay.deliver(b"".join(good.from_client))
    assert isinstance(replay.result, Rejected) and replay.result.reason is RejectReason.AUTH_FAILED
    assert len(registry.calls) == 1  # only the good link's


def test_a_replayed_server_conversation_is_refused():
    """Recorded server bytes (WELCOME, AUTH) replayed to a client reusing the session (as a bulk
    link does): the client's new nonce makes the recorded server proof wrong."""
    session = new_session()
    good = Link(client(session=session), server())
    assert isinstance(good.client.result, Accepted)
    victim = End(client(role=LinkRole.META, session=session))
    victim.handshake.hello()
    victim.deliver(b"".join(good.from_server))
    err = victim.result
    assert isinstance(err, LinkProtocolError) and err.code is ErrorCode.AUTH_FAILED


# --- no stream frame before the proofs --------------------------------------------------------

EARLY = [Open(1, StreamKind.DATA, Side.CLIENT), Data.uncompressed(1, b"x"), Ping(1, 1)]


@pytest.mark.parametrize("early", EARLY, ids=lambda f: f.TYPE.name)
def test_client_stream_frames_before_its_auth_are_refused(early):
    """A client that sends OPEN, DATA or PING after HELLO instead of AUTH hits UNEXPECTED_FRAME in
    the server's decoder; the lookup is never asked and nothing is accepted."""
    registry = Registry(NAME)
    c, s = client(), server(lookup=registry)
    end_s = End(s)
    out = end_s.deliver(c.hello() + early.encode())
    err = end_s.result
    assert isinstance(err, LinkError) and err.code is ErrorCode.UNEXPECTED_FRAME
    assert "phase authenticating" in err.message and registry.calls == []
    assert LinkDecoder(Side.CLIENT).feed(out)[-1] == err.frame()


@pytest.mark.parametrize("early", EARLY, ids=lambda f: f.TYPE.name)
def test_handshakes_refuse_stream_frames_while_pending_even_behind_a_plain_decoder(early):
    """Should an integrator forget ``decoder()`` and decode with a plain LinkDecoder, the state
    machines still refuse anything but AUTH (or REJECT/ERROR) while authentication is pending."""
    c, s = client(), server()
    (hello,) = LinkDecoder(Side.SERVER).feed(c.hello())
    welcome_bytes, step = s.receive(hello)
    assert step == Pending()
    with pytest.raises(LinkProtocolError) as info:
        s.receive(early)
    assert info.value.code is ErrorCode.UNEXPECTED_FRAME
    (welcome,) = LinkDecoder(Side.CLIENT).feed(welcome_bytes)
    assert isinstance(c.receive(welcome), Pending)
    server_early = Open(2, StreamKind.DATA, Side.SERVER) if isinstance(early, Open) else early
    with pytest.raises(LinkProtocolError) as info:
        c.receive(server_early)
    assert info.value.code is ErrorCode.UNEXPECTED_FRAME


@pytest.mark.parametrize(
    "early",
    [Open(2, StreamKind.DATA, Side.SERVER), Data.uncompressed(2, b"x"), Ping(1, 1)],
    ids=lambda f: f.TYPE.name,
)
def test_server_stream_frames_before_its_auth_are_refused(early):
    """A server that sends stream frames or heartbeats after WELCOME, before its AUTH, is refused
    by the client's decoder: the client never accepts the link."""
    c, s = client(), server()
    end_c = End(c)
    (hello,) = LinkDecoder(Side.SERVER).feed(c.hello())
    welcome_bytes, _ = s.receive(hello)
    end_c.deliver(welcome_bytes + early.encode())
    err = end_c.result
    assert isinstance(err, LinkError) and err.code is ErrorCode.UNEXPECTED_FRAME
    assert "phase authenticating" in err.message and c.outcome is None


def test_auth_frames_outside_the_authenticating_phase_are_unexpected():
    """AUTH before HELLO, to a server without a secret, or after the link is established is
    UNEXPECTED_FRAME in the decoder."""
    proof = Auth(bytes(32)).encode()
    err = LinkDecoder(Side.SERVER, auth=True).feed(proof)[0]
    assert err.code is ErrorCode.UNEXPECTED_FRAME and "phase handshake" in err.message
    no_secret = client(None)
    events = server(None).decoder().feed(no_secret.hello() + proof)
    assert events[-1].code is ErrorCode.UNEXPECTED_FRAME and "phase established" in events[-1].message
    link = Link(client(), server())
    assert isinstance(link.client.result, Accepted)
    for end in (link.client, link.server):
        (err,) = end.rx.feed(proof)
        assert err.code is ErrorCode.UNEXPECTED_FRAME


def test_which_decoders_enter_the_authenticating_phase():
    """A server decoder with ``auth`` after any HELLO; a client decoder after a WELCOME agreeing to
    HMAC_AUTH, and with ``auth`` after any WELCOME (fail closed); plain decoders never."""
    session = new_session()
    hello = Hello(1, 1, LinkRole.META, NAME, session, (), bytes(32)).encode()
    plain, agreed = (Welcome(1, session, (), bytes(32), f).encode() for f in (0, HMAC_AUTH))
    cases = [(Side.SERVER, False, hello, Phase.ESTABLISHED), (Side.SERVER, True, hello, Phase.AUTHENTICATING),
             (Side.CLIENT, False, plain, Phase.ESTABLISHED), (Side.CLIENT, False, agreed, Phase.AUTHENTICATING),
             (Side.CLIENT, True, plain, Phase.AUTHENTICATING), (Side.CLIENT, True, agreed, Phase.AUTHENTICATING)]  # fmt: skip
    for side, auth, wire, phase in cases:
        decoder = LinkDecoder(side, auth=auth)
        assert len(decoder.feed(wire)) == 1 and decoder.phase is phase, (side, auth)


def test_auth_frames_are_exactly_32_bytes():
    """AUTH's payload is the 32-byte proof: other lengths fail on the header, before buffering."""
    c = client()
    for length in (0, 31, 33, 4096):
        decoder = server().decoder()
        wire = c.hello_frame.encode() + struct.pack(">HBBII", 0x4450, FrameType.AUTH, 0, 0, length)
        err = decoder.feed(wire)[-1]
        assert err.code is ErrorCode.PROTOCOL_ERROR and "expected 32..32" in err.message
    with pytest.raises(ValueError):
        Auth(bytes(31))


def test_empty_or_non_bytes_secrets_are_refused():
    """A handshake cannot be built with an empty secret or a str one."""
    for bad in (b"", "text"):
        with pytest.raises(ValueError):
            client(bad)
        with pytest.raises(ValueError):
            server(bad)


# --- the proof -------------------------------------------------------------------------------


def agreed_frames(**hello_changes) -> tuple[Hello, Welcome]:
    fields = dict(version_min=1, version_max=1, role=LinkRole.META, name=NAME, session=b"S" * 16,
                  codecs=(LZ4,), nonce=b"c" * 32, features=HMAC_AUTH) | hello_changes  # fmt: skip
    hello = Hello(**fields)
    return hello, Welcome(1, hello.session, (ZLIB,), b"s" * 32, HMAC_AUTH)


def test_proof_is_hmac_sha256_over_the_documented_input():
    """The HMAC input is label | client nonce | server nonce | session | role u8 | version u16 |
    SHA-256(HELLO frame | WELCOME frame), as docs/link-protocol.md §8 gives it, byte for byte."""
    hello, welcome = agreed_frames()
    transcript = hashlib.sha256(hello.encode() + welcome.encode()).digest()
    for side, label in ((Side.CLIENT, b"drbdproxy-link-v1 client"), (Side.SERVER, b"drbdproxy-link-v1 server")):
        expected = label + b"c" * 32 + b"s" * 32 + b"S" * 16 + b"\x01" + b"\x00\x01" + transcript
        assert proof_input(side, hello, welcome) == expected and len(expected) == PROOF_INPUT_SIZE == 139
        assert make_proof(SECRET, side, hello, welcome) == hmac.new(SECRET, expected, hashlib.sha256).digest()
    assert transcript_hash(hello, welcome) == transcript


def test_proof_binds_nonces_session_role_version_side_and_transcript():
    """Changing any bound value (either nonce, the session, the role, the agreed version, the
    prover's side, anything else in HELLO or WELCOME, or the secret) changes the proof."""
    hello, welcome = agreed_frames()
    base = make_proof(SECRET, Side.CLIENT, hello, welcome)
    other_welcome = {
        "server nonce": Welcome(1, hello.session, (ZLIB,), b"t" * 32, HMAC_AUTH),
        "codecs": Welcome(1, hello.session, (LZ4,), b"s" * 32, HMAC_AUTH),
        "max_payload": Welcome(1, hello.session, (ZLIB,), b"s" * 32, HMAC_AUTH, 8192),
    }
    variants = [make_proof(SECRET, Side.SERVER, hello, welcome), make_proof(b"x" + SECRET, Side.CLIENT, hello, welcome)]
    variants += [make_proof(SECRET, Side.CLIENT, hello, w) for w in other_welcome.values()]
    for changes in (dict(nonce=b"d" * 32), dict(session=b"T" * 16), dict(role=LinkRole.BULK),
                    dict(name="r0-alice-bob"), dict(version_max=2)):  # fmt: skip
        h, w = agreed_frames(**changes)
        variants.append(make_proof(SECRET, Side.CLIENT, h, w))
    h2, _ = agreed_frames(version_max=2)
    variants.append(make_proof(SECRET, Side.CLIENT, h2, Welcome(2, h2.session, (ZLIB,), b"s" * 32, HMAC_AUTH)))
    assert base not in variants and len(set(variants)) == len(variants)


def test_the_documented_example_proofs():
    """docs/link-protocol.md §8.7: the §10 HELLO and WELCOME with HMAC_AUTH and the secret
    "example secret" give exactly the documented transcript hash and AUTH frames."""
    hello = Hello(1, 1, LinkRole.META, "r0", bytes(range(16)), (1, 2), b"\xaa" * 32, HMAC_AUTH)
    welcome = Welcome(1, bytes(range(16)), (1,), b"\xbb" * 32, HMAC_AUTH)
    assert transcript_hash(hello, welcome).hex() == "79bd6c291b304bb13c5c11eda10ff49d73dfd690b62d6433b300e9f2a8a2a211"
    client_auth = Auth(make_proof(b"example secret", Side.CLIENT, hello, welcome)).encode()
    server_auth = Auth(make_proof(b"example secret", Side.SERVER, hello, welcome)).encode()
    assert client_auth.hex() == ("44500400000000000000002" "0f598ce9498698fedb1c783d42f00f172911a6951881d2d883ef367d4e08a0ae6")
    assert server_auth.hex() == ("44500400000000000000002" "0b8afe3ec227d6b4238984db9b3913ba7b82cdbf25e547d90bf8cdd7218830c82")


# --- fuzzing ---------------------------------------------------------------------------------

auth_like = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda p: Auth(p).encode()),
    st.builds(lambda n, body: struct.pack(">HBBII", 0x4450, FrameType.AUTH, 0, 0, n) + body,
              st.integers(0, 40), st.binary(max_size=40)),  # fmt: skip
    st.sampled_from([f.encode() for f in (Ping(1, 1), Open(1, StreamKind.DATA, Side.CLIENT),
                                          Open(2, StreamKind.DATA, Side.SERVER), Reject(RejectReason.AUTH_FAILED),
                                          ErrorFrame(ErrorCode.TIMEOUT, "x"))]),  # fmt: skip
    st.binary(max_size=80),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(auth_like, max_size=8), st.integers(0, 13))
def test_fuzz_the_servers_auth_phase(parts, chunk):
    """Whatever a peer without the secret sends after its HELLO, the server only ever raises
    LinkProtocolError (or decodes a LinkError), never accepts, and never asks its lookup."""
    registry = Registry(NAME)
    c, s = client(), server(lookup=registry)
    rx = s.decoder()
    for piece in pieces(c.hello() + b"".join(parts), chunk):
        for item in rx.feed(piece):
            if isinstance(item, LinkError):
                continue
            try:
                _, outcome = s.receive(item)
            except LinkProtocolError:
                continue
            assert not isinstance(outcome, Accepted)
    assert s.outcome is None or isinstance(s.outcome, Rejected)
    assert registry.calls == []


@settings(max_examples=300, deadline=None)
@given(st.lists(auth_like, max_size=8), st.integers(0, 13))
def test_fuzz_the_clients_auth_phase(parts, chunk):
    """Whatever a server without the secret sends after an HMAC_AUTH WELCOME, the client only ever
    raises LinkProtocolError (or decodes a LinkError) and never accepts the link."""
    c = client()
    rx = c.decoder()
    session = c.hello_frame.session
    c.hello()
    welcome = Welcome(1, session, (), os.urandom(32), HMAC_AUTH).encode()
    for piece in pieces(welcome + b"".join(parts), chunk):
        for item in rx.feed(piece):
            if isinstance(item, LinkError):
                continue
            try:
                outcome = c.receive(item)
            except LinkProtocolError:
                continue
            assert not isinstance(outcome, Accepted)
    assert c.outcome is None or isinstance(c.outcome, Rejected)


# --- load_secret -----------------------------------------------------------------------------


def secret_file(tmp_path, content: bytes, mode: int = 0o600):
    path = tmp_path / "link.secret"
    path.write_bytes(content)
    os.chmod(path, mode)
    return path


S = b"sixteen-byte-s3c"  # MIN_SECRET_SIZE bytes: the shortest secret load_secret takes


@pytest.mark.parametrize(
    "content,secret",
    [(S + b"\n", S), (S, S), (S + b"\r\n", S),
     (S + b"\n\n", S + b"\n"), (b" \x00\xffbin" + S + b"\n", b" \x00\xffbin" + S)],
)  # fmt: skip
def test_load_secret_strips_one_trailing_newline(tmp_path, content, secret):
    """The secret is the file's bytes without one trailing line ending; everything else is kept."""
    assert load_secret(secret_file(tmp_path, content)) == secret
    assert load_secret(str(secret_file(tmp_path, content, 0o400))) == secret


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"])
def test_load_secret_refuses_an_empty_secret(tmp_path, content):
    """An empty file, or one holding only a newline, is refused with a clear message."""
    with pytest.raises(ValueError, match="empty secret"):
        load_secret(secret_file(tmp_path, content))


def test_load_secret_refuses_a_secret_shorter_than_16_bytes(tmp_path):
    """15 bytes (after the trailing newline is dropped) are refused with one line saying how to
    make a good one; exactly 16 are accepted."""
    assert MIN_SECRET_SIZE == len(S) == 16
    with pytest.raises(ValueError, match="holds a secret of 15 bytes, fewer than 16") as info:
        load_secret(secret_file(tmp_path, S[:15] + b"\n"))
    assert "\n" not in str(info.value) and "/dev/urandom" in str(info.value)
    assert load_secret(secret_file(tmp_path, S + b"\n")) == S


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o620, 0o660, 0o700 | 0o007])
def test_load_secret_refuses_a_file_others_may_access(tmp_path, mode):
    """Like an ssh private key, the file must not be accessible by group or others."""
    path = secret_file(tmp_path, S + b"\n", mode)
    with pytest.raises(ValueError, match=f"group or others \\(mode {mode:04o}\\): chmod 600"):
        load_secret(path)


def test_load_secret_refuses_missing_files_and_directories(tmp_path):
    """Unreadable paths become one-line ValueErrors naming the file, not tracebacks."""
    with pytest.raises(ValueError, match=f"cannot read link secret file {tmp_path / 'nope'}"):
        load_secret(tmp_path / "nope")
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(ValueError, match="link secret file"):
        load_secret(directory)


def test_a_loaded_secret_authenticates_a_link(tmp_path):
    """Both proxies reading the same file (one with a trailing newline) authenticate each other."""
    one = load_secret(secret_file(tmp_path, S + b"\n"))
    other = load_secret(secret_file(tmp_path, S))
    link = Link(client(one), server(other))
    assert isinstance(link.client.result, Accepted) and link.client.result.authenticated
