"""The core config schema (``fw.schemas:core.json``), read like every plugin's schema."""
from __future__ import annotations

from typing import Any

from fw.plugin.schemas import load_schema

CORE_SCHEMA = "fw.schemas:core.json"


def core_schema() -> dict[str, Any]:
    return load_schema(CORE_SCHEMA)
