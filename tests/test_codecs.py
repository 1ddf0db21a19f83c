"""drbdproxy.codecs: plugin lines, the codecs they select, and chunks on the wire."""

from __future__ import annotations

import array
import lzma
import random
import threading
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import FrozenInstanceError, dataclass
from typing import ClassVar

import lz4.block
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drbdproxy.codecs import (
    LZ4,
    LZ4HC,
    LZMA,
    MAX_CHUNK,
    MIN_COMPRESS_SIZE,
    MIN_SAVING_DIVISOR,
    RAW,
    RAW_CODEC,
    ZLIB,
    ZSTD,
    Buffer,
    Codec,
    CodecError,
    CodecId,
    Lz4Codec,
    Lz4HcCodec,
    LzmaCodec,
    PluginError,
    PluginSpec,
    ZlibCodec,
    ZstdCodec,
    codec_for,
    compression_option,
    decode_chunk,
    encode_chunk,
    parse_plugin,
)

# One plugin line per codec (and both lz4 fast settings); lzma at a low level keeps tests quick.
CODEC_LINES = ["lz4", "lz4 level 1", "lz4 level 9", "zstd level 3", "zlib level 6", "lzma level 1"]
COMPRESSING = [codec_for([parse_plugin(line)]) for line in CODEC_LINES]
ALL_CODECS = [RAW_CODEC, *COMPRESSING]


def _ids(codecs: list[Codec]) -> list[str]:
    return [codec.describe() for codec in codecs]


def text_like(size: int, seed: int = 1) -> bytes:
    """Log-like lines from a Zipf-weighted vocabulary: compressible, but not trivially."""
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(400)]
    weights = [1 / (rank + 1) for rank in range(len(words))]
    out = bytearray()
    while len(out) < size:
        out += (" ".join(rng.choices(words, weights, k=rng.randint(3, 12))) + "\n").encode()
    return bytes(out[:size])


def random_bytes(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


DATA_KINDS = {
    "zeros": bytes(65536),
    "random": random_bytes(65536),
    "text": text_like(65536),
}


# --- plugin lines ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "lz4 level 9",
        "zstd level 4",
        "zlib level 6",
        "lzma contexts 4 level 9",
        "lzma level 6 dict-size 1048576",
        "none",
        "lz4",
        "lzma level 0 dict-size 4096 lc 0 lp 4 pb 4 nice-len 273 mf bt4 mode normal depth 1000"
        " fallback-to-zlib on numa-threshold 253 contexts 253",
    ],
)
def test_plugin_lines_drbdadm_sends_render_back_unchanged(line: str) -> None:
    """Every documented plugin line parses, and render() gives the very same line back."""
    assert parse_plugin(line.split()).render() == line


def test_plugin_render_is_canonical() -> None:
    """Names, keys and keywords go lower-case, numbers lose leading zeros; order is kept."""
    spec = parse_plugin(["LZMA", "Level", "09", "MF", "BT4", "Dict-Size", "64k"])
    assert spec == PluginSpec("lzma", (("level", "9"), ("mf", "bt4"), ("dict-size", "65536")))
    assert spec.render() == "lzma level 9 mf bt4 dict-size 65536"
    assert str(spec) == spec.render()


def test_plugin_spec_is_frozen_and_reparses_to_itself() -> None:
    """A PluginSpec is an immutable, hashable value; parsing its words gives an equal spec."""
    spec = parse_plugin("zstd level 4")
    assert parse_plugin(spec.words()) == spec
    assert {spec: 1}[PluginSpec("zstd", (("level", "4"),))] == 1
    with pytest.raises(FrozenInstanceError):
        spec.name = "lz4"  # type: ignore[misc]


@pytest.mark.parametrize(
    "words, word, message",
    [
        ("lz5", "lz5", "unknown plugin 'lz5'"),
        ("aha level 1", "aha", "unknown plugin 'aha'"),
        ("zstd levle 3", "levle", "zstd: unknown option 'levle'"),
        ("zstd level 30", "30", "zstd: level '30' out of range 1-22"),
        ("zstd level 0", "0", "zstd: level '0' out of range 1-22"),
        ("zstd level -5", "-5", "zstd: level '-5' out of range 1-22"),
        ("zstd level", "level", "zstd: option 'level' needs a value"),
        ("zstd level four", "four", "zstd: level 'four' is not a number"),
        ("zstd level 3 level 4", "level", "zstd: option 'level' given twice"),
        ("lz4 level 0", "0", "lz4: level '0' out of range 1-16"),
        ("lz4 level 17", "17", "lz4: level '17' out of range 1-16"),
        ("lz4 acceleration 4", "acceleration", "lz4: unknown option 'acceleration'"),
        ("zlib level 10", "10", "zlib: level '10' out of range 1-9"),
        ("zlib level 0", "0", "zlib: level '0' out of range 1-9"),
        ("lzma level 10", "10", "lzma: level '10' out of range 0-9"),
        ("lzma contexts 0", "0", "lzma: contexts '0' out of range 1-253"),
        ("lzma contexts 254", "254", "lzma: contexts '254' out of range 1-253"),
        ("lzma dict-size 4095", "4095", "lzma: dict-size '4095' out of range 4096-1610612736"),
        ("lzma dict-size 2G", "2G", "lzma: dict-size '2G' out of range 4096-1610612736"),
        ("lzma dict-size 1T", "1T", "lzma: dict-size '1T' is not a size"),
        ("lzma lc 5", "5", "lzma: lc '5' out of range 0-4"),
        ("lzma lp 9", "9", "lzma: lp '9' out of range 0-4"),
        ("lzma pb 5", "5", "lzma: pb '5' out of range 0-4"),
        ("lzma nice-len 274", "274", "lzma: nice-len '274' out of range 0-273"),
        ("lzma mf bt5", "bt5", "lzma: mf 'bt5' is not one of"),
        ("lzma mode turbo", "turbo", "lzma: mode 'turbo' is not one of"),
        ("lzma depth 1001", "1001", "lzma: depth '1001' out of range 0-1000"),
        ("lzma fallback-to-zlib yes", "yes", "lzma: fallback-to-zlib 'yes' is not one of"),
        ("lzma numa-threshold 254", "254", "lzma: numa-threshold '254' out of range 0-253"),
        ("lzma lc 3 lp 2", "2", "lzma: lp '2' makes lc + lp = 5"),
        ("lzma lp 2 lc 3", "3", "lzma: lc '3' makes lc + lp = 5"),
        ("lzma contexts", "contexts", "lzma: option 'contexts' needs a value"),
        ("none level 1", "level", "none: takes no options, got 'level'"),
    ],
)
def test_bad_plugin_words_are_named_in_the_error(words: str, word: str, message: str) -> None:
    """Each bad line raises PluginError (a ValueError) whose message quotes the offending word."""
    with pytest.raises(PluginError) as info:
        parse_plugin(words.split())
    assert isinstance(info.value, ValueError)
    assert message in str(info.value)
    assert repr(word) in str(info.value)


def test_empty_plugin_line_is_refused() -> None:
    """An empty word list is a PluginError, not an IndexError."""
    with pytest.raises(PluginError, match="empty plugin line"):
        parse_plugin([])


@pytest.mark.parametrize(
    "value, expected",
    [
        ("on", [PluginSpec("lz4")]),
        ("ON", [PluginSpec("lz4")]),
        ("off", [PluginSpec("none")]),
        ("0", [PluginSpec("none")]),
        ("1", [PluginSpec("zstd", (("level", "1"),))]),
        ("9", [PluginSpec("zstd", (("level", "9"),))]),
        ("22", [PluginSpec("zstd", (("level", "22"),))]),
    ],
)
def test_compression_option_maps_to_plugins(value: str, expected: list[PluginSpec]) -> None:
    """`set compression`: on -> lz4 (fast), off/0 -> none, N -> zstd level N."""
    assert compression_option(value) == expected


def test_compression_on_selects_plain_lz4_and_off_selects_raw() -> None:
    """`compression on` ends up as LZ4 fast mode with acceleration 1; `off` as no compression."""
    assert codec_for(compression_option("on")) == Lz4Codec(acceleration=1)
    assert codec_for(compression_option("off")) is RAW_CODEC


@pytest.mark.parametrize("value", ["23", "-1", "yes", "lz4", "", "4.5"])
def test_bad_compression_values_are_named_in_the_error(value: str) -> None:
    """Anything but on/off/0-22 raises PluginError quoting the value."""
    with pytest.raises(PluginError) as info:
        compression_option(value)
    assert repr(value) in str(info.value)


# --- codec selection ------------------------------------------------------------------------


def test_wire_ids_are_stable() -> None:
    """The one-byte ids are part of the link protocol and must never change."""
    assert [RAW, LZ4, LZ4HC, ZSTD, ZLIB, LZMA] == [0, 1, 2, 3, 4, 5]
    assert [int(c) for c in CodecId] == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "line, codec",
    [
        ("lz4", Lz4Codec(acceleration=1)),
        ("lz4 level 1", Lz4Codec(acceleration=4)),
        ("lz4 level 2", Lz4Codec(acceleration=1)),
        ("lz4 level 3", Lz4HcCodec(level=3)),
        ("lz4 level 9", Lz4HcCodec(level=9)),
        ("lz4 level 12", Lz4HcCodec(level=12)),
        ("lz4 level 16", Lz4HcCodec(level=12)),
        ("zstd", ZstdCodec(level=3)),
        ("zstd level 19", ZstdCodec(level=19)),
        ("zlib", ZlibCodec(level=6)),
        ("zlib level 1", ZlibCodec(level=1)),
        ("lzma", LzmaCodec(preset=6)),
        ("lzma contexts 4 level 9", LzmaCodec(preset=9)),
        (
            "lzma level 2 dict-size 1M lc 1 lp 1 pb 0 nice-len 64 mf hc4 mode fast depth 8",
            LzmaCodec(
                preset=2, dict_size=1 << 20, lc=1, lp=1, pb=0, nice_len=64, mf="hc4",
                mode="fast", depth=8,
            ),
        ),
    ],
)
def test_level_mapping(line: str, codec: Codec) -> None:
    """Each plugin line selects the documented codec and settings."""
    assert codec_for([parse_plugin(line)]) == codec


def test_first_compressing_plugin_decides() -> None:
    """`none` entries are skipped; the first compressing plugin wins; empty or all-none is RAW."""
    none, zstd4, lz4 = parse_plugin("none"), parse_plugin("zstd level 4"), parse_plugin("lz4")
    assert codec_for([]) is RAW_CODEC
    assert codec_for([none, none]) is RAW_CODEC
    assert codec_for([none, zstd4, lz4]) == ZstdCodec(level=4)
    assert codec_for([lz4, zstd4]) == Lz4Codec()


def test_hand_built_spec_is_validated() -> None:
    """A PluginSpec built without parse_plugin cannot smuggle a bad level into a codec."""
    with pytest.raises(PluginError, match="'99'"):
        codec_for([PluginSpec("zstd", (("level", "99"),))])


def test_lzma_nice_len_below_liblzma_minimum_keeps_preset() -> None:
    """LINSTOR allows nice-len 0, which liblzma refuses: it falls back to the preset's value."""
    codec = codec_for([parse_plugin("lzma level 1 nice-len 0")])
    data = text_like(10000)
    assert decode_chunk(*encode_chunk(codec, data), len(data)) == data


# --- round trips and raw fallback -----------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(DATA_KINDS))
@pytest.mark.parametrize("codec", ALL_CODECS, ids=_ids(ALL_CODECS))
def test_round_trip(codec: Codec, kind: str) -> None:
    """Every codec returns exactly the input for zeros, random and text-like chunks."""
    data = DATA_KINDS[kind]
    codec_id, payload = encode_chunk(codec, data)
    assert decode_chunk(codec_id, payload, len(data)) == data


@pytest.mark.parametrize("kind", ["zeros", "text"])
@pytest.mark.parametrize("codec", COMPRESSING, ids=_ids(COMPRESSING))
def test_compressible_data_is_sent_compressed(codec: Codec, kind: str) -> None:
    """Zeros and text go out under the codec's own id and smaller than they came in."""
    codec_id, payload = encode_chunk(codec, DATA_KINDS[kind])
    assert codec_id == codec.id
    assert len(payload) < len(DATA_KINDS[kind])


@pytest.mark.parametrize("codec", ALL_CODECS, ids=_ids(ALL_CODECS))
def test_random_data_falls_back_to_raw(codec: Codec) -> None:
    """Incompressible data is sent as RAW, byte for byte, so the receiver does no decompression."""
    data = DATA_KINDS["random"]
    assert encode_chunk(codec, data) == (RAW, data)


def test_raw_path_does_not_copy_bytes() -> None:
    """Sending bytes uncompressed hands back the very same object; other buffers become bytes."""
    data = DATA_KINDS["random"]
    assert encode_chunk(ZstdCodec(), data)[1] is data
    assert encode_chunk(RAW_CODEC, data)[1] is data
    assert encode_chunk(RAW_CODEC, bytearray(b"abc")) == (RAW, b"abc")


@dataclass(frozen=True)
class _FixedSizeCodec(Codec):
    """A stand-in whose 'compressed' output has a chosen length, to probe the saving threshold."""

    out_len: int
    id: ClassVar[CodecId] = CodecId.ZSTD

    def compress(self, data: Buffer) -> bytes:
        return b"x" * self.out_len

    def describe(self) -> str:
        return "fixed"


def test_saving_threshold_is_one_thirty_second() -> None:
    """A payload is used only if it saves at least size // 32 bytes (about 3 %); else RAW."""
    data = bytes(3200)
    needed = len(data) // MIN_SAVING_DIVISOR
    assert encode_chunk(_FixedSizeCodec(len(data) - needed), data)[0] == ZSTD
    assert encode_chunk(_FixedSizeCodec(len(data) - needed + 1), data) == (RAW, data)


def test_tiny_chunks_are_sent_raw() -> None:
    """Chunks under MIN_COMPRESS_SIZE go raw without trying; the empty chunk round-trips."""
    small = bytes(MIN_COMPRESS_SIZE - 1)
    assert encode_chunk(ZstdCodec(), small) == (RAW, small)
    assert encode_chunk(ZstdCodec(), b"") == (RAW, b"")
    assert decode_chunk(RAW, b"", 0) == b""


@pytest.mark.parametrize("codec", ALL_CODECS, ids=_ids(ALL_CODECS))
def test_memoryview_and_wide_item_buffers(codec: Codec) -> None:
    """memoryviews, slices of them and non-byte formats are encoded by their bytes, not items."""
    data = DATA_KINDS["text"]
    view = memoryview(bytearray(b"\0" * 16 + data))[16:]
    assert decode_chunk(*encode_chunk(codec, view), len(data)) == data
    wide = array.array("I", bytes(4096))
    assert decode_chunk(*encode_chunk(codec, memoryview(wide)), 4096) == bytes(4096)


def test_oversize_chunk_is_refused_by_the_sender() -> None:
    """encode_chunk refuses more than MAX_CHUNK bytes, which the peer would refuse anyway."""
    with pytest.raises(CodecError, match="MAX_CHUNK"):
        encode_chunk(Lz4Codec(), bytes(MAX_CHUNK + 1))
    data = text_like(MAX_CHUNK)
    assert decode_chunk(*encode_chunk(Lz4Codec(), data), MAX_CHUNK) == data


# --- decode errors --------------------------------------------------------------------------


@pytest.mark.parametrize("codec_id", [6, 7, 255, -1])
def test_unknown_codec_id(codec_id: int) -> None:
    """An id no codec has is a CodecError naming the id."""
    with pytest.raises(CodecError, match=f"unknown codec id {codec_id}"):
        decode_chunk(codec_id, b"abc", 3)


@pytest.mark.parametrize("codec_id", list(CodecId))
def test_oversize_raw_size_is_refused(codec_id: CodecId) -> None:
    """A raw size over MAX_CHUNK (or negative) is refused before anything is allocated."""
    for raw_size in (MAX_CHUNK + 1, 1 << 40, -1):
        with pytest.raises(CodecError, match="raw size"):
            decode_chunk(codec_id, b"\0" * 16, raw_size)


@pytest.mark.parametrize("codec", ALL_CODECS, ids=_ids(ALL_CODECS))
def test_wrong_raw_size_is_refused(codec: Codec) -> None:
    """Decoding with a raw size one byte off either way never returns data; it raises."""
    data = DATA_KINDS["text"]
    codec_id, payload = encode_chunk(codec, data)
    for raw_size in (len(data) - 1, len(data) + 1):
        with pytest.raises(CodecError):
            decode_chunk(codec_id, payload, raw_size)


@pytest.mark.parametrize("codec", COMPRESSING, ids=_ids(COMPRESSING))
def test_truncated_payload_is_refused(codec: Codec) -> None:
    """A payload cut short at any of several points raises CodecError."""
    data = DATA_KINDS["text"]
    codec_id, payload = encode_chunk(codec, data)
    for cut in (1, 2, 7, len(payload) // 2, len(payload) - 1):
        with pytest.raises(CodecError):
            decode_chunk(codec_id, payload[:cut], len(data))


@pytest.mark.parametrize(
    "codec", [ZstdCodec(), ZlibCodec(), LzmaCodec(preset=1)], ids=["zstd", "zlib", "lzma"]
)
def test_trailing_garbage_is_refused(codec: Codec) -> None:
    """Bytes after the end of a zstd, zlib or lzma stream make the chunk invalid."""
    data = DATA_KINDS["text"]
    codec_id, payload = encode_chunk(codec, data)
    with pytest.raises(CodecError):
        decode_chunk(codec_id, payload + b"\0", len(data))


@pytest.mark.parametrize("codec", [ZstdCodec(), ZlibCodec()], ids=["zstd", "zlib"])
def test_corruption_is_caught_by_checksums(codec: Codec) -> None:
    """zstd (xxh64) and zlib (adler32) catch any flipped byte: every position raises CodecError."""
    data = DATA_KINDS["text"]
    codec_id, payload = encode_chunk(codec, data)
    for pos in range(0, len(payload), max(1, len(payload) // 64)):
        bad = bytearray(payload)
        bad[pos] ^= 0x55
        with pytest.raises(CodecError):
            decode_chunk(codec_id, bytes(bad), len(data))


@pytest.mark.parametrize("codec", COMPRESSING, ids=_ids(COMPRESSING))
def test_corruption_never_yields_wrong_length(codec: Codec) -> None:
    """For every codec a flipped byte gives CodecError or exactly raw_size bytes, nothing else.

    lz4 blocks and raw LZMA2 carry no checksum, so a flipped literal can decode to other bytes of
    the right length; catching that is the link's job.
    """
    data = DATA_KINDS["text"]
    codec_id, payload = encode_chunk(codec, data)
    for pos in range(0, len(payload), max(1, len(payload) // 64)):
        bad = bytearray(payload)
        bad[pos] ^= 0xFF
        try:
            out = decode_chunk(codec_id, bytes(bad), len(data))
        except CodecError:
            continue
        assert len(out) == len(data)


def test_raw_payload_of_wrong_length() -> None:
    """A RAW chunk whose payload length differs from raw_size is refused."""
    with pytest.raises(CodecError, match="raw chunk of 3 bytes, expected 4"):
        decode_chunk(RAW, b"abc", 4)


@pytest.mark.parametrize("codec_id", [LZ4, LZ4HC, ZSTD, ZLIB, LZMA])
def test_compressed_payload_longer_than_raw_size_is_refused(codec_id: int) -> None:
    """The sender never sends a compressed payload longer than its raw size, so that is invalid."""
    with pytest.raises(CodecError, match="payload of 101 bytes"):
        decode_chunk(codec_id, bytes(101), 100)


def _bombs() -> list[tuple[int, bytes]]:
    """Small payloads that expand to 16 MiB: each codec's best attempt at a decompression bomb."""
    big = bytes(16 << 20)
    lzma2 = {"id": lzma.FILTER_LZMA2, "preset": 0}
    raw = lzma.compress(big, format=lzma.FORMAT_RAW, filters=[lzma2])
    return [
        (LZ4, lz4.block.compress(big, store_size=False)),
        (ZSTD, zstandard.ZstdCompressor(level=1).compress(big)),
        (ZSTD, zstandard.ZstdCompressor(level=1, write_content_size=False).compress(big)),
        (ZLIB, zlib.compress(big, 1)),
        (LZMA, raw),
    ]


@pytest.mark.parametrize(
    "codec_id, payload", _bombs(), ids=["lz4", "zstd", "zstd-nosize", "zlib", "lzma"]
)
def test_decompression_bomb_is_refused_without_big_allocation(
    codec_id: int, payload: bytes
) -> None:
    """A payload that would expand far past raw_size raises, and decoding never allocates much more
    than raw_size (measured with tracemalloc, which sees Python's and these libraries' buffers)."""
    raw_size = 64 << 10
    small = payload[: raw_size - 1]  # the sender's rule: a compressed payload is under raw_size
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with pytest.raises(CodecError):
            decode_chunk(codec_id, small, raw_size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * raw_size + (1 << 20)


def test_zstd_frame_declaring_another_size_is_refused_before_decoding() -> None:
    """A zstd frame header that declares a content size other than raw_size is refused at once."""
    frame = zstandard.ZstdCompressor().compress(bytes(MAX_CHUNK))
    with pytest.raises(CodecError, match=f"declares {MAX_CHUNK} bytes, expected 70000"):
        decode_chunk(ZSTD, frame, 70000)


@settings(max_examples=300, deadline=None, database=None)
@given(
    codec_id=st.integers(0, 7),
    payload=st.binary(max_size=300),
    raw_size=st.integers(0, 2000),
)
def test_garbage_never_decodes_to_wrong_length(
    codec_id: int, payload: bytes, raw_size: int
) -> None:
    """Arbitrary input either raises CodecError or yields exactly raw_size bytes."""
    try:
        out = decode_chunk(codec_id, payload, raw_size)
    except CodecError:
        return
    assert len(out) == raw_size


# --- threads --------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ALL_CODECS, ids=_ids(ALL_CODECS))
def test_shared_codec_from_four_threads(codec: Codec) -> None:
    """200 distinct chunks encoded and decoded by 4 threads sharing one codec all round-trip."""
    chunks = [text_like(16384, seed=i)[: 8192 + 37 * i] for i in range(200)]
    start = threading.Barrier(4)

    def work(indexes: range) -> list[bool]:
        start.wait()  # make the threads really overlap on the shared codec
        return [
            decode_chunk(*encode_chunk(codec, chunks[i]), len(chunks[i])) == chunks[i]
            for i in indexes
        ]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, [range(k, 200, 4) for k in range(4)]))
    assert sum(len(r) for r in results) == 200
    assert all(all(r) for r in results)


# --- property -------------------------------------------------------------------------------

# Mostly-random bytes rarely compress, so also generate long repetitive inputs that do.
_payloads = st.one_of(
    st.binary(max_size=70000),
    st.builds(
        lambda unit, count, tail: (unit * count)[:70000 - len(tail)] + tail,
        st.binary(min_size=1, max_size=200),
        st.integers(1, 70000),
        st.binary(max_size=100),
    ),
)


@pytest.mark.parametrize("codec", ALL_CODECS, ids=_ids(ALL_CODECS))
@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture
    ],
)
@given(data=_payloads)
def test_round_trip_property(codec: Codec, data: bytes) -> None:
    """decode_chunk(encode_chunk(x)) == x for arbitrary bytes up to 70000 long, for every codec."""
    codec_id, payload = encode_chunk(codec, data)
    assert codec_id in (RAW, codec.id)
    assert len(payload) <= len(data)
    assert decode_chunk(codec_id, payload, len(data)) == data
