"""Writing a frame's pieces to a TCP transport without joining them first.

A Twisted transport joins everything queued into one bytes object before each ``send()``: every
relayed byte would be copied once more in user space, and every write would wait for a reactor
turn. When the transport holds nothing, the pieces (a frame header and a payload view, or a
chunk for DRBD) are what it would have sent next anyway, so ``sendmsg()`` takes them straight
from where they are; only what the kernel does not take is queued, the usual way, behind which
every later write waits, so order and the transport's own backpressure are kept. (Its streaming
producers are still paused once what is queued passes its buffer size; a pull producer would
miss the resume that a ``doWrite`` emptying the buffer gives, and none is used here.)

Only a plain Twisted TCP connection qualifies: a TLS transport (which exposes the raw socket of
the connection it wraps) must encrypt what it is given, and anything else is unknown here.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from twisted.internet import tcp

Piece = bytes | memoryview

#: sendmsg() takes at most this many buffers at once (EMSGSIZE beyond).
IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


def write_pieces(transport: Any, pieces: Sequence[Piece]) -> None:
    """Write ``pieces`` in order: sent now where the transport is idle, else queued on it."""
    rest: Sequence[Piece] = pieces
    if _idle_plain_tcp(transport):
        while rest:
            batch = rest[:IOV_MAX]
            try:
                sent = transport.socket.sendmsg(batch)
            except OSError:  # EAGAIN, or an error the transport's own write will meet and report
                break
            left = unsent(batch, sent)
            rest = [*left, *rest[IOV_MAX:]]
            if left:  # the kernel is full: the transport queues the rest
                break
    if rest:
        transport.writeSequence([p if type(p) is bytes else bytes(p) for p in rest])


def _idle_plain_tcp(transport: Any) -> bool:
    return (
        isinstance(transport, tcp.Connection)
        and not transport.TLS
        and bool(transport.connected)
        and not transport.disconnecting
        and not transport._aborting  # abortConnection(): nothing more may go out
        and not transport._writeDisconnecting  # loseWriteConnection(): the transport decides
        and not transport._writeDisconnected
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    )


def unsent(pieces: Sequence[Piece], sent: int) -> list[Piece]:
    """What is left of ``pieces`` once the first ``sent`` bytes of them went out."""
    for i, piece in enumerate(pieces):
        size = piece.nbytes if isinstance(piece, memoryview) else len(piece)
        if sent < size:
            first = memoryview(piece).cast("B")[sent:] if sent else piece
            return [first, *pieces[i + 1 :]]
        sent -= size
    return []
