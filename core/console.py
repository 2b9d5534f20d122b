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
