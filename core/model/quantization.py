"""Quantization around training: what the core does with a quantized model besides loading it.

The quantizer plugins (``quantization.backend``) load and transform the model; this module holds the
backend-independent steps the pipeline calls:

- :func:`quantization_kwargs`: what the quantizer gives ``from_pretrained`` and the transform of the loaded model.
- :func:`section_for_loading`: QAT only changes training. A model loaded for inference (``fw predict`` of an
  adapter trained with ``qat: true``) is quantized for real, with the same mode; while training, the quantizer's
  ``training_params`` may switch QAT on (a mode whose real kernels have no backward pass).
- :func:`prepare_for_training`: a model loaded in 4-bit / 8-bit (bitsandbytes) goes through PEFT's
  ``prepare_model_for_kbit_training`` before the adapter is applied (QLoRA).
- :func:`finish_training`: a model trained with QAT gets the quantizer's ``after_training`` step before it is
  saved (torchao: fake-quantized layers become real quantized weights).
"""
from __future__ import annotations

from typing import Any

from fw.config import view
from fw.config.strategy import section_for_sharding
from fw.config.sockets import QUANTIZER
from fw.plugin import device, get_registry, is_kbit_model, resolve


def quantizer_of(section: dict):
    return get_registry().get("quantizer", section.get(QUANTIZER.selector) or QUANTIZER.default)


def section_for_loading(section: dict | None, for_training: bool) -> dict | None:
    """The ``quantization`` section as the quantizer should see it: QAT only while training (a model loaded for
    inference is quantized for real), plus what the quantizer's ``training_params`` change for training."""
    if not section:
        return section
    if not for_training:
        return {**section, "qat": False} if section.get("qat") else section
    adjust = quantizer_of(section).training_params
    return resolve(adjust)(section) if adjust else section


def quantization_kwargs(data: dict, for_training: bool = False,
                        sharded: bool = False) -> tuple[dict, Any, dict | None]:
    """(from_pretrained kwargs, transform or None) of the configured quantizer plugin; the transform is called
    as ``transform(model, section)`` with the section this returns as third item. ``sharded``: FSDP shards the
    weights (fw.config.strategy.section_for_sharding)."""
    section = section_for_loading(view.quantization(data), for_training)
    if section and sharded:
        section = section_for_sharding(section)
    if not section:
        return {}, None, section
    descriptor = quantizer_of(section)
    kwargs = resolve(descriptor.load_kwargs)(section, device()) if descriptor.load_kwargs else {}
    transform = resolve(descriptor.transform) if descriptor.transform else None
    return kwargs, transform, section


def prepare_for_training(model, data: dict):
    """QLoRA: PEFT's ``prepare_model_for_kbit_training`` (norms in fp32, gradients reaching the adapter through
    frozen quantized layers) on a k-bit quantized model, with fw's gradient checkpointing setting."""
    if not is_kbit_model(model):
        return model
    from peft import prepare_model_for_kbit_training

    checkpointing = view.gradient_checkpointing(data)
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None)


def finish_training(model, data: dict):
    """The quantizer's ``after_training`` step on a model trained with QAT (before it is saved)."""
    section = section_for_loading(view.quantization(data), for_training=True)
    if not section or not section.get("qat"):
        return model
    step = quantizer_of(section).after_training
    return resolve(step)(model, section) if step else model


def check_runnable(data: dict, for_training: bool, sharded: bool = False) -> None:
    """Fail before any work is done when this machine cannot run the configured quantization (the quantizer's
    ``load_kwargs`` raises the FwError: a missing package, no suitable GPU)."""
    quantization_kwargs(data, for_training, sharded)
