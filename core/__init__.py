"""fw: declarative, plugin-based fine-tuning and inference for large language models.

Library API::

    import fw
    config = fw.load_config("config.yaml")       # or a dict; raises fw.ConfigError listing every problem
    fw.list_plugins(kind="adapter")               # registered plugins (descriptors + distribution)
    fw.get_registry().get("adapter", "lora")      # one plugin's descriptor

Importing fw is cheap: torch, transformers and peft are imported only when a model is built.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["ConfigError", "FwError", "get_registry", "list_plugins", "load_config", "validate_config",
           "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from fw.config.load import load_config, validate_config
    from fw.errors import ConfigError, FwError
    from fw.plugin.registry import get_registry

_LAZY = {
    "load_config": "fw.config.load",
    "validate_config": "fw.config.load",
    "Config": "fw.config.load",
    "ConfigError": "fw.errors",
    "FwError": "fw.errors",
    "get_registry": "fw.plugin.registry",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fw' has no attribute {name!r}")


def list_plugins(kind: str | None = None):
    """Every registered plugin (optionally of one kind), as RegisteredPlugin entries."""
    from fw.plugin.registry import get_registry
    return get_registry().all(kind)
