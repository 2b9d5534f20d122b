"""Loading the base model and its tokenizer: hub id or local directory, dtype and attention for the device.

``load_base_model(config, for_training)`` is the one entry point. What it decides:

- ``base_model`` is a local directory when it exists (or looks like a path: ``./x``, ``/x``, ``~/x``,
  ``a/b/c``); otherwise a Hugging Face Hub id, downloaded with the token from ``HUGGING_FACE_HUB_TOKEN`` or
  ``HF_TOKEN`` (never printed).
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
from typing import Any

from fw.errors import FwError

TOKEN_VARIABLES = ("HUGGING_FACE_HUB_TOKEN", "HF_TOKEN")
REMOTE_CODE_MESSAGE = ("base_model: '{name}' needs trust_remote_code (it ships its own Python code in the "
                       "repository). For security reasons fw does not execute untrusted code, so models that "
                       "require it are unsupported. Choose a model whose architecture is built into transformers.")


def quiet_libraries() -> None:
    """No per-file progress bars or deprecation chatter from transformers / peft / huggingface_hub: fw shows
    its own progress and turns real problems into FwError lines."""
    import warnings

    from fw.model.quantization import quiet_quantization_libraries

    quiet_quantization_libraries()  # first: transformers may import torchao, which logs on import
    import transformers
    from huggingface_hub.utils import disable_progress_bars
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # no "Retrying in 8s" lines: a failure becomes one FwError line
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    disable_progress_bars()
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(transformers|peft|torch)(\..*)?")


def config_data(config) -> dict:
    """The plain dict of a :class:`fw.config.load.Config` (or the dict itself)."""
    return config.data if hasattr(config, "data") else config


def hub_token() -> str | None:
    for variable in TOKEN_VARIABLES:
        if os.environ.get(variable):
            return os.environ[variable]
    return None


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or os.path.exists(name)


def resolve_location(name: str) -> str:
    """A local directory (checked) or a hub id (returned unchanged)."""
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


def hub_error_message(name: str, exc: BaseException) -> str:
    """One line for a failure to fetch ``name`` from the hub (or to read it locally)."""
    from huggingface_hub import errors

    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(item) for item in chain)
    if any(isinstance(item, errors.GatedRepoError) for item in chain) or "gated" in text.lower():
        return (f"base_model: '{name}' is a gated model. Request access on https://huggingface.co/{name}, then "
                "export HUGGING_FACE_HUB_TOKEN=<your token> (or HF_TOKEN) and run again.")
    if "trust_remote_code" in text:
        return REMOTE_CODE_MESSAGE.format(name=name)
    if any(isinstance(item, errors.RepositoryNotFoundError) for item in chain) or "not a valid model identifier" in text:
        return (f"base_model: '{name}' is neither a local directory nor a model on the Hugging Face Hub "
                "(check the spelling; private models need HUGGING_FACE_HUB_TOKEN).")
    if any(isinstance(item, (errors.LocalEntryNotFoundError, ConnectionError)) for item in chain) \
            or "offline" in text.lower() or "couldn't connect" in text.lower():
        return (f"base_model: cannot download '{name}': the Hugging Face Hub is unreachable (offline?) and the "
                "model is not in the local cache. Connect, or point base_model at a local directory.")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"base_model: cannot load '{name}': {first}"


# -- loading -----------------------------------------------------------------------------------------------------
def load_tokenizer(location: str, name: str | None = None):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location, token=hub_token(), trust_remote_code=False)
    except Exception as exc:  # any library failure becomes one line
        raise FwError(hub_error_message(name or location, exc).replace("cannot load", "cannot load the tokenizer of")) \
            from None
    ensure_pad_token(tokenizer)
    return tokenizer


def ensure_pad_token(tokenizer) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token


def quantization_kwargs(data: dict, for_training: bool = False) -> tuple[dict, Any, dict | None]:
    """(from_pretrained kwargs, transform or None) of the configured quantizer plugin; the transform is called
    as ``transform(model, section)`` with the section this returns as third item."""
    from fw.model.quantization import section_for_loading

    section = section_for_loading(data.get("quantization"), for_training)
    if not section:
        return {}, None, section
    from fw.plugin.lazy import resolve
    from fw.plugin.registry import get_registry

    descriptor = get_registry().get("quantizer", section.get("backend") or "bitsandbytes")
    kwargs = resolve(descriptor.load_kwargs)(section, device()) if descriptor.load_kwargs else {}
    transform = resolve(descriptor.transform) if descriptor.transform else None
    return kwargs, transform, section


def load_model_weights(location: str, name: str, dtype, extra: dict):
    """``AutoModelForCausalLM.from_pretrained`` with SDPA attention (eager when unsupported)."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype, "token": hub_token(), "trust_remote_code": False, **extra}
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


def load_base_model(config, for_training: bool = False, tokenizer_from: str | None = None):
    """(model, tokenizer) for ``config['base_model']``, on the best device, in eval mode unless training.
    ``tokenizer_from``: load the tokenizer from there instead (a saved run's ``model/``)."""
    quiet_libraries()
    data = config_data(config)
    name = data["base_model"]
    location = resolve_location(name)
    if os.path.isdir(location):
        refuse_remote_code(location, name)
    else:
        from fw import report

        report.info(f"base_model: loading '{name}' from the Hugging Face Hub (or its local cache)")
    tokenizer = load_tokenizer(tokenizer_from) if tokenizer_from else load_tokenizer(location, name)
    quant_kwargs, transform, quant_section = quantization_kwargs(data, for_training)
    dtype = choose_dtype((data.get("trainer") or {}).get("precision", "auto"))
    from fw.model.rope import rope_kwargs

    extra = {**rope_kwargs(location, data, hub_token()), **quant_kwargs}
    model = load_model_weights(location, name, dtype, extra)
    if transform is not None:
        model = transform(model, quant_section)
    if not quant_kwargs:
        model.to(device())
    sync_special_tokens(model, tokenizer)
    model.train(for_training)
    return model, tokenizer


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
    training rows for their pass before training, and AdaLoRA the planned step count.
    With ``adapters`` (several named ones) every adapter is attached and only ``adapter_name`` (``--adapter``,
    else ``adapters.active``) trains: see :mod:`fw.model.multi_adapter`."""
    data = config_data(config)
    if data.get("adapters"):
        from fw.model.multi_adapter import prepare_for_training

        return prepare_for_training(model, data, adapter_name)[0]
    section = data.get("adapter")
    if not section:
        model.requires_grad_(True)
        return model
    if section.get("pretrained_adapter_weights"):
        return load_pretrained_adapter(model, section["pretrained_adapter_weights"], trainable=True)
    from fw.model.rank_allocation import with_total_step
    from fw.model.initialization import wrap_with_initializer

    return wrap_with_initializer(model, with_total_step(section, training), training)


def load_pretrained_adapter(model, source: str, trainable: bool):
    """``PeftModel.from_pretrained`` for a local adapter dir or hub id, with one-line errors."""
    from peft import PeftModel

    location = source
    if looks_like_path(source):
        path = Path(source).expanduser()
        if not (path / "adapter_config.json").is_file():
            raise FwError(f"adapter.pretrained_adapter_weights: '{source}' is not an adapter directory (no "
                          "adapter_config.json in it). Give the model/ folder of an fw run or a PEFT adapter.")
        location = str(path.resolve())
    try:
        return PeftModel.from_pretrained(model, location, is_trainable=trainable, token=hub_token())
    except FwError:
        raise
    except Exception as exc:
        raise FwError(hub_error_message(source, exc).replace("base_model", "adapter.pretrained_adapter_weights")) \
            from None
