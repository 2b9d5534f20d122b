"""Small helpers over JSON Schemas: follow a config path into a schema, fill defaults."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from fw.errors import shown

Path = tuple[str | int, ...]


def format_path(path: Sequence[str | int]) -> str:
    """``adapter.r``, ``input_features[0].name``; a key too long to read is shortened."""
    text = ""
    for part in path:
        part = part if isinstance(part, int) else shown(part, 40, quoted=False)
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
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


def integers_as_int(schema: dict[str, Any], value: Any, root: dict[str, Any] | None = None) -> Any:
    """``value`` with every float that sits where the schema wants an integer made an int: JSON Schema counts
    ``epochs: 3.0`` as the integer 3 (so editors and Ludwig accept it), and so does fw, but Python's ``range``
    does not. Containers are changed in place; returns ``value`` (a new int for a float leaf)."""
    root = root if root is not None else schema
    schema = deref(schema, root)
    if isinstance(value, float):
        types = schema.get("type")
        types = types if isinstance(types, list) else [types]
        return int(value) if "integer" in types and "number" not in types and value.is_integer() else value
    if isinstance(value, dict):
        for key in value:
            child = child_schema(schema, key, root)
            if child is not None:
                value[key] = integers_as_int(child, value[key], root)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for index, item in enumerate(value):
                value[index] = integers_as_int(items, item, root)
    return value
