"""How commands print: a rich table on a TTY, plain columns when piped, JSON on demand.

Commands build plain rows of strings; this module chooses the rendering, so every
command looks and pipes the same way.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from cargohold.units import human_bytes as human_bytes  # the CLI formats sizes this way


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def err_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any, out: TextIO | None = None) -> None:
    """Stable JSON: sorted keys, two-space indent, UTF-8."""
    stream = out or sys.stdout
    json.dump(data, stream, indent=2, sort_keys=True, ensure_ascii=False)
    stream.write("\n")


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    out: TextIO | None = None,
    tty: bool | None = None,
) -> None:
    """A rich table on a terminal; tab-free aligned plain columns otherwise."""
    stream = out or sys.stdout
    use_rich = stdout_is_tty() if tty is None else tty
    if use_rich:
        table = Table(title=title, header_style="bold", show_lines=False, pad_edge=False)
        for h in headers:
            table.add_column(h, overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console(file=stream, highlight=False).print(table)
        return
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    if title:
        stream.write(f"# {title}\n")
    line = "  ".join(h.upper().ljust(widths[i]) for i, h in enumerate(headers)).rstrip()
    stream.write(line + "\n")
    for row in rows:
        stream.write("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() + "\n")
