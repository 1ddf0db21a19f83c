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
