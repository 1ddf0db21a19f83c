"""Fuzzing the proxy-to-proxy link: LinkDecoder, the handshake machines, and DATA decoding.

Inputs are valid frame sequences for either end of a link (HELLO or WELCOME/REJECT, then PING,
PONG, OPEN, DATA, CLOSE, maybe GOAWAY/ERROR), then damaged: a byte flipped or overwritten, bytes
inserted or deleted, the stream cut short, junk appended; plus arbitrary bytes, arbitrary frames
for the handshake machines, and DATA frames whose compressed payload or prefix was corrupted.
"""

from __future__ import annotations


from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from drbdproxy.codecs import (
    RAW_CODEC,
    CodecError,
    Lz4Codec,
    Lz4HcCodec,
    LzmaCodec,
    ZlibCodec,
    ZstdCodec,
    decode_chunk,
    encode_chunk,
)
from drbdproxy.link import (
    FRAME_HEADER_SIZE,
    MAX_FRAME_PAYLOAD,
    Accepted,
    Auth,
    ClientHandshake,
    Close,
    Data,
    ErrorCode,
    ErrorFrame,
    Feature,
    FrameType,
    GoAway,
    Hello,
    LinkDecoder,
    LinkError,
    LinkProtocolError,
    LinkRole,
    Open,
    Pending,
    Phase,
    Ping,
    Pong,
    Reject,
    Rejected,
    RejectReason,
    ServerHandshake,
    Side,
    StreamKind,
    Welcome,
)
from drbdproxy.link.frames import data_checksum, IMPLEMENTED_FEATURES

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SIDES = st.sampled_from([Side.SERVER, Side.CLIENT])
LIMITS = st.sampled_from([4096, MAX_FRAME_PAYLOAD])


def other(side: Side) -> Side:
    return Side.CLIENT if side is Side.SERVER else Side.SERVER


# --- frame strategies (every frame built here is valid by construction) ------------------------

u16, u32, u64 = st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)
sessions = st.binary(min_size=16, max_size=16)
nonces = st.binary(min_size=32, max_size=32)
codec_lists = st.lists(st.integers(0, 255), unique=True, max_size=8).map(tuple)
payload_limits = st.one_of(st.sampled_from([4096, MAX_FRAME_PAYLOAD]), st.integers(4096, 2**32 - 1))
names = st.text(min_size=1, max_size=40)  # at most 160 UTF-8 bytes: within HELLO's 255
messages = st.text(max_size=60)


@st.composite
def version_ranges(draw) -> tuple[int, int]:
    low = draw(st.integers(1, 4))
    return low, draw(st.integers(low, low + 3))


@st.composite
def hellos(draw) -> Hello:
    low, high = draw(version_ranges())
    name = draw(names)
    return Hello(low, high, draw(st.sampled_from(list(LinkRole))), name, draw(sessions),
                 draw(codec_lists), draw(nonces), draw(u32), draw(payload_limits),
                 draw(st.binary(max_size=40)))  # fmt: skip


welcomes = st.builds(Welcome, st.integers(1, 8), sessions, codec_lists, nonces, u32, payload_limits,
                     st.binary(max_size=40))
rejects = st.builds(Reject, st.one_of(st.sampled_from(list(RejectReason)), u16), messages)
goaways = st.builds(GoAway, u16, messages)
error_frames = st.builds(ErrorFrame, u16, messages)
pings = st.builds(Ping, u64, u64)
pongs = st.builds(Pong, u64, u64)
#: Proofs from someone who does not know the secret.
auths = st.builds(Auth, st.binary(min_size=32, max_size=32))


@st.composite
def data_frames(draw, stream: int) -> Data:
    raw = draw(st.binary(min_size=1, max_size=300))
    if draw(st.booleans()):
        return Data.uncompressed(stream, raw)
    # A "compressed" frame: the link does not decompress, it only checks the sizes.
    return Data(stream, draw(st.integers(1, 255)), len(raw) + draw(st.integers(0, 5000)), draw(u32), raw)


def any_frames(stream: int = 1) -> st.SearchStrategy:
    """Every frame type, valid on its own, in no particular protocol state."""
    return st.one_of(
        hellos(), welcomes, rejects, auths, goaways, error_frames, pings, pongs,
        st.builds(Open, st.just(stream), st.sampled_from(list(StreamKind)),
                  st.just(Side.CLIENT if stream & 1 else Side.SERVER)),
        data_frames(stream), st.builds(Close, st.just(stream), st.integers(0, 255), messages),
    )  # fmt: skip


@st.composite
def sequences(draw, side: Side, auth: bool) -> list:
    """Frames that a conforming peer of ``side`` could send, in an order it could send them, to a
    decoder built with ``auth`` (this end has a link secret)."""
    peer = other(side)
    if side is Side.SERVER:
        frames: list = [draw(hellos())]
    else:
        frames = [draw(st.one_of(welcomes, welcomes, rejects))]
        if isinstance(frames[0], Reject):
            return frames
    if auth or side is Side.CLIENT and frames[0].features & Feature.HMAC_AUTH:
        # The authenticating phase: the peer's AUTH, or (from a server) a REJECT, or an ERROR.
        choices = [auths, auths, error_frames] + ([rejects] if side is Side.CLIENT else [])
        frames.append(draw(st.one_of(choices)))
        if not isinstance(frames[-1], Auth):
            return frames
    next_peer_id = 1 if peer is Side.CLIENT else 2
    ours = [2, 4, 1000] if side is Side.SERVER else [1, 3, 1001]  # ids only we know about
    opened: list[int] = []
    for _ in range(draw(st.integers(0, 10))):
        what = draw(st.sampled_from(["ping", "pong", "open", "open", "data", "data", "close"]))
        if what == "ping":
            frames.append(draw(pings))
        elif what == "pong":
            frames.append(draw(pongs))
        elif what == "open" or not opened:
            next_peer_id += 2 * draw(st.integers(0, 3))  # ids grow, with gaps
            frames.append(Open(next_peer_id, draw(st.sampled_from(list(StreamKind))), peer))
            opened.append(next_peer_id)
            next_peer_id += 2
        else:
            sid = draw(st.sampled_from(opened + ours))
            if what == "data":
                frames.append(draw(data_frames(sid)))
            else:
                frames.append(Close(sid, draw(st.integers(0, 255)), draw(messages)))
    if draw(st.integers(0, 3)) == 0:
        frames.append(draw(st.one_of(goaways, error_frames)))
    return frames


@st.composite
def damage(draw, wire: bytes) -> tuple[bytes, int]:
    """(damaged wire, index of the first byte that differs from ``wire``)."""
    how = draw(st.sampled_from(["none", "flip", "overwrite", "insert", "delete", "truncate", "append"]))
    pos = draw(st.integers(0, max(0, len(wire) - 1)))
    if how == "none" or not wire:
        bad = wire
    elif how == "flip":
        bad = wire[:pos] + bytes([wire[pos] ^ draw(st.integers(1, 255))]) + wire[pos + 1 :]
    elif how == "overwrite":
        junk = draw(st.binary(min_size=1, max_size=8))[: len(wire) - pos]
        bad = wire[:pos] + junk + wire[pos + len(junk) :]
    elif how == "insert":
        bad = wire[:pos] + draw(st.binary(min_size=1, max_size=20)) + wire[pos:]
    elif how == "delete":
        bad = wire[:pos] + wire[pos + draw(st.integers(1, 20)) :]
    elif how == "truncate":
        bad = wire[:pos]
    else:
        bad = wire + draw(st.binary(min_size=1, max_size=64))
    common = min(len(bad), len(wire))
    first = next((i for i in range(common) if bad[i] != wire[i]), common)
    return bad, first


chunk_sizes = st.lists(st.one_of(st.integers(1, 16), st.integers(1, 600)), max_size=25)


def chunks(data: bytes, sizes: list[int]):
    pos = 0
    for size in sizes:
        if pos >= len(data):
            return
        yield data[pos : pos + size]
        pos += size
    if pos < len(data):
        yield data[pos:]


# --- the decoder oracle ----------------------------------------------------------------------


def feed_checked(side: Side, data: bytes, sizes: list[int], max_payload: int,
                 auth: bool = False) -> tuple[LinkDecoder, list]:
    """Feed ``data`` in chunks, checking after each feed: no exception, frames then at most one
    LinkError (the last event ever), at most one header plus max_payload bytes held, nothing at
    all returned once failed. Then: the first frame is one of the peer's handshake frames, no
    heartbeat or stream frame gets through before the peer's AUTH when authentication is on, and
    no frame is accepted after REJECT, GOAWAY or ERROR."""
    decoder = LinkDecoder(side, max_payload, auth=auth)
    events: list = []
    for chunk in chunks(data, sizes):
        before = decoder.failed
        new = decoder.feed(chunk)
        if before is not None:
            assert new == [] and decoder.failed is before and decoder.buffered == 0
        events += new
        assert decoder.buffered <= max_payload + FRAME_HEADER_SIZE
        errors = [e for e in events if isinstance(e, LinkError)]
        assert len(errors) <= 1 and (not errors or events[-1] is errors[0])
    frames = [e for e in events if not isinstance(e, LinkError)]
    first = {Side.SERVER: (Hello, ErrorFrame), Side.CLIENT: (Welcome, Reject, ErrorFrame)}[side]
    assert not frames or isinstance(frames[0], first)
    if auth or frames and isinstance(frames[0], Welcome) and frames[0].features & Feature.HMAC_AUTH:
        proved = next((i for i, f in enumerate(frames) if isinstance(f, Auth)), len(frames))
        assert all(isinstance(f, (Hello, Welcome, Reject, ErrorFrame)) for f in frames[:proved])
    for i, frame in enumerate(frames):
        if frame.TYPE in (FrameType.REJECT, FrameType.GOAWAY, FrameType.ERROR):
            assert i == len(frames) - 1 and decoder.phase is Phase.CLOSED
    if decoder.failed is not None:
        error = decoder.failed
        assert isinstance(error.code, ErrorCode) and error.message and 0 <= error.offset <= len(data)
        # The ERROR frame to send back is one the peer's decoder accepts in any phase before CLOSED.
        reply = LinkDecoder(other(side)).feed(error.frame().encode())
        assert len(reply) == 1 and isinstance(reply[0], ErrorFrame) and reply[0].code == error.code
        # Fails closed: even a perfectly valid frame is not looked at any more.
        assert decoder.feed(Ping(1, 1).encode()) == [] and decoder.buffered == 0
    return decoder, events


# --- LinkDecoder ------------------------------------------------------------------------------


@FUZZ
@given(st.data(), SIDES, LIMITS, st.booleans(), chunk_sizes)
def test_damaged_frame_sequences(data, side, max_payload, auth, sizes):
    """Valid frame sequences for either side, damaged once (flip, overwrite, insert, delete,
    truncate, append) and fed in any chunking: never raises, bounded buffer, fails closed; every
    frame that lies wholly before the first damaged byte is decoded unchanged, an undamaged
    sequence decodes exactly, and the chunking never changes the events."""
    frames = data.draw(sequences(side, auth), label="frames")
    wires = [f.encode() for f in frames]
    wire = b"".join(wires)
    bad, first = data.draw(damage(wire), label="damage")
    decoder, events = feed_checked(side, bad, sizes, max_payload, auth)
    event(f"{side.name}: " + (decoder.failed.code.name if decoder.failed else "no error"))
    assert events == LinkDecoder(side, max_payload, auth=auth).feed(bad)  # LinkError: by value
    intact, end = [], 0
    for frame, raw in zip(frames, wires):
        end += len(raw)
        if end > first:
            break
        intact.append(frame)
    assert events[: len(intact)] == intact
    if bad == wire:
        assert events == frames and decoder.buffered == 0 and decoder.failed is None
    elif bad == wire[: len(bad)]:  # cut short: whole frames come out, the rest waits, no error
        assert events == intact and decoder.failed is None
        assert decoder.buffered == len(bad) - sum(len(f.encode()) for f in intact)


@FUZZ
@given(st.binary(max_size=3000), SIDES, LIMITS, st.booleans(), chunk_sizes)
def test_arbitrary_bytes_fail_closed(junk, side, max_payload, handshake_first, sizes):
    """Arbitrary bytes, straight away or after a valid handshake frame and OPEN: never raises,
    bounded, at most one error and then silence, whatever the chunking."""
    prologue = b""
    if handshake_first:
        first = Hello(1, 1, LinkRole.BULK, "r0", bytes(16), (1,), bytes(32)) if side is Side.SERVER \
            else Welcome(1, bytes(16), (), bytes(32))
        prologue = first.encode() + Open(1 if side is Side.SERVER else 2, StreamKind.DATA, other(side)).encode()
    _, events = feed_checked(side, prologue + junk, sizes, max_payload)
    assert events == LinkDecoder(side, max_payload).feed(prologue + junk)


# --- handshake machines ------------------------------------------------------------------------

HMAC_AUTH = int(Feature.HMAC_AUTH)
secrets_ = st.one_of(st.none(), st.sampled_from([b"s3cret", b"other secret"]), st.binary(min_size=1, max_size=40))


@st.composite
def servers(draw):
    """(ServerHandshake, lookup calls, lookup verdict, version range, secret)."""
    versions = draw(version_ranges())
    verdict = draw(st.one_of(st.none(), st.sampled_from(list(RejectReason))))
    secret = draw(secrets_)
    calls: list = []

    def lookup(name, role, session):
        calls.append((name, role, session))
        return verdict

    server = ServerHandshake(lookup, draw(codec_lists), versions, max_payload=draw(payload_limits),
                             features=draw(u32), nonce=draw(nonces), secret=secret)  # fmt: skip
    return server, calls, verdict, versions, secret


def must_refuse(receive, frame) -> LinkProtocolError:
    try:
        receive(frame)
    except LinkProtocolError as e:
        return e
    raise AssertionError(f"{frame.TYPE.name} was accepted after the handshake ended")


@FUZZ
@given(servers(), any_frames(1), any_frames(2), auths)
def test_server_handshake_takes_any_frame(server_setup, frame, later, proof):
    """ServerHandshake.receive() with any frame raises only LinkProtocolError. A HELLO gets a
    WELCOME or REJECT the client's decoder accepts, matching the outcome (version in both ranges,
    the client's session, only features both can do). With a link secret the server refuses a
    HELLO without HMAC_AUTH, never asks its lookup before a valid proof, and answers a wrong AUTH
    proof with REJECT AUTH_FAILED; without one it never agrees to HMAC_AUTH. Once the handshake has
    an outcome every further frame is an error."""
    server, calls, verdict, (low, high), secret = server_setup
    try:
        reply, outcome = server.receive(frame)
    except LinkProtocolError as e:
        assert not isinstance(frame, Hello) and e.from_peer == isinstance(frame, ErrorFrame)
        e.frame().encode()
        return
    assert isinstance(frame, Hello)
    answer = LinkDecoder(Side.CLIENT).feed(reply)
    assert len(answer) == 1 and not isinstance(answer[0], LinkError)
    overlap = max(low, frame.version_min) <= min(high, frame.version_max)
    if isinstance(outcome, (Accepted, Pending)):
        welcome = answer[0]
        assert isinstance(welcome, Welcome) and overlap
        assert max(low, frame.version_min) <= welcome.version <= min(high, frame.version_max)
        assert welcome.session == frame.session
        assert not welcome.features & ~frame.features and not welcome.features & ~IMPLEMENTED_FEATURES
        assert bool(welcome.features & HMAC_AUTH) == (secret is not None)
    if isinstance(outcome, Accepted):
        assert secret is None and verdict is None
        assert outcome.version == welcome.version and outcome.features == welcome.features
        assert outcome.peer_codecs == set(frame.codecs) | {RAW_CODEC.id}
        assert outcome.peer_max_payload == frame.max_payload and outcome.peer_nonce == frame.nonce
        assert calls == [(frame.name, frame.role, frame.session)]
    elif isinstance(outcome, Pending):
        assert secret is not None and frame.features & HMAC_AUTH and calls == []
        assert outcome.send == b""
        # Someone who does not know the secret: a random proof is refused, the lookup not asked.
        reply, outcome = server.receive(proof)
        assert isinstance(outcome, Rejected) and outcome.reason is RejectReason.AUTH_FAILED
        assert LinkDecoder(Side.CLIENT).feed(reply)[0] == Reject(RejectReason.AUTH_FAILED, outcome.message)
        assert calls == []
    else:
        assert isinstance(outcome, Rejected) and isinstance(answer[0], Reject)
        assert answer[0].reason == outcome.reason
        if not overlap:
            assert outcome.reason is RejectReason.VERSION_MISMATCH and calls == []
        elif secret is not None:
            assert outcome.reason is RejectReason.AUTH_REQUIRED and calls == []
            assert not frame.features & HMAC_AUTH
        else:
            assert outcome.reason == verdict
    must_refuse(server.receive, later)


@st.composite
def answers_to(draw, hello: Hello):
    """Frames a server might send back: honest WELCOMEs, WELCOMEs with one field wrong, others."""
    honest = Welcome(draw(st.integers(hello.version_min, hello.version_max)), hello.session,
                     draw(codec_lists), draw(nonces), hello.features & draw(st.sampled_from([0, HMAC_AUTH])),
                     draw(payload_limits))  # fmt: skip
    bent = st.builds(
        lambda v, s, f: Welcome(v, s, honest.codecs, honest.nonce, f, honest.max_payload),
        st.one_of(st.just(honest.version), st.integers(1, 0xFFFF)),
        st.one_of(st.just(hello.session), sessions),
        st.one_of(st.just(honest.features), st.just(hello.features), u32),
    )
    return draw(st.one_of(st.just(honest), bent, any_frames(2)))


@FUZZ
@given(hellos(), secrets_, st.data())
def test_client_handshake_takes_any_frame(hello, secret, data):
    """ClientHandshake.receive() with any frames raises only LinkProtocolError. It accepts a
    WELCOME only with a version it offered, its own session and no feature it did not offer; with
    a link secret it never accepts without the server's valid AUTH proof (a random proof is
    AUTH_FAILED), without one it never accepts an HMAC_AUTH WELCOME. A frame before hello() or
    after the outcome is an error."""
    client = ClientHandshake(hello.name, hello.role, hello.session, hello.codecs,
                             (hello.version_min, hello.version_max), max_payload=hello.max_payload,
                             features=hello.features & ~HMAC_AUTH, nonce=hello.nonce,
                             secret=secret)  # fmt: skip
    sent = client.hello_frame
    frame = data.draw(answers_to(sent), label="answer")
    assert must_refuse(client.receive, frame).code is ErrorCode.UNEXPECTED_FRAME  # before HELLO
    assert client.decoder().auth == (secret is not None)
    assert LinkDecoder(Side.SERVER).feed(client.hello()) == [sent]
    assert bool(sent.features & HMAC_AUTH) == (secret is not None)
    last = frame
    try:
        outcome = client.receive(frame)
        if isinstance(outcome, Pending):
            assert secret is not None and isinstance(frame, Welcome) and frame.features & HMAC_AUTH
            auth = LinkDecoder(Side.SERVER, auth=True)
            auth.feed(client.hello_frame.encode())
            assert [f.TYPE for f in auth.feed(outcome.send)] == [FrameType.AUTH]
            last = second = data.draw(st.one_of(auths, any_frames(2)), label="after our AUTH")
            outcome = client.receive(second)
            assert isinstance(outcome, Rejected) and isinstance(second, Reject), "random proof accepted"
    except LinkProtocolError as e:
        assert e.from_peer == isinstance(last, ErrorFrame) and client.outcome is None
        e.frame().encode()
        return
    if isinstance(outcome, Accepted):
        assert isinstance(frame, Welcome) and secret is None
        assert sent.version_min <= frame.version <= sent.version_max
        assert frame.session == sent.session and not frame.features & ~sent.features
        assert not outcome.authenticated and not frame.features & HMAC_AUTH
        assert outcome.peer_codecs == set(frame.codecs) | {RAW_CODEC.id}
        assert 0 < outcome.max_data_chunk <= frame.max_payload
    else:
        assert isinstance(outcome, Rejected)
    must_refuse(client.receive, data.draw(any_frames(2), label="later"))


def run_handshake(client: ClientHandshake, server: ServerHandshake, tamper) -> tuple:
    """Drive both machines through their own decoders; ``tamper(i, wire)`` may damage the i-th
    message (0 HELLO, 1 WELCOME/REJECT, 2 client AUTH, 3 server AUTH). Returns each end's result:
    its outcome, the LinkProtocolError it raised, or its decoder's LinkError."""
    cdec, sdec = client.decoder(), server.decoder()
    result: dict[str, object] = {"client": None, "server": None}
    count = 0

    def send(wire: bytes) -> bytes:
        nonlocal count
        count += 1
        return tamper(count - 1, wire)

    def deliver(end: str, decoder: LinkDecoder, wire: bytes, receive) -> list[bytes]:
        out = []
        for item in decoder.feed(wire):
            if result[end] is not None:
                break
            if isinstance(item, LinkError):
                result[end] = item
                break
            try:
                got = receive(item)
            except LinkProtocolError as e:
                result[end] = e
                break
            reply, outcome = got if end == "server" else (getattr(got, "send", b""), got)
            if reply:
                out.append(send(reply))
            if not isinstance(outcome, Pending):
                result[end] = outcome
        return out

    to_server = [send(client.hello())]
    for _ in range(4):
        to_client = [w for wire in to_server for w in deliver("server", sdec, wire, server.receive)]
        to_server = [w for wire in to_client for w in deliver("client", cdec, wire, client.receive)]
        if not to_server:
            break
    return result["client"], result["server"], count


@FUZZ
@given(hellos(), servers(), secrets_, st.one_of(st.none(), st.tuples(st.integers(0, 3), st.integers(0, 10**6),
                                                                      st.integers(1, 255))))
def test_handshake_end_to_end_with_and_without_secrets(hello, server_setup, client_secret, tampering):
    """Client and server handshakes talk through their own decoders, with or without (equal or
    different) link secrets, and maybe one byte of one handshake message flipped in transit.
    Untouched: both end Accepted (authenticated iff both have the secret) exactly when the versions
    overlap, the secrets agree and the lookup accepts; otherwise nobody accepts a link the other
    end refused. With the same secret on both ends, a flipped byte in HELLO, WELCOME or the
    client's AUTH means neither end accepts, and in the server's AUTH that the client does not."""
    server, calls, verdict, (low, high), server_secret = server_setup
    client = ClientHandshake(hello.name, hello.role, hello.session, hello.codecs,
                             (hello.version_min, hello.version_max), max_payload=hello.max_payload,
                             features=hello.features & ~HMAC_AUTH, nonce=hello.nonce,
                             secret=client_secret)  # fmt: skip
    flipped: list[int] = []

    def tamper(index: int, wire: bytes) -> bytes:
        if tampering is None or tampering[0] != index:
            return wire
        pos = tampering[1] % len(wire)
        flipped.append(index)
        return wire[:pos] + bytes([wire[pos] ^ tampering[2]]) + wire[pos + 1 :]

    client_result, server_result, _ = run_handshake(client, server, tamper)
    event(f"client {type(client_result).__name__}, server {type(server_result).__name__}"
          f"{', tampered' if flipped else ''}{', secrets agree' if client_secret == server_secret else ''}")
    for result in (client_result, server_result):
        assert result is None or isinstance(result, (Accepted, Rejected, LinkProtocolError, LinkError))
    if isinstance(client_result, Accepted):
        assert isinstance(server_result, Accepted) or flipped, (client_result, server_result)
    if server_secret is not None:
        if isinstance(server_result, Accepted):
            assert client_secret == server_secret and server_result.authenticated
    if client_secret is not None and isinstance(client_result, Accepted):
        assert client_secret == server_secret and client_result.authenticated
    if flipped and client_secret is not None and client_secret == server_secret:
        assert not isinstance(client_result, Accepted), "tampered handshake accepted by the client"
        if flipped != [3]:
            assert not isinstance(server_result, Accepted), "tampered handshake accepted by the server"
    if flipped:
        return
    overlap = max(low, hello.version_min) <= min(high, hello.version_max)
    agree = client_secret == server_secret
    if overlap and agree and verdict is None:
        assert isinstance(client_result, Accepted) and isinstance(server_result, Accepted)
        assert client_result.session == server_result.session and client_result.version == server_result.version
        assert client_result.local_nonce == server_result.peer_nonce
        assert client_result.authenticated == server_result.authenticated == (client_secret is not None)
    elif not overlap:
        assert server_result == client_result == Rejected(RejectReason.VERSION_MISMATCH, server_result.message)
    elif server_secret is not None and client_secret is None:
        assert server_result == client_result and server_result.reason is RejectReason.AUTH_REQUIRED
    elif server_secret is not None and not agree:
        assert server_result == client_result and server_result.reason is RejectReason.AUTH_FAILED
        assert calls == []
    elif client_secret is not None and server_secret is None and verdict is None:
        assert isinstance(server_result, Accepted)  # the server cannot tell; the client fails closed
        assert isinstance(client_result, LinkProtocolError)
        assert client_result.code is ErrorCode.HANDSHAKE_FAILED
    else:
        assert isinstance(server_result, Rejected) and server_result == client_result
        assert server_result.reason == verdict


@FUZZ
@given(hellos(), servers(), st.data())
def test_damaged_hello_through_decoder_and_server(hello, server_setup, data):
    """A HELLO damaged on the wire goes through the server's own decoder and, if a frame comes
    out, through ServerHandshake: only LinkError events or LinkProtocolError, never another
    exception; an undamaged HELLO always gets an answer the client's decoder accepts."""
    server = server_setup[0]
    wire = hello.encode()
    bad, _ = data.draw(damage(wire), label="damage")
    events = server.decoder().feed(bad)
    frames = [e for e in events if not isinstance(e, LinkError)]
    if bad == wire:
        assert frames == [hello]
    if frames:
        try:
            reply, _ = server.receive(frames[0])
        except LinkProtocolError:
            assert not isinstance(frames[0], Hello)
        else:
            assert len(LinkDecoder(Side.CLIENT).feed(reply)) == 1


# --- DATA payloads through the codecs --------------------------------------------------------

CODECS = [RAW_CODEC, Lz4Codec(), Lz4HcCodec(), ZstdCodec(), ZlibCodec(), LzmaCodec(preset=0)]


@st.composite
def raw_chunks(draw) -> bytes:
    """Mostly compressible chunks (so every codec really compresses), sometimes random ones."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(min_size=1, max_size=2000))
    unit = draw(st.binary(min_size=1, max_size=40))
    return (unit * draw(st.integers(300 // len(unit) + 1, 4000 // len(unit))))[:4000] + draw(st.binary(max_size=30))


@st.composite
def corruptions(draw, wire: bytes) -> bytes:
    """Damage a single DATA frame; the frame header's length is kept right when the payload changes
    size, so the decoder hands the corrupt frame on instead of refusing it."""
    header, prefix, payload = wire[:FRAME_HEADER_SIZE], wire[12:21], wire[21:]
    how = draw(st.sampled_from(["payload", "payload", "prefix", "truncate", "extend", "swap"]))
    if how == "payload":
        buf = bytearray(payload)
        for _ in range(draw(st.integers(1, 3))):
            buf[draw(st.integers(0, len(buf) - 1))] ^= draw(st.integers(1, 255))
        payload = bytes(buf)
    elif how == "prefix":
        buf = bytearray(prefix)
        buf[draw(st.integers(0, 8))] ^= draw(st.integers(1, 255))
        prefix = bytes(buf)
    elif how == "truncate" and len(payload) > 1:
        payload = payload[: draw(st.integers(1, len(payload) - 1))]
    elif how == "extend":
        payload += draw(st.binary(min_size=1, max_size=16))
    else:
        payload = draw(st.binary(min_size=1, max_size=len(payload) + 8))
    length = len(prefix) + len(payload)
    return header[:8] + length.to_bytes(4, "big") + prefix + payload


def established_server() -> LinkDecoder:
    decoder = LinkDecoder(Side.SERVER)
    hello = Hello(1, 1, LinkRole.BULK, "r0", bytes(16), (1, 2, 3, 4, 5), bytes(32))
    assert len(decoder.feed(hello.encode() + Open(1, StreamKind.DATA, Side.CLIENT).encode())) == 2
    return decoder


@FUZZ
@given(st.sampled_from(CODECS), raw_chunks(), st.data())
@example(codec=Lz4Codec(), raw=b"abcd" * 64, data=None)  # lz4 carries no checksum of its own
def test_corrupt_data_frames_never_yield_wrong_bytes(codec, raw, data):
    """A DATA frame whose payload or prefix (codec, raw_length, crc32c) was corrupted: the link
    decoder refuses it (LinkError), or decode_chunk + Data.verify raise CodecError or
    LinkProtocolError, or they return exactly the original bytes. Never other bytes, never
    another exception."""
    codec_id, payload = encode_chunk(codec, raw)
    frame = Data(1, codec_id, len(raw), data_checksum(raw), payload)
    wire = frame.encode()
    if data is None:  # the explicit example: flip one byte in the middle of the lz4 block
        buf = bytearray(wire)
        buf[21 + len(payload) // 2] ^= 0x20
        bad = bytes(buf)
    else:
        bad = data.draw(corruptions(wire), label="corrupted frame")
    events = established_server().feed(bad)
    assert len(events) == 1
    if isinstance(events[0], LinkError):
        event(f"refused by the link decoder: {events[0].code.name}")
        return
    got = events[0]
    assert isinstance(got, Data)
    try:
        out = decode_chunk(got.codec, got.payload, got.raw_length)
        got.verify(out)
    except (CodecError, LinkProtocolError) as e:
        event(f"codec {got.codec}: {type(e).__name__}")
        return
    event(f"codec {got.codec}: decoded the original bytes")
    assert len(out) == got.raw_length and data_checksum(out) == got.crc32c
    assert out == raw, "corrupt DATA decoded to other bytes with a matching CRC-32C"
