"""Maps a validated ``adapter`` section onto the keyword arguments of a PEFT config class.

Each adapter schema property names the PEFT dataclass field it maps to in ``"x-peft"`` (``alpha`` ->
``lora_alpha``); properties with ``"x-peft": null`` are fw-level (``type``, ``loraplus_lr_ratio``) and never
reach PEFT. Keys missing from ``params`` take the schema default, so a partial section works too.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

from fw.plugin.descriptors import AdapterPlugin
from fw.plugin.lazy import resolve
from fw.plugin.schemas import load_schema, schema_defaults

TASK_TYPE = "CAUSAL_LM"
#: the core schema's ``$defs`` entry of the keys every adapter section accepts (not PEFT parameters)
ADAPTER_COMMON = ("fw.schemas:core.json", "adapter_common")
#: attribute of a PeftModel holding the TemporaryDirectory with its initial adapter (see keep_initial_adapter)
INITIAL_ADAPTER_ATTRIBUTE = "_fw_initial_adapter"


@functools.lru_cache(maxsize=1)
def common_keys() -> frozenset[str]:
    """Keys fw accepts in every adapter section (``pretrained_adapter_weights``, ``postprocessor``)."""
    reference, definition = ADAPTER_COMMON
    return frozenset(load_schema(reference)["$defs"][definition]["properties"])


def with_defaults(params: dict, schema_ref: str) -> dict[str, Any]:
    """``params`` (minus the common keys) completed with the schema defaults."""
    return {**schema_defaults(schema_ref), **{k: v for k, v in params.items() if k not in common_keys()}}


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


def adapter_peft_config(descriptor: AdapterPlugin, params: dict):
    """The PEFT config of an adapter plugin for ``params``: its own ``build_peft_config``, else the plain mapping
    of its schema onto ``peft_config_class``."""
    if descriptor.build_peft_config:
        return resolve(descriptor.build_peft_config)(params)
    return build_peft_config(descriptor.peft_config_class, params, descriptor.schema)


def targets_modules(descriptor: AdapterPlugin) -> bool:
    """Whether the method adapts selected layers (its schema has ``target_modules``); prompt-learning methods
    (prompt tuning, prefix tuning) add virtual tokens instead."""
    return "target_modules" in load_schema(descriptor.schema).get("properties", {})


def keep_initial_adapter(peft_model) -> None:
    """For initializers that fold part of the pretrained weight into the adapter (PiSSA, OLoRA, CorDA): save the
    freshly initialized adapter (as PEFT's conversion expects: ``init_lora_weights=True``) into a temporary
    directory that lives as long as the model; fw then saves the trained adapter converted into a plain LoRA
    adapter for the original base model (PEFT ``path_initial_model_for_weight_conversion``)."""
    import tempfile

    directory = tempfile.TemporaryDirectory(prefix="fw-initial-adapter-")
    config = peft_model.peft_config[peft_model.active_adapter]
    original = config.init_lora_weights
    config.init_lora_weights = True
    try:
        peft_model.save_pretrained(directory.name, safe_serialization=True)
    finally:
        config.init_lora_weights = original
    object.__setattr__(peft_model, INITIAL_ADAPTER_ATTRIBUTE, directory)
