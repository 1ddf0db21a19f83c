"""Shared by the benchmark scripts: each owns one marked section of docs/benchmarks.md."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
