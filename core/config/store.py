"""The core config schema (``fw.schemas:core.json``), read like every plugin's schema, and its trainer section."""
from __future__ import annotations

from typing import Any

from fw.config.walk import deref
from fw.plugin.schemas import load_schema

CORE_SCHEMA = "fw.schemas:core.json"


def core_schema() -> dict[str, Any]:
    return load_schema(CORE_SCHEMA)


def trainer_schema() -> dict[str, Any]:
    core = core_schema()
    return deref(core["$defs"]["trainer"], core)
