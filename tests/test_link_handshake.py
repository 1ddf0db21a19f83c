"""The link handshake state machines, driven through real decoders on both ends (no sockets)."""

from __future__ import annotations

import pytest

from drbdproxy.link import (
    MAX_DATA_CHUNK,
    Accepted,
    ClientHandshake,
    ErrorCode,
    ErrorFrame,
    Feature,
    Hello,
    LinkDecoder,
    LinkError,
    LinkProtocolError,
    LinkRole,
    Open,
    Phase,
    Ping,
    Reject,
    Rejected,
    RejectReason,
    ServerHandshake,
    Side,
    StreamKind,
    Welcome,
    negotiate_version,
    new_session,
)

from lookups import Registry

NAME = "r0-bob-alice"
LZ4, ZSTD, ZLIB = 1, 3, 4  # codec ids are opaque to the link; drbdproxy.codecs assigns them


def connect(client: ClientHandshake, server: ServerHandshake, after_welcome: bytes = b""):
    """Run one link's handshake over decoders: returns both outcomes and both decoders."""
    server_rx, client_rx = LinkDecoder(Side.SERVER), LinkDecoder(Side.CLIENT)
    (hello,) = server_rx.feed(client.hello())
    reply, server_outcome = server.receive(hello)
    events = client_rx.feed(reply + after_welcome)
    client_outcome = client.receive(events[0])
    return client_outcome, server_outcome, client_rx, server_rx, events[1:]


def client(role: LinkRole = LinkRole.META, session: bytes | None = None, **kw) -> ClientHandshake:
    return ClientHandshake(NAME, role, session or new_session(), [LZ4, ZSTD], **kw)


def server(lookup=None, **kw) -> ServerHandshake:
    return ServerHandshake(lookup or Registry(NAME), [LZ4, ZLIB], **kw)


def test_meta_link_handshake_succeeds():
    """A meta link is accepted; both ends agree on version, name, role, session, and learn the
    other's codecs (NONE implied), frame limit and nonce."""
    c, s = client(nonce=b"c" * 32), server(nonce=b"s" * 32)
    got_c, got_s, client_rx, server_rx, _ = connect(c, s)
    assert isinstance(got_c, Accepted) and isinstance(got_s, Accepted)
    for got in (got_c, got_s):
        assert (got.version, got.name, got.role, got.features) == (1, NAME, LinkRole.META, 0)
    assert got_c.session == got_s.session
    assert got_c.peer_codecs == {0, LZ4, ZLIB} and got_s.peer_codecs == {0, LZ4, ZSTD}
    assert (got_c.local_nonce, got_c.peer_nonce) == (b"c" * 32, b"s" * 32) == (got_s.peer_nonce, got_s.local_nonce)
    assert got_c.max_data_chunk == MAX_DATA_CHUNK
    assert client_rx.phase is server_rx.phase is Phase.ESTABLISHED


def test_bulk_link_pairs_with_its_control_session():
    """A bulk link naming the live meta link's session is accepted, as the lookup sees it."""
    registry = Registry(NAME)
    control = client()
    got_control, *_ = connect(control, server(registry))
    bulk = client(LinkRole.BULK, session=control.hello_frame.session)
    got_c, got_s, *_ = connect(bulk, server(registry))
    assert isinstance(got_c, Accepted) and got_s.role is LinkRole.BULK
    assert got_s.session == got_control.session
    assert registry.calls[-1] == (NAME, LinkRole.BULK, got_control.session)


def test_frames_pipelined_after_welcome_are_stream_frames():
    """The server may send right after WELCOME: the same segment's next frames decode as established."""
    after = Ping(1, 2).encode() + Open(2, StreamKind.META, Side.SERVER).encode()
    got_c, _, _, _, rest = connect(client(), server(), after)
    assert isinstance(got_c, Accepted) and rest == [Ping(1, 2), Open(2, StreamKind.META, Side.SERVER)]


@pytest.mark.parametrize(
    "reason",
    [RejectReason.UNKNOWN_CONNECTION, RejectReason.DUPLICATE_META, RejectReason.NO_SUCH_SESSION,
     RejectReason.BUSY],
)  # fmt: skip
def test_each_lookup_reject_reason_reaches_the_client(reason):
    """Whatever reason the lookup gives, the server answers REJECT with it and the client sees it;
    the client's decoder then accepts nothing more."""
    got_c, got_s, client_rx, *_ = connect(client(), server(lambda n, r, s: reason))
    assert got_c == got_s and isinstance(got_c, Rejected) and got_c.reason is reason
    assert NAME in got_c.message
    assert client_rx.phase is Phase.CLOSED


def test_registry_rejects_unknown_duplicate_and_orphan_links():
    """Realistic refusals: an unconfigured name, a second meta link, a bulk link with no session."""
    registry = Registry(NAME)
    other = ClientHandshake("r9-bob-alice", LinkRole.META, new_session(), [])
    assert connect(other, server(registry))[0].reason is RejectReason.UNKNOWN_CONNECTION
    assert isinstance(connect(client(), server(registry))[0], Accepted)
    assert connect(client(), server(registry))[0].reason is RejectReason.DUPLICATE_META
    assert connect(client(LinkRole.BULK), server(registry))[0].reason is RejectReason.NO_SUCH_SESSION


def test_version_mismatch_is_rejected_before_the_lookup():
    """Disjoint version ranges: REJECT VERSION_MISMATCH naming both ranges; the lookup is not asked."""
    registry = Registry(NAME)
    got_c, got_s, *_ = connect(client(versions=(2, 3)), server(registry, versions=(1, 1)))
    assert got_c == got_s and got_c.reason is RejectReason.VERSION_MISMATCH
    assert "2..3" in got_c.message and "1..1" in got_c.message
    assert registry.calls == []


@pytest.mark.parametrize(
    "local,peer,agreed",
    [((1, 1), (1, 1), 1), ((1, 3), (2, 5), 3), ((2, 5), (1, 3), 3), ((1, 9), (4, 4), 4),
     ((1, 2), (3, 4), None), ((5, 6), (1, 4), None)],
)  # fmt: skip
def test_version_negotiation_picks_the_highest_common_version(local, peer, agreed):
    """negotiate_version is the highest version in both ranges, None when they are disjoint."""
    assert negotiate_version(local, peer) == agreed == negotiate_version(peer, local)


def test_handshake_agrees_on_the_highest_common_version():
    """Client 1..3 and server 2..5 agree on 3 at both ends."""
    got_c, got_s, *_ = connect(client(versions=(1, 3)), server(versions=(2, 5)))
    assert got_c.version == got_s.version == 3


def welcome_for(c: ClientHandshake, **changes) -> Welcome:
    hello = c.hello_frame
    fields = dict(version=1, session=hello.session, codecs=(), nonce=bytes(32)) | changes
    return Welcome(**fields)


@pytest.mark.parametrize(
    "changes",
    [dict(version=2), dict(session=bytes(16)), dict(features=int(Feature.HMAC_AUTH))],
    ids=["version-not-offered", "other-session", "feature-not-offered"],
)
def test_client_refuses_a_welcome_that_does_not_answer_its_hello(changes):
    """A WELCOME with a version, session or feature the client did not offer is HANDSHAKE_FAILED."""
    c = client()
    c.hello()
    with pytest.raises(LinkProtocolError) as info:
        c.receive(welcome_for(c, **changes))
    assert info.value.code is ErrorCode.HANDSHAKE_FAILED and not info.value.from_peer


def test_client_protocol_errors():
    """Before hello(), after the outcome, or on a non-handshake frame the client raises; an ERROR
    from the server raises with from_peer set, so the caller need not answer it."""
    c = client()
    with pytest.raises(LinkProtocolError):
        c.receive(welcome_for(c))  # nothing sent yet
    c.hello()
    with pytest.raises(RuntimeError):
        c.hello()
    with pytest.raises(LinkProtocolError) as info:
        c.receive(Ping(1, 1))
    assert info.value.code is ErrorCode.UNEXPECTED_FRAME
    c = client()
    c.hello()
    with pytest.raises(LinkProtocolError) as info:
        c.receive(ErrorFrame(ErrorCode.PROTOCOL_ERROR, "bad HELLO"))
    assert info.value.from_peer and info.value.code is ErrorCode.PROTOCOL_ERROR
    c = client()
    c.hello()
    assert isinstance(c.receive(welcome_for(c)), Accepted)
    with pytest.raises(LinkProtocolError):
        c.receive(welcome_for(c))


def test_server_protocol_errors():
    """The server raises on anything but one HELLO, and reports a peer ERROR as from_peer."""
    s = server()
    with pytest.raises(LinkProtocolError) as info:
        s.receive(Ping(1, 1))
    assert info.value.code is ErrorCode.UNEXPECTED_FRAME
    with pytest.raises(LinkProtocolError) as info:
        server().receive(ErrorFrame(ErrorCode.TIMEOUT, ""))
    assert info.value.from_peer
    c = client()
    (hello,) = LinkDecoder(Side.SERVER).feed(c.hello())
    s.receive(hello)
    with pytest.raises(LinkProtocolError):
        s.receive(hello)


def test_reserved_auth_feature_is_never_agreed():
    """Offering HMAC_AUTH to a version-1 server (even one configured with it) agrees to no features:
    authentication is a reserved extension, not implemented yet."""
    c = client(features=int(Feature.HMAC_AUTH))
    got_c, got_s, *_ = connect(c, server(features=int(Feature.HMAC_AUTH)))
    assert got_c.features == got_s.features == 0


def test_peer_frame_limit_shapes_data_chunks():
    """A peer advertising a smaller max_payload gets DATA chunks that fit it (prefix included)."""
    got_c, got_s, *_ = connect(client(max_payload=8192), server(max_payload=65536))
    assert got_c.peer_max_payload == 65536 and got_c.max_data_chunk == 65536 - 9
    assert got_s.max_data_chunk == 8192 - 9


def test_invalid_arguments_fail_before_anything_is_sent():
    """Bad names, sessions, codecs or version ranges raise ValueError at construction."""
    with pytest.raises(ValueError):
        ClientHandshake("x" * 256, LinkRole.META, new_session(), [])
    with pytest.raises(ValueError):
        ClientHandshake(NAME, LinkRole.META, b"short", [])
    with pytest.raises(ValueError):
        ClientHandshake(NAME, LinkRole.META, new_session(), [], versions=(3, 2))
    with pytest.raises(ValueError):
        ServerHandshake(Registry(), [300])


def test_protocol_error_becomes_an_error_frame_the_peer_decodes():
    """A server that gets garbage sends the decoder's error as an ERROR frame; the client raises it."""
    server_rx = LinkDecoder(Side.SERVER)
    (err,) = server_rx.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert isinstance(err, LinkError)
    c = client()
    c.hello()
    (frame,) = LinkDecoder(Side.CLIENT).feed(err.frame().encode())
    with pytest.raises(LinkProtocolError) as info:
        c.receive(frame)
    assert info.value.from_peer and "magic" in info.value.message
    assert LinkProtocolError(ErrorCode.TIMEOUT, "x").frame() == ErrorFrame(ErrorCode.TIMEOUT, "x")


def test_hello_sent_by_a_newer_client_keeps_its_extensions_ignorable():
    """A HELLO with trailing extension bytes (a later version's fields) is still understood."""
    hello = Hello(1, 4, LinkRole.META, NAME, new_session(), (), bytes(32), extensions=b"v4 fields")
    (decoded,) = LinkDecoder(Side.SERVER).feed(hello.encode())
    reply, got = server().receive(decoded)
    assert isinstance(got, Accepted) and got.version == 1
    assert LinkDecoder(Side.CLIENT).feed(reply)[0].version == 1
    assert Reject(RejectReason.BUSY).reason is RejectReason.BUSY
