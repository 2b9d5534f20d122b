"""Helpers for plugins that load or run a model: where a model lives (hub id or local directory), the hub token,
the device, one-line load errors, quiet libraries, and running a model without gradients.

Nothing here imports torch / transformers at module level; fw's own model loading (:mod:`fw.model.loading`) uses
the same helpers.
"""
from __future__ import annotations

import os
import re
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


def hub_error_message(name: str, exc: BaseException, key: str = "base_model") -> str:
    """One line for a failure to fetch ``name`` from the hub (or to read it locally), naming the config ``key``
    that gave it. Classified by the huggingface_hub exceptions in the chain that
    transformers / PEFT raise ``from``: gated, not found, token rejected or not allowed, rate limit, server error,
    offline mode, unreachable; else the library's whole message (:func:`library_message`). The token is never
    shown."""
    from huggingface_hub import constants, errors

    chain = _exception_chain(exc)
    found = {kind: next((item for item in chain if isinstance(item, kind)), None)
             for kind in (errors.GatedRepoError, errors.RepositoryNotFoundError, errors.HfHubHTTPError,
                          errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError)}
    status = getattr(getattr(found[errors.HfHubHTTPError], "response", None), "status_code", None)
    if found[errors.GatedRepoError]:
        if hub_token():
            return (f"{key}: '{name}' is a gated model and your token (HUGGING_FACE_HUB_TOKEN / HF_TOKEN) has no "
                    f"access yet. Request access on https://huggingface.co/{name} with its account, then run again.")
        return (f"{key}: '{name}' is a gated model. Request access on https://huggingface.co/{name}, then export "
                "HUGGING_FACE_HUB_TOKEN=<your token> (or HF_TOKEN) and run again.")
    if found[errors.RepositoryNotFoundError] or "not a valid model identifier" in str(exc):
        private = "a private one must be visible to your token's account" if hub_token() else \
            "a private one needs HUGGING_FACE_HUB_TOKEN or HF_TOKEN"
        return (f"{key}: '{name}' is neither a local directory nor a model on the Hugging Face Hub (check the "
                f"spelling; {private}).")
    if status == 401:
        return (f"{key}: the Hugging Face Hub rejected the token (HUGGING_FACE_HUB_TOKEN / HF_TOKEN) while "
                f"fetching '{name}': it is invalid or expired. Create one at https://huggingface.co/settings/tokens, "
                "or unset it for a public model.")
    if status == 403:
        return (f"{key}: the token (HUGGING_FACE_HUB_TOKEN / HF_TOKEN) may not read '{name}' (403 Forbidden); "
                "give it read access to that repository.")
    if status == 429:
        return (f"{key}: the Hugging Face Hub is limiting requests (429 Too Many Requests) while fetching "
                f"'{name}'; wait a few minutes and run again{'' if hub_token() else ', or log in with a token'}.")
    if status is not None and status >= 500:
        return (f"{key}: the Hugging Face Hub failed with a server error ({status}) while fetching '{name}', and "
                f"it is not in the local cache. Try again later, or point {key} at a local directory.")
    if found[errors.OfflineModeIsEnabled] or (found[errors.LocalEntryNotFoundError] and constants.HF_HUB_OFFLINE):
        return (f"{key}: '{name}' is not in the local cache, and HF_HUB_OFFLINE is set, so it cannot be "
                f"downloaded. Unset HF_HUB_OFFLINE, or point {key} at a local directory.")
    text = " ".join(str(item) for item in chain)
    if found[errors.LocalEntryNotFoundError] or any(_is_network_error(item) for item in chain) \
            or "couldn't connect" in text.lower():
        return (f"{key}: cannot download '{name}': the Hugging Face Hub is unreachable (offline?) and it is not in "
                f"the local cache. Connect, or point {key} at a local directory.")
    if "trust_remote_code" in text:
        return REMOTE_CODE_MESSAGE.format(name=name).replace("base_model", key, 1)
    return f"{key}: cannot load '{name}': {library_message(exc)}"


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def _is_network_error(exc: BaseException) -> bool:
    """A connection failure: Python's, or the HTTP client's (httpx names them ``...TransportError``)."""
    return isinstance(exc, (ConnectionError, TimeoutError)) or \
        any(base.__name__ in ("TransportError", "TimeoutException") for base in type(exc).__mro__)


#: how long a library's message may be once joined into one line; longer ones end at a sentence
LONGEST_LIBRARY_MESSAGE = 400
_CPP_FRAMES = re.compile(r"\n?\s*(Exception raised from |frame #\d+:).*", re.DOTALL)
_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([^]]*)\]\) from "
                            r"checkpoint, the shape in current model is torch\.Size\(\[([^]]*)\]\)")
_KEYS = re.compile(r"(Missing|Unexpected) key\(s\) in state_dict: (.*?)(?:\.\s*$|\.\s*\n)", re.MULTILINE)


def library_message(exc: BaseException) -> str:
    """A library's exception as one whole line for the user: the lines joined, no C++ stack frames (torch appends
    them), a state-dict mismatch summed up, the hub token never shown, and a long text ended at a sentence."""
    text = _CPP_FRAMES.sub("", str(exc)).strip() or type(exc).__name__
    if text.count('"') % 2:  # the frames sat inside a quoted error
        text += '"'
    text = _state_dict_summary(text) or " ".join(text.split())
    token = hub_token()
    if token:
        text = text.replace(token, "***")
    if len(text) <= LONGEST_LIBRARY_MESSAGE:
        return text
    cut = text.rfind(". ", 0, LONGEST_LIBRARY_MESSAGE)
    return text[:cut + 1] + " (...)" if cut > 0 else text[:text.rfind(" ", 0, LONGEST_LIBRARY_MESSAGE)] + " (...)"


def _state_dict_summary(text: str) -> str | None:
    """torch's ``Error(s) in loading state_dict`` (one line per tensor) as one sentence."""
    if "in loading state_dict" not in text:
        return None
    mismatches = _SIZE_MISMATCH.findall(text)
    keys = {kind: key_list.count('"') // 2 for kind, key_list in _KEYS.findall(text)}
    parts = []
    if mismatches:
        tensor, saved, model = mismatches[0]
        more = f" (and {len(mismatches) - 1} more tensors)" if len(mismatches) > 1 else ""
        parts.append(f"{tensor} has shape [{saved}] in the saved weights but [{model}] in the model{more}")
    parts += [f"{count} {kind.lower()} key(s)" for kind, count in keys.items()]
    return ("the saved weights do not fit the model: " + "; ".join(parts or ["their tensors differ"]) +
            ". Were they saved from another base model, or with other adapter settings (r, target_modules)?")


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
