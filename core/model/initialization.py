"""Running a LoRA initializer: the adapter is wrapped by the initializer plugin when it needs more than
PEFT's config (a calibration pass over training rows, a step before or after ``get_peft_model``).

``wrap_with_initializer(model, section, calibration)`` is what :func:`fw.model.loading.apply_adapter` calls.
An initializer plugin's ``prepare`` has the signature ``prepare(model, section, calibration, wrap) -> model``:
``wrap(model, **changes)`` is fw's ordinary ``wrap_model`` for the section (with ``changes`` to its keys) and
``wrap.peft_config(model)`` the PEFT config it would use, so a plugin decides only *when* to wrap (CorDA collects
covariances on the base model first; EVA runs its SVD pass on the wrapped model) and never re-implements the
wrapping.

Initializers that rewrite the base weights (PiSSA, OLoRA, CorDA keep ``W - B0 A0`` as the frozen base) would
save an adapter that only fits the rewritten base. They call :func:`fw.plugin.keep_initial_adapter`, and
:func:`save_kwargs` then has saving convert the adapter into a plain LoRA adapter for the *original* base model
(PEFT's ``path_initial_model_for_weight_conversion``): a saved model loads with transformers + PEFT alone.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fw import distributed
from fw.console import ProgressBar
from fw.data.tokens import collate, length_sorted_batches
from fw.errors import FwError
from fw.model.adapters import peft_config_for, wrap_model
from fw.plugin import get_registry, resolve
from fw.plugin.peft import INITIAL_ADAPTER_ATTRIBUTE


@dataclass
class TrainingData:
    """What the adapter may look at before training: the encoded training rows (EVA and CorDA calibrate on
    them) and the planned number of optimizer steps (AdaLoRA's ``total_step`` defaults to it)."""

    rows: list
    tokenizer: Any
    batch_size: int
    planned_steps: int | None = None
    show_progress: bool = True

    def batches(self, n_samples: int, device, batch_size: int | None = None) -> list[dict]:
        """The first ``n_samples`` rows as padded batches (input_ids, attention_mask, labels) on ``device``."""
        rows = self.rows[:n_samples]
        batches = length_sorted_batches([len(row.input_ids) for row in rows], batch_size or self.batch_size)
        return [{key: value.to(device) for key, value in collate([rows[i] for i in indices],
                                                                 self.tokenizer.pad_token_id).items()}
                for indices in batches]

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[], None]]:
        """A progress bar over ``total`` calibration batches; yields ``advance()``."""
        with ProgressBar(description, total, self.show_progress, transient=True) as bar:
            yield bar.advance


def initializer_name(section: dict) -> str | None:
    value = section.get("init_lora_weights")
    if value is True:
        return "default"
    return value if isinstance(value, str) else None


def initializer_of(section: dict, registry=None):
    """The initializer plugin ``section['init_lora_weights']`` names, or None (a bool, an unknown PEFT value)."""
    name = initializer_name(section)
    if name is None:
        return None
    registry = registry or get_registry()
    return registry.get("initializer", name) if registry.has("initializer", name) else None


class Wrapping:
    """The ``wrap`` an initializer's ``prepare`` gets: ``wrap(model, **changes)`` wraps with the section (changed),
    ``wrap.peft_config(model)`` is the PEFT config that would be used."""

    def __init__(self, section: dict, config_path: str):
        self.section, self.config_path = section, config_path

    def __call__(self, model, **changes):
        return wrap_model(model, {**self.section, **changes}, config_path=self.config_path)

    def peft_config(self, model, **changes):
        return peft_config_for(model, {**self.section, **changes}, self.config_path)


def wrap_with_initializer(model, section: dict, calibration: TrainingData | None = None,
                          config_path: str = "adapter"):
    """``model`` wrapped with the adapter ``section``, initialized the way ``init_lora_weights`` says."""
    wrap = Wrapping(section, config_path)
    descriptor = initializer_of(section)
    if descriptor is None or not descriptor.prepare:
        return wrap(model)
    if descriptor.needs_data and (calibration is None or not calibration.rows):
        raise FwError(f"{config_path}.init_lora_weights: '{descriptor.name}' runs a calibration pass over training "
                      "rows before training, but no training rows were given. Train with fw train (it passes the "
                      "training split), or choose a data-free initializer such as pissa.")
    if descriptor.needs_data and distributed.launched():
        return calibrated_once(model, section, calibration, wrap, descriptor)
    return resolve(descriptor.prepare)(model, section, calibration, wrap)


def calibrated_once(model, section: dict, calibration: TrainingData, wrap: Wrapping, descriptor):
    """A calibrating initializer (EVA, CorDA) in a job of several processes: the main process runs its data pass;
    the others wrap the model with the PEFT config it ended with (EVA's redistributed ranks) and PEFT's plain
    initialization, and receive the main process's weights — the adapter's and any base weights the initializer
    rewrote — when training starts (DDP broadcasts them, FSDP loads them: fw.train.parallel)."""
    import copy

    import peft

    wrapped = resolve(descriptor.prepare)(model, section, calibration, wrap) if distributed.is_main_process() \
        else None
    config = distributed.broadcast(wrapped.peft_config[wrapped.active_adapter] if wrapped is not None else None)
    if wrapped is not None:
        return wrapped
    config = copy.deepcopy(config)
    config.init_lora_weights = True
    return peft.get_peft_model(model, config)


# -- initializers that rewrite the base weights ------------------------------------------------------------------
def save_kwargs(model) -> dict:
    """Extra ``save_pretrained`` kwargs: convert a PiSSA / OLoRA / CorDA adapter into a plain LoRA adapter of
    rank 2r for the original base model (PEFT ``path_initial_model_for_weight_conversion``)."""
    directory = vars(model).get(INITIAL_ADAPTER_ATTRIBUTE)
    if directory is None:
        return {}
    return {"path_initial_model_for_weight_conversion": directory.name}
