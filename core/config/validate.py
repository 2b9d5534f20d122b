"""Validates a whole config: core schema, every plugin-owned section, defaults, cross-field rules.

Every problem is collected (not just the first) with its path, the bad value and what was expected.
Validation is offline and imports no torch/transformers/peft.
"""
from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, field
from typing import Any

from fw.config import ludwig, rules
from fw.config.derive import derive
from fw.errors import ConfigIssue, ConfigWarning, FwError, shown
from fw.plugin.lazy import resolve
from fw.plugin.registry import Registry, get_registry
from fw.config.issues import issues_from_schema
from fw.config.store import core_schema, load_schema
from fw.config.walk import Path, fill_defaults, format_path, integers_as_int
from fw.config.sockets import Socket, find_sockets
from fw.plugin.descriptors import PluginDescriptor


@dataclass
class ValidationReport:
    issues: list[ConfigIssue] = field(default_factory=list)
    warnings: list[ConfigIssue] = field(default_factory=list)
    #: defaults the config relies on where fw deliberately differs from Ludwig (README: Coming from Ludwig)
    notes: list[ConfigIssue] = field(default_factory=list)
    #: the config with every default filled in (meaningful when ``ok``)
    resolved: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.issues

    def add(self, found: ConfigIssue) -> None:
        (self.warnings if isinstance(found, ConfigWarning) else self.issues).append(found)


@functools.lru_cache(maxsize=None)
def _plugin_schema(reference: str, common: str | None) -> dict[str, Any]:
    """The plugin's schema, plus the properties every section of its socket accepts."""
    schema = copy.deepcopy(load_schema(reference))
    if common:
        shared = core_schema()["$defs"][common]["properties"]
        schema.setdefault("properties", {})
        for key, prop in shared.items():
            schema["properties"].setdefault(key, copy.deepcopy(prop))
    return schema


def plugin_schema(descriptor: PluginDescriptor, socket: Socket | None = None) -> dict[str, Any]:
    return _plugin_schema(descriptor.schema, socket.common if socket else None)


def validate(config: Any, registry: Registry | None = None) -> ValidationReport:
    registry = registry or get_registry()
    report = ValidationReport()
    if not isinstance(config, dict):
        report.add(ConfigIssue("", f"a config must be a mapping of sections, got {type(config).__name__}."))
        return report
    for found in [*_not_a_number(config), *issues_from_schema(core_schema(), config)]:
        report.add(found)
    findings = ludwig.check(core_schema(), config)
    resolved = integers_as_int(core_schema(), fill_defaults(core_schema(), copy.deepcopy(config)))
    for path, section, socket in list(find_sockets(resolved)):
        written = _section_at(config, path)
        for found in _validate_section(path, section, socket, written if isinstance(written, dict) else {},
                                       registry, findings):
            report.add(found)
    derive(resolved, config, reported=bool(report.issues))
    for found in findings.issues:
        report.add(found)
    for found in rules.check(resolved, registry, config, reported=report.issues):
        report.add(found)
    accepted = ludwig.accepted_line(findings.accepted)
    if accepted is not None:
        report.add(accepted)
    report.notes = ludwig.differences(core_schema(), config)
    report.resolved = resolved
    return report


def _not_a_number(value: Any, path: Path = ()) -> list[ConfigIssue]:
    """``.nan`` anywhere: it passes every minimum and maximum (each comparison with it is false)."""
    if isinstance(value, float) and math.isnan(value):
        return [ConfigIssue(format_path(path), "is .nan (not a number); give a number.")]
    if isinstance(value, dict):
        return [issue for key, item in value.items() for issue in _not_a_number(item, path + (key,))]
    if isinstance(value, list):
        return [issue for index, item in enumerate(value) for issue in _not_a_number(item, path + (index,))]
    return []


def _section_at(config: dict[str, Any], path: Path) -> Any:
    value: Any = config
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _validate_section(path: Path, section: dict[str, Any], socket: Socket, written: dict[str, Any],
                      registry: Registry, findings: ludwig.Findings) -> list[ConfigIssue]:
    """Validate one plugin-owned section in place (filling its defaults); the Ludwig keys of the section as
    ``written`` go to ``findings``."""
    explicit = set(written)
    name = section.get(socket.selector, socket.default)
    if name is None and socket.nullable:
        return []
    where = format_path(path + (socket.selector,))
    if not isinstance(name, str):
        kind = socket.kind.replace("_", " ")
        article = "an" if kind[0] in "aeiou" else "a"
        return [ConfigIssue(where, f"expected the name of {article} {kind}, got {shown(name)}.")]
    try:
        descriptor = registry.get(socket.kind, name)
    except FwError as exc:
        return [ConfigIssue(where, str(exc))]
    section.setdefault(socket.selector, name)
    schema = plugin_schema(descriptor, socket)
    context = f"{socket.kind.replace('_', ' ')} '{name}'"
    found = list(issues_from_schema(schema, section, path, context))
    if found:
        return found
    findings.extend(ludwig.check(schema, written, path))
    integers_as_int(schema, fill_defaults(schema, section))
    found += _required_values(schema, section, path, context)
    found += _ignored_key_warnings(schema, section, path, explicit)
    found += _plugin_checks(descriptor, section, path, explicit)
    if socket.kind == "adapter":
        found += _initializer_issues(path, section, name, explicit, registry)
    return found


def _required_values(schema: dict[str, Any], section: dict[str, Any], path: Path,
                     context: str) -> list[ConfigIssue]:
    """Properties a plugin marks ``"x-fw-required": true``: null is their default but not a usable value."""
    found = []
    for key, prop in schema.get("properties", {}).items():
        if prop.get("x-fw-required") and section.get(key) is None:
            choices = [c for c in prop.get("enum", []) if c is not None]
            expected = f": one of {', '.join(map(str, choices))}" if choices else ""
            found.append(ConfigIssue(format_path(path + (key,)), f"{context} needs a value{expected}.",
                                     prop.get("description")))
    return found


def _ignored_key_warnings(schema: dict[str, Any], section: dict[str, Any], path: Path,
                          explicit: set[str]) -> list[ConfigIssue]:
    ignored = schema.get("x-fw-ignored", {})
    return [ConfigWarning(format_path(path + (key,)), f"{message} (value {shown(section[key])} is ignored).")
            for key, message in ignored.items() if key in explicit and section.get(key) is not None]


def _plugin_checks(descriptor: PluginDescriptor, section: dict[str, Any], path: Path,
                   explicit: set[str]) -> list[ConfigIssue]:
    """Checks a plugin does itself: cross-field rules of its params, compiling a matcher's value."""
    found: list[ConfigIssue] = []
    check_params = getattr(descriptor, "check_params", None)
    if check_params:
        for key, *message in resolve(check_params)(section, explicit):  # (key, message[, hint])
            found.append(ConfigIssue(format_path(path + (key,)), *message))
    compile_ref = getattr(descriptor, "compile", None)
    if compile_ref:
        options = {k: v for k, v in section.items() if k not in ("type", "value")}
        try:
            resolve(compile_ref)(section.get("value"), options)
        except ValueError as exc:
            label = path[-1]
            found.append(ConfigIssue(format_path(path + ("value",)), f"label '{label}': {exc}"))
    return found


def _initializer_issues(path: Path, section: dict[str, Any], adapter: str, explicit: set[str],
                        registry: Registry) -> list[ConfigIssue]:
    """``init_lora_weights`` names an initializer plugin, whose schema validates its sub-config."""
    if "init_lora_weights" not in section:
        return []
    value = section["init_lora_weights"]
    name = "default" if value is True else value
    where = format_path(path + ("init_lora_weights",))
    if not isinstance(name, str):
        return [ConfigIssue(where, f"expected an initializer name, got {shown(value)}.")]
    try:
        descriptor = registry.get("initializer", name)
    except FwError as exc:
        return [ConfigIssue(where, str(exc))]
    found: list[ConfigIssue] = []
    if adapter not in descriptor.adapters:
        found.append(ConfigIssue(where, f"initializer '{name}' does not work with adapter '{adapter}'; "
                                        f"it supports: {', '.join(descriptor.adapters)}."))
    for other in registry.all("initializer"):
        key = other.descriptor.config_key
        if key and key != descriptor.config_key and key in explicit and section.get(key) is not None:
            found.append(ConfigWarning(format_path(path + (key,)),
                                       f"ignored: it configures '{other.name}', but init_lora_weights is '{name}'."))
    key = descriptor.config_key
    if key:
        sub = section.get(key) if section.get(key) is not None else {}
        schema = load_schema(descriptor.schema)
        sub_found = list(issues_from_schema(schema, sub, path + (key,), f"initializer '{name}'"))
        if not sub_found:
            section[key] = integers_as_int(schema, fill_defaults(schema, sub))
        found += sub_found
    return found
