"""Several named adapters on one base model: the ``adapters:`` section.

    adapters:
      adapters: {task_a: {type: lora, r: 8}, task_b: {type: lora, r: 8, pretrained_adapter_weights: runs/b/model}}
      merge: {name: merged, sources: [task_a, task_b], weights: [0.5, 0.5], combination_type: ties, density: 0.7}
      active: merged

What happens, all through PEFT (``get_peft_model`` / ``add_adapter`` / ``load_adapter`` / ``set_adapter`` /
``add_weighted_adapter``):

- every named adapter is attached to the one base model: loaded from its ``pretrained_adapter_weights`` (a
  PEFT adapter directory, or the ``model/`` folder of an earlier multi-adapter run holding ``<name>/``), else
  fresh. ``fw train`` trains exactly one of them (``--adapter NAME``, else ``active``); PEFT's ``set_adapter``
  makes it the only trainable one, the others stay frozen.
- after training, ``merge`` builds a new adapter from its sources with the merge-strategy plugin that
  ``combination_type`` names (``add_weighted_adapter``). It is built, never trained.
- ``save_pretrained`` writes every adapter side by side (``model/<name>/adapter_config.json`` …);
  :func:`load_saved` attaches them all again and :func:`activate` switches (``fw predict --adapter NAME``).

The cross-field rules PEFT imposes (one adapter method per model, add_weighted_adapter's equal ranks and
target-module forms, initializers that rewrite the base weights, each adapter plugin's ``check_merge_source``) are
checked at validation time (:mod:`fw.config.rules`), so they never surface as a crash after training.
"""
from __future__ import annotations

from pathlib import Path

from fw import console
from fw.errors import FwError, did_you_mean
from fw.model.adapters import adapter_descriptor, adapter_load_error, peft_config_for
from fw.plugin import get_registry, load_schema
from fw.plugin.models import hub_error_message, hub_token, library_message, looks_like_path

#: PEFT's name for an adapter saved at the top of the directory instead of in a sub-directory
PEFT_DEFAULT_NAME = "default"


# -- reading the section ------------------------------------------------------------------------------------------
def section_of(data: dict) -> dict | None:
    return data.get("adapters") or None


def adapter_names(data: dict) -> list[str]:
    """The named (trainable) adapters, in config order; the merged adapter is not one of them."""
    return list((section_of(data) or {}).get("adapters") or {})


def merge_name(data: dict) -> str | None:
    return ((section_of(data) or {}).get("merge") or {}).get("name")


def all_names(data: dict) -> list[str]:
    return adapter_names(data) + ([merge_name(data)] if merge_name(data) else [])


def check_requested(data: dict, requested: str | None) -> None:
    """``--adapter NAME`` must name an adapter of the config."""
    if requested is None:
        return
    if not section_of(data):
        raise FwError(f"--adapter {requested}: the config has no `adapters:` section (several named adapters); "
                      "drop --adapter, or describe the adapters under adapters.adapters.")
    if requested not in all_names(data):
        raise FwError(f"--adapter: '{requested}' names no adapter. Adapters: {', '.join(all_names(data))}."
                      + did_you_mean(requested, all_names(data)))


def inference_adapter(data: dict, requested: str | None = None) -> str:
    """The adapter predict / evaluate use: ``--adapter``, else ``active``, else the merged one, else the first."""
    check_requested(data, requested)
    return requested or section_of(data).get("active") or merge_name(data) or adapter_names(data)[0]


def training_adapter(data: dict, requested: str | None = None) -> str:
    """The adapter ``fw train`` trains: ``--adapter``, else ``active``; a merged adapter is built, not trained."""
    check_requested(data, requested)
    name = requested or section_of(data).get("active") or adapter_names(data)[0]
    if name == merge_name(data):
        where = "--adapter" if requested else "adapters.active"
        raise FwError(f"{where}: '{name}' is the merge of {', '.join(section_of(data)['merge']['sources'])}; it is "
                      f"built from them after training, not trained itself. Train a source with --adapter NAME "
                      f"(one of {', '.join(adapter_names(data))}); the merge is rebuilt at the end of every run.")
    return name


def trained_name(data: dict, requested: str | None = None) -> str | None:
    """The adapter ``fw train`` trains, or None without an ``adapters:`` section (checked before any work)."""
    if not section_of(data):
        check_requested(data, requested)
        return None
    return training_adapter(data, requested)


def training_view(data: dict, trained: str) -> dict:
    """The config as the trainer reads it: the trained adapter as ``adapter`` (its loraplus_lr_ratio …)."""
    return {**data, "adapter": section_of(data)["adapters"][trained], "adapters": None}


def path_of(name: str, key: str | None = None) -> str:
    return f"adapters.adapters.{name}" + (f".{key}" if key else "")


# -- attaching the adapters ---------------------------------------------------------------------------------------
def attach_adapters(model, data: dict, trained: str | None = None):
    """A PeftModel carrying every named adapter; ``trained`` (or none) is trainable, the rest frozen."""
    sections = section_of(data)["adapters"]
    configs = {name: peft_config_for(model, section, path_of(name)) for name, section in sections.items()
               if not section.get("pretrained_adapter_weights")}
    peft_model = None
    for name, section in sections.items():
        adapter_descriptor(section["type"])  # an unknown type fails here, with its did-you-mean
        trainable = name == trained
        if name in configs:
            configs[name].inference_mode = not trainable
            peft_model = add_fresh(model, peft_model, name, configs[name])
        else:
            location = adapter_location(section["pretrained_adapter_weights"], name, path_of(name))
            peft_model = add_saved(model, peft_model, name, location, trainable)
    activate(peft_model, trained or next(iter(sections)), trainable=trained is not None)
    return peft_model


def add_fresh(model, peft_model, name: str, config):
    import peft

    try:
        if peft_model is None:
            return peft.get_peft_model(model, config, adapter_name=name)
        peft_model.add_adapter(name, config)
        return peft_model
    except (TypeError, ValueError) as exc:
        raise FwError(f"{path_of(name)}: PEFT could not add adapter '{name}': {library_message(exc)}") from exc


def add_saved(model, peft_model, name: str, location: str, trainable: bool):
    from peft import PeftModel

    try:
        if peft_model is None:
            return PeftModel.from_pretrained(model, location, adapter_name=name, is_trainable=trainable,
                                             token=hub_token())
        peft_model.load_adapter(location, adapter_name=name, is_trainable=trainable, token=hub_token())
        return peft_model
    except FwError:
        raise
    except Exception as exc:
        raise FwError(hub_error_message(location, exc, key=path_of(name, "pretrained_adapter_weights"))) from None


def adapter_location(source: str, name: str, config_path: str) -> str:
    """A PEFT adapter directory for ``source``: itself, or its ``<name>/`` sub-directory (the ``model/`` folder
    of an earlier multi-adapter run); a hub id is passed on unchanged."""
    if not looks_like_path(source):
        return source
    path = Path(source).expanduser()
    for candidate in (path / name, path / "model" / name, path):
        if (candidate / "adapter_config.json").is_file():
            return str(candidate.resolve())
    raise FwError(f"{config_path}.pretrained_adapter_weights: '{source}' holds no adapter named '{name}' (no "
                  f"adapter_config.json in it, nor in {name}/). Give a PEFT adapter directory or the model/ "
                  "folder of an earlier fw run that trained it.")


def activate(peft_model, name: str, trainable: bool = False) -> None:
    """Make ``name`` the adapter the model runs (and trains, when ``trainable``); the others are frozen."""
    if name not in peft_model.peft_config:
        raise FwError(f"--adapter: '{name}' is not among the loaded adapters "
                      f"({', '.join(peft_model.peft_config)}).")
    peft_model.set_adapter(name, inference_mode=not trainable)


# -- merging ------------------------------------------------------------------------------------------------------
def build_merge(peft_model, data: dict) -> str | None:
    """Run ``adapters.merge`` (PEFT add_weighted_adapter via the merge-strategy plugin); returns its name."""
    merge = (section_of(data) or {}).get("merge")
    if not merge:
        return None
    strategy = get_registry().get("merge_strategy", merge["combination_type"])
    if merge["name"] in peft_model.peft_config:
        peft_model.delete_adapter(merge["name"])  # rebuilt from the sources' current weights
    active = peft_model.active_adapter
    try:
        peft_model.add_weighted_adapter(merge["sources"], merge["weights"], merge["name"],
                                        **merge_kwargs(strategy, merge))
    except (TypeError, ValueError) as exc:
        raise FwError(f"adapters.merge: PEFT could not merge {', '.join(merge['sources'])} with "
                      f"combination_type {strategy.name!r}: {library_message(exc)}") from exc
    if active in peft_model.peft_config:
        peft_model.set_adapter(active, inference_mode=True)
    return merge["name"]


def merge_kwargs(strategy, merge: dict) -> dict:
    """add_weighted_adapter's keyword arguments: the strategy's combination type, and every key of the section
    that its schema maps to a PEFT argument (``x-peft``) and that is set."""
    kwargs = {"combination_type": strategy.peft_combination_type}
    for key, prop in load_schema(strategy.schema).get("properties", {}).items():
        if prop.get("x-peft") and merge.get(key) is not None:
            kwargs[prop["x-peft"]] = merge[key]
    return kwargs


# -- the pipeline's entry points ----------------------------------------------------------------------------------
def prepare_for_training(model, data: dict, requested: str | None = None):
    """(PeftModel with every adapter, the name of the one to train)."""
    trained = training_adapter(data, requested)
    peft_model = attach_adapters(model, data, trained)
    others = [name for name in adapter_names(data) if name != trained]
    console.info(f"training adapter '{trained}'" + (f"; frozen: {', '.join(others)}" if others else ""))
    return peft_model, trained


def finish_training(peft_model, data: dict) -> None:
    """After training: build the merge (if any), then make the inference adapter (``active``) the one the model
    runs, all frozen, as ``fw predict`` will load it."""
    build_merge(peft_model, data)
    activate(peft_model, inference_adapter(data))
    peft_model.eval()


def for_inference(model, data: dict, requested: str | None = None):
    """The base model with every adapter from its ``pretrained_adapter_weights`` (fresh ones stay identity),
    the merge built, and ``requested`` (or the configured one) active: ``fw predict --config``."""
    check_requested(data, requested)
    peft_model = attach_adapters(model, data, trained=None)
    build_merge(peft_model, data)
    activate(peft_model, inference_adapter(data, requested))
    return peft_model.eval()


# -- a saved multi-adapter model ----------------------------------------------------------------------------------
def saved_adapter_dirs(model_dir: Path) -> dict[str, Path]:
    """name -> directory of every adapter ``save_pretrained`` wrote: ``<name>/``, and ``default`` at the top."""
    model_dir = Path(model_dir)
    found = {path.name: path for path in sorted(model_dir.iterdir()) if is_adapter_dir(path)}
    if (model_dir / "adapter_config.json").is_file():
        found = {PEFT_DEFAULT_NAME: model_dir, **found}
    return found


def is_adapter_dir(path: Path) -> bool:
    """A saved adapter's directory; hidden ones (``.model.tmp-…``: a write a killed process left) never are."""
    return not path.name.startswith(".") and path.is_dir() and (path / "adapter_config.json").is_file()


def is_multi_adapter_dir(model_dir: Path) -> bool:
    path = Path(model_dir)
    return path.is_dir() and not (path / "config.json").is_file() and any(map(is_adapter_dir, path.iterdir()))


def load_saved(base_model, model_dir: Path, data: dict, requested: str | None = None):
    """Every adapter saved in ``model_dir`` on ``base_model``, frozen; ``requested`` (or the configured) active."""
    from peft import PeftModel

    directories = saved_adapter_dirs(model_dir)
    if not directories:
        raise FwError(f"--model_path: {model_dir} holds no saved adapter (no */adapter_config.json).")
    if requested is not None and requested not in directories:
        raise FwError(f"--adapter: '{requested}' is not saved in {model_dir}. Saved adapters: "
                      f"{', '.join(directories)}.")
    (first, first_dir), *rest = directories.items()
    try:
        model = PeftModel.from_pretrained(base_model, str(first_dir), adapter_name=first, is_trainable=False)
        for name, directory in rest:
            model.load_adapter(str(directory), adapter_name=name, is_trainable=False)
    except (RuntimeError, ValueError) as exc:
        raise adapter_load_error(exc, base_model, str(model_dir), "--model_path") from None
    configured = inference_adapter(data) if section_of(data) else first
    activate(model, requested or (configured if configured in directories else first))
    return model.eval()
