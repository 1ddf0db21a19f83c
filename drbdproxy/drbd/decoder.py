"""A streaming DRBD packet decoder: bytes in (any chunking), packets or one error out."""

from __future__ import annotations

from dataclasses import dataclass

from .header import MAX_PAYLOAD, Header, WireError, decode_header, encode
from .packets import packet_name


@dataclass(frozen=True, slots=True)
class Packet:
    """One DRBD packet: its header and its payload bytes."""

    header: Header
    payload: bytes

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
        if self.failed is not None:
            return []
        buf = self._buf
        if buf:
            buf += data
        # With nothing held, packets are cut straight out of the new bytes and only an
        # incomplete tail is kept: one copy per payload byte, not three.
        source = buf if buf else data
        events: list[Event] = []
        off = 0
        error: WireError | None = None
        with memoryview(source) as view:
            try:
                while True:
                    header = decode_header(view, off, self._max_payload)
                    if header is None:
                        break
                    start = off + header.size
                    end = start + header.length
                    if end > len(view):
                        break
                    events.append(Packet(header, bytes(view[start:end])))
                    off = end
            except WireError as e:
                error = e
            if error is None and source is not buf:
                buf += view[off:]
        if error is not None:
            self.failed = StreamError(self._consumed + off, error)
            events.append(self.failed)
            buf.clear()
            return events
        if source is buf and off:
            del buf[:off]
        self._consumed += off
        return events
        if off:
            del buf[:off]
            self._consumed += off
        return events
