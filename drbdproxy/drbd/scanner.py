"""Counting DRBD packets in a relayed byte stream without copying it (sans-IO).

The relay only needs each packet's type, so the scanner reads headers and skips payloads by
arithmetic: its cost is per packet, not per byte. A stream that stops being DRBD (DRBD 9 with
kTLS after its first packet, or anything else) becomes opaque: counting stops, relaying does not.
"""

from __future__ import annotations

from collections import Counter

from drbdproxy.drbd.header import MAX_PAYLOAD, Header, WireError, decode_header, header_version
from drbdproxy.drbd.packets import packet_name

_MAX_HEADER = 16


class PacketScanner:
    """Counts packets per type in one direction of one DRBD socket, across any chunking."""

    __slots__ = ("counts", "opaque", "_skip", "_head", "_max_payload", "_offset", "_header_at")

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.counts: Counter[str] = Counter()
        #: Why the stream stopped being DRBD, or None while it still is.
        self.opaque: str | None = None
        self._skip = 0
        self._head = bytearray()
        self._max_payload = max_payload
        self._offset = 0
        #: Stream offset of the header being read: where a bad one is reported.
        self._header_at = 0

    def feed(self, data: bytes | memoryview) -> None:
        if self.opaque is not None:
            return
        try:
            self._scan(data)
        except WireError as e:
            self.opaque = f"{e} at stream offset {self._header_at}"
        self._offset += len(data)

    def _scan(self, data: bytes | memoryview) -> None:
        n = len(data)
        pos = 0
        counts = self.counts
        while pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                continue
            if not self._head:
                self._header_at = self._offset + pos
            if self._head or n - pos < _MAX_HEADER:
                # A header split across reads: collect it piece by piece.
                pos = self._collect(data, pos)
                header = self._completeHeader()
                if header is None:
                    continue
            else:
                header = decode_header(data, pos, self._max_payload)
                assert header is not None
                pos += header.size
            counts[packet_name(header.command)] += 1
            self._skip = header.length

    def _collect(self, data: bytes | memoryview, pos: int) -> int:
        head = self._head
        version = header_version(head) if len(head) >= 4 else None
        want = version.size if version is not None else 4
        take = min(want - len(head), len(data) - pos)
        head += data[pos : pos + take]
        return pos + take

    def _completeHeader(self) -> Header | None:
        head = self._head
        if len(head) < 4:
            return None
        version = header_version(head)
        assert version is not None
        if len(head) < version.size:
            return None
        header = decode_header(head, 0, self._max_payload)
        head.clear()
        return header
