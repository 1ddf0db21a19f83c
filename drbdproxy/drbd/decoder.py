"""A streaming DRBD packet decoder: bytes in (any chunking), packets or one error out."""

from __future__ import annotations

from dataclasses import dataclass

from drbdproxy.drbd.header import (
    MAX_PAYLOAD,
    Header,
    HeaderVersion,
    WireError,
    decode_header,
    encode,
)
from drbdproxy.drbd.packets import packet_name


@dataclass(frozen=True, slots=True)
class Packet:
    """One DRBD packet: its header and its payload bytes."""

    header: Header
    #: Large payloads (blocks) are read-only views of the immutable bytes they arrived in.
    payload: bytes | memoryview

    @property
    def command(self) -> int:
        return self.header.command

    @property
    def name(self) -> str:
        return packet_name(self.header.command)

    def encode(self) -> bytes:
        return encode(self.header) + self.payload


@dataclass(frozen=True, slots=True)
class StreamError:
    """The stream stopped being DRBD at ``offset`` (bytes from its start); nothing follows."""

    offset: int
    error: WireError

    @property
    def message(self) -> str:
        return f"{self.error} at stream offset {self.offset}"


Event = Packet | StreamError

#: Payloads from this size on (blocks, not handshake packets) are handed out as views.
_VIEW_MIN = 4096
#: The longest DRBD header (h100).
_LONGEST_HEADER = max(version.size for version in HeaderVersion)


class PacketDecoder:
    """Reassembles DRBD packets from a TCP byte stream, whatever the segment boundaries.

    ``feed()`` returns the packets completed by the new bytes. When the stream turns out not to be
    DRBD (bad magic, non-zero padding, a length above ``max_payload``) the last event is a
    :class:`StreamError` and the decoder stays failed: a DRBD stream cannot be re-synchronised,
    since block data can contain anything, including magics.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._max_payload = max_payload
        self._buf = bytearray()
        self._consumed = 0
        self.failed: StreamError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a whole packet."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """The packets (then at most one StreamError) that ``data`` completes.

        Whole packets are cut straight out of ``data``; only a packet that straddles reads is
        gathered in a buffer of our own, with just the bytes it still needs. A block that came
        whole in immutable bytes is not copied at all; other payloads once (a straddling one
        twice); never the whole of a read.
        """
        if self.failed is not None:
            return []
        events: list[Event] = []
        with memoryview(data) as view:
            try:
                used = self._completeHeld(view, events) if self._buf else 0
                if not self._buf:
                    self._cut(view, used, events, type(data) is bytes)
            except WireError as e:
                self.failed = StreamError(self._consumed, e)
                events.append(self.failed)
                self._buf.clear()
        return events

    def _completeHeld(self, view: memoryview, events: list[Event]) -> int:
        """Complete the packet held from earlier reads with what it needs of ``view``; how many
        bytes of ``view`` that took."""
        buf, used = self._buf, 0
        while buf:
            header = decode_header(buf, 0, self._max_payload)
            # Without a whole header yet, take at most a header's worth and look again.
            total = _LONGEST_HEADER if header is None else header.size + header.length
            take = min(total - len(buf), len(view) - used)
            if take > 0:
                buf += view[used : used + take]
                used += take
            if header is None or len(buf) < total:
                if take <= 0:
                    return used  # the rest comes with the next read
                continue
            events.append(Packet(header, bytes(buf[header.size : total])))
            self._consumed += total
            del buf[:total]  # a tiny packet may leave the start of the next one
        return used

    def _cut(self, view: memoryview, off: int, events: list[Event], immutable: bool) -> None:
        """Packets straight out of ``view`` from ``off``; an incomplete tail is held.

        A block's payload in ``immutable`` bytes is not copied at all: it is a view of them.
        """
        size = len(view)
        while True:
            header = decode_header(view, off, self._max_payload)
            if header is None:
                break
            end = off + header.size + header.length
            if end > size:
                break
            payload: bytes | memoryview = view[off + header.size : end]
            if not immutable or header.length < _VIEW_MIN:
                payload = bytes(payload)
            events.append(Packet(header, payload))
            self._consumed += end - off
            off = end
        self._buf += view[off:]
