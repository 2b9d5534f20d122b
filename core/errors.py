"""Exceptions fw raises for things a user can fix. The CLI prints them as one clear message."""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


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


class ConfigError(FwError):
    """A config is invalid; ``issues`` holds every problem found, not just the first."""

    def __init__(self, issues: list[ConfigIssue], source: str | None = None):
        self.issues = list(issues)
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"{len(self.issues)} problem(s){where}:"] + [f"  - {issue}" for issue in self.issues]
        super().__init__("\n".join(lines))


class PluginNotFoundError(FwError):
    pass


class PluginConflictError(FwError):
    pass


class UsageError(FwError):
    """The command line was used wrongly (a missing file, a bad argument): exit code 2."""


class ConfigWarning(ConfigIssue):
    """Something accepted but worth telling (an ignored key); never fails validation."""


# -- 'did you mean' suggestions for misspelled keys and names


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice most similar to ``word``, or None when nothing is reasonably close."""
    options = [str(choice) for choice in choices]
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
