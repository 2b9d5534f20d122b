"""Messages for the user during a run: printed to stderr and kept in ``messages`` (tests and summaries read it).

``warn`` is for something the user should act on (rows dropped, values filled in); ``info`` for what fw decided
(how the dataset was split). Nothing here is an error: errors are raised as :class:`fw.errors.FwError`.
"""
from __future__ import annotations

#: every message of this process, in order, without markup
messages: list[str] = []
#: the subset of ``messages`` that are warnings
warnings: list[str] = []


def warn(message: str) -> None:
    """Print ``warning: message`` (yellow) to stderr and record it."""
    messages.append(message)
    warnings.append(message)
    _print(message, "[yellow]warning:[/yellow] ")


def info(message: str) -> None:
    """Print ``message`` to stderr and record it."""
    messages.append(message)
    _print(message, "")


def clear() -> None:
    """Forget the recorded messages (a new run, or a new test)."""
    messages.clear()
    warnings.clear()


def _print(message: str, prefix: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(prefix + escape(message))
