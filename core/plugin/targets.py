"""The layers an adapter targets, and their shapes for a plugin's ``check_model``.

``target_modules: null`` resolves to PEFT's default for the method and architecture, else the plugin's
``default_target_modules(model)``, else every linear layer except the output head. Modules are selected the way
PEFT selects them: a string is a regex matching the full name, a list entry the full name or its dotted suffix.
"""
from __future__ import annotations

import math
import re
from typing import Any

from fw.plugin.descriptors import AdapterPlugin
from fw.plugin.lazy import resolve
from fw.plugin.peft import adapter_peft_config
from fw.plugin.registry import get_registry

TargetModules = list[str] | str


def adapter_descriptor(adapter_type: str, registry=None) -> AdapterPlugin:
    return (registry or get_registry()).get("adapter", adapter_type)


def resolve_target_modules(model, params: dict, descriptor: AdapterPlugin | None = None) -> TargetModules:
    """``params['target_modules']``, or when null: PEFT's default for this method and architecture, else the
    plugin's ``default_target_modules(model)``, else every linear layer except the output head."""
    if params.get("target_modules") is not None:
        return params["target_modules"]
    descriptor = descriptor or adapter_descriptor(params["type"])
    default = peft_default_target_modules(adapter_peft_config(descriptor, params), model_type(model))
    if default is not None:
        return default
    if descriptor.default_target_modules:
        return resolve(descriptor.default_target_modules)(model)
    return linear_layer_names(model)


def model_type(model) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def peft_default_target_modules(config, architecture: str | None) -> TargetModules | None:
    mapping = peft_module_mapping(config, "TARGET_MODULES")
    default = mapping.get(architecture) if architecture else None
    if default is None or isinstance(default, str):
        return default
    return sorted(default)


def peft_module_mapping(config, kind: str) -> dict:
    """PEFT's ``TRANSFORMERS_MODELS_TO_<METHOD>_<kind>_MAPPING`` for the config's method (the tuner's own
    ``target_module_mapping`` first), or {}."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import constants

    tuner = PEFT_TYPE_TO_TUNER_MAPPING.get(config.peft_type)
    if kind == "TARGET_MODULES" and isinstance(getattr(tuner, "target_module_mapping", None), dict):
        return tuner.target_module_mapping
    method = str(config.peft_type.value).replace("_", "")
    for name, value in vars(constants).items():
        match = re.fullmatch(f"TRANSFORMERS_MODELS_TO_(.+)_{kind}_MAPPING", name)
        if match and match.group(1).replace("_", "") == method:
            return value
    return {}


def linear_layer_names(model) -> list[str]:
    """Names (last component) of every nn.Linear / Conv1D layer except the output head."""
    import torch
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head})


def targeted_modules(model, target_modules: TargetModules) -> list[tuple[str, Any]]:
    """(name, module) of every module ``target_modules`` selects, matched like PEFT does."""
    def selected(name: str) -> bool:
        if isinstance(target_modules, str):
            return re.fullmatch(target_modules, name) is not None
        return any(name == target or name.endswith("." + target) for target in target_modules)

    return [(name, module) for name, module in model.named_modules() if name and selected(name)]


def is_conv1d(module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


# -- layer shapes, for plugins' check_model ------------------------------------------------------------------
def layer_shape(module) -> tuple[int, int] | None:
    """(in_features, out_features) of a Linear or GPT-2 Conv1D layer, else None."""
    if is_conv1d(module):
        return tuple(module.weight.shape)  # Conv1D stores (in, out)
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return module.in_features, module.out_features
    return None


def target_layer_shapes(model, params: dict) -> dict[str, tuple[int, int]]:
    """``"self_attn.q_proj (64x64)"`` -> (in, out), once per distinct layer and shape, for every targeted
    Linear/Conv1D layer (``target_modules: null`` resolved as fw resolves it when wrapping)."""
    shapes = {}
    for name, module in targeted_modules(model, resolve_target_modules(model, params)):
        shape = layer_shape(module)
        if shape:
            shapes.setdefault(f"{layer_label(name)} ({shape[0]}x{shape[1]})", shape)
    return shapes


def layer_label(name: str) -> str:
    """``model.layers.0.self_attn.q_proj`` -> ``self_attn.q_proj`` (the part after the block index)."""
    parts = name.split(".")
    numeric = [i for i, part in enumerate(parts) if part.isdigit()]
    return ".".join(parts[numeric[-1] + 1:]) if numeric and numeric[-1] < len(parts) - 1 else name


def divisor_problems(key: str, value: int, shapes: dict[str, tuple[int, int]]) -> list[str]:
    """Problems when ``value`` must divide the in and out features of every targeted layer."""
    bad = [label for label, (n_in, n_out) in shapes.items() if n_in % value or n_out % value]
    if not bad:
        return []
    fits = math.gcd(*[size for shape in shapes.values() for size in shape])
    return [f"{key}: {value} must divide the input and output size of every targeted layer, but not of "
            f"{', '.join(bad)}; the largest {key} that fits every targeted layer is {fits}"]


def size_limit_problems(key: str, value: int, shapes: dict[str, tuple[int, int]]) -> list[str]:
    """Problems when ``value`` may not exceed in_features * out_features of any targeted layer."""
    bad = [label for label, (n_in, n_out) in shapes.items() if value > n_in * n_out]
    if not bad:
        return []
    fits = min(n_in * n_out for n_in, n_out in shapes.values())
    return [f"{key}: {value} exceeds in_features * out_features of {', '.join(bad)}; the largest {key} "
            f"that fits every targeted layer is {fits}"]
