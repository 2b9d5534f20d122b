"""Quantization around training: what the core does with a quantized model besides loading it.

The quantizer plugins (``quantization.backend``) load and transform the model; this module holds the
backend-independent steps the pipeline calls:

- :func:`section_for_loading`: QAT only changes training. A model loaded for inference (``fw predict`` of an
  adapter trained with ``qat: true``) is quantized for real, with the same mode; a mode whose real kernels have
  no backward pass (torchao int8_dynamic) trains on fake quantization.
- :func:`prepare_for_training`: a model loaded in 4-bit / 8-bit by bitsandbytes goes through PEFT's
  ``prepare_model_for_kbit_training`` before the adapter is applied (QLoRA).
- :func:`finish_training`: a quantizer that left a step for the end (torchao QAT: fake-quantized layers become
  real quantized weights) runs it before the model is saved.
"""
from __future__ import annotations

import logging

#: loggers that print harmless noise when torchao is imported on a CPU-only torch (its CUDA kernels fail to
#: load) or on a newer torch (its pytree registrations are deprecated there)
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_quantization_libraries() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


#: (backend, mode) whose real kernels have no backward pass (int8 activations carry no gradient): training
#: runs on fake quantization with the same numerics (as with ``qat: true``), inference on the real kernels
TRAINED_WITH_FAKE_QUANTIZATION = {("torchao", "int8_dynamic")}


def section_for_loading(section: dict | None, for_training: bool) -> dict | None:
    """The ``quantization`` section as the quantizer should see it: QAT only while training (a model loaded for
    inference is quantized for real), and always while training modes that cannot backpropagate otherwise."""
    if not section:
        return section
    if not for_training:
        return {**section, "qat": False} if section.get("qat") else section
    if (section.get("backend"), section.get("mode")) in TRAINED_WITH_FAKE_QUANTIZATION:
        return {**section, "qat": True}
    return section


def is_kbit_model(model) -> bool:
    """Loaded in 4-bit or 8-bit by bitsandbytes."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def prepare_for_training(model, data: dict):
    """QLoRA: PEFT's ``prepare_model_for_kbit_training`` (norms in fp32, gradients reaching the adapter through
    frozen quantized layers) on a bitsandbytes-quantized model, with fw's gradient checkpointing setting."""
    if not is_kbit_model(model):
        return model
    from peft import prepare_model_for_kbit_training

    checkpointing = bool((data.get("trainer") or {}).get("enable_gradient_checkpointing"))
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None)


def finish_training(model, data: dict):
    """Run the step a quantizer left on the model for the end of training (``fw_after_training``)."""
    from fw.plugin.lazy import resolve

    step = getattr(model, "fw_after_training", None)
    if not isinstance(step, str):
        return model
    return resolve(step)(model, data.get("quantization") or {})


def check_runnable(data: dict, for_training: bool) -> None:
    """Fail before any work is done when this machine cannot run the configured quantization (the quantizer's
    ``load_kwargs`` raises the FwError: a missing package, no suitable GPU)."""
    from fw.model.loading import quantization_kwargs

    quantization_kwargs(data, for_training)
