"""One-line colored messages without importing rich (keeps `fw validate` fast); rich is for tables and bars."""
from __future__ import annotations

import os
import sys
from typing import TextIO

_CODES = {"red": "31", "green": "32", "yellow": "33", "bold": "1", "dim": "2"}


def _wants_color(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    return bool(os.environ.get("FORCE_COLOR")) or (hasattr(stream, "isatty") and stream.isatty())


def paint(text: str, style: str, stream: TextIO) -> str:
    return f"\033[{_CODES[style]}m{text}\033[0m" if _wants_color(stream) else text


def say(text: str, style: str | None = None, *, err: bool = True) -> None:
    stream = sys.stderr if err else sys.stdout
    print(paint(text, style, stream) if style else text, file=stream)


def plain_table(header: list[str], rows: list[list[str]], styles: list[str | None] | None = None,
                stream: TextIO | None = None) -> str:
    """Columns aligned with spaces (the last one free-running); rich's table renderer costs ~0.1 s per call,
    which matters for `fw list-plugins`. ``styles`` colors whole rows (None = plain)."""
    stream = stream or sys.stdout
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]

    def line(cells) -> str:
        return "  ".join([str(c).ljust(w) for c, w in zip(cells, widths)] + [str(cells[-1])]).rstrip()

    body = [paint(line(row), style, stream) if style else line(row)
            for row, style in zip(rows, styles or [None] * len(rows))]
    return "\n".join([paint(line(header), "bold", stream), *body])
