"""Loading a config: YAML file or dict in, validated config with every default filled out."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from fw.config.safe_yaml import read_yaml
from fw.config.validate import ValidationReport, validate
from fw.errors import ConfigError, ConfigIssue
from fw.plugin.registry import Registry

__all__ = ["Config", "load_config", "read_yaml", "validate_config"]


@dataclass
class Config:
    """A validated config. ``data`` has every default filled in; ``warnings`` lists what was ignored."""

    data: dict[str, Any]
    warnings: list[ConfigIssue] = field(default_factory=list)
    source: str | None = None

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


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
