"""``fw export``: a saved model as a standalone directory a server loads without fw.

    fw export --model_path results/exp_run/model --output served/ --merge --dtype bfloat16

What it writes, with transformers / peft doing the work:

- ``--merge`` (or a full / merged run): the base model with the adapter merged in (PEFT ``merge_and_unload``),
  in ``--dtype``, as safetensors shards of at most ``--max_shard_size`` (transformers ``save_pretrained``) with
  ``config.json``. Without ``--merge`` an adapter run exports its adapter (PEFT layout) for a server that applies
  adapters (vLLM ``LoRARequest``, PEFT).
- the tokenizer, with a chat template that renders fw's prompt (:mod:`fw.publish.chat_template`);
  ``generation_config.json`` as ``fw predict`` uses it (the EOS token the model was trained to end with);
  ``fw_config.yaml`` (so ``fw predict`` and ``fw upload`` take the export too); the ``retrieval/`` index when the
  prompt uses few-shot examples; the run's manifest and statistics; and the model card.
- several named adapters: the active one (``adapters.active``), or ``--adapter NAME``.

Quantization: an adapter trained on a base quantized at load time (QLoRA, torchao) is merged into the base's
original, unquantized weights, with a warning that its outputs then differ slightly from what fw ran. Weights
stored quantized (a pre-quantized base checkpoint, a merged or QAT run saved quantized) are dequantized by the
quantizer plugin of that method when it has a ``dequantize`` (torchao's tensors), else by transformers'
``dequantize`` (bitsandbytes); a method neither can dequantize is refused in one line.

The CLI imports this module for the options of ``fw export``: what the export needs beyond the run directory
(fw.model, the model card) is imported when it runs.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from fw import artifacts, console, runs
from fw.atomic import atomic_directory
from fw.errors import FwError, did_you_mean
from fw.plugin import get_registry, quiet_libraries, resolve

DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
DEFAULT_MAX_SHARD_SIZE = "5GB"


def export(model_path, output, merge: bool = False, dtype: str | None = None, adapter: str | None = None,
           max_shard_size: str = DEFAULT_MAX_SHARD_SIZE) -> Path:
    """Write the standalone model of ``model_path`` to ``output`` (a new or empty directory); returns it."""
    from fw.model import multi_adapter
    from fw.publish.card import describe

    quiet_libraries()
    model_dir = artifacts.find_model_dir(model_path)
    data = artifacts.saved_config(model_dir)
    multi_adapter.check_requested(data, adapter)
    check_dtype(dtype)
    check_shard_size(max_shard_size)
    output = check_output(output)
    saved = describe(model_dir, data)
    name = (adapter or saved.active) if saved.kind == "adapters" else None
    if name is not None and name not in saved.adapters:
        raise FwError(f"--adapter: '{name}' is not saved in {model_dir}. Saved adapters: {', '.join(saved.adapters)}.")
    if merge and saved.is_adapter:
        check_can_merge(exported_section(data, name))
    with atomic_directory(output) as directory:
        if saved.is_adapter and not merge:
            tokenizer = export_adapter(saved, name, directory, dtype)
            exported = single_adapter_config(data, name)
        else:
            tokenizer = export_weights(model_dir, data, name, directory, dtype, max_shard_size)
            exported = merged_config(data, name) if saved.is_adapter or saved.kind == "merged" else data
        finish(directory, model_dir, exported, tokenizer, output, name if merge else None)
    console.info(f"exported {'the merged model' if merge or not saved.is_adapter else 'the adapter'} to {output}")
    return output


def check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in DTYPES:
        raise FwError(f"--dtype: '{dtype}' is not one of {', '.join(DTYPES)}.{did_you_mean(dtype, DTYPES)}")


def check_shard_size(size: str) -> None:
    from transformers.utils.hub import convert_file_size_to_int

    try:
        convert_file_size_to_int(size)
    except ValueError:
        raise FwError(f"--max_shard_size: '{size}' is not a size; write a number and a unit, e.g. 5GB, 500MB, "
                      "2GiB.") from None


def check_output(output) -> Path:
    path = Path(output).expanduser().resolve()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FwError(f"--output: '{output}' already exists and is not an empty directory; give a new directory "
                      "(fw export never overwrites).")
    return path


# -- an adapter on its own ----------------------------------------------------------------------------------------
def export_adapter(saved, name: str | None, directory: Path, dtype: str | None):
    """The adapter's config and weights in PEFT's layout at the top of ``directory`` (``dtype``: cast the weights);
    returns the tokenizer to save with it."""
    from peft.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

    from fw.model.loading import load_tokenizer

    source = saved.adapters[name] if name else saved.directory
    shutil.copy2(source / CONFIG_NAME, directory / CONFIG_NAME)
    if dtype is None:
        shutil.copy2(source / SAFETENSORS_WEIGHTS_NAME, directory / SAFETENSORS_WEIGHTS_NAME)
    else:
        cast_safetensors(source / SAFETENSORS_WEIGHTS_NAME, directory / SAFETENSORS_WEIGHTS_NAME, dtype)
    return load_tokenizer(str(saved.directory))


def cast_safetensors(source: Path, target: Path, dtype: str) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
    target_dtype = getattr(torch, dtype)
    tensors = {key: value.to(target_dtype) if value.is_floating_point() else value
               for key, value in load_file(str(source)).items()}
    save_file(tensors, str(target), metadata=metadata)


# -- merged or full weights ---------------------------------------------------------------------------------------
def export_weights(model_dir: Path, data: dict, name: str | None, directory: Path, dtype: str | None,
                   max_shard_size: str):
    """Load the run's model in ``dtype`` on unquantized weights, merge its adapter (if any) and save it."""
    loading = {**data, "quantization": None}
    if dtype:
        loading["trainer"] = {**data["trainer"], "precision": DTYPES[dtype]}
    _, model, tokenizer = artifacts.load_trained(model_dir, loading, adapter=name, prepare_base=dequantized)
    if artifacts.is_peft_model(model):
        model = merged(model, data)
    model.save_pretrained(str(directory), safe_serialization=True, max_shard_size=max_shard_size)
    return tokenizer


def check_can_merge(section: dict) -> None:
    from fw.model.adapters import adapter_descriptor

    if not adapter_descriptor(section["type"]).mergeable:
        raise FwError(f"--merge: PEFT cannot merge '{section['type']}' adapters into the base model. Export without "
                      "--merge: the adapter is written on its own and loads on top of the base model.")


def merged(peft_model, data: dict):
    """The base model with the active adapter merged in (PEFT ``merge_and_unload``)."""
    quantization = data.get("quantization")
    if quantization:
        console.warn(f"the adapter was trained on a base quantized with {quantization.get('backend')}; merged into "
                     "the base model's unquantized weights its outputs differ slightly from what fw ran and "
                     "evaluated. Compare a few generations with fw predict before serving it.")
    return peft_model.merge_and_unload()


def dequantized(model):
    """``model`` with plain weights when they were loaded quantized (a pre-quantized checkpoint, or a run saved
    quantized), else itself: the quantizer plugin's ``dequantize`` where it has one, else transformers'."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return model
    method = str(getattr(quantizer.quantization_config, "quant_method", "unknown")).split(".")[-1].lower()
    own_dequantize = plugin_dequantize(method)
    if own_dequantize:
        model = resolve(own_dequantize)(model)
    else:
        try:
            model = model.dequantize()
        except NotImplementedError:
            raise FwError(f"--model_path: the weights are stored quantized with {method}, which transformers cannot "
                          f"dequantize and no fw quantizer plugin does{plugins_that_dequantize()}, so fw export "
                          "cannot write plain weights. Serve the saved model as it is (transformers loads it with "
                          f"{method} installed), or train on an unquantized base model.") from None
    console.warn(f"the weights were stored quantized ({method}): they are exported dequantized, with the precision "
                 "of the quantized values, not of the original weights.")
    return model


def plugin_dequantize(method: str) -> str | None:
    """The ``dequantize`` of the quantizer plugin named like transformers' ``quant_method``, if any."""
    registry = get_registry()
    return registry.get("quantizer", method).dequantize if registry.has("quantizer", method) else None


def plugins_that_dequantize() -> str:
    names = sorted({entry.name for entry in get_registry().all("quantizer") if entry.descriptor.dequantize})
    return f" ({', '.join(names)} can)" if names else ""


# -- the config saved with the export -----------------------------------------------------------------------------
def exported_section(data: dict, name: str | None) -> dict:
    """The adapter section of what is exported: ``adapter``, or the named adapter (a merge of several takes its
    first source's section: PEFT's add_weighted_adapter builds it from that config)."""
    if name is None:
        return data["adapter"]
    from fw.model import multi_adapter

    sections = multi_adapter.section_of(data)["adapters"]
    if name in sections:
        return sections[name]
    return sections[multi_adapter.section_of(data)["merge"]["sources"][0]]


def single_adapter_config(data: dict, name: str | None) -> dict:
    """``data`` describing one adapter saved at the top of the directory (as a single-adapter run saves it)."""
    if name is None:
        return data
    return {**data, "adapter": {**exported_section(data, name), "pretrained_adapter_weights": None},
            "adapters": None}


def merged_config(data: dict, name: str | None) -> dict:
    """``data`` describing merged weights, as ``fw train`` saves a run with ``merge_adapter_into_base_model``."""
    single = single_adapter_config(data, name)
    section = single["adapter"]
    return {**single, "adapter": {**section, "postprocessor": {**(section.get("postprocessor") or {}),
                                                               "merge_adapter_into_base_model": True}}}


# -- everything besides the weights -------------------------------------------------------------------------------
def finish(directory: Path, model_dir: Path, data: dict, tokenizer, location: Path, merged_name: str | None) -> None:
    """Tokenizer (with fw's prompt as chat template), generation config, fw config, retrieval index, card."""
    from fw.data.retrieval import MODEL_SUBDIR
    from fw.publish.card import run_directory_of, write_model_card
    from fw.publish.chat_template import use_prompt_as_chat_template

    reason = use_prompt_as_chat_template(tokenizer, data)
    if reason:
        console.warn(f"the exported tokenizer has no chat template: {reason}, which one chat message cannot fill. "
                     "Send prompts formatted as the model card shows to the completions endpoint.")
    tokenizer.save_pretrained(str(directory))
    shutil.copy2(model_dir / "generation_config.json", directory / "generation_config.json")
    (directory / artifacts.MODEL_CONFIG_FILE).write_text(artifacts.config_yaml(data), encoding="utf-8")
    if (model_dir / MODEL_SUBDIR).is_dir():
        shutil.copytree(model_dir / MODEL_SUBDIR, directory / MODEL_SUBDIR)
    run_dir = run_directory_of(model_dir)
    for name, source in runs.run_records(run_dir).items():  # what the card reports, kept with the export (fw
        if source.is_file():                                  # upload refreshes the card from them)
            shutil.copy2(source, directory / name)
    write_model_card(directory, data, run_dir=directory, location=location, active=merged_name)
