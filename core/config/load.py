"""Loading a config: YAML file or dict in, validated config with every default filled out."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fw.errors import ConfigError, ConfigIssue
from fw.plugin.registry import Registry
from fw.config.validate import ValidationReport, validate

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """Safe YAML loader that also reads ``1e-4`` as a float (YAML 1.2), as every user expects."""


_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


@dataclass
class Config:
    """A validated config. ``data`` has every default filled in; ``warnings`` lists what was ignored."""

    data: dict[str, Any]
    warnings: list[ConfigIssue] = field(default_factory=list)
    source: str | None = None

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML file; syntax errors become a ConfigError naming the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue("", f"config file not found: {path}")]) from None
    except OSError as exc:
        raise ConfigError([ConfigIssue("", f"cannot read config file {path}: {exc.strerror}")]) from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigIssue("", f"invalid YAML at {where}{problem}")], source=str(path)) from None


def _as_data(source: str | os.PathLike[str] | dict[str, Any]) -> tuple[Any, str | None]:
    if isinstance(source, dict):
        return source, None
    return read_yaml(source), str(source)


def validate_config(source: str | os.PathLike[str] | dict[str, Any],
                    registry: Registry | None = None) -> ValidationReport:
    """Validate without raising: every problem and warning, plus the resolved config."""
    data, _ = _as_data(source)
    return validate(data, registry)


def load_config(source: str | os.PathLike[str] | dict[str, Any], registry: Registry | None = None) -> Config:
    """Read and validate a config (path to YAML, or a dict). Raises ConfigError listing every problem."""
    data, name = _as_data(source)
    report = validate(data, registry)
    if not report.ok:
        raise ConfigError(report.issues, source=name)
    return Config(report.resolved, report.warnings, name)
