"""Exceptions fw raises for things a user can fix. The CLI prints them as one clear message."""
from __future__ import annotations

import difflib
import math
import reprlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


class FwError(Exception):
    """Base class: an error whose message is meant for the user, printed without a traceback."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config: where (``adapter.r``) and what, with an optional hint."""

    path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text} ({self.hint})" if self.hint else text


#: problems listed in one message; a config with more (one bad value repeated) gets "and N more"
SHOWN_ISSUES = 30


class ConfigError(FwError):
    """A config is invalid; ``issues`` holds every problem found, not just the first."""

    def __init__(self, issues: list[ConfigIssue], source: str | None = None):
        self.issues = list(issues)
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"{len(self.issues)} problem(s){where}:"] + [f"  - {line}" for line in issue_lines(self.issues)]
        super().__init__("\n".join(lines))


def issue_lines(issues: list[ConfigIssue]) -> list[str]:
    """One line per issue, the first :data:`SHOWN_ISSUES` of them, then how many more."""
    lines = [str(issue) for issue in issues[:SHOWN_ISSUES]]
    if len(issues) > SHOWN_ISSUES:
        lines.append(f"... and {len(issues) - SHOWN_ISSUES} more")
    return lines


class PluginNotFoundError(FwError):
    pass


class PluginConflictError(FwError):
    pass


class UsageError(FwError):
    """The command line was used wrongly (a missing file, a bad argument): exit code 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a scheduler, ``kill``): the CLI raises this so it is handled like Ctrl-C (training saves a
    checkpoint at the last step, atomic writes clean up) and then exits with 143."""


class ConfigWarning(ConfigIssue):
    """Something accepted but worth telling (an ignored key); never fails validation."""


# -- 'did you mean' suggestions for misspelled keys and names


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice most similar to ``word``, or None when nothing is reasonably close."""
    options = [str(choice) for choice in choices]
    if len(str(word)) > 100:  # no name is that long, and difflib's cost grows with it
        return None
    matches = difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    if not matches:
        lowered = {option.lower(): option for option in options}
        matches = difflib.get_close_matches(str(word).lower(), list(lowered), n=1, cutoff=0.6)
        matches = [lowered[m] for m in matches]
    return matches[0] if matches else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` or an empty string."""
    match = closest(word, choices)
    return f" Did you mean '{match}'?" if match else ""


# -- values in messages ------------------------------------------------------------------------------------------
class _BoundedRepr(reprlib.Repr):
    """reprlib's bounded repr (it never builds the full text of a large list or dict), plus huge integers by size:
    Python refuses ``repr`` of an int over 4300 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxdict, self.maxstring, self.maxlong, self.maxother = 2, 4, 3, 50, 30, 40

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 100:
            return f"{'a negative' if x < 0 else 'an'} integer of {int(x.bit_length() * math.log10(2)) + 1} digits"
        return super().repr_int(x, level)


_REPR = _BoundedRepr()


def shown(value: Any, limit: int = 60, quoted: bool = True) -> str:
    """``value`` as a message shows it: its repr (a string without quotes when ``quoted`` is false), at most
    ``limit`` characters however large the value is."""
    text = _REPR.repr(value) if quoted or not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit - 3] + "..."
