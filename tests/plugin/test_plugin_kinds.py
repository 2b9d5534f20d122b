"""Built-in plugins of the non-adapter kinds: initializers, quantizers, matchers, merges, retrievers.

Plugins are imported through their module paths (``fw.plugins.matchers.regex`` …), exactly the modules the
``fw`` entry points name.
"""
from __future__ import annotations

import importlib
import importlib.util
import importlib.resources
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jsonschema
import pytest
import yaml

from fw.errors import FwError
from fw.plugin import load_schema, resolve

KIND_DIRS = ("initializers", "quantizers", "matchers", "merges", "retrievers")
SCHEMA_ROOT = importlib.resources.files("fw.schemas")
SCHEMA_FILES = sorted(f"{kind}/{entry.name}" for kind in KIND_DIRS
                      for entry in SCHEMA_ROOT.joinpath(kind).iterdir() if entry.name.endswith(".json"))
from spec_location import SNIPPETS  # noqa: E402

PLUGIN_MODULES = {
    "fw.plugins.initializers.lora_inits": "fw_initializers",
    "fw.plugins.quantizers.bitsandbytes": "fw_quantizers",
    "fw.plugins.quantizers.torchao": "fw_quantizers",
    "fw.plugins.matchers.contains": "fw_matchers",
    "fw.plugins.matchers.regex": "fw_matchers",
    "fw.plugins.matchers.json_schema": "fw_matchers",
    "fw.plugins.merges.peft_merges": "fw_merge_strategies",
    "fw.plugins.retrievers.random": "fw_retrievers",
    "fw.plugins.retrievers.semantic": "fw_retrievers",
}


def descriptors(module_name: str) -> list:
    module = importlib.import_module(module_name)
    return list(getattr(module, PLUGIN_MODULES[module_name])())


def descriptor(module_name: str, name: str):
    return next(d for d in descriptors(module_name) if d.name == name)


def schema_for(kind_dir: str, name: str) -> dict:
    return load_schema(f"fw.schemas:{kind_dir}/{name}.json")


def validate(kind_dir: str, name: str, section) -> None:
    jsonschema.Draft202012Validator(schema_for(kind_dir, name)).validate(section)


def is_valid(kind_dir: str, name: str, section) -> bool:
    return jsonschema.Draft202012Validator(schema_for(kind_dir, name)).is_valid(section)


def matcher(name: str, value, **options):
    plugin = descriptor(f"fw.plugins.matchers.{name}", name)
    return resolve(plugin.compile)(value, options)


# -- schemas ---------------------------------------------------------------------------------------------


def test_every_kind_has_schemas():
    kinds = {path.split("/")[0] for path in SCHEMA_FILES}
    assert kinds == set(KIND_DIRS)
    assert len(SCHEMA_FILES) == 8 + 2 + 3 + 7 + 2


@pytest.mark.parametrize("path", SCHEMA_FILES)
def test_schema_is_valid_draft_2020_12_and_documented(path):
    schema = load_schema(f"fw.schemas:{path}")
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema.get("title") and schema.get("description")
    if schema["type"] == "null":  # initializers without a sub-config
        return
    assert schema["additionalProperties"] is False
    for key, prop in schema["properties"].items():
        missing = {"type", "default", "description"} - set(prop)
        assert not missing, f"{path}: property {key!r} lacks {sorted(missing)}"
        assert prop["description"].strip()
    for extension in ("x-fw-ignored", "x-fw-hints"):
        for key, message in schema.get(extension, {}).items():
            assert isinstance(message, str) and message
            if extension == "x-fw-ignored":
                assert key in schema["properties"], f"{path}: ignored key {key!r} must still be accepted"


@pytest.mark.parametrize("module_name", sorted(PLUGIN_MODULES))
def test_descriptors_point_at_real_schemas_and_callables(module_name):
    found = descriptors(module_name)
    assert found
    for plugin in found:
        load_schema(plugin.schema)
        assert plugin.summary
        for field in ("build_peft_config", "prepare", "load_kwargs", "transform", "compile", "build_index"):
            reference = getattr(plugin, field, None)
            if reference:
                assert callable(resolve(reference)), f"{plugin.name}.{field} -> {reference}"


def test_plugin_modules_do_not_import_heavy_libraries():
    code = ("import sys\n"
            + "".join(f"import {m}\n" for m in PLUGIN_MODULES)
            + "heavy = [m for m in ('torch', 'transformers', 'peft', 'regex', 'torchao', 'bitsandbytes') "
              "if m in sys.modules]\n"
              "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- initializers ----------------------------------------------------------------------------------------

INIT = "fw.plugins.initializers.lora_inits"


def test_initializer_table():
    by_name = {d.name: d for d in descriptors(INIT)}
    assert set(by_name) == {"default", "gaussian", "pissa", "olora", "orthogonal", "eva", "corda", "loftq"}
    assert by_name["default"].peft_value is True
    assert all(d.peft_value == d.name for d in by_name.values() if d.name != "default")
    assert {n for n, d in by_name.items() if d.needs_data} == {"eva", "corda"}
    assert {n: d.config_key for n, d in by_name.items() if d.config_key} == {
        "eva": "eva_config", "corda": "corda_config", "loftq": "loftq_config"}
    # AdaLoRA only checks init_lora_weights for truthiness: only the default init is real there
    assert {n for n, d in by_name.items() if "adalora" in d.adapters} == {"default"}
    assert all("lora" in d.adapters for d in by_name.values())


def test_initializer_sub_configs():
    assert is_valid("initializers", "eva", {"n_samples": 64, "rho": 1.0, "tau": 0.9, "whiten": True})
    assert is_valid("initializers", "eva", None)
    assert not is_valid("initializers", "eva", {"n_samples": 0})
    assert not is_valid("initializers", "eva", {"rho": 0.5})
    assert not is_valid("initializers", "eva", {"samples": 10})
    assert is_valid("initializers", "corda", {"corda_method": "kpm", "n_samples": 16})
    assert not is_valid("initializers", "corda", {"corda_method": "xpm"})
    assert is_valid("initializers", "loftq", {"loftq_bits": 8, "loftq_iter": 2})
    assert not is_valid("initializers", "loftq", {"loftq_bits": 2})
    assert not is_valid("initializers", "loftq", None)
    assert is_valid("initializers", "pissa", None)
    assert not is_valid("initializers", "pissa", {"niter": 4})


@pytest.mark.parametrize("name", ["eva", "corda", "loftq", "pissa", "olora"])
def test_initializers_with_a_prepare_step_resolve(name):
    """The steps themselves are exercised in tests/model/test_initializers.py."""
    assert callable(resolve(descriptor(INIT, name).prepare))
    assert descriptor(INIT, name).needs_data == (name in ("eva", "corda"))


# -- quantizers ------------------------------------------------------------------------------------------


def test_quantizer_descriptors():
    bnb = descriptor("fw.plugins.quantizers.bitsandbytes", "bitsandbytes")
    torchao = descriptor("fw.plugins.quantizers.torchao", "torchao")
    assert bnb.load_kwargs and not bnb.supports_qat
    assert torchao.transform and torchao.supports_qat


def test_quantizer_schemas():
    assert is_valid("quantizers", "bitsandbytes", {})
    assert is_valid("quantizers", "bitsandbytes", {"bits": 8, "mode": "int8_dynamic"})  # accepted, ignored
    assert not is_valid("quantizers", "bitsandbytes", {"bits": 3})
    # qat: true passes the schema; the core's rule rejects it for every backend whose descriptor lacks supports_qat
    assert schema_for("quantizers", "bitsandbytes")["x-fw-hints"]["qat"] == "QAT requires backend: torchao"
    assert "mode" in schema_for("quantizers", "bitsandbytes")["x-fw-ignored"]
    assert is_valid("quantizers", "torchao", {"backend": "torchao", "mode": "int4_weight_only", "qat": True})
    assert is_valid("quantizers", "torchao", {"backend": "torchao", "mode": "float8", "bits": 4})
    assert not is_valid("quantizers", "torchao", {"backend": "torchao", "mode": "int2"})
    assert not is_valid("quantizers", "torchao", {"mode": "float8"})  # backend defaults to bitsandbytes
    torchao = schema_for("quantizers", "torchao")
    # ignored keys default to null so that an untouched torchao section produces no "ignored" warning
    assert all(torchao["properties"][key]["default"] is None for key in torchao["x-fw-ignored"])


def test_bitsandbytes_load_kwargs_names_what_is_missing():
    import importlib.util

    import torch

    missing_package = importlib.util.find_spec("bitsandbytes") is None
    missing_gpu = not torch.cuda.is_available()
    if not (missing_package or missing_gpu):
        pytest.skip("bitsandbytes and a CUDA GPU are both present")
    load_kwargs = resolve(descriptor("fw.plugins.quantizers.bitsandbytes", "bitsandbytes").load_kwargs)
    with pytest.raises(FwError) as caught:
        load_kwargs({"bits": 4, "backend": "bitsandbytes"}, "cpu")
    message = str(caught.value)
    assert "bitsandbytes" in message
    if missing_package:
        assert "pip install bitsandbytes" in message
    if missing_gpu:
        assert "CUDA GPU" in message


def test_bitsandbytes_load_kwargs_builds_the_transformers_config(monkeypatch):
    import torch

    module = importlib.import_module("fw.plugins.quantizers.bitsandbytes")
    monkeypatch.setattr(module, "_missing_requirements", lambda device: [])
    config = module.load_kwargs({"bits": 4, "bnb_4bit_compute_dtype": "bfloat16", "mode": None})[
        "quantization_config"]
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant is True
    config = module.load_kwargs({"bits": 8, "llm_int8_threshold": 5.0})["quantization_config"]
    assert config.load_in_8bit and config.llm_int8_threshold == 5.0


def test_torchao_quantizes_at_load_and_fake_quantizes_only_for_qat():
    """PTQ: a TorchAoConfig for from_pretrained and no transform; QAT: nothing at load, the transform swaps
    layers (end to end in tests/model/test_quantization.py)."""
    plugin = descriptor("fw.plugins.quantizers.torchao", "torchao")
    load_kwargs, transform = resolve(plugin.load_kwargs), resolve(plugin.transform)
    ptq = {"backend": "torchao", "mode": "int8_weight_only", "qat": False}
    assert type(load_kwargs(ptq, "cpu")["quantization_config"]).__name__ == "TorchAoConfig"
    assert transform("model", ptq) == "model"
    assert load_kwargs({**ptq, "qat": True}, "cpu") == {}


# -- matchers --------------------------------------------------------------------------------------------


def test_contains_is_case_insensitive_by_default():
    positive = matcher("contains", "Positive")
    assert positive("The sentiment is POSITIVE.")
    assert not positive("negative")
    strict = matcher("contains", "Positive", case_sensitive=True)
    assert strict("Positive!") and not strict("positive!")
    with pytest.raises(ValueError):
        matcher("contains", "")


def test_regex_searches_anywhere_for_the_first_match():
    positive = matcher("regex", r"(?i)\bpositive\b")
    assert positive("I think this is Positive, overall.")
    assert not positive("positively speaking")  # \b: a word, not a prefix
    assert matcher("regex", r"\d+")("answer: 42")


def test_regex_bad_pattern_is_a_value_error():
    with pytest.raises(ValueError, match="invalid regular expression"):
        matcher("regex", "(unclosed")


@pytest.mark.parametrize("pattern, hostile", [(r"(x+x+)+y", "x" * 5000), (r"(a|aa)+$", "a" * 40 + "b")])
def test_regex_catastrophic_backtracking_times_out(pattern, hostile):
    """The matcher raises TimeoutError; the decoder counts it as no match
    (tests/end_to_end/test_hostile_input.py)."""
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        matcher("regex", pattern)(hostile)
    assert time.monotonic() - started < 10.0  # a hang guard, not a speed test: unguarded, this runs for years


def test_json_schema_parses_fenced_json_in_prose():
    positive = matcher("json_schema", {"sentiment": "positive"})
    assert positive('Sure! Here is the result:\n```json\n{"sentiment": "positive", "score": 0.9}\n```\nDone.')
    assert positive('The answer is {"sentiment": "positive"} as requested.')
    assert positive('{"sentiment": "positive"}')
    assert not positive('```json\n{"sentiment": "negative"}\n```')
    assert not positive("positive")
    assert not positive("{not json at all")


def test_json_schema_nested_subset_and_scalars():
    nested = matcher("json_schema", {"result": {"label": "spam", "meta": {"lang": "en"}}})
    assert nested('{"result": {"label": "spam", "confidence": 1, "meta": {"lang": "en", "x": 2}}, "id": 7}')
    assert not nested('{"result": {"label": "spam", "meta": {"lang": "fr"}}}')
    assert not nested('{"result": "spam"}')
    assert matcher("json_schema", "yes")('"yes"')
    assert matcher("json_schema", [1, 2])("[1, 2]")
    assert not matcher("json_schema", True)("1")  # JSON true is not the number 1


def test_matcher_schemas():
    assert is_valid("matchers", "contains", {"type": "contains", "value": "x", "case_sensitive": True})
    assert not is_valid("matchers", "contains", {"type": "contains"})
    assert not is_valid("matchers", "regex", {"type": "regex", "value": "x", "flags": "i"})
    assert is_valid("matchers", "json_schema", {"type": "json_schema", "value": {"a": [1, {"b": None}]}})


# -- merge strategies ------------------------------------------------------------------------------------

MERGES = "fw.plugins.merges.peft_merges"


def test_merge_table_matches_peft_add_weighted_adapter():
    table = {d.name: (d.peft_combination_type, d.uses_density, d.requires_equal_ranks)
             for d in descriptors(MERGES)}
    assert table == {
        "linear": ("linear", False, True),
        "svd": ("svd", False, False),
        "ties": ("ties", True, True),
        "dare_linear": ("dare_linear", True, True),
        "dare_ties": ("dare_ties", True, True),
        "magnitude_prune": ("magnitude_prune", True, True),
        "cat": ("cat", False, False),
    }


def test_merge_schemas():
    base = {"name": "merged", "sources": ["a", "b"], "weights": [0.5, 0.5]}
    assert is_valid("merges", "ties", {**base, "combination_type": "ties", "density": 0.7,
                                       "majority_sign_method": "frequency"})
    assert not is_valid("merges", "ties", {**base, "combination_type": "ties"})  # PEFT has no density default
    assert not is_valid("merges", "ties", {**base, "combination_type": "ties", "density": 0})
    assert not is_valid("merges", "dare_linear", {**base, "combination_type": "dare_linear", "density": 0.5,
                                                  "majority_sign_method": "total"})
    assert is_valid("merges", "svd", {**base, "combination_type": "svd", "svd_rank": 4,
                                      "svd_driver": "gesvd"})
    assert not is_valid("merges", "linear", {**base, "combination_type": "linear", "svd_rank": 4})
    assert not is_valid("merges", "linear", {**base, "combination_type": "linear", "sources": ["a"]})
    assert is_valid("merges", "cat", {**base, "combination_type": "cat", "density": None})
    for name in ("linear", "svd", "cat"):
        assert "density" in schema_for("merges", name)["x-fw-ignored"]


# -- retrievers ------------------------------------------------------------------------------------------


def test_retriever_schemas():
    assert is_valid("retrievers", "random", {"type": "random", "k": 2})
    assert not is_valid("retrievers", "random", {"type": "random", "k": -1})
    assert is_valid("retrievers", "semantic", {"type": "semantic", "model_name": "m", "k": 3})
    assert not is_valid("retrievers", "semantic", {"type": "semantic", "k": 3})
    assert not is_valid("retrievers", "semantic", {"type": "semantic", "model_name": None})


def test_random_retriever_index_queries_k_distinct_positions_never_excluded(tmp_path):
    build_index = resolve(descriptor("fw.plugins.retrievers.random", "random").build_index)
    index = build_index({"type": "random", "k": 2, "seed": 1}, ["a", "b", "c", "d"], tmp_path)
    picks = index.query(["a", "z"], 2, [{0}, set()])
    assert len(picks[0]) == 2 and 0 not in picks[0] and len(set(picks[1])) == 2
    # seeded (semantic: tests/data/test_retrieval.py)
    assert picks == index.query(["a", "z"], 2, [{0}, set()])


# -- the spec's snippets validate against these schemas --------------------------------------------------


def snippet_sections(path: Path) -> list[tuple[str, str, object]]:
    """(schema dir, plugin name, section) for every section of a snippet that one of these plugins owns."""
    config = yaml.safe_load(path.read_text())
    sections = []
    for feature in config.get("output_features") or []:
        for entry in ((feature.get("decoder") or {}).get("match") or {}).values():
            sections.append(("matchers", entry["type"], entry))
    adapter = config.get("adapter") or {}
    if "init_lora_weights" in adapter:
        value = adapter["init_lora_weights"]
        init = descriptor(INIT, "default" if value is True else value)
        sub_config = adapter.get(init.config_key) if init.config_key else None
        sections.append(("initializers", init.name, sub_config))
    if config.get("quantization"):
        section = config["quantization"]
        sections.append(("quantizers", section.get("backend", "bitsandbytes"), section))
    merge = (config.get("adapters") or {}).get("merge")
    if merge:
        sections.append(("merges", merge["combination_type"], merge))
    retrieval = (config.get("prompt") or {}).get("retrieval")
    if retrieval and retrieval.get("type"):
        sections.append(("retrievers", retrieval["type"], retrieval))
    return sections


SNIPPET_FILES = sorted(SNIPPETS.glob("*.yaml")) if SNIPPETS.is_dir() else []
OWNED_PREFIXES = ("category_", "init_", "quant_", "multi_adapter_merge_", "prompt_retrieval_")


@pytest.mark.skipif(not SNIPPET_FILES, reason=f"spec snippets not found at {SNIPPETS}")
def test_every_owned_snippet_has_a_section_here():
    owned = [p for p in SNIPPET_FILES if p.name.startswith(OWNED_PREFIXES)]
    assert len(owned) >= 25
    assert all(snippet_sections(p) for p in owned), [p.name for p in owned if not snippet_sections(p)]


@pytest.mark.parametrize("path", SNIPPET_FILES, ids=lambda p: p.name)
def test_snippet_sections_validate(path):
    for kind_dir, name, section in snippet_sections(path):
        validate(kind_dir, name, section)


# -- the schemas name real PEFT fields -------------------------------------------------------------------


@pytest.mark.parametrize("name,config_class", [("eva", "EvaConfig"), ("corda", "CordaConfig"),
                                               ("loftq", "LoftQConfig")])
def test_initializer_sub_config_fields_exist_in_peft(name, config_class):
    import dataclasses

    pytest.importorskip("peft")
    from peft.tuners.lora import config as lora_config

    cls = getattr(lora_config, config_class)
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    for key, prop in schema_for("initializers", name)["properties"].items():
        if prop["x-peft"] is None:
            continue
        assert prop["x-peft"] in fields, f"{name}.{key}"
        assert prop["default"] == fields[prop["x-peft"]], f"{name}.{key} default differs from PEFT"
    defaults = {prop["x-peft"]: prop["default"]
                for prop in schema_for("initializers", name)["properties"].values() if prop["x-peft"]}
    cls(**defaults)


def test_initializer_values_are_accepted_by_peft_lora_config():
    peft = pytest.importorskip("peft")
    for init in descriptors(INIT):
        extra = {"loftq_config": {"loftq_bits": 4, "loftq_iter": 1}} if init.name == "loftq" else {}
        if init.name == "loftq" and importlib.util.find_spec("scipy") is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "eva_config not specified, using defaults"
            config = peft.LoraConfig(r=8, target_modules=["q"], init_lora_weights=init.peft_value, **extra)
        assert config.init_lora_weights == init.peft_value
