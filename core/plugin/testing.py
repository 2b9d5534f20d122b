"""Helpers for testing fw plugins (ours and third-party ones).

    from fw.plugin.testing import check_descriptor, registry_with, fake_distribution

* ``registry_with(module, ...)`` — a fresh registry holding only the given plugin modules (or ``declare()`` objects).
* ``fake_distribution(tmp_path, ...)`` — an installed-looking distribution on disk, for entry-point tests.
* ``check_descriptor(descriptor)`` — the problems a descriptor has (schema invalid, undocumented params, a number
  without bounds, references that do not import, an adapter with no PEFT config class); an empty list means it is
  well-formed.
* ``unbounded_numbers(schema)`` — where a schema admits a number with no minimum or no maximum.
"""
from __future__ import annotations

import importlib.metadata
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

from fw.plugin.descriptors import AdapterPlugin, PluginDescriptor
from fw.plugin.lazy import resolve
from fw.plugin.registry import Distribution, Registry
from fw.plugin.schemas import load_schema

#: descriptor fields holding a path or prose, not a ``"module:function"`` reference
NOT_REFERENCES = {"schema", "summary", "display_name"}


def registry_with(*modules: ModuleType | object, distribution: Distribution | None = None) -> Registry:
    registry = Registry()
    for module in modules:
        registry.register(module, distribution or Distribution("test-plugins", "0"))
    registry.collect()
    return registry


def fake_distribution(root: Path, name: str, version: str, modules: dict[str, str],
                      entry_points: dict[str, str]) -> list[importlib.metadata.EntryPoint]:
    """Write ``modules`` (name -> source) and a dist-info declaring ``entry_points`` (name -> module) under
    ``root``; return that distribution's ``fw`` entry points. Put ``root`` on sys.path to import them."""
    root.mkdir(parents=True, exist_ok=True)
    for module_name, source in modules.items():
        (root / f"{module_name}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "\n".join(f"{ep} = {target}" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[fw]\n{lines}\n")
    (dist,) = [d for d in importlib.metadata.distributions(path=[str(root)]) if d.metadata["Name"] == name]
    return list(dist.entry_points.select(group="fw"))


def check_descriptor(descriptor: PluginDescriptor) -> list[str]:
    """Problems with a descriptor's schema and references (empty when well-formed)."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    problems: list[str] = []
    try:
        schema = load_schema(descriptor.schema)
        Draft202012Validator.check_schema(schema)
    except (OSError, ValueError, SchemaError) as exc:
        return [f"{descriptor.kind} '{descriptor.name}': schema {descriptor.schema} is unusable: {exc}"]
    for key, prop in schema.get("properties", {}).items():
        for required in ("description",) + (("default",) if key != "type" else ()):
            if required not in prop:
                problems.append(f"{descriptor.kind} '{descriptor.name}': property '{key}' has no {required}")
    for where in unbounded_numbers(schema):
        problems.append(f"{descriptor.kind} '{descriptor.name}': {where} admits any number; give it a minimum and a "
                        "maximum (a count or size fw cannot check at validation fails later, after the model loads)")
    if schema.get("type") == "object" and schema.get("additionalProperties") is not False:
        problems.append(f"{descriptor.kind} '{descriptor.name}': schema must set additionalProperties: false")
    for field_name, value in vars(descriptor).items():
        if isinstance(value, str) and ":" in value and field_name not in NOT_REFERENCES:
            try:
                resolve(value)
            except (ImportError, AttributeError) as exc:
                problems.append(f"{descriptor.kind} '{descriptor.name}': {field_name}={value} does not resolve: {exc}")
    if isinstance(descriptor, AdapterPlugin):
        problems += _peft_config_class_problems(descriptor)
    return problems


def unbounded_numbers(schema: dict[str, Any], where: str = "") -> list[str]:
    """Where ``schema`` admits an integer or number without both bounds (``minimum`` / ``exclusiveMinimum`` and
    ``maximum`` / ``exclusiveMaximum``, or an ``enum`` / ``const``): ``properties.r``, ``properties.weights.items``.
    A property that also admits an object (any JSON value) is no count or size and is left alone."""
    found: list[str] = []
    kinds = schema.get("type")
    kinds = set(kinds if isinstance(kinds, list) else [kinds])
    if kinds & {"integer", "number"} and "object" not in kinds and not {"enum", "const"} & set(schema):
        if not {"minimum", "exclusiveMinimum"} & set(schema) or not {"maximum", "exclusiveMaximum"} & set(schema):
            found.append(where or "(the schema)")
    for keyword in ("properties", "$defs", "patternProperties"):
        for name, child in (schema.get(keyword) or {}).items():
            found += unbounded_numbers(child, f"{where}.{name}" if where else name)
    for keyword in ("items", "additionalProperties", "not", "if", "then", "else", "contains"):
        if isinstance(schema.get(keyword), dict):
            found += unbounded_numbers(schema[keyword], f"{where}.{keyword}" if where else keyword)
    for keyword in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for index, child in enumerate(schema.get(keyword) or []):
            found += unbounded_numbers(child, f"{where}.{keyword}[{index}]")
    return found


def _peft_config_class_problems(descriptor: AdapterPlugin) -> list[str]:
    import peft

    if not descriptor.peft_config_class and not descriptor.build_peft_config:
        return [f"adapter '{descriptor.name}': set peft_config_class (or build_peft_config)"]
    if descriptor.peft_config_class and not hasattr(peft, descriptor.peft_config_class):
        return [f"adapter '{descriptor.name}': peft has no {descriptor.peft_config_class} (peft {peft.__version__})"]
    return []
