"""Defaults that depend on other values of the config, as Ludwig derives them.

Run on the config with the schema defaults filled in, next to the config as written (``raw``): a value the user
wrote is never changed. Every default here is read from the core schema:

- ``trainer``: no trainer section means ``type: none``; the defaults of the chosen type (``x-fw-default-for-type``);
  keys only the finetune trainer has (``x-fw-finetune-only``) are not filled in for ``none``; the optimizer's
  parameters are those of its type (``x-fw-optimizer-params``); ``gradient_clipping: null`` means the defaults;
  ``validation_field`` / ``validation_metric`` follow the output feature;
- ``model_parameters: null`` means the defaults; ``backend: null`` means local;
- ``prompt.retrieval.k: 0`` with a retrieval type means 1;
- ``base_model``: Ludwig's short preset names become their Hub ids (``x-ludwig-presets``);
- ``generation.max_new_tokens`` not written, text output: the output's ``max_sequence_length``, else
  ``preprocessing.global_max_sequence_length`` (at least Ludwig's 32), else null: half the model's context length,
  decided when the model is loaded (:func:`fw.infer.settings.resolve_max_new_tokens`).
"""
from __future__ import annotations

import copy
from typing import Any

from fw.config.rules import RuleFailure
from fw.config.store import core_schema, trainer_schema
from fw.config.walk import fill_defaults

#: the metric each output type is validated on when trainer.validation_metric is not set (Ludwig's)
DEFAULT_VALIDATION_METRIC = {"text": "loss", "category": "accuracy"}


def _written(raw: Any, *keys: str) -> dict:
    """The mapping at ``keys`` in the config as written ({} when absent or not a mapping)."""
    for key in keys:
        raw = raw.get(key) if isinstance(raw, dict) else None
    return raw if isinstance(raw, dict) else {}


def derive(config: dict[str, Any], raw: dict[str, Any], reported: bool = False) -> None:
    """Fill, in place, the defaults of ``config`` (defaults filled) that depend on other values. ``reported``:
    whether a problem was found already; a step that crashes then stops quietly (it met a value the schema
    reported), otherwise the crash is a bug in fw and fails loudly."""
    for step in (trainer_defaults, optimizer_parameters, nulls_mean_defaults, validation_target, retrieval_k,
                 base_model_preset, max_new_tokens):
        try:
            step(config, raw)
        except Exception as exc:
            if reported:
                continue
            raise RuleFailure(f"deriving the defaults ('{step.__name__}') crashed ({type(exc).__name__}: {exc}). "
                              "This is a bug in fw, not in your config: please report it with the config.") from exc


def trainer_defaults(config: dict, raw: dict) -> None:
    trainer, written = config["trainer"], _written(raw, "trainer")
    kind = trainer.get("type")
    for key, prop in trainer_schema()["properties"].items():
        if key in written:
            continue
        if kind != "finetune" and prop.get("x-fw-finetune-only"):
            trainer.pop(key, None)
        elif kind in prop.get("x-fw-default-for-type", {}):
            trainer[key] = copy.deepcopy(prop["x-fw-default-for-type"][kind])


def optimizer_parameters(config: dict, raw: dict) -> None:
    """The chosen optimizer's parameters with their defaults (only its own)."""
    optimizer = config["trainer"].get("optimizer")
    if not isinstance(optimizer, dict):
        return
    params = trainer_schema()["properties"]["optimizer"]["x-fw-optimizer-params"].get(optimizer.get("type"), {})
    for key, default in params.items():
        optimizer.setdefault(key, copy.deepcopy(default))


def nulls_mean_defaults(config: dict, raw: dict) -> None:
    """Sections whose null Ludwig reads as "the defaults"."""
    core = core_schema()
    if config.get("model_parameters") is None:
        config["model_parameters"] = fill_defaults(core["$defs"]["model_parameters"], {}, core)
    if config.get("backend") is None:
        config["backend"] = fill_defaults(core["$defs"]["backend"], {}, core)
    trainer = config["trainer"]
    if "gradient_clipping" in trainer and trainer["gradient_clipping"] is None:
        trainer["gradient_clipping"] = fill_defaults(trainer_schema()["properties"]["gradient_clipping"], {}, core)


def validation_target(config: dict, raw: dict) -> None:
    trainer, output = config["trainer"], config["output_features"][0]
    if trainer.get("validation_field") is None:
        trainer["validation_field"] = output["name"]
    if trainer.get("validation_metric") is None:
        combined = trainer["validation_field"] == "combined"  # Ludwig's combined loss
        trainer["validation_metric"] = "loss" if combined else DEFAULT_VALIDATION_METRIC.get(output.get("type"), "loss")


def retrieval_k(config: dict, raw: dict) -> None:
    retrieval = config["prompt"].get("retrieval")
    if isinstance(retrieval, dict) and retrieval.get("type") is not None and retrieval.get("k") == 0:
        retrieval["k"] = 1


def base_model_preset(config: dict, raw: dict) -> None:
    presets = core_schema()["properties"]["base_model"]["x-ludwig-presets"]
    name = config.get("base_model")
    if isinstance(name, str) and name in presets:
        config["base_model"] = presets[name]


def max_new_tokens(config: dict, raw: dict) -> None:
    generation = config["generation"]
    if "max_new_tokens" in _written(raw, "generation") or config["output_features"][0].get("type") != "text":
        return
    floor = generation["max_new_tokens"]
    output = (config["output_features"][0].get("preprocessing") or {}).get("max_sequence_length")
    global_limit = config["preprocessing"].get("global_max_sequence_length")
    limit = output or global_limit
    generation["max_new_tokens"] = max(floor, limit) if limit else None
