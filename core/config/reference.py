"""Renders the config reference (Markdown) from the core schema and every installed plugin's schema.

`python -m fw.config.reference > docs/config-reference.md` regenerates it; a test keeps the committed file current.
"""
from __future__ import annotations

import json
from typing import Any

from fw.plugin.registry import Registry, get_registry
from fw.config.store import core_schema, load_schema
from fw.config.walk import deref
from fw.plugin.descriptors import KINDS

SECTIONS = ["model_type", "base_model", "input_features", "output_features", "prompt", "preprocessing",
            "adapter", "adapters", "quantization", "model_parameters", "trainer", "generation", "backend",
            "trust_remote_code", "is_multimodal", "ludwig_version", "defaults", "hyperopt"]
SOCKET_NOTE = {"adapter": "adapter.type", "initializer": "adapter.init_lora_weights (sub-config key shown)",
               "quantizer": "quantization.backend", "matcher": "output_features[].decoder.match.<label>.type",
               "merge_strategy": "adapters.merge.combination_type", "retriever": "prompt.retrieval.type",
               "decoder": "output_features[].decoder.type"}


def _type(prop: dict[str, Any]) -> str:
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    kinds = prop.get("type", "any")
    text = " \\| ".join(kinds) if isinstance(kinds, list) else kinds
    return f"{text} in {_range(prop)}" if _range(prop) else text


def _range(prop: dict[str, Any]) -> str:
    """The bounds of a number, as an interval: ``[1, 4096]``, ``(0, 10]``; empty when it has none."""
    low = ("[", prop["minimum"]) if "minimum" in prop else ("(", prop["exclusiveMinimum"]) \
        if "exclusiveMinimum" in prop else None
    high = (prop["maximum"], "]") if "maximum" in prop else (prop["exclusiveMaximum"], ")") \
        if "exclusiveMaximum" in prop else None
    if low is None and high is None:
        return ""
    low, high = low or ("(", "-inf"), high or ("inf", ")")
    return f"{low[0]}{low[1]}, {high[0]}{high[1]}"


def _rows(schema: dict[str, Any], root: dict[str, Any], prefix: str) -> list[str]:
    rows = []
    schema = deref(schema, root)
    for key, prop in schema.get("properties", {}).items():
        prop = deref(prop, root)
        path = f"{prefix}{key}"
        default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        for kind, value in prop.get("x-fw-default-for-type", {}).items():
            default += f" ({kind}: `{json.dumps(value)}`)"
        description = " ".join((prop.get("description", "") + _ludwig_note(prop)).split()).replace("|", "\\|")
        rows.append(f"| `{path}` | {_type(prop)} | {default} | {description} |")
        if isinstance(prop.get("properties"), dict):
            rows += _rows(prop, root, path + ".")
        elif isinstance(prop.get("items"), dict) and "properties" in deref(prop["items"], root):
            rows += _rows(prop["items"], root, path + "[].")
    return rows


def _ludwig_note(prop: dict[str, Any]) -> str:
    """What fw does with a Ludwig key it does not implement (fw.config.ludwig)."""
    note = prop.get("x-ludwig")
    if note == "ignored":
        return " *Ludwig key: accepted, no effect in fw.*"
    if isinstance(note, dict) and "only" in note:
        return f" *Ludwig key: accepted at {' or '.join(f'`{json.dumps(v)}`' for v in note['only'])} only.*"
    if isinstance(note, dict) and "tree" in note:
        return " *Ludwig section: accepted at Ludwig's default values only.*"
    return ""


def _table(schema: dict[str, Any], root: dict[str, Any], prefix: str) -> str:
    header = "| key | type | default | description |\n|---|---|---|---|\n"
    return header + "\n".join(_rows(schema, root, prefix)) + "\n"


def render(registry: Registry | None = None) -> str:
    registry = registry or get_registry()
    core = core_schema()
    parts = ["# fw config reference\n", "Generated from the JSON Schemas by `python -m fw.config.reference`; do not edit.\n",
             "## Core sections\n"]
    for section in SECTIONS:
        prop = deref(core["properties"][section], core)
        parts.append(f"### `{section}`\n\n{' '.join(prop.get('description', '').split())}\n")
        if prop.get("properties") or (isinstance(prop.get("items"), dict)):
            target = prop["items"] if isinstance(prop.get("items"), dict) else prop
            parts.append(_table(target, core, f"{section}{'[].' if 'items' in prop else '.'}"))
    parts.append("### Keys every adapter accepts\n")
    parts.append(_table(core["$defs"]["adapter_common"], core, "adapter."))
    parts.append("### Keys every decoder accepts\n")
    parts.append(_table(core["$defs"]["decoder_common"], core, "output_features[].decoder."))
    for kind in KINDS:
        parts.append(f"## Plugins: {kind.replace('_', ' ')} (`{SOCKET_NOTE[kind]}`)\n")
        for entry in registry.all(kind):
            schema = load_schema(entry.descriptor.schema)
            origin = "" if entry.distribution.name == "fw" else f" — from {entry.distribution}"
            parts.append(f"### `{entry.name}`{origin}\n\n{' '.join(schema.get('description', entry.descriptor.summary).split())}\n")
            if schema.get("properties"):
                parts.append(_table(schema, schema, ""))
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
