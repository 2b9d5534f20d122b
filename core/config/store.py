"""Reads JSON Schemas shipped as package data (``"package:path/in/package.json"``)."""
from __future__ import annotations

import functools
import importlib.resources
import json
from typing import Any

CORE_SCHEMA = "fw.schemas:core.json"


@functools.lru_cache(maxsize=None)
def load_schema(reference: str) -> dict[str, Any]:
    package, _, path = reference.partition(":")
    if not path:
        raise ValueError(f"schema reference must be 'package:path.json', got {reference!r}")
    resource = importlib.resources.files(package).joinpath(path)
    return json.loads(resource.read_text(encoding="utf-8"))


def core_schema() -> dict[str, Any]:
    return load_schema(CORE_SCHEMA)
