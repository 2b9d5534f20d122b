"""Import a ``"module:attribute"`` reference on first use (keeps heavy imports out of discovery)."""
from __future__ import annotations

import importlib
from typing import Any


def resolve(reference: str) -> Any:
    module_name, _, attribute = reference.partition(":")
    if not attribute:
        raise ValueError(f"expected 'module:attribute', got {reference!r}")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target
