"""Unit tests of the bulk link's send buffer growth: the kernel's tcp_info says how long the
send buffer limited the link, and the buffer doubles while that is a tenth or more of the time
the link was busy, up to a ceiling, root only."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from drbdproxy.relay.sockets import SendBufferGrowth

pytestmark = pytest.mark.unit

SO_SNDBUFFORCE = 32


class Handle:
    """A socket as the growth sees it: tcp_info with busy and send-buffer-limited times."""

    def __init__(self, sndbuf: int = 4 << 20, root: bool = True) -> None:
        self.sndbuf = sndbuf
        self.root = root
        self.busy = self.limited = 0
        self.in_flight = 0  # bytes, as unacked segments of 1000
        self.info_size = 192

    def getsockopt(self, level: int, option: int, size: int = 0) -> bytes | int:
        if level == socket.SOL_SOCKET:
            assert option == socket.SO_SNDBUF
            return self.sndbuf
        assert (level, option) == (socket.IPPROTO_TCP, socket.TCP_INFO)
        info = bytearray(self.info_size)
        if self.info_size >= 192:
            struct.pack_into("=I", info, 16, 1000)  # tcpi_snd_mss
            struct.pack_into("=I", info, 24, self.in_flight // 1000)  # tcpi_unacked
            struct.pack_into("=Q", info, 168, self.busy)
            struct.pack_into("=Q", info, 184, self.limited)
        return bytes(info)

    def setsockopt(self, level: int, option: int, value: int) -> None:
        assert (level, option) == (socket.SOL_SOCKET, SO_SNDBUFFORCE)
        if not self.root:
            raise PermissionError(1, "Operation not permitted")
        self.sndbuf = 2 * value  # as Linux does

    def run(self, busy: int, limited: int) -> None:
        self.busy += busy
        self.limited += limited


def test_the_buffer_doubles_while_it_limits_the_link_and_stops_at_the_ceiling() -> None:
    """The first look only samples; a look after an interval limited by the send buffer for a
    tenth of its busy time or more doubles it; less does nothing; at the ceiling it stays."""
    handle, growth = Handle(), SendBufferGrowth()
    ceiling = 16 << 20
    assert growth.look(handle, ceiling) is None
    handle.run(busy=1_000_000, limited=99_999)
    assert growth.look(handle, ceiling) is None and handle.sndbuf == 4 << 20
    handle.run(busy=1_000_000, limited=100_000)
    assert growth.look(handle, ceiling) == 8 << 20
    handle.run(busy=1_000_000, limited=500_000)
    assert growth.look(handle, ceiling) == 16 << 20
    handle.run(busy=1_000_000, limited=1_000_000)
    assert growth.look(handle, ceiling) is None and handle.sndbuf == 16 << 20


def test_the_buffer_doubles_while_it_is_mostly_in_flight() -> None:
    """Without loss the kernel may not count the link as send-buffer-limited while its window
    fills the buffer: half of the buffer in flight while busy doubles it too; a third of it in
    flight does not."""
    handle, growth = Handle(), SendBufferGrowth()
    growth.look(handle, 64 << 20)
    handle.in_flight = 1_400_000  # a third of 4 MiB
    handle.run(busy=1_000_000, limited=0)
    assert growth.look(handle, 64 << 20) is None
    handle.in_flight = 2_100_000  # half of 4 MiB
    handle.run(busy=1_000_000, limited=0)
    assert growth.look(handle, 64 << 20) == 8 << 20


def test_an_idle_link_or_an_old_kernel_or_no_root_never_shrinks_or_touches_it() -> None:
    """No busy time means no decision; a tcp_info without the fields (before Linux 4.10) and a
    refused SO_SNDBUFFORCE (not root, where the sysctl cap is below what autotuning gives) stop
    the growth for good, the buffer as it was."""
    handle, growth = Handle(), SendBufferGrowth()
    growth.look(handle, 64 << 20)
    handle.run(busy=0, limited=0)
    assert growth.look(handle, 64 << 20) is None

    old = Handle()
    old.info_size = 104
    aged = SendBufferGrowth()
    assert aged.look(old, 64 << 20) is None and aged.gave_up

    user = Handle(root=False)
    refused = SendBufferGrowth()
    refused.look(user, 64 << 20)
    user.run(busy=1000, limited=1000)
    assert refused.look(user, 64 << 20) is None and refused.gave_up
    assert user.sndbuf == 4 << 20


def test_the_real_kernel_gives_tcp_info_with_busy_and_send_buffer_limited_times() -> None:
    """On this kernel a connected TCP socket's tcp_info is long enough to hold the fields, and
    as root SO_SNDBUFFORCE sets a buffer past net.core.wmem_max."""
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client.connect(server.getsockname())
        info = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 192)
        assert len(info) == 192
        if os.geteuid() == 0:
            cap = int(open("/proc/sys/net/core/wmem_max").read())
            client.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 2 * cap)
            assert client.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 4 * cap
        server.accept()[0].close()
