"""Wraps a transformers causal LM with the PEFT adapter an ``adapter`` section describes, and asks the adapter
plugin what training needs from it.

The adapter plugin is found by ``type`` in the registry. :func:`peft_config_for` is the one place a PEFT config is
built for a model: ``target_modules: null`` resolved (:mod:`fw.plugin.targets`), the descriptor's
``check_model(params, model)`` problems turned into one :class:`~fw.errors.ConfigError`, the config built
(``build_peft_config`` or the declared ``peft_config_class``), and ``fan_in_fan_out`` set for GPT-2-style ``Conv1D``
layers. Prompt-learning methods (no ``target_modules`` in their schema) skip the layer steps. ``check_params`` is
the validator's job (it runs before, with the keys the user wrote). PEFT failing to build or load an adapter on a
model becomes one line (:func:`peft_failure_message`, :func:`adapter_load_error`).

The trainer asks through :func:`optimizer_parameter_groups` and :func:`after_step_callbacks`; :func:`with_planned_steps`
completes a section with what depends on the run's length. Each delegates to the descriptor, naming no method.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fw.config import view
from fw.errors import ConfigError, ConfigIssue, FwError
from fw.plugin import resolve
from fw.plugin.descriptors import AdapterPlugin
from fw.plugin.models import hub_error_message, library_message
from fw.plugin.peft import adapter_peft_config, targets_modules
from fw.plugin.targets import (adapter_descriptor, is_conv1d, layer_label, model_type, peft_module_mapping,
                               resolve_target_modules, targeted_modules)


# -- the entry points ----------------------------------------------------------------------------------------
def wrap_model(model, adapter_params: dict, registry=None, adapter_name: str = "default",
               config_path: str = "adapter"):
    """``peft.get_peft_model(model, <config from adapter_params>)``, after the plugin's checks."""
    import peft

    descriptor = adapter_descriptor(adapter_params["type"], registry)
    config = peft_config_for(model, adapter_params, config_path, descriptor)
    try:
        return peft.get_peft_model(model, config, adapter_name=adapter_name)
    except (TypeError, ValueError) as exc:
        raise FwError(peft_failure_message(descriptor, config, model, exc, config_path)) from exc


def peft_config_for(model, section: dict, config_path: str = "adapter", descriptor: AdapterPlugin | None = None):
    """The PEFT config of ``section`` for ``model``: targets resolved, the plugin's model checks passed, fitted to
    the model's layer types."""
    descriptor = descriptor or adapter_descriptor(section["type"])
    if not targets_modules(descriptor):
        raise_issues(config_path, model_problems(descriptor, section, model))
        return adapter_peft_config(descriptor, section)
    params = {**section, "target_modules": resolve_target_modules(model, section, descriptor)}
    raise_issues(config_path, model_problems(descriptor, params, model))
    config = adapter_peft_config(descriptor, params)
    fit_config_to_model(config, model, targeted_modules(model, params["target_modules"]))
    return config


# -- plugin checks -------------------------------------------------------------------------------------------
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


# -- fitting the config to the model -------------------------------------------------------------------------
def fit_config_to_model(config, model, targets: list[tuple[str, Any]]) -> None:
    """Set ``fan_in_fan_out`` when every targeted layer is a GPT-2 ``Conv1D``; give IA3-style configs an empty
    ``feedforward_modules`` when PEFT has no default for the architecture."""
    if hasattr(config, "fan_in_fan_out") and targets and all(is_conv1d(module) for _, module in targets):
        config.fan_in_fan_out = True
    if getattr(config, "feedforward_modules", ()) is None:
        if model_type(model) not in peft_module_mapping(config, "FEEDFORWARD_MODULES"):
            config.feedforward_modules = set()


def peft_failure_message(descriptor: AdapterPlugin, config, model, exc: Exception, config_path: str) -> str:
    import peft

    targets = targeted_modules(model, config.target_modules) if getattr(config, "target_modules", None) else []
    conv1d = sorted({layer_label(name) for name, module in targets if is_conv1d(module)})
    if isinstance(exc, TypeError) and conv1d:
        return (f"{config_path}.type: adapter '{descriptor.name}' ({type(config).__name__}) cannot adapt "
                f"GPT-2-style Conv1D layers (transformers.pytorch_utils.Conv1D): {', '.join(conv1d)}; "
                f"PEFT {peft.__version__} does not support that layer type for this method "
                f"({library_message(exc)}). Choose another adapter type, or a model whose projections are "
                "torch.nn.Linear.")
    return f"{config_path}: PEFT could not apply adapter '{descriptor.name}' to the model: {library_message(exc)}"


def adapter_load_error(exc: BaseException, model, source: str, key: str) -> FwError:
    """One line for PEFT failing to put the adapter ``source`` on ``model``; when the adapter does not fit the
    model (tensor shapes, target modules) and was trained on another base model, the line names both."""
    message = hub_error_message(source, exc, key=key)
    text = str(exc)
    if "in loading state_dict" in text or "not found in the base model" in text:
        base = getattr(getattr(model, "config", None), "_name_or_path", None)
        trained_on = trained_base_of(source)
        if base and trained_on and base != trained_on:
            message += f" The base model is '{base}'; the adapter was trained on '{trained_on}'."
    return FwError(message)


def trained_base_of(source: str) -> str | None:
    config_file = Path(source).expanduser() / "adapter_config.json"
    try:
        return json.loads(config_file.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None


# -- what training asks of the adapter -----------------------------------------------------------------------
def trained_section(config: dict) -> tuple[AdapterPlugin | None, dict]:
    """(descriptor, section) of the adapter being trained, or (None, {}) for a full fine-tune."""
    section = view.adapter(config) or {}
    return (adapter_descriptor(section["type"]) if section.get("type") else None), section


def with_planned_steps(section: dict, training=None) -> dict:
    """``section`` completed by the plugin with what depends on the run's planned optimizer steps (AdaLoRA's
    ``total_step``); unchanged without a training plan or without such a step."""
    planned = getattr(training, "planned_steps", None)
    descriptor = adapter_descriptor(section["type"])
    if not planned or not descriptor.with_planned_steps:
        return section
    return resolve(descriptor.with_planned_steps)(section, planned)


def optimizer_parameter_groups(model, config: dict, learning_rate: float, weight_decay: float) -> list[dict]:
    """The optimizer's parameter groups of the trainable parameters: the adapter plugin's own (LoRA+ gives the B
    matrices a higher rate), else one group; empty groups are dropped."""
    descriptor, section = trained_section(config)
    if descriptor is not None and descriptor.parameter_groups:
        groups = resolve(descriptor.parameter_groups)(model, section, learning_rate, weight_decay)
    else:
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        groups = [{"params": trainable, "lr": learning_rate, "weight_decay": weight_decay}]
    return [group for group in groups if group["params"]]


def after_step_callbacks(model, config: dict) -> list[Callable[[int], None]]:
    """``callback(global_step)`` to run after each optimizer step, before the gradients are cleared (AdaLoRA
    reallocates its ranks there)."""
    descriptor, _ = trained_section(config)
    if descriptor is None or not descriptor.after_step:
        return []
    return [functools.partial(resolve(descriptor.after_step), model)]
