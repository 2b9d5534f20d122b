"""Reads JSON Schemas shipped as package data (``"package:path/in/package.json"``), and their defaults.

Every descriptor names its schema this way; the core schema is read the same way (:mod:`fw.config.store`).
"""
from __future__ import annotations

import functools
import json
from typing import Any


@functools.lru_cache(maxsize=None)
def load_schema(reference: str) -> dict[str, Any]:
    import importlib.resources  # here: listing plugins reads no schema

    package, _, path = reference.partition(":")
    if not path:
        raise ValueError(f"schema reference must be 'package:path.json', got {reference!r}")
    resource = importlib.resources.files(package).joinpath(path)
    return json.loads(resource.read_text(encoding="utf-8"))


def schema_defaults(schema_ref: str) -> dict[str, Any]:
    """Every property's default, as the schema declares it."""
    return {key: prop.get("default") for key, prop in load_schema(schema_ref).get("properties", {}).items()}
