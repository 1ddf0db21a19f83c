#!/usr/bin/env python3
"""A stand-in for drbdsetup (DRBD 9) and drbdsetup-84, good enough for `drbdadm -s THIS adjust`.

No DRBD kernel module runs on the test machines, so drbdadm cannot learn the kernel's view of a
resource. Give it this script with ``drbdadm -s PATH``: it answers as if the resource were up
exactly as configured, so that ``adjust`` finds no kernel-side difference and only compares the
proxy side (``drbd-proxy-ctl -c "show proxy-settings NAME"``).

Environment:

``DRBDSETUP_STANDIN_SHOW``
    A file holding what the kernel reports, in ``drbdsetup show`` syntax (the DRBD 9 form for
    drbdadm 9, the 8.4 form for drbdadm-84); it may hold several ``resource`` blocks. Without it,
    no resource is configured.
``DRBDSETUP_STANDIN_LOG``
    If set, every invocation appends its arguments (without argv[0]) to this file, one JSON array
    per line, before doing anything else.

Commands:

``show RES`` (options such as ``--show-defaults`` are ignored)
    prints RES's block from DRBDSETUP_STANDIN_SHOW; an unknown RES prints ``RES: No such resource``
    on stderr and exits 10, like drbdsetup.
``show``, ``show all``
    print every block.
anything else (``new-resource``, ``connect``, ``events2``, ``status``, ...)
    exits 0 without output, as a successful configuration command would. drbdadm adjust only runs
    these when it found a kernel-side difference, which the log makes visible.

The variable names deliberately differ from ``FAKE_DRBDSETUP_SHOW``: drbdadm 9 itself reads that
one (a hook for drbd-utils' own tests) and then parses the file without running drbdsetup at all.

Standard library only: drbdadm executes this file directly.
"""

from __future__ import annotations

import json
import os
import re
import sys

NO_SUCH_RESOURCE = 10  # drbdsetup's exit status for an unknown resource


def log(args: list[str]) -> None:
    path = os.environ.get("DRBDSETUP_STANDIN_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(args) + "\n")


def kernel_view() -> str:
    path = os.environ.get("DRBDSETUP_STANDIN_SHOW")
    if not path or not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as f:
        return f.read()


def resource_blocks(text: str) -> dict[str, str]:
    """The top-level ``resource NAME { ... }`` blocks of ``text``, by name, in order."""
    blocks: dict[str, str] = {}
    head = re.compile(r'resource\s+("([^"]*)"|(\S+))\s*\{')
    pos = 0
    while True:
        m = head.search(text, pos)
        if m is None:
            return blocks
        name = m.group(2) if m.group(2) is not None else m.group(3)
        depth, i, quoted = 0, m.end() - 1, False
        while i < len(text):
            c = text[i]
            if c == '"':
                quoted = not quoted
            elif not quoted and c == "{":
                depth += 1
            elif not quoted and c == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        end = i + 1
        if end < len(text) and text[end] == "\n":
            end += 1
        blocks[name] = text[m.start():end]
        pos = end


def show(args: list[str]) -> int:
    names = [a for a in args if not a.startswith("-")]
    blocks = resource_blocks(kernel_view())
    if not names or names[0] == "all":
        sys.stdout.write("".join(blocks.values()))
        return 0
    block = blocks.get(names[0])
    if block is None:
        sys.stderr.write(f"{names[0]}: No such resource\n")
        return NO_SUCH_RESOURCE
    sys.stdout.write(block)
    return 0


def main(argv: list[str]) -> int:
    log(argv)
    if argv[:1] == ["show"]:
        return show(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
