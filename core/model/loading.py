"""Loading the base model and its tokenizer: hub id or local directory, dtype and attention for the device.

``load_base_model(config, for_training)`` is the one entry point. What it decides:

- ``base_model`` is a local directory when it exists (or looks like a path: ``./x``, ``/x``, ``~/x``,
  ``a/b/c``); otherwise a Hugging Face Hub id, downloaded with the token from ``HUGGING_FACE_HUB_TOKEN`` or
  ``HF_TOKEN`` (never printed). A name ending in ``.gguf`` is one GGUF file, dequantized (:mod:`fw.model.gguf`).
- Models that need ``trust_remote_code`` are refused (the spec: executing untrusted code is unsupported).
- dtype: ``trainer.precision`` when set (fp32 / bf16 / fp16); ``auto`` = bfloat16 on a GPU that supports it,
  else float32 (CPU, or an older GPU: fp16 weights do not train stably without a loss scaler).
- ``attn_implementation="sdpa"`` (eager when the architecture has no SDPA kernel).
- A tokenizer without a pad token gets the EOS token (or UNK) as pad token.
- ``quantization`` (plugin-owned) contributes ``from_pretrained`` kwargs and/or a post-load transform.

Every failure a user can cause becomes one :class:`~fw.errors.FwError` line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from fw import console
from fw.config import view
from fw.data.chat import uses_chat_template
from fw.errors import FwError
from fw.model import gguf, multi_adapter
from fw.model.adapters import adapter_load_error, with_planned_steps
from fw.model.initialization import wrap_with_initializer
from fw.model.quantization import quantization_kwargs
from fw.model.rope import rope_kwargs
from fw.plugin.models import (REMOTE_CODE_MESSAGE, device, ensure_pad_token, hub_error_message, hub_token,
                              looks_like_path, quiet_libraries)




def choose_dtype(precision: str = "auto"):
    import torch

    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


# -- where the model lives ---------------------------------------------------------------------------------------
def resolve_location(name: str) -> str:
    """A local directory (checked) or a hub id (returned unchanged); a local GGUF file as an absolute path."""
    if gguf.is_gguf(name):
        location, filename = gguf.split_location(name)
        return str(Path(location) / filename) if os.path.isdir(location) else name
    if not looks_like_path(name):
        return name
    path = Path(name).expanduser()
    if not path.exists():
        raise FwError(f"base_model: local path '{name}' does not exist. Give a directory saved with "
                      "save_pretrained, or a Hugging Face Hub id such as meta-llama/Llama-2-7b-hf.")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise FwError(f"base_model: '{name}' is not a model directory (no config.json in it). Give a directory "
                      "saved with save_pretrained.")
    return str(path.resolve())


def refuse_remote_code(location: str, name: str) -> None:
    """Refuse a local model whose config.json declares custom code (``auto_map``)."""
    config_file = Path(location) / "config.json"
    if config_file.is_file():
        try:
            declared = json.loads(config_file.read_text())
        except (OSError, ValueError):
            raise FwError(f"base_model: {config_file} is not valid JSON.") from None
        if declared.get("auto_map"):
            raise FwError(REMOTE_CODE_MESSAGE.format(name=name))


# -- loading -----------------------------------------------------------------------------------------------------
#: files one of which a saved tokenizer has (the fast tokenizer's file, or a slow tokenizer's vocabulary)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model", "tekken.json")


def load_tokenizer(location: str, name: str | None = None, gguf_file: str | None = None):
    from transformers import AutoTokenizer

    try:
        if gguf_file:
            tokenizer = gguf.load_tokenizer(location, gguf_file, hub_token())
        else:
            tokenizer = AutoTokenizer.from_pretrained(location, token=hub_token(), trust_remote_code=False)
    except Exception as exc:  # any library failure becomes one line
        if os.path.isdir(location) and not any((Path(location) / file).is_file() for file in TOKENIZER_FILES):
            raise FwError(f"base_model: '{name or location}' has no tokenizer files (none of "
                          f"{', '.join(TOKENIZER_FILES[:3])}, ...): save the tokenizer next to the model, e.g. "
                          "tokenizer.save_pretrained(<that directory>).") from None
        message = hub_error_message(name or location, exc).replace("cannot load", "cannot load the tokenizer of", 1)
        raise FwError(message) from None
    ensure_pad_token(tokenizer)
    return tokenizer


def load_model_weights(location: str, name: str, dtype, extra: dict, gguf_file: str | None = None):
    """``AutoModelForCausalLM.from_pretrained`` with SDPA attention (eager when unsupported); ``gguf_file``: that
    file of ``location``, dequantized to ``dtype``."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype, "token": hub_token(), "trust_remote_code": False, **extra}
    if gguf_file:
        try:
            return gguf.load_model(location, gguf_file, kwargs)
        except Exception as exc:
            raise FwError(hub_error_message(name, exc)) from None
    try:
        return AutoModelForCausalLM.from_pretrained(location, attn_implementation="sdpa", **kwargs)
    except ValueError as exc:
        if "sdpa" not in str(exc).lower() and "scaled_dot_product" not in str(exc).lower():
            raise FwError(hub_error_message(name, exc)) from None
    except FwError:
        raise
    except Exception as exc:
        raise FwError(hub_error_message(name, exc)) from None
    try:
        return AutoModelForCausalLM.from_pretrained(location, attn_implementation="eager", **kwargs)
    except Exception as exc:
        raise FwError(hub_error_message(name, exc)) from None


def empty_model(location: str, name: str, dtype, extra: dict):
    """The architecture of ``location`` on the meta device, built from its config: no weight file is read (FSDP's
    CPU-efficient loading, where the main process's weights are loaded into the shards later)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = extra.get("config") or AutoConfig.from_pretrained(location, token=hub_token(), trust_remote_code=False)
    except Exception as exc:
        raise FwError(hub_error_message(name, exc)) from None
    with torch.device("meta"):
        try:
            return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
        except ValueError:
            return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager")


def load_base_model(config, for_training: bool = False, tokenizer_from: str | None = None,
                    on_device: str | None = None, weights: bool = True, sharded: bool = False):
    """(model, tokenizer) for ``config['base_model']``, on the best device (or ``on_device``), in eval mode unless
    training. ``tokenizer_from``: load the tokenizer from there instead (a saved run's ``model/``). ``weights``
    False: the model on the meta device, its weights not read (:func:`empty_model`; not for GGUF or quantized
    models, which are loaded as usual). ``sharded``: FSDP will shard the weights (a quantized base is stored so that
    it can be: fw.config.strategy.section_for_sharding)."""
    quiet_libraries()
    data = view.data_of(config)
    name = view.base_model(data)
    location, gguf_file = resolve_location(name), None
    if gguf.is_gguf(name):
        gguf.require_gguf_package(name)
        location, gguf_file = gguf.split_location(location)
    elif os.path.isdir(location):
        refuse_remote_code(location, name)
    else:
        console.info(f"base_model: loading '{name}' from the Hugging Face Hub (or its local cache)")
    tokenizer = load_tokenizer(tokenizer_from) if tokenizer_from else load_tokenizer(location, name, gguf_file)
    quant_kwargs, transform, quant_section = quantization_kwargs(data, for_training, sharded)
    dtype = choose_dtype(view.precision(data))
    extra = {**rope_kwargs(location, data, hub_token()), **quant_kwargs}
    on_meta = not weights and not gguf_file and not quant_kwargs and transform is None
    model = empty_model(location, name, dtype, extra) if on_meta else \
        load_model_weights(location, name, dtype, extra, gguf_file)
    if gguf_file:
        kind = gguf.quantization_type(location, gguf_file)
        console.info(f"base_model: dequantized the GGUF file {gguf_file}{f' ({kind})' if kind else ''} to "
                     f"{str(dtype).removeprefix('torch.')}; fw.model.gguf.convert saves it as a model directory once")
    if transform is not None:
        model = transform(model, quant_section)
    if not quant_kwargs and not on_meta:
        model.to(on_device or device())
    sync_special_tokens(model, tokenizer)
    if not tokenizer_from:
        note_unused_chat_template(tokenizer, data)
    model.train(for_training)
    return model, tokenizer


def note_unused_chat_template(tokenizer, data: dict) -> None:
    """One line when the base model has a chat template the config does not use (fw's default, as in Ludwig)."""
    if getattr(tokenizer, "chat_template", None) and not uses_chat_template(data):
        console.info("prompt: the base model has a chat template, and fw sends it the prompt as plain text (the "
                     "default, as in Ludwig); set prompt.chat_template: true to prompt it in its chat format.")


def sync_special_tokens(model, tokenizer) -> None:
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id


# -- adapter -----------------------------------------------------------------------------------------------------
def apply_adapter(model, config, training=None, adapter_name: str | None = None):
    """The model ready to train: wrapped with the ``adapter`` section (or continuing from
    ``adapter.pretrained_adapter_weights``); every parameter trainable when there is no adapter (full fine-tune).
    ``training`` (:class:`fw.model.initialization.TrainingData`) gives data-driven initializers (eva, corda) the
    training rows for their pass before training, and the adapter plugin the planned step count.
    With ``adapters`` (several named ones) every adapter is attached and only ``adapter_name`` (``--adapter``,
    else ``adapters.active``) trains: see :mod:`fw.model.multi_adapter`."""
    data = view.data_of(config)
    if view.named_adapters(data):
        return multi_adapter.prepare_for_training(model, data, adapter_name)[0]
    section = view.adapter(data)
    if not section:
        model.requires_grad_(True)
        return model
    if section.get("pretrained_adapter_weights"):
        return load_pretrained_adapter(model, section["pretrained_adapter_weights"], trainable=True)
    return wrap_with_initializer(model, with_planned_steps(section, training), training)


def load_pretrained_adapter(model, source: str, trainable: bool, key: str = "adapter.pretrained_adapter_weights"):
    """``PeftModel.from_pretrained`` for a local adapter dir or hub id, with one-line errors (``key``: the config
    key or flag that named it)."""
    from peft import PeftModel

    location = source
    if looks_like_path(source):
        path = Path(source).expanduser()
        if not (path / "adapter_config.json").is_file():
            raise FwError(f"{key}: '{source}' is not an adapter directory (no adapter_config.json in it). Give the "
                          "model/ folder of an fw run or a PEFT adapter.")
        location = str(path.resolve())
    try:
        return PeftModel.from_pretrained(model, location, is_trainable=trainable, token=hub_token())
    except FwError:
        raise
    except Exception as exc:
        raise adapter_load_error(exc, model, source, key) from None
