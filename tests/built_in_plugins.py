"""Built-in plugins, asked of the registry (tests keep no lists of their own), and what tiny models need."""
from __future__ import annotations

from fw.plugin.peft import targets_modules
from fw.plugin.registry import get_registry


def built_in(kind: str) -> dict:
    """name -> descriptor of every plugin of ``kind`` that fw itself ships."""
    entries = get_registry().all(kind)
    return {entry.name: entry.descriptor for entry in entries if entry.distribution.name == "fw"}


#: built-in adapters that adapt layers (prompt-learning methods add virtual tokens instead)
LAYER_ADAPTERS = sorted(name for name, adapter in built_in("adapter").items() if targets_modules(adapter))
#: spec defaults too big for the tiny models (hidden 64, llama k/v out 32); tests/model/test_adapters.py
#: checks that the spec defaults are refused clearly there
TINY_OVERRIDES = {"c3a": {"block_size": 32}, "vblora": {"vector_length": 32}, "waveft": {"n_frequency": 512}}
