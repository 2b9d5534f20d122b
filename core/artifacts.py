"""What a run leaves on disk, and loading it back.

``results/<experiment>_<run>/`` (a numbered suffix ``_1``, ``_2`` … when the name is taken, as Ludwig does)::

    model/                      save_pretrained layout: adapter_model.safetensors + adapter_config.json (or the
                                full / merged weights), the tokenizer, generation_config.json, fw_config.yaml,
                                README.md (the model card, fw.publish.card)
    config.yaml                 the resolved config (every default filled in)
    manifest.json               fw / torch / transformers / peft versions, data hash and rows per split, seed, time
    training_statistics.json    per-step loss and lr, per-epoch train / validation loss and perplexity
    checkpoints/                resumable checkpoints (see fw.train.checkpoint)
    tensorboard/                TensorBoard event files
    predictions.parquet|.csv    from fw predict / fw evaluate
    test_statistics.json        from fw evaluate

Every file here is written atomically (:mod:`fw.atomic`), ``model/`` into a temporary directory renamed into
place, so a crash never leaves one half written. ``model/`` loads with transformers / peft alone; ``fw_config.yaml``
lets ``fw predict --model_path`` reuse the prompt, tokenizer settings and generation section.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path

import yaml

from fw.atomic import atomic_directory, write_json_atomic, write_text_atomic
from fw.config import view
from fw.errors import FwError

MODEL_DIR = "model"
CONFIG_FILE = "config.yaml"
MODEL_CONFIG_FILE = "fw_config.yaml"
MANIFEST = "manifest.json"
TRAINING_STATISTICS = "training_statistics.json"
TEST_STATISTICS = "test_statistics.json"


# -- run directories ---------------------------------------------------------------------------------------------
def run_name(experiment_name: str, model_name: str) -> str:
    return f"{experiment_name}_{model_name}"


def new_run_directory(output_directory: str | Path, experiment_name: str, model_name: str = "run") -> Path:
    """``<output>/<experiment>_<run>``, or the first free ``…_1``, ``…_2``."""
    base = Path(output_directory) / run_name(experiment_name, model_name)
    candidate, number = base, 0
    while candidate.exists():
        number += 1
        candidate = base.with_name(f"{base.name}_{number}")
    candidate.mkdir(parents=True)
    return candidate


def existing_run_directories(output_directory: str | Path, experiment_name: str, model_name: str = "run") -> list[Path]:
    base = run_name(experiment_name, model_name)
    root = Path(output_directory)
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir() if path.is_dir()
             and (path.name == base or (path.name.startswith(base + "_") and path.name[len(base) + 1:].isdigit()))]
    return sorted(found, key=lambda path: int(path.name[len(base) + 1:] or 0) if path.name != base else 0)


def run_directory_to_resume(output_directory, experiment_name: str, model_name: str = "run") -> Path:
    """The newest run directory of this experiment that has a checkpoint."""
    from fw.train.checkpoint import latest_checkpoint

    for candidate in reversed(existing_run_directories(output_directory, experiment_name, model_name)):
        if latest_checkpoint(candidate / "checkpoints") is not None:
            return candidate
    raise FwError(f"--resume: no run of experiment '{experiment_name}' with a checkpoint under "
                  f"{output_directory}/ (looked for {run_name(experiment_name, model_name)}*/checkpoints). "
                  "Run without --resume to start training.")


# -- small files -------------------------------------------------------------------------------------------------
def write_json(path: Path, data) -> None:
    write_json_atomic(Path(path), json_safe(data))


def json_safe(value):
    """Replace NaN / inf (not valid JSON) with null, recursively."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def config_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def write_config(run_dir: Path, data: dict) -> None:
    write_text_atomic(Path(run_dir) / CONFIG_FILE, config_yaml(data))


def versions() -> dict:
    import importlib.metadata

    found = {}
    for package in ("fw", "torch", "transformers", "peft", "tokenizers", "safetensors"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def data_hash(*frames) -> str:
    """sha256 over the rows of the given DataFrames (order-sensitive)."""
    import pandas

    digest = hashlib.sha256()
    for frame in frames:
        if frame is not None and len(frame):
            digest.update(pandas.util.hash_pandas_object(frame, index=False).values.tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def write_manifest(run_dir: Path, data: dict, dataset_hash: str, extra: dict | None = None) -> None:
    import platform

    manifest = {"versions": versions(), "python": platform.python_version(), "data_hash": dataset_hash,
                "seed": view.seed(data), "base_model": view.base_model(data),
                "adapter": (view.adapter(data) or {}).get("type"),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                **(extra or {})}
    write_json(Path(run_dir) / MANIFEST, manifest)


def read_manifest(run_dir: Path) -> dict:
    path = Path(run_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


# -- the model ---------------------------------------------------------------------------------------------------
def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def save_model(model, tokenizer, data: dict, model_dir: Path) -> Path:
    """Write ``model_dir`` atomically in save_pretrained layout (+ tokenizer with fw's prompt as its chat template,
    generation config, fw config, model card)."""
    from fw.infer.generation import generation_config

    with atomic_directory(Path(model_dir)) as directory:
        from fw.model.initialization import save_kwargs

        model.save_pretrained(str(directory), safe_serialization=True, **save_kwargs(model))
        from fw.publish.chat_template import use_prompt_as_chat_template

        use_prompt_as_chat_template(tokenizer, data)  # served as trained: chat clients send fw's prompt
        tokenizer.save_pretrained(str(directory))
        generation_config(data, tokenizer).save_pretrained(str(directory))
        (directory / MODEL_CONFIG_FILE).write_text(config_yaml(data), encoding="utf-8")
        from fw.publish.card import write_model_card

        write_model_card(directory, data, location=Path(model_dir))
    return Path(model_dir)


def merge_adapter(model, section: dict):
    """The base model with the adapter merged in (``postprocessor.merge_adapter_into_base_model``)."""
    check_mergeable(section)
    progressbar = bool((section.get("postprocessor") or {}).get("progressbar"))
    return model.merge_and_unload(progressbar=progressbar)


def check_mergeable(section: dict | None) -> None:
    """Refuse early (before training) when the adapter asks for a merge PEFT cannot do."""
    if not section or not (section.get("postprocessor") or {}).get("merge_adapter_into_base_model"):
        return
    from fw.plugin.registry import get_registry

    descriptor = get_registry().get("adapter", section["type"])
    if not descriptor.mergeable:
        raise FwError(f"adapter.postprocessor.merge_adapter_into_base_model: PEFT cannot merge '{section['type']}' "
                      "adapters into the base model. Set it to false: the adapter is saved on its own and "
                      "loads on top of the base model.")


# -- loading a saved model ---------------------------------------------------------------------------------------
def find_model_dir(model_path: str | Path) -> Path:
    """``model_path`` as given (the ``model/`` folder) or a run directory holding ``model/``."""
    path = Path(model_path).expanduser()
    if not path.exists():
        raise FwError(f"--model_path: '{model_path}' does not exist (expected results/<experiment>_<run>/model).")
    from fw.model.multi_adapter import is_multi_adapter_dir

    if (path / MODEL_DIR / "config.json").is_file() or (path / MODEL_DIR / "adapter_config.json").is_file() \
            or is_multi_adapter_dir(path / MODEL_DIR):
        return path / MODEL_DIR
    if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()
            or is_multi_adapter_dir(path)):
        raise FwError(f"--model_path: '{model_path}' holds no saved model (no config.json or adapter_config.json). "
                      "Give the model/ folder written by fw train.")
    return path


def saved_config(model_dir: Path) -> dict:
    """The fw config saved with a model (``model/fw_config.yaml``, else the run's ``config.yaml``)."""
    for candidate in (model_dir / MODEL_CONFIG_FILE, model_dir.parent / CONFIG_FILE):
        if candidate.is_file():
            from fw.config.load import load_config

            return load_config(candidate).data
    raise FwError(f"--model_path: no fw config next to {model_dir} ({MODEL_CONFIG_FILE} or ../{CONFIG_FILE}); "
                  "give --config as well.")


def load_trained(model_path: str | Path, config: dict | None = None, adapter: str | None = None,
                 prepare_base=None):
    """(config, model, tokenizer) of a model saved by ``fw train`` (adapter on its base, or full weights).
    Several named adapters (``adapters:``) are all loaded, ``adapter`` (or the configured one) active.
    ``prepare_base(model)`` runs on the loaded weights before any adapter goes on (fw export dequantizes there)."""
    from fw.model import multi_adapter
    from fw.model.loading import load_base_model, load_pretrained_adapter

    model_dir = find_model_dir(model_path)
    data = config or saved_config(model_dir)
    multi_adapter.check_requested(data, adapter)
    prepare = prepare_base or (lambda loaded: loaded)
    saved_tokenizer = str(model_dir)
    if view.named_adapters(data) or multi_adapter.is_multi_adapter_dir(model_dir):
        base, tokenizer = load_base_model({**data, "base_model": multi_adapter.saved_base_model(model_dir, data)},
                                          for_training=False, tokenizer_from=saved_tokenizer)
        model = multi_adapter.load_saved(prepare(base), model_dir, data, adapter)
    elif (model_dir / "adapter_config.json").is_file():
        base, tokenizer = load_base_model({**data, "base_model": adapter_base(model_dir, data)}, for_training=False,
                                          tokenizer_from=saved_tokenizer)
        model = load_pretrained_adapter(prepare(base), str(model_dir), trainable=False)
    else:
        # full or merged weights saved quantized (torchao QAT / merge, bitsandbytes) carry their own
        # quantization_config in config.json: from_pretrained restores them, quantizing again would be wrong
        model, tokenizer = load_base_model({**data, "base_model": str(model_dir.resolve()), "quantization": None},
                                           for_training=False, tokenizer_from=saved_tokenizer)
        model = prepare(model)
    model.eval()
    return data, model, tokenizer


def adapter_base(model_dir: Path, data: dict) -> str:
    declared = json.loads((model_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if declared and (Path(declared).is_dir() or not os.path.isabs(declared)):
        return declared
    return view.base_model(data)
