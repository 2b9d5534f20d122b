"""Maps a validated ``adapter`` section onto the keyword arguments of a PEFT config class.

Each adapter schema property names the PEFT dataclass field it maps to in ``"x-peft"`` (``alpha`` ->
``lora_alpha``); properties with ``"x-peft": null`` are fw-level (``type``, ``loraplus_lr_ratio``) and never
reach PEFT. Keys missing from ``params`` take the schema default, so a partial section works too.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from fw.config.store import load_schema

#: keys the core injects into every adapter section; they are not PEFT parameters
COMMON_KEYS = frozenset({"pretrained_adapter_weights", "postprocessor"})
TASK_TYPE = "CAUSAL_LM"


def schema_defaults(schema_ref: str) -> dict[str, Any]:
    """Every property's default, as the schema declares it."""
    return {key: prop.get("default") for key, prop in load_schema(schema_ref)["properties"].items()}


def with_defaults(params: dict, schema_ref: str) -> dict[str, Any]:
    """``params`` (minus the common keys) completed with the schema defaults."""
    return {**schema_defaults(schema_ref), **{k: v for k, v in params.items() if k not in COMMON_KEYS}}


def peft_kwargs(params: dict, schema_ref: str) -> dict[str, Any]:
    """PEFT field name -> value, for every schema property that maps to PEFT (``x-peft`` not null)."""
    properties = load_schema(schema_ref)["properties"]
    kwargs = {}
    for key, value in with_defaults(params, schema_ref).items():
        if key not in properties:
            raise ValueError(f"adapter key {key!r} is not in {schema_ref} (validate the config first)")
        field = properties[key].get("x-peft")
        if field is not None:
            kwargs[field] = value
    return kwargs


def _field_defaults(config_class: type) -> dict[str, Any]:
    defaults = {}
    for field in dataclasses.fields(config_class):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return defaults


def build_peft_config(config_class_name: str, params: dict, schema_ref: str, **overrides):
    """The ``peft.<config_class_name>`` for ``params`` (task type causal LM).

    ``overrides`` are PEFT field names set after the mapping (a plugin's conversions). A ``null`` whose PEFT
    default is not ``None`` (``rank_pattern``: ``{}``) is left out so PEFT keeps its own default.
    """
    import peft

    config_class = getattr(peft, config_class_name)
    field_defaults = _field_defaults(config_class)
    kwargs = {field: value for field, value in {**peft_kwargs(params, schema_ref), **overrides}.items()
              if value is not None or field_defaults.get(field) is None}
    return config_class(task_type=TASK_TYPE, **kwargs)
