"""Shared by the benchmark scripts: each owns one marked section of docs/benchmarks.md."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

HEADER = ("# Benchmarks\n\nWritten by the scripts in `bench/`; each owns the section between its "
          "`<!-- NAME:begin -->` and `<!-- NAME:end -->` markers.\n\n")


def write_section(path: Path, name: str, title: str, body: str) -> None:
    """Replace section ``name`` in ``path`` (or append it, or create the file with a header)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = f"{begin}\n## {title}\n\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else HEADER
    start, stop = text.find(begin), text.find(end)
    if start != -1 and stop > start:
        text = text[:start] + section.rstrip("\n") + text[stop + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_stat(pid: int | str) -> list[str]:
    """/proc/PID/stat's fields after the command name (state, ppid, pgrp, ... utime is [11])."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(fields: list[str], children: bool = False) -> float:
    """User + system CPU seconds from proc_stat() fields (with reaped children's if asked)."""
    return sum(int(x) for x in fields[11 : 15 if children else 13]) / CLK_TCK


class TcpSocket(NamedTuple):
    """One IPv4 TCP socket of this machine, from /proc/net/tcp."""

    local_port: int
    remote_port: int
    listening: bool
    tx_queue: int  # bytes not yet acknowledged by the peer
    rx_queue: int  # bytes received, not yet read by the owner (for a listener: the backlog)


def tcp_sockets() -> list[TcpSocket]:
    """Every IPv4 TCP socket, without a probe connection."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) < 5:
            continue
        local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
        tx, rx = (int(q, 16) for q in fields[4].split(":"))
        out.append(TcpSocket(local, remote, fields[3] == "0A", tx, rx))
    return out


def listening_ports() -> set[int]:
    """Local ports in TCP LISTEN state."""
    return {s.local_port for s in tcp_sockets() if s.listening}


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or None (saying so) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plots (pip install '.[bench]')")
        return None
    return plt


def save_figure(fig: Any, img_dir: Path, name: str) -> Path:
    """Write ``fig`` as ``img_dir/name`` (a PNG) and release it."""
    import matplotlib.pyplot as plt
    img_dir.mkdir(parents=True, exist_ok=True)
    path = img_dir / name
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
