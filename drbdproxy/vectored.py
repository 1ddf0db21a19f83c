"""Writing a frame's pieces to a TCP transport without joining them first.

A Twisted transport joins everything queued into one bytes object before each ``send()``: every
relayed byte would be copied once more in user space (measured: a tenth of a relaying daemon's
CPU). When the transport holds nothing, the pieces (a frame header and a payload view, or a
chunk for DRBD) are what it would have sent next anyway, so ``sendmsg()`` takes them straight
from where they are; only what the kernel does not take is queued, the usual way, behind which
every later write waits, so order and the transport's own backpressure are kept.

Only a plain Twisted TCP connection qualifies: a TLS transport (which exposes the raw socket of
the connection it wraps) must encrypt what it is given, and anything else is unknown here.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet import tcp

Piece = bytes | memoryview


def write_pieces(transport: Any, pieces: Sequence[Piece]) -> None:
    """Write ``pieces`` in order: sent now where the transport is idle, else queued on it."""
    rest: Sequence[Piece] = pieces
    if _idle_plain_tcp(transport):
        try:
            sent = transport.socket.sendmsg(pieces)
        except OSError:  # EAGAIN, or an error the transport's own write will meet and report
            sent = 0
        rest = unsent(pieces, sent)
    if rest:
        transport.writeSequence([p if type(p) is bytes else bytes(p) for p in rest])


def _idle_plain_tcp(transport: Any) -> bool:
    return (
        isinstance(transport, tcp.Connection)
        and not transport.TLS
        and bool(transport.connected)
        and not transport.disconnecting
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    )


def unsent(pieces: Sequence[Piece], sent: int) -> list[Piece]:
    """What is left of ``pieces`` once the first ``sent`` bytes of them went out."""
    for i, piece in enumerate(pieces):
        size = len(piece)
        if sent < size:
            first = memoryview(piece)[sent:] if sent else piece
            return [first, *pieces[i + 1 :]]
        sent -= size
    return []
