"""Small helpers over JSON Schemas: follow a config path into a schema, fill defaults."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

Path = tuple[str | int, ...]


def format_path(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def deref(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (``#/$defs/x``), keeping sibling keywords (``default``, ``description``)."""
    while isinstance(schema, dict) and "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **siblings}
    return schema


def child_schema(schema: dict[str, Any], key: str | int, root: dict[str, Any]) -> dict[str, Any] | None:
    schema = deref(schema, root)
    if isinstance(key, int):
        items = schema.get("items")
        return deref(items, root) if isinstance(items, dict) else None
    properties = schema.get("properties", {})
    if key in properties:
        return deref(properties[key], root)
    extra = schema.get("additionalProperties")
    return deref(extra, root) if isinstance(extra, dict) else None


def schema_at(root: dict[str, Any], path: Sequence[str | int]) -> dict[str, Any] | None:
    schema: dict[str, Any] | None = deref(root, root)
    for key in path:
        if schema is None:
            return None
        schema = child_schema(schema, key, root)
    return schema


def fill_defaults(schema: dict[str, Any], value: Any, root: dict[str, Any] | None = None) -> Any:
    """Fill missing properties that have a ``default``, recursively; returns ``value`` (mutated)."""
    root = root if root is not None else schema
    schema = deref(schema, root)
    if isinstance(value, dict):
        for key, prop in schema.get("properties", {}).items():
            prop = deref(prop, root)
            if key not in value and "default" in prop:
                value[key] = copy.deepcopy(prop["default"])
            if key in value:
                fill_defaults(prop, value[key], root)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            fill_defaults(schema["items"], item, root)
    return value
