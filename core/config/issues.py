"""Turns jsonschema errors into ConfigIssues: a path, the bad value, what was expected, a hint."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from fw.config.walk import Path, format_path, schema_at
from fw.errors import ConfigIssue, did_you_mean, shown

#: the schemas write "a number or auto" as a type list with this pattern for the string
AUTO_PATTERN = "^auto$"
_TYPE_NAMES = {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer", float: "number",
               type(None): "null"}
#: jsonschema's own message is kept when it is at most this long (it holds the whole value's repr)
_LONGEST_MESSAGE = 160


def _hint_for(root: dict[str, Any], parent_path: Path, key: str | int) -> str | None:
    parent = schema_at(root, parent_path)
    hints = (parent or {}).get("x-fw-hints", {})
    return hints.get(key) if isinstance(key, str) else None


def _renamed_from_library(schema: dict[str, Any], key: str) -> str | None:
    """A key the underlying library spells differently (PEFT's ``lora_alpha`` is fw's ``alpha``)."""
    for name, prop in schema.get("properties", {}).items():
        if isinstance(prop, dict) and prop.get("x-peft") == key and name != key:
            return f"PEFT's `{key}` is called `{name}` in fw: use {name}"
    return None


def issues_from_schema(schema: dict[str, Any], instance: Any, prefix: Path = (),
                       context: str = "") -> Iterator[ConfigIssue]:
    """Every violation of ``schema`` by ``instance``, with paths prefixed by ``prefix``."""
    validator = Draft202012Validator(schema)
    for error in sorted(validator.iter_errors(instance), key=_config_order):
        yield from _issues_for(error, schema, prefix, context)


def _config_order(error: ValidationError) -> list[tuple[bool, Any]]:
    """By path, list positions in numeric order (``[2]`` before ``[10]``)."""
    return [(isinstance(part, str), part) for part in error.absolute_path]


def _issues_for(error: ValidationError, root: dict[str, Any], prefix: Path, context: str) -> Iterator[ConfigIssue]:
    local = tuple(error.absolute_path)
    path = prefix + local
    kind = error.validator
    if kind == "additionalProperties":
        properties = error.schema.get("properties", {})
        allowed = list(properties)
        #: keys kept only for configs Ludwig writes are accepted, not advertised
        advertised = [k for k, prop in properties.items() if not (isinstance(prop, dict) and "x-ludwig" in prop)]
        hints = error.schema.get("x-fw-hints", {})
        for key in [k for k in error.instance if k not in allowed]:
            where = f" for {context}" if context else ""
            hint = hints.get(key) or _renamed_from_library(error.schema, key)
            message = f"unknown key '{shown(key, 40, quoted=False)}'{where}."
            if hint:
                message += f" {hint}."
            else:
                message += did_you_mean(key, allowed) or f" Allowed keys: {', '.join(advertised)}."
            yield ConfigIssue(format_path(path + (key,)), message)
        return
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else str(error.validator_value)
        described = (error.schema.get("properties", {}).get(missing, {}) or {}).get("description")
        yield ConfigIssue(format_path(path + (missing,)), "required key is missing.", described)
        return
    hint = _hint_for(root, local[:-1], local[-1]) if local else None
    if kind == "enum":
        choices = error.validator_value
        message = f"{shown(error.instance)} is not one of {', '.join(map(str, choices))}."
        message += did_you_mean(str(error.instance), [str(c) for c in choices])
    elif kind == "pattern" and error.validator_value == AUTO_PATTERN:  # a number, or the word auto
        kinds = error.schema.get("type", [])
        expected = [k for k in (kinds if isinstance(kinds, list) else [kinds]) if k not in ("string", "null")]
        message = f"expected {' or '.join(expected)} or 'auto', got {shown(error.instance)}."
        message += did_you_mean(str(error.instance), ["auto"])
    elif kind == "const":
        message = f"must be {shown(error.validator_value)}, got {shown(error.instance)}."
    elif kind == "type":
        expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        if error.schema.get("pattern") == AUTO_PATTERN:  # the only string it takes is auto
            expected = ["'auto'" if kind_name == "string" else kind_name for kind_name in expected]
        got = _TYPE_NAMES.get(type(error.instance), type(error.instance).__name__)
        message = f"expected {' or '.join(expected)}, got {got} {shown(error.instance)}."
    else:
        message = _bounded_message(error)
    yield ConfigIssue(format_path(path), message, hint)


def _bounded_message(error: ValidationError) -> str:
    """jsonschema's message (``-1 is less than the minimum of 1``), with a long value shortened."""
    if len(error.message) <= _LONGEST_MESSAGE:
        return error.message + "."
    full = repr(error.instance)  # what jsonschema put in its message
    if error.message.startswith(full) and len(error.message) - len(full) <= _LONGEST_MESSAGE:
        return shown(error.instance) + error.message[len(full):] + "."
    return f"{shown(error.instance)} does not satisfy the schema's {error.validator} ({shown(error.validator_value)})."
