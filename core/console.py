"""Everything fw shows the user: messages, tables, panels and progress bars. The one output module.

- ``warn`` / ``info``: messages during a run, printed to stderr and kept in ``messages`` (tests and summaries read
  it). ``warn`` is for something the user should act on (rows dropped, values filled in); ``info`` for what fw
  decided (how the dataset was split). Errors are raised as :class:`fw.errors.FwError`, not printed on the way.
- ``say`` / ``success`` / ``plain_table``: one-line colored output and aligned columns, without rich.
- ``table`` / ``panel``: rich renderables, printed to stdout.
- ``ProgressBar``: a rich progress bar on stderr, or nothing.
- ``error``: why this process stops (the CLI prints the error it caught with it).

In a job of several processes (:mod:`fw.distributed`) only the main process (rank 0) prints: messages, tables
and progress bars are shown once. ``error`` is the exception: any process that fails says why, prefixed with its
rank (``[rank 1] error: ...``), since the failure may be its alone.

Importing this module imports no rich (``fw validate`` stays fast); rich is imported on first use.
"""
from __future__ import annotations

import os
import re
import sys
from typing import TextIO

from fw import distributed

_CODES = {"red": "31", "green": "32", "yellow": "33", "bold": "1", "dim": "2"}

#: every message of this process, in order, without markup
messages: list[str] = []
#: the subset of ``messages`` that are warnings
warnings: list[str] = []


# -- plain lines --------------------------------------------------------------------------------------------------
def _wants_color(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    return bool(os.environ.get("FORCE_COLOR")) or (hasattr(stream, "isatty") and stream.isatty())


def paint(text: str, style: str, stream: TextIO) -> str:
    return f"\033[{_CODES[style]}m{text}\033[0m" if _wants_color(stream) else text


def say(text: str, style: str | None = None, *, err: bool = True) -> None:
    """One line to stderr (or stdout with ``err=False``), all of it in ``style``."""
    if not distributed.is_main_process():
        return
    stream = sys.stderr if err else sys.stdout
    print(paint(text, style, stream) if style else text, file=stream)


def success(text: str) -> None:
    """``✓ text`` on stdout, the mark in green: what a verb produced."""
    if distributed.is_main_process():
        print(f"{paint('✓', 'green', sys.stdout)} {text}")


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


# -- messages during a run ----------------------------------------------------------------------------------------
def warn(message: str) -> None:
    """Print ``warning: message`` (``warning:`` in yellow) to stderr and record it."""
    messages.append(message)
    warnings.append(message)
    if distributed.is_main_process():
        print(f"{paint('warning:', 'yellow', sys.stderr)} {message}", file=sys.stderr)


def info(message: str) -> None:
    """Print ``message`` to stderr and record it."""
    messages.append(message)
    if distributed.is_main_process():
        print(message, file=sys.stderr)


def error(text: str) -> None:
    """``error: text`` in red on stderr, from whichever process fails; ``[rank N] error: text`` in a job of
    several processes."""
    where = f"[rank {distributed.rank()}] " if distributed.launched() else ""
    print(paint(f"{where}error: {text}", "red", sys.stderr), file=sys.stderr)


def clear() -> None:
    """Forget the recorded messages (a new run, or a new test)."""
    messages.clear()
    warnings.clear()


# -- rich renderables ---------------------------------------------------------------------------------------------
def show(*renderables) -> None:
    """Print rich renderables (tables, panels) to stdout."""
    if not distributed.is_main_process():
        return
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    for renderable in renderables:
        console.print(renderable)


def table(title: str, header: list[str], rows: list[list[str]], right_aligned: int = 1):
    """A rich table; every column from index ``right_aligned`` on is right-aligned (numbers)."""
    from rich.table import Table

    shown = Table(title=title)
    for index, name in enumerate(header):
        shown.add_column(name, justify="right" if index >= right_aligned else "left")
    for row in rows:
        shown.add_row(*map(str, row))
    return shown


def panel(text: str, title: str, border_style: str = "none"):
    """A rich panel around ``text`` (shown as is, no markup)."""
    from rich.panel import Panel
    from rich.text import Text

    return Panel(Text(text), title=title, title_align="left", border_style=border_style)


# -- progress bars ------------------------------------------------------------------------------------------------
class ProgressBar:
    """``with ProgressBar("generating", total, show) as bar: bar.advance(n)`` — a rich bar on stderr, or nothing
    when ``show`` is false or this is not the main process of a job.

    ``status``: a line shown after the counts, with ``{name}`` fields set by :meth:`update` (``"loss {loss}"``);
    ``completed``: where the bar starts (a resumed run); ``transient``: the bar disappears when done (and shows
    the elapsed time instead of an estimate, for bars whose total is only a bound)."""

    def __init__(self, description: str, total: int, show: bool = True, *, status: str | None = None,
                 completed: int = 0, transient: bool = False):
        self.description, self.total, self.show = description, total, show and distributed.is_main_process()
        self.status, self.completed, self.transient = status, completed, transient
        self._progress = self._task = None

    def start(self) -> ProgressBar:
        if not self.show or self._progress is not None:
            return self
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        fields = re.findall(r"{(\w+)}", self.status or "")
        columns = [TextColumn(f"[bold]{self.description}"), BarColumn(), MofNCompleteColumn()]
        if self.status:
            columns.append(TextColumn(re.sub(r"{(\w+)}", r"{task.fields[\1]}", self.status)))
        columns.append(TimeElapsedColumn() if self.transient else TimeRemainingColumn())
        self._progress = Progress(*columns, console=Console(stderr=True), transient=self.transient)
        self._task = self._progress.add_task(self.description, total=self.total, completed=self.completed,
                                             **{name: "-" for name in fields})
        self._progress.start()
        return self

    def advance(self, steps: int = 1) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=steps)

    def update(self, completed: int, **fields: str) -> None:
        """Set the count to ``completed`` and the status fields."""
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, **fields)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> ProgressBar:
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False
