"""GGUF base models: a ``.gguf`` file (llama.cpp's format) loaded through transformers' GGUF support.

``base_model: path/to/model.gguf`` (or ``owner/repo/model.gguf`` on the Hugging Face Hub) names one file;
transformers reads it with the ``gguf`` package (``pip install 'fw[gguf]'``), dequantizes every tensor to the
chosen dtype and builds a normal model and tokenizer (chat template included). Training then works as on any
model: the weights are ordinary float tensors.

Dequantizing takes a while (about 40 s for a 135M model on a CPU), so :func:`convert` writes a model directory
(safetensors + tokenizer) once; ``make smollm2`` does that for the demo's model (:mod:`fw.model.smollm2`).

transformers 5 keeps a GGUF "quantizer" on the dequantized model, and ``save_pretrained`` then refuses ("quantized
with gguf and is not serializable"): :func:`forget_gguf_origin` removes it, since nothing is quantized any more.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from fw.atomic import atomic_directory
from fw.errors import FwError, shown

SUFFIX = ".gguf"


def is_gguf(name: str) -> bool:
    return str(name).lower().endswith(SUFFIX)


def _probe(check) -> bool:
    """``path.is_file`` / ``path.exists`` answered False for a name the file system refuses (e.g. too long)."""
    try:
        return check()
    except OSError:
        return False


def split_location(name: str) -> tuple[str, str]:
    """(directory or hub repository, file name) of a ``.gguf`` base model; a local file is checked."""
    path = Path(name).expanduser()
    if _probe(path.is_file):
        return str(path.resolve().parent), path.name
    local = name.startswith((".", "/", "~")) or name.count("/") < 2
    if local or _probe(path.exists):
        raise FwError(f"base_model: GGUF file {shown(name, 200)} does not exist. Give the path of a .gguf file, or "
                      "owner/repository/file.gguf for a file on the Hugging Face Hub.")
    parts = name.split("/")
    return "/".join(parts[:2]), "/".join(parts[2:])


def require_gguf_package(name: str) -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise FwError(f"base_model: {shown(name, 200)} is a GGUF file; reading it needs the gguf package: "
                      "pip install 'fw[gguf]' (or pip install gguf).") from None


@contextlib.contextmanager
def quiet_dequantizing():
    """transformers draws a tqdm bar straight to stderr while it dequantizes ("Converting and de-quantizing GGUF
    tensors"): fw prints its own one-line note instead."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def load_tokenizer(location: str, filename: str, token: str | None = None):
    from transformers import AutoTokenizer

    with quiet_dequantizing():
        return AutoTokenizer.from_pretrained(location, gguf_file=filename, token=token)


def load_model(location: str, filename: str, kwargs: dict):
    """``AutoModelForCausalLM.from_pretrained(location, gguf_file=filename, **kwargs)``, dequantized, with the
    GGUF quantizer removed again so the model saves like any other."""
    from transformers import AutoModelForCausalLM

    with quiet_dequantizing():
        model = AutoModelForCausalLM.from_pretrained(location, gguf_file=filename, **kwargs)
    forget_gguf_origin(model)
    if (Path(location) / filename).is_file():  # what an adapter saved on top records as its base model
        model.name_or_path = str(Path(location) / filename)
    return model


def quantization_type(location: str, filename: str) -> str | None:
    """The GGUF file's quantization type (``Q4_1``, ``F16`` …) when it is local; None otherwise."""
    path = Path(location) / filename
    if not path.is_file():
        return None
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        kinds = {tensor.tensor_type.name for tensor in reader.tensors if len(tensor.shape) > 1}
    except Exception:  # a description only: never fail a load over it
        return None
    return "/".join(sorted(kinds)) or None


def forget_gguf_origin(model) -> None:
    """Drop transformers' GGUF quantizer and ``quantization_config`` from a dequantized model (see module doc)."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "is_quantized", False):
        model.is_quantized = False


def convert(gguf_file: str | os.PathLike[str], output: str | os.PathLike[str], dtype: str = "float32") -> Path:
    """Write ``gguf_file`` as a model directory (safetensors, tokenizer with its chat template, generation config)
    under ``output``; written to a temporary directory first, so ``output`` is never half written."""
    import torch

    source = Path(gguf_file).expanduser().resolve()
    require_gguf_package(str(source))
    tokenizer = load_tokenizer(str(source.parent), source.name)
    model = load_model(str(source.parent), source.name, {"dtype": getattr(torch, dtype)})
    tokenizer.model_max_length = model.config.max_position_embeddings  # GGUF tokenizers report no limit
    with atomic_directory(Path(output)) as directory:
        model.save_pretrained(str(directory), safe_serialization=True)
        tokenizer.save_pretrained(str(directory))
    return Path(output)
