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
target-module forms, initializers that rewrite the base weights) are checked at validation time by
:func:`config_issues` (called from :mod:`fw.config.rules`), so they never surface as a crash after training.
This module's top level imports no torch / peft: validation imports it.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fw.errors import ConfigIssue, ConfigWarning, FwError

#: adapter names become module-dict keys and directory names: no dots, slashes or spaces
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
#: PEFT's name for an adapter saved at the top of the directory instead of in a sub-directory
PEFT_DEFAULT_NAME = "default"
#: PEFT tuners' parameter-name prefix where it is not ``<type>_`` (peft.tuners.*.model ``prefix``)
TUNER_PREFIXES = {"adalora": "lora_", "loha": "hada_", "vera": "vera_lambda_"}


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
        from fw.errors import did_you_mean

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


# -- validation (called from fw.config.rules) ----------------------------------------------------------------------------
def peft_rank(section: dict) -> Any:
    """The rank PEFT's add_weighted_adapter compares: ``r``, or the largest ``rank_pattern`` value."""
    pattern = section.get("rank_pattern") or {}
    return max([section.get("r"), *pattern.values()]) if pattern else section.get("r")


def config_issues(config: dict, registry) -> Iterator[ConfigIssue]:
    """Everything PEFT would refuse after loading the model or after training, found before."""
    adapters = section_of(config)
    if adapters is None or config.get("adapter") is not None:
        return
    sections = adapters.get("adapters") or {}
    yield from _names_usable(sections)
    yield from _one_method(sections)
    yield from _initializers_fit(sections, registry)
    merge = adapters.get("merge")
    if merge:
        yield from _merge_sources_fit(sections, merge, registry)


def _names_usable(sections: dict) -> Iterator[ConfigIssue]:
    for name, section in sections.items():
        prefix = TUNER_PREFIXES.get(section.get("type"), f"{section.get('type')}_")
        if not NAME_PATTERN.fullmatch(str(name)):
            yield ConfigIssue(path_of(name), f"adapter name {name!r} may use only letters, digits, _ and - (it "
                                             "becomes a PEFT module key and a directory name).")
        elif name in prefix:
            yield ConfigWarning(path_of(name), f"adapter name {name!r} is part of PEFT's parameter prefix "
                                               f"{prefix!r}; PEFT warns this may re-initialize its weights when "
                                               "loading.", "choose a longer name, e.g. task_a")


def _one_method(sections: dict) -> Iterator[ConfigIssue]:
    types = {name: section.get("type") for name, section in sections.items()}
    if len(set(types.values())) > 1:
        first_name, first_type = next(iter(types.items()))
        for name, kind in types.items():
            if kind != first_type:
                yield ConfigIssue(path_of(name, "type"),
                                  f"{name!r} is {kind!r} but {first_name!r} is {first_type!r}: PEFT keeps one adapter "
                                  "method per model, so every named adapter must have the same type.",
                                  "give them all the same type")


def _initializers_fit(sections: dict, registry) -> Iterator[ConfigIssue]:
    """Initializers that rewrite the base weights or wrap the model themselves (pissa, olora, eva, corda,
    loftq) cannot share one base model with other adapters."""
    for name, section in sections.items():
        value = section.get("init_lora_weights")
        init = "default" if value is True else value
        if not isinstance(init, str) or not registry.has("initializer", init):
            continue
        if registry.get("initializer", init).prepare:
            yield ConfigIssue(path_of(name, "init_lora_weights"),
                              f"{init!r} is not available for named adapters: it rewrites the shared base weights "
                              "or needs its own pass before wrapping, which would change every other adapter.",
                              "use it with a single `adapter:` section, or init_lora_weights: true / gaussian")


def _merge_sources_fit(sections: dict, merge: dict, registry) -> Iterator[ConfigIssue]:
    """add_weighted_adapter's own constraints beyond equal ranks (checked in fw.config.rules)."""
    sources = {name: sections[name] for name in merge.get("sources") or [] if name in sections}
    for name, section in sources.items():
        if section.get("type") == "adalora":
            yield ConfigIssue(path_of(name, "type"), f"PEFT's add_weighted_adapter cannot merge AdaLoRA adapters "
                                                     f"({name!r} is adalora).", "use type: lora for merged adapters")
        if section.get("use_dora"):
            yield ConfigIssue(path_of(name, "use_dora"),
                              f"PEFT's add_weighted_adapter does not merge DoRA magnitude vectors, so merging "
                              f"{name!r} (use_dora: true) would silently lose them.",
                              "train the merge sources without use_dora")
        if section.get("use_rslora") and name == next(iter(sources)):
            yield ConfigIssue(path_of(name, "use_rslora"),
                              f"PEFT's add_weighted_adapter copies the first source's config ({name!r}, use_rslora: "
                              "true) with alpha = r, so the merged adapter would be scaled by sqrt(r) instead of 1.",
                              "train the first merge source without use_rslora, or list another source first")
    forms = {name: "a regex" if isinstance(section.get("target_modules"), str) else "a list"
             for name, section in sources.items()}
    if len(set(forms.values())) > 1:
        listed = ", ".join(f"{name} ({form})" for name, form in forms.items())
        yield ConfigIssue("adapters.merge.sources",
                          f"PEFT's add_weighted_adapter needs every source's target_modules in the same form, "
                          f"got {listed}.", "write target_modules as a list (or as a regex) in all of them")


# -- attaching the adapters ---------------------------------------------------------------------------------------
def attach_adapters(model, data: dict, trained: str | None = None):
    """A PeftModel carrying every named adapter; ``trained`` (or none) is trainable, the rest frozen."""
    from fw.model.adapters import adapter_descriptor

    sections = section_of(data)["adapters"]
    configs = {name: fresh_config(model, section, path_of(name)) for name, section in sections.items()
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


def fresh_config(model, section: dict, config_path: str):
    """The PEFT config of a fresh adapter, built as ``fw.model.adapters.wrap_model`` builds it, on the bare model."""
    from fw.model.adapters import (adapter_descriptor, build_config, fit_config_to_model, model_problems, raise_issues,
                                 resolve_target_modules, targeted_modules)

    descriptor = adapter_descriptor(section["type"])
    params = {**section, "target_modules": resolve_target_modules(model, section, descriptor)}
    raise_issues(config_path, model_problems(descriptor, params, model))
    config = build_config(descriptor, params)
    fit_config_to_model(config, model, targeted_modules(model, params["target_modules"]))
    return config


def add_fresh(model, peft_model, name: str, config):
    import peft

    try:
        if peft_model is None:
            return peft.get_peft_model(model, config, adapter_name=name)
        peft_model.add_adapter(name, config)
        return peft_model
    except (TypeError, ValueError) as exc:
        raise FwError(f"{path_of(name)}: PEFT could not add adapter '{name}': {exc}") from exc


def add_saved(model, peft_model, name: str, location: str, trainable: bool):
    from peft import PeftModel

    from fw.model.loading import hub_error_message, hub_token

    try:
        if peft_model is None:
            return PeftModel.from_pretrained(model, location, adapter_name=name, is_trainable=trainable,
                                             token=hub_token())
        peft_model.load_adapter(location, adapter_name=name, is_trainable=trainable, token=hub_token())
        return peft_model
    except FwError:
        raise
    except Exception as exc:
        key = path_of(name, "pretrained_adapter_weights")
        raise FwError(hub_error_message(location, exc).replace("base_model", key)) from None


def adapter_location(source: str, name: str, config_path: str) -> str:
    """A PEFT adapter directory for ``source``: itself, or its ``<name>/`` sub-directory (the ``model/`` folder
    of an earlier multi-adapter run); a hub id is passed on unchanged."""
    from fw.model.loading import looks_like_path

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
    from fw.plugin.registry import get_registry

    merge = (section_of(data) or {}).get("merge")
    if not merge:
        return None
    strategy = get_registry().get("merge_strategy", merge.get("combination_type") or "linear")
    if merge["name"] in peft_model.peft_config:
        peft_model.delete_adapter(merge["name"])  # rebuilt from the sources' current weights
    active = peft_model.active_adapter
    try:
        peft_model.add_weighted_adapter(merge["sources"], merge["weights"], merge["name"],
                                        **merge_kwargs(strategy, merge))
    except (TypeError, ValueError) as exc:
        raise FwError(f"adapters.merge: PEFT could not merge {', '.join(merge['sources'])} with "
                      f"combination_type {strategy.name!r}: {exc}") from exc
    if active in peft_model.peft_config:
        peft_model.set_adapter(active, inference_mode=True)
    return merge["name"]


def merge_kwargs(strategy, merge: dict) -> dict:
    """add_weighted_adapter's keyword arguments: the strategy's combination type and the keys it uses."""
    kwargs = {"combination_type": strategy.peft_combination_type}
    if strategy.uses_density:
        kwargs["density"] = merge["density"]
    for key in ("majority_sign_method", "svd_rank", "svd_clamp", "svd_full_matrices", "svd_driver"):
        if merge.get(key) is not None:
            kwargs[key] = merge[key]
    return kwargs


# -- the pipeline's entry points ----------------------------------------------------------------------------------
def prepare_for_training(model, data: dict, requested: str | None = None):
    """(PeftModel with every adapter, the name of the one to train)."""
    from fw import report

    trained = training_adapter(data, requested)
    peft_model = attach_adapters(model, data, trained)
    others = [name for name in adapter_names(data) if name != trained]
    report.info(f"training adapter '{trained}'" + (f"; frozen: {', '.join(others)}" if others else ""))
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
    found = {path.name: path for path in sorted(model_dir.iterdir())
             if path.is_dir() and (path / "adapter_config.json").is_file()}
    if (model_dir / "adapter_config.json").is_file():
        found = {PEFT_DEFAULT_NAME: model_dir, **found}
    return found


def is_multi_adapter_dir(model_dir: Path) -> bool:
    path = Path(model_dir)
    return path.is_dir() and not (path / "config.json").is_file() and any(
        child.is_dir() and (child / "adapter_config.json").is_file() for child in path.iterdir())


def saved_base_model(model_dir: Path, data: dict) -> str:
    import json
    import os

    for directory in saved_adapter_dirs(model_dir).values():
        declared = json.loads((directory / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if declared and (Path(declared).is_dir() or not os.path.isabs(declared)):
            return declared
    return data["base_model"]


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
    model = PeftModel.from_pretrained(base_model, str(first_dir), adapter_name=first, is_trainable=False)
    for name, directory in rest:
        model.load_adapter(str(directory), adapter_name=name, is_trainable=False)
    configured = inference_adapter(data) if section_of(data) else first
    activate(model, requested or (configured if configured in directories else first))
    return model.eval()
