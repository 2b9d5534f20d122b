"""Wraps a transformers causal LM with the PEFT adapter an ``adapter`` section describes.

The adapter plugin is found by ``type`` in the registry; its ``build_peft_config`` makes the PEFT config.
Around that, this module resolves ``target_modules: null`` (PEFT's per-architecture default, else every
linear layer except the output head, or the plugin module's own ``default_target_modules(model)``), runs the
descriptor's ``check_model(params, model)`` (which returns ``"<key>: <message>"`` strings) and turns its
problems into one :class:`~fw.errors.ConfigError`, and sets ``fan_in_fan_out`` for GPT-2-style ``Conv1D``
layers. ``check_params`` is the validator's job (it runs before, with the keys the user wrote).

A plugin module may define ``default_target_modules(model) -> list[str]`` (found next to its
``build_peft_config``): the targets to use when PEFT has no default for the architecture.
"""
from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from fw.errors import ConfigError, ConfigIssue, FwError
from fw.plugin.lazy import resolve
from fw.plugin.descriptors import AdapterPlugin

TargetModules = list[str] | str


# -- the entry point -----------------------------------------------------------------------------------------
def wrap_model(model, adapter_params: dict, registry=None, adapter_name: str = "default",
               config_path: str = "adapter"):
    """``peft.get_peft_model(model, <config from adapter_params>)``, after the plugin's checks."""
    import peft

    descriptor = adapter_descriptor(adapter_params["type"], registry)
    params = {**adapter_params, "target_modules": resolve_target_modules(model, adapter_params, descriptor)}
    raise_issues(config_path, model_problems(descriptor, params, model))
    config = build_config(descriptor, params)
    targets = targeted_modules(model, params["target_modules"])
    fit_config_to_model(config, model, targets)
    try:
        return peft.get_peft_model(model, config, adapter_name=adapter_name)
    except (TypeError, ValueError) as exc:
        raise FwError(peft_failure_message(descriptor, config, targets, exc, config_path)) from exc


# -- plugin lookups ------------------------------------------------------------------------------------------
def adapter_descriptor(adapter_type: str, registry=None) -> AdapterPlugin:
    if registry is None:
        from fw.plugin.registry import get_registry

        registry = get_registry()
    return registry.get("adapter", adapter_type)


def plugin_function(descriptor: AdapterPlugin, name: str) -> Callable | None:
    """An optional function ``name`` of the module that holds the plugin's ``build_peft_config``."""
    module = importlib.import_module(descriptor.build_peft_config.partition(":")[0])
    return getattr(module, name, None)


def build_config(descriptor: AdapterPlugin, params: dict):
    return resolve(descriptor.build_peft_config)(params)


def model_problems(descriptor: AdapterPlugin, params: dict, model) -> list[tuple[str, str]]:
    if not descriptor.check_model:
        return []
    problems = resolve(descriptor.check_model)(params, model)
    return [tuple(problem.split(": ", 1)) if ": " in problem else ("", problem) for problem in problems]


def raise_issues(config_path: str, problems: Iterable[tuple[str, str]]) -> None:
    issues = [ConfigIssue(f"{config_path}.{key}" if key else config_path, message)
              for key, message in problems]
    if issues:
        raise ConfigError(issues)


# -- target modules ------------------------------------------------------------------------------------------
def resolve_target_modules(model, params: dict, descriptor: AdapterPlugin | None = None) -> TargetModules:
    """``params['target_modules']``, or when null: PEFT's default for this method and architecture, else the
    plugin module's ``default_target_modules(model)``, else every linear layer except the output head."""
    if params.get("target_modules") is not None:
        return params["target_modules"]
    descriptor = descriptor or adapter_descriptor(params["type"])
    default = peft_default_target_modules(build_config(descriptor, params), model_type(model))
    if default is not None:
        return default
    plugin_default = plugin_function(descriptor, "default_target_modules")
    return plugin_default(model) if plugin_default else linear_layer_names(model)


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
    """(name, module) of every module ``target_modules`` selects, matched like PEFT does: a string is a regex
    that must match the full name, a list entry matches the full name or its dotted suffix."""
    def selected(name: str) -> bool:
        if isinstance(target_modules, str):
            return re.fullmatch(target_modules, name) is not None
        return any(name == target or name.endswith("." + target) for target in target_modules)

    return [(name, module) for name, module in model.named_modules() if name and selected(name)]


# -- layer shapes, for plugins' check_model ------------------------------------------------------------------
def layer_shape(module) -> tuple[int, int] | None:
    """(in_features, out_features) of a Linear or GPT-2 Conv1D layer, else None."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):
        return tuple(module.weight.shape)  # Conv1D stores (in, out)
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return module.in_features, module.out_features
    return None


def target_layer_shapes(model, params: dict) -> dict[str, tuple[int, int]]:
    """``"self_attn.q_proj (64x64)"`` -> (in, out), once per distinct layer and shape, for every targeted
    Linear/Conv1D layer (``target_modules: null`` resolved as :func:`wrap_model` does)."""
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


# -- fitting the config to the model -------------------------------------------------------------------------
def fit_config_to_model(config, model, targets: list[tuple[str, Any]]) -> None:
    """Set ``fan_in_fan_out`` when every targeted layer is a GPT-2 ``Conv1D``; give IA3-style configs an empty
    ``feedforward_modules`` when PEFT has no default for the architecture."""
    if hasattr(config, "fan_in_fan_out") and targets and all(is_conv1d(module) for _, module in targets):
        config.fan_in_fan_out = True
    if getattr(config, "feedforward_modules", ()) is None:
        if model_type(model) not in peft_module_mapping(config, "FEEDFORWARD_MODULES"):
            config.feedforward_modules = set()


def is_conv1d(module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def peft_failure_message(descriptor: AdapterPlugin, config, targets, exc: Exception, config_path: str) -> str:
    import peft

    conv1d = sorted({layer_label(name) for name, module in targets if is_conv1d(module)})
    if isinstance(exc, TypeError) and conv1d:
        return (f"{config_path}.type: adapter '{descriptor.name}' ({type(config).__name__}) cannot adapt "
                f"GPT-2-style Conv1D layers (transformers.pytorch_utils.Conv1D): {', '.join(conv1d)}; "
                f"PEFT {peft.__version__} does not support that layer type for this method ({exc}). Choose "
                f"another adapter type, or a model whose projections are torch.nn.Linear.")
    return f"{config_path}: PEFT could not apply adapter '{descriptor.name}' to the model: {exc}"
