"""The config, read: typed accessors through which the core reads a config's sections and their defaults.

Every accessor takes a config (the resolved dict, or a :class:`fw.config.load.Config`). A key the config does not
have (a partial dict handed to a library function) reads as the default its JSON Schema declares (``schemas/
core.json``), so no default is restated in code. Light: no torch, no pandas.
"""
from __future__ import annotations

import copy
from typing import Any

from fw.config.store import core_schema
from fw.config.walk import fill_defaults, format_path, schema_at


def data_of(config) -> dict:
    """The plain dict of a :class:`fw.config.load.Config` (or the dict itself)."""
    return config.data if hasattr(config, "data") else config


def schema_default(*path: str | int) -> Any:
    """A copy of the default the core schema declares at ``path`` (e.g. ``"trainer", "seed"``)."""
    schema = schema_at(core_schema(), path)
    if schema is None or "default" not in schema:
        raise KeyError(f"the core schema declares no default for {format_path(path)}")
    return copy.deepcopy(schema["default"])


def setting(config, *path: str | int) -> Any:
    """The value at ``path``, or the schema's default when the config does not have it (a section written as
    null counts as absent; a null leaf is a value)."""
    node: Any = data_of(config)
    for depth, key in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(key, int):
            found = isinstance(node, list) and key < len(node)
        else:
            found = isinstance(node, dict) and key in node and (last or node[key] is not None)
        if not found:
            return schema_default(*path)
        node = node[key]
    return node


def section(config, *path: str) -> dict:
    """A copy of the section at ``path`` with every key it leaves out at its schema default."""
    root = core_schema()
    return fill_defaults(schema_at(root, path), copy.deepcopy(setting(config, *path) or {}), root)


# -- features ---------------------------------------------------------------------------------------------------
def input_feature(config) -> dict:
    return data_of(config)["input_features"][0]


def output_feature(config) -> dict:
    return data_of(config)["output_features"][0]


def _column_of(feature: dict) -> str:
    return str(feature.get("column") or feature["name"])


def input_column(config) -> str:
    """The dataset column of the input feature (used as-is when there is no template or task)."""
    return _column_of(input_feature(config))


def output_column(config) -> str:
    """The dataset column holding the target."""
    return _column_of(output_feature(config))


def output_name(config) -> str:
    """The output feature's name: the prefix of its prediction columns and its key in the statistics."""
    return str(output_feature(config)["name"])


def output_type(config) -> str:
    return setting(config, "output_features", 0, "type")


def fallback_label(config):
    return setting(config, "output_features", 0, "preprocessing", "fallback_label")


def input_max_sequence_length(config) -> int | None:
    return setting(config, "input_features", 0, "preprocessing", "max_sequence_length")


def output_max_sequence_length(config) -> int | None:
    return setting(config, "output_features", 0, "preprocessing", "max_sequence_length")


def lowercase(config, features: str) -> bool:
    """``<features>[0].preprocessing.lowercase`` (``input_features``: the whole rendered prompt; ``output_features``:
    the target), as Ludwig lower-cases text before tokenizing it."""
    return bool(setting(config, features, 0, "preprocessing", "lowercase"))


def global_max_sequence_length(config) -> int | None:
    return setting(config, "preprocessing", "global_max_sequence_length")


# -- the decoder of a category output ------------------------------------------------------------------------------
def decoder(config) -> dict:
    return output_feature(config).get("decoder") or {}


def labels(config) -> list[str]:
    """The category labels: the ``decoder.match`` keys, in config order."""
    return [str(label) for label in decoder(config).get("match") or {}]


def constrains_to_labels(config) -> bool:
    """``decoder.constrain_to_vocabulary`` on a category output: every generation is exactly one label."""
    return output_type(config) == "category" and bool(decoder(config).get("constrain_to_vocabulary"))


def scores_labels(config) -> bool:
    """``decoder.label_scoring`` on a category output: labels ranked by likelihood instead of generated."""
    return output_type(config) == "category" and bool(decoder(config).get("label_scoring"))


# -- prompt and preprocessing ------------------------------------------------------------------------------------
def prompt(config) -> dict:
    return setting(config, "prompt") or {}


def retrieval(config) -> dict | None:
    """The ``prompt.retrieval`` section when retrieval is on (a type is set), else None."""
    section = prompt(config).get("retrieval") or {}
    return section if section.get("type") else None


def split_settings(config) -> dict:
    """``preprocessing.split``: ``type``, ``probabilities``, ``column``."""
    return section(config, "preprocessing", "split")


def split_column(config) -> str:
    """The column the split reads (``split`` when not named: the fixed split's default)."""
    return split_settings(config)["column"] or "split"


def sample_ratio(config) -> float:
    return setting(config, "preprocessing", "sample_ratio")


def sample_size(config) -> int | None:
    return setting(config, "preprocessing", "sample_size")


# -- trainer ------------------------------------------------------------------------------------------------------
def trainer(config) -> dict:
    """The ``trainer`` section, every key present."""
    return section(config, "trainer")


def trainer_type(config) -> str:
    return setting(config, "trainer", "type")


def seed(config) -> int:
    return setting(config, "trainer", "seed")


def precision(config) -> str:
    return setting(config, "trainer", "precision")


def gradient_checkpointing(config) -> bool:
    return bool(setting(config, "trainer", "enable_gradient_checkpointing"))


def cache_dir(config):
    """``backend.cache_dir`` as a Path (Ludwig's local backend cache), or None: fw's own cache."""
    from pathlib import Path

    backend = data_of(config).get("backend") or {}
    return Path(backend["cache_dir"]).expanduser() if backend.get("cache_dir") else None


# -- generation, model parameters --------------------------------------------------------------------------------
def generation(config) -> dict:
    """The ``generation`` section as written or resolved; keys it lacks are left to transformers."""
    return data_of(config).get("generation") or {}


def rope_scaling(config) -> dict:
    return setting(config, "model_parameters", "rope_scaling") or {}


def neftune_noise_alpha(config) -> float:
    return setting(config, "model_parameters", "neftune_noise_alpha") or 0


# -- model, adapters, quantization -------------------------------------------------------------------------------
def base_model(config) -> str:
    return data_of(config)["base_model"]


def adapter(config) -> dict | None:
    """The single ``adapter`` section, or None (full fine-tuning, or several named adapters)."""
    return data_of(config).get("adapter")


def named_adapters(config) -> dict | None:
    """The ``adapters`` section (several named adapters), or None."""
    return data_of(config).get("adapters")


def adapter_sections(config) -> dict[str, dict]:
    """Every adapter section by its config path: ``{"adapter": ...}`` or ``{"adapters.adapters.<name>": ...}``."""
    if adapter(config) is not None:
        return {"adapter": adapter(config)}
    named = (named_adapters(config) or {}).get("adapters") or {}
    return {f"adapters.adapters.{name}": section for name, section in named.items()}


def quantization(config) -> dict | None:
    return data_of(config).get("quantization")
