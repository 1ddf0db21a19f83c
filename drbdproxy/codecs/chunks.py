"""Chunks on the wire: ``(codec id, payload)`` plus the raw size, which the link frame carries.

Rules that both ends rely on:

* A chunk holds at most :data:`MAX_CHUNK` raw bytes; the receiver refuses a larger raw size
  before allocating anything.
* A compressed payload is sent only when it saves at least 1/:data:`MIN_SAVING_DIVISOR` of the
  raw size (1/32, about 3 %); otherwise, and for chunks under :data:`MIN_COMPRESS_SIZE` bytes, the
  chunk goes as ``RAW``, so incompressible data costs the receiver no decompression at all. Hence
  a compressed payload is never longer than its raw size, which the receiver checks too.
* Decoding is chosen by the id alone and never yields data of the wrong length, and never
  allocates much more than the raw size, whatever the payload: lz4 decodes into exactly
  ``raw_size`` bytes; zstd's frame header must declare ``raw_size`` (or nothing) before the
  library allocates, and its window is capped; zlib and lzma decode with ``max_length``, and lzma's
  dictionary is sized from ``raw_size``.
* zstd frames carry an xxh64 checksum and zlib an adler32, both checked. lz4 blocks and raw LZMA2
  carry none: corruption there is caught only if it breaks the format or the length; end-to-end
  integrity of the stream is the link's job (TCP checksums, TLS).
"""

from __future__ import annotations

import lzma
import threading
import zlib
from collections.abc import Callable

import lz4.block
import zstandard

from drbdproxy.codecs.algorithms import Buffer, Codec, CodecId
from drbdproxy.codecs.plugins import LZMA_MIN_DICT
from drbdproxy.link.frames import MAX_DATA_CHUNK

__all__ = [
    "MAX_CHUNK",
    "MIN_SAVING_DIVISOR",
    "MIN_COMPRESS_SIZE",
    "CodecError",
    "encode_chunk",
    "decode_chunk",
]

#: The largest raw chunk either end accepts: a DATA frame's raw_length limit.
MAX_CHUNK = MAX_DATA_CHUNK
#: A compressed payload must save at least raw_size // MIN_SAVING_DIVISOR bytes (about 3 %).
MIN_SAVING_DIVISOR = 32
#: Smaller chunks are sent raw without trying: no codec saves enough on them to matter.
MIN_COMPRESS_SIZE = 64

# A frame whose window is larger than this is refused before zstd allocates it. Chunks never need
# more: zstd shrinks the window to the content size (1 MiB at most, even at level 22).
_ZSTD_MAX_WINDOW = 1 << max(10, (MAX_CHUNK - 1).bit_length())


class CodecError(ValueError):
    """A chunk that cannot be encoded or decoded: unknown codec id, corrupt data, wrong size."""


def encode_chunk(codec: Codec, data: Buffer) -> tuple[int, bytes | memoryview]:
    """Compress one chunk: ``(codec.id, payload)``, or ``(RAW, data)`` when that is not worth it.

    :raises CodecError: if ``data`` is longer than :data:`MAX_CHUNK` (the peer would refuse it).
    """
    view = _byte_view(data)
    size = view.nbytes
    if size > MAX_CHUNK:
        raise CodecError(f"chunk of {size} bytes is over MAX_CHUNK ({MAX_CHUNK})")
    if codec.id == CodecId.RAW or size < MIN_COMPRESS_SIZE:
        return CodecId.RAW, _frozen(data, view)
    payload = codec.compress(view)
    if size - len(payload) < size // MIN_SAVING_DIVISOR:
        return CodecId.RAW, _frozen(data, view)
    return codec.id, payload


def _frozen(data: Buffer, view: memoryview) -> bytes | memoryview:
    """``data`` (whose flat byte view is ``view``) as bytes nobody can change: as it is when it
    is immutable bytes or a view of them (no copy on the uncompressed paths), else a copy."""
    if type(data) is bytes:
        return data
    return view if type(view.obj) is bytes else view.tobytes()


def _byte_view(data: Buffer) -> memoryview:
    # len() of a memoryview counts items, not bytes; a flat byte view keeps sizes honest.
    view = memoryview(data)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def decode_chunk(codec_id: int, payload: Buffer, raw_size: int) -> bytes | memoryview:
    """The ``raw_size`` bytes that ``payload`` encodes with codec ``codec_id``.

    A raw chunk that arrived in immutable bytes (or a view of them) comes back as it is: no copy.

    :raises CodecError: on an unknown id, a raw size outside 0..MAX_CHUNK, corrupt or truncated
        data, trailing garbage, or a result whose length is not ``raw_size``.
    """
    if not 0 <= raw_size <= MAX_CHUNK:
        raise CodecError(f"raw size {raw_size} outside 0..{MAX_CHUNK}")
    try:
        cid = CodecId(codec_id)
    except ValueError:
        raise CodecError(f"unknown codec id {codec_id}") from None
    if cid == CodecId.RAW:
        return _decode_raw(payload, raw_size)
    return _decode_compressed(cid, payload, raw_size)


def _decode_raw(payload: Buffer, raw_size: int) -> bytes | memoryview:
    view = _byte_view(payload)
    if view.nbytes != raw_size:
        raise CodecError(f"raw chunk of {view.nbytes} bytes, expected {raw_size}")
    return _frozen(payload, view)


def _decode_compressed(cid: CodecId, payload: Buffer, raw_size: int) -> bytes:
    name = cid.name.lower()
    length = memoryview(payload).nbytes
    if not 0 < length <= raw_size:
        raise CodecError(f"{name} payload of {length} bytes for a raw size of {raw_size}")
    try:
        data = _DECODERS[cid](payload, raw_size)
    except _LIBRARY_ERRORS as exc:
        raise CodecError(f"corrupt {name} chunk: {exc}") from exc
    if len(data) != raw_size:
        raise CodecError(f"{name} chunk decoded to {len(data)} bytes, expected {raw_size}")
    return data


def _decode_lz4(payload: Buffer, raw_size: int) -> bytes:
    # LZ4_decompress_safe into a buffer of exactly raw_size: it never writes past it, and a
    # block that needs more fails. A block that yields less is caught by the length check.
    return lz4.block.decompress(payload, uncompressed_size=raw_size)


_zstd_local = threading.local()


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    # Like compressors, a ZstdDecompressor must not be used by two threads at once.
    try:
        return _zstd_local.dctx
    except AttributeError:
        _zstd_local.dctx = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW)
        return _zstd_local.dctx


def _decode_zstd(payload: Buffer, raw_size: int) -> bytes:
    # zstandard allocates whatever content size the frame header declares, so check it first.
    declared = zstandard.frame_content_size(payload)
    if declared not in (raw_size, -1):
        raise CodecError(f"zstd frame declares {declared} bytes, expected {raw_size}")
    return _zstd_decompressor().decompress(
        payload, max_output_size=raw_size, allow_extra_data=False
    )


def _decode_zlib(payload: Buffer, raw_size: int) -> bytes:
    dobj = zlib.decompressobj()
    data = dobj.decompress(payload, raw_size)
    if not dobj.eof:
        # Output stopped at raw_size: the rest may be just the end of the stream, or more data.
        if dobj.decompress(dobj.unconsumed_tail, 1):
            raise CodecError(f"zlib chunk decodes to more than {raw_size} bytes")
        if not dobj.eof:
            raise CodecError("zlib chunk is truncated")
    if dobj.unused_data:
        raise CodecError(f"zlib chunk has {len(dobj.unused_data)} bytes of trailing garbage")
    return data


def _decode_lzma(payload: Buffer, raw_size: int) -> bytes:
    # The chunk cannot reference further back than raw_size, so that bounds the dictionary.
    lzma2 = {"id": lzma.FILTER_LZMA2, "dict_size": max(LZMA_MIN_DICT, raw_size)}
    dobj = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[lzma2])
    data = dobj.decompress(payload, max_length=raw_size)
    if not dobj.eof:
        # As for zlib: the end marker may still be unread once output reached max_length.
        if dobj.decompress(b"", max_length=1):
            raise CodecError(f"lzma chunk decodes to more than {raw_size} bytes")
        if not dobj.eof:
            raise CodecError("lzma chunk is truncated")
    if dobj.unused_data:
        raise CodecError(f"lzma chunk has {len(dobj.unused_data)} bytes of trailing garbage")
    return data


_DECODERS: dict[CodecId, Callable[[Buffer, int], bytes]] = {
    CodecId.LZ4: _decode_lz4,
    CodecId.LZ4HC: _decode_lz4,
    CodecId.ZSTD: _decode_zstd,
    CodecId.ZLIB: _decode_zlib,
    CodecId.LZMA: _decode_lzma,
}

# What the libraries raise for bad input; anything else (MemoryError, a bug) propagates as is.
_LIBRARY_ERRORS = (
    lz4.block.LZ4BlockError, zstandard.ZstdError, zlib.error, lzma.LZMAError, EOFError
)
