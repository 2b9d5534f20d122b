"""Exceptions fw raises for things a user can fix. The CLI prints them as one clear message."""
from __future__ import annotations

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


class BrokenPluginError(FwError):
    pass


class NotBuiltYetError(FwError, NotImplementedError):
    """A declared capability whose behaviour is not implemented yet; names the area that will build it."""

    def __init__(self, what: str, area: str):
        super().__init__(f"{what} is not implemented yet in this version of fw (planned: {area}).")


class ConfigWarning(ConfigIssue):
    """Something accepted but worth telling (an ignored key); never fails validation."""
