"""Compression for the proxy-to-proxy link: plugin lines -> codec -> chunks on the wire (sans-IO).

* :mod:`~drbdproxy.codecs.plugins` validates ``set plugin`` lines and ``set compression`` values
  into :class:`PluginSpec` objects (the accepted options and ranges are listed there).
* :mod:`~drbdproxy.codecs.algorithms` turns a plugin list into a thread-safe :class:`Codec`.
* :mod:`~drbdproxy.codecs.chunks` encodes a chunk as ``(codec id, payload)`` and decodes it again,
  safely against hostile input.

Plugin -> codec (wire id):

===================  =========================================================
``none`` / no list   RAW (0)
``lz4`` (level 2)    LZ4 (1), fast mode, acceleration 1: plain LZ4, ``compression on``
``lz4 level 1``      LZ4 (1), fast mode, acceleration 4 (about 2x faster, lower ratio)
``lz4 level 3-16``   LZ4HC (2) at that level, capped at 12 (``lz4 level 9`` = LZ4HC default)
``zstd level N``     ZSTD (3) at level N, default 3; ``compression N`` is ``zstd level N``
``zlib level N``     ZLIB (4) at level N, default 6
``lzma level N ...`` LZMA (5): raw LZMA2 with xz preset N (default 6) and the tuning keys
===================  =========================================================

Nothing here imports Twisted: the pipeline calls these functions from its worker threads.
"""

from drbdproxy.codecs.algorithms import (
    RAW_CODEC,
    Buffer,
    Codec,
    CodecId,
    Lz4Codec,
    Lz4HcCodec,
    LzmaCodec,
    RawCodec,
    ZlibCodec,
    ZstdCodec,
    codec_for,
)
from drbdproxy.codecs.chunks import (
    MAX_CHUNK,
    MIN_COMPRESS_SIZE,
    MIN_SAVING_DIVISOR,
    CodecError,
    decode_chunk,
    encode_chunk,
)
from drbdproxy.codecs.plugins import (
    DEFAULT_LEVELS,
    PLUGIN_NAMES,
    PluginError,
    PluginSpec,
    compression_option,
    parse_plugin,
)

# The wire ids as plain names, for callers that write ``codecs.ZSTD``.
RAW, LZ4, LZ4HC, ZSTD, ZLIB, LZMA = CodecId

__all__ = [
    "RAW",
    "LZ4",
    "LZ4HC",
    "ZSTD",
    "ZLIB",
    "LZMA",
    "CodecId",
    "Codec",
    "RawCodec",
    "Lz4Codec",
    "Lz4HcCodec",
    "ZstdCodec",
    "ZlibCodec",
    "LzmaCodec",
    "RAW_CODEC",
    "Buffer",
    "codec_for",
    "MAX_CHUNK",
    "MIN_COMPRESS_SIZE",
    "MIN_SAVING_DIVISOR",
    "CodecError",
    "encode_chunk",
    "decode_chunk",
    "DEFAULT_LEVELS",
    "PLUGIN_NAMES",
    "PluginError",
    "PluginSpec",
    "compression_option",
    "parse_plugin",
]
