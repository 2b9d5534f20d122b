"""What a run leaves on disk, and loading it back.

``results/<experiment>_<run>/`` (a numbered suffix ``_1``, ``_2`` … when the name is taken, as Ludwig does; naming,
locking, resuming and where predict / evaluate write: :mod:`fw.runs`)::

    model/                      save_pretrained layout: adapter_model.safetensors + adapter_config.json (or the
                                full / merged weights), the tokenizer, generation_config.json, fw_config.yaml,
                                README.md (the model card); written by fw.publish.save
    config.yaml                 the resolved config (every default filled in)
    manifest.json               fw / torch / transformers / peft versions, data hash and rows per split, seed, time
    training_statistics.json    per-step loss and lr, per-epoch train / validation loss and perplexity
    checkpoints/                resumable checkpoints (see fw.train.checkpoint)
    tensorboard/                TensorBoard event files
    .lock                       held by the process training in the run (fw.runs)
    predictions/                from fw predict: predictions.parquet, predictions.csv (predictions_1/ … next time)
    evaluation/                 from fw evaluate: the same and test_statistics.json (evaluation_1/ … next time)

Every file here is written atomically (:mod:`fw.atomic`), ``model/`` into a temporary directory renamed into
place (:func:`fw.publish.save.save_model`), so a crash never leaves one half written. ``model/`` loads with
transformers / peft alone; ``fw_config.yaml`` lets ``fw predict --model_path`` reuse the prompt, tokenizer
settings and generation section.

The CLI imports this module to build its parser, so fw.model and the config loader are imported only when a model
or a config is read.
"""
from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

import yaml

from fw import console
from fw.atomic import write_json_atomic, write_text_atomic
from fw.config import view
from fw.errors import FwError
from fw.plugin.models import looks_like_path
from fw.plugin.registry import get_registry

MODEL_DIR = "model"
CONFIG_FILE = "config.yaml"
MODEL_CONFIG_FILE = "fw_config.yaml"
MANIFEST = "manifest.json"
TRAINING_STATISTICS = "training_statistics.json"
TEST_STATISTICS = "test_statistics.json"


# -- small files -------------------------------------------------------------------------------------------------
def write_json(path: Path, data, replace: bool = True) -> None:
    write_json_atomic(Path(path), json_safe(data), replace=replace)


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
    """The run's manifest; a resumed run keeps its ``created`` time and adds the time to ``resumed``."""
    import platform

    previous = read_manifest(run_dir)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest = {"versions": versions(), "python": platform.python_version(), "data_hash": dataset_hash,
                "seed": view.seed(data), "base_model": view.base_model(data),
                "adapter": (view.adapter(data) or {}).get("type"), "created": previous.get("created", now),
                **({"resumed": [*previous.get("resumed", []), now]} if previous else {}), **(extra or {})}
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


def merge_adapter(model, section: dict):
    """The base model with the adapter merged in (``postprocessor.merge_adapter_into_base_model``)."""
    check_mergeable(section)
    progressbar = bool((section.get("postprocessor") or {}).get("progressbar"))
    return model.merge_and_unload(progressbar=progressbar)


def check_mergeable(section: dict | None) -> None:
    """Refuse early (before training) when the adapter asks for a merge PEFT cannot do."""
    if not section or not (section.get("postprocessor") or {}).get("merge_adapter_into_base_model"):
        return
    descriptor = get_registry().get("adapter", section["type"])
    if not descriptor.mergeable:
        raise FwError(f"adapter.postprocessor.merge_adapter_into_base_model: PEFT cannot merge '{section['type']}' "
                      "adapters into the base model. Set it to false: the adapter is saved on its own and "
                      "loads on top of the base model.")


# -- loading a saved model ---------------------------------------------------------------------------------------
def find_model_dir(model_path: str | Path) -> Path:
    """``model_path`` as given (the ``model/`` folder) or a run directory holding ``model/``."""
    path = Path(model_path).expanduser()
    unsaved = unsaved_run(path)
    if unsaved is not None:
        raise FwError(f"--model_path: {unsaved} holds no {MODEL_DIR}/: its training stopped before the model was "
                      "saved. Finish it with the fw train command that started it plus --resume (it continues from "
                      "the last checkpoint and saves model/).")
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


def unsaved_run(path: Path) -> Path | None:
    """The run directory ``path`` names (itself, or as ``<run>/model``) when it has checkpoints but no model/."""
    run_dir = path.parent if path.name == MODEL_DIR else path
    if (run_dir / "checkpoints").is_dir() and not (run_dir / MODEL_DIR).exists():
        return run_dir
    return None


def saved_config(model_dir: Path) -> dict:
    """The fw config saved with a model (``model/fw_config.yaml``, else the run's ``config.yaml``)."""
    for candidate in (model_dir / MODEL_CONFIG_FILE, model_dir.parent / CONFIG_FILE):
        if candidate.is_file():
            from fw.config.load import load_config

            return load_config(candidate).data
    raise FwError(f"--model_path: no fw config next to {model_dir} ({MODEL_CONFIG_FILE} or ../{CONFIG_FILE}); "
                  "give --config as well.")


def load_trained(model_path: str | Path, config: dict | None = None, adapter: str | None = None,
                 prepare_base=None, base_model: str | None = None):
    """(config, model, tokenizer) of a model saved by ``fw train`` (adapter on its base, or full weights).
    Several named adapters (``adapters:``) are all loaded, ``adapter`` (or the configured one) active.
    An adapter goes on the base model it was trained on; ``base_model`` (``--base_model``) puts it on another one
    (:func:`base_model_for`). ``prepare_base(model)`` runs on the loaded weights before any adapter goes on
    (fw export dequantizes there)."""
    from fw.model import multi_adapter
    from fw.model.loading import load_base_model, load_pretrained_adapter

    model_dir = find_model_dir(model_path)
    data = config or saved_config(model_dir)
    multi_adapter.check_requested(data, adapter)
    prepare = prepare_base or (lambda loaded: loaded)
    if not multi_adapter.saved_adapter_dirs(model_dir):
        model, tokenizer = load_full_weights(model_dir, data, base_model, config)
        return data, prepare(model).eval(), tokenizer
    base, tokenizer = load_base_model({**data, "base_model": base_model_for(model_dir, config, base_model)},
                                      for_training=False, tokenizer_from=str(model_dir))
    if view.named_adapters(data) or multi_adapter.is_multi_adapter_dir(model_dir):
        model = multi_adapter.load_saved(prepare(base), model_dir, data, adapter)
    else:
        model = load_pretrained_adapter(prepare(base), str(model_dir), trainable=False, key="--model_path")
    model.eval()
    return data, model, tokenizer


def load_full_weights(model_dir: Path, data: dict, base_model: str | None, config: dict | None):
    """(model, tokenizer) of the full or merged weights in ``model_dir`` (a ``config`` naming another base model
    is told that it is not used)."""
    from fw.model.loading import load_base_model

    if base_model is not None:
        raise FwError(f"--base_model: {model_dir} holds a full model (its own weights, no adapter), so there is no "
                      "base model to choose; drop --base_model.")
    recorded = recorded_base_model(model_dir) if config is not None else None
    if recorded and not same_model(view.base_model(config), recorded):
        console.info(f"--config: base_model '{view.base_model(config)}' is not used: {model_dir} holds a full model "
                     "(its own weights).")
    # full or merged weights saved quantized (torchao QAT / merge, bitsandbytes) carry their own
    # quantization_config in config.json: from_pretrained restores them, quantizing again would be wrong
    return load_base_model({**data, "base_model": str(model_dir.resolve()), "quantization": None},
                           for_training=False, tokenizer_from=str(model_dir))


def base_model_for(model_dir: Path, config: dict | None, base_model: str | None) -> str:
    """The base model the adapter(s) in ``model_dir`` go on: the one they were trained on, or ``base_model`` when
    given (said). A ``config`` naming another base is refused: a different base is used only when asked for."""
    recorded = recorded_base_model(model_dir)
    if base_model is not None:
        console.info(f"--base_model: the adapter of {model_dir} goes on '{base_model}' "
                     f"(it was trained on '{recorded or 'an unrecorded base'}')")
        return base_model
    configured = view.base_model(config) if config is not None else None
    if recorded is None:
        return configured or view.base_model(saved_config(model_dir))
    if configured is not None and not same_model(configured, recorded):
        raise FwError(f"--config: base_model '{configured}' is not the base model the adapter in {model_dir} was "
                      f"trained on ('{recorded}'). To put the adapter on another base model, ask for it with "
                      f"--base_model {configured}; else set base_model to '{recorded}'.")
    if looks_like_path(recorded) and not Path(recorded).expanduser().exists():
        raise FwError(f"--model_path: the adapter in {model_dir} was trained on base model '{recorded}', which is "
                      "not there any more. Give where that model is now with --base_model PATH (or its Hub id).")
    return recorded


def recorded_base_model(model_dir: Path) -> str | None:
    """The base model a saved adapter was trained on: PEFT's ``base_model_name_or_path``, else the saved fw
    config's ``base_model``."""
    from fw.model.multi_adapter import saved_adapter_dirs

    for directory in saved_adapter_dirs(model_dir).values():
        try:
            declared = json.loads((directory / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except (OSError, ValueError):
            continue
        if declared:
            return declared
    try:
        return view.base_model(saved_config(model_dir))
    except FwError:
        return None


def same_model(first: str, second: str) -> bool:
    """Whether two ``base_model`` values name the same model (paths compared resolved)."""
    if looks_like_path(first) and looks_like_path(second):
        return Path(first).expanduser().resolve() == Path(second).expanduser().resolve()
    return first == second
