"""Helpers for plugins that load or run a model: where a model lives (hub id or local directory), the hub token,
the device, one-line load errors, quiet libraries, and running a model without gradients.

Nothing here imports torch / transformers at module level; fw's own model loading (:mod:`fw.model.loading`) uses
the same helpers.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

TOKEN_VARIABLES = ("HUGGING_FACE_HUB_TOKEN", "HF_TOKEN")
REMOTE_CODE_MESSAGE = ("base_model: '{name}' needs trust_remote_code (it ships its own Python code in the "
                       "repository). For security reasons fw does not execute untrusted code, so models that "
                       "require it are unsupported. Choose a model whose architecture is built into transformers.")
#: loggers that print harmless noise on import: transformers imports torchao whenever it is installed, and its
#: CUDA kernels fail to load on a CPU-only torch (its pytree registrations are deprecated on newer torch)
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_libraries() -> None:
    """No per-file progress bars or deprecation chatter from transformers / peft / huggingface_hub: fw shows
    its own progress and turns real problems into FwError lines."""
    import logging
    import warnings

    for name in NOISY_LOGGERS:  # first: importing transformers may import torchao
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers
    from huggingface_hub.utils import disable_progress_bars
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # no "Retrying in 8s" lines: a failure becomes one FwError line
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    disable_progress_bars()
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(transformers|peft|torch)(\..*)?")


def hub_token() -> str | None:
    for variable in TOKEN_VARIABLES:
        if os.environ.get(variable):
            return os.environ[variable]
    return None


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def looks_like_path(name: str) -> bool:
    """A local path (``./x``, ``/x``, ``~/x``, ``a/b/c``, or anything that exists) rather than a hub id."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or os.path.exists(name)


def hub_error_message(name: str, exc: BaseException) -> str:
    """One line for a failure to fetch ``name`` from the hub (or to read it locally), naming ``base_model``
    (replace it with your own config key)."""
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


def ensure_pad_token(tokenizer) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token


def is_kbit_model(model) -> bool:
    """Loaded in 4-bit or 8-bit (transformers' flags, set by bitsandbytes)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def model_device(model):
    return next(model.parameters()).device


@contextmanager
def inference_mode(model) -> Iterator[None]:
    """No gradients, dropout off; the previous training mode restored afterwards."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
