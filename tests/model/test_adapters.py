"""The built-in PEFT adapters (every one the registry holds): schemas against the installed PEFT, one training step
on tiny Llama / GPT-2 models, the model checks (c3a, vblora, fourierft, waveft) and the cross-field rules (OFT,
AdaLoRA, IA3, VBLoRA)."""
from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys

import jsonschema
import peft
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fw.model.adapters import wrap_model
from fw.errors import ConfigError, FwError
from fw.plugin import load_schema, resolve
from fw.plugin.peft import adapter_peft_config
from fw.plugin.registry import get_registry
from fw.model.tiny import build_tiny_gpt2, build_tiny_llama, build_tokenizer

from built_in_plugins import LAYER_ADAPTERS, TINY_OVERRIDES, built_in

#: every built-in adapter -> its PEFT config class
ADAPTERS = {name: descriptor.peft_config_class for name, descriptor in built_in("adapter").items()}
#: methods whose PEFT 0.21.2 layers do not accept transformers' Conv1D (GPT-2): fw must say so clearly
NO_CONV1D = {"loha", "lokr", "boft", "c3a", "oft", "hra"}
COMMON_KEYS = {"pretrained_adapter_weights", "postprocessor"}


def schema(name: str) -> dict:
    return load_schema(f"fw.schemas:adapters/{name}.json")


def defaults(name: str) -> dict:
    return {key: prop["default"] for key, prop in schema(name)["properties"].items()}


def descriptor(name: str):
    return get_registry().get("adapter", name)


def build(name: str, **params):
    return adapter_peft_config(descriptor(name), {**defaults(name), **params})


def load(path):
    return AutoModelForCausalLM.from_pretrained(path)


def batch(model) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(4, model.config.vocab_size, (2, 8), generator=generator)


def wrap_error(model, params) -> str:
    with pytest.raises(FwError) as info:
        wrap_model(model, params)
    return str(info.value)


# -- registry and schemas ------------------------------------------------------------------------------------
def test_all_adapters_are_registered_with_the_right_flags():
    registry = get_registry()
    assert set(ADAPTERS) <= set(registry.names("adapter"))
    assert {n for n in ADAPTERS if descriptor(n).lora_family} == {"lora", "adalora"}
    assert {n for n in ADAPTERS if descriptor(n).check_model} == {"c3a", "vblora", "fourierft", "waveft"}


def test_listing_the_adapter_plugins_imports_neither_torch_nor_peft():
    code = ("import sys\n"
            "from fw.plugin.registry import get_registry\n"
            "assert get_registry().all('adapter')\n"
            "print(sorted(m for m in ('torch', 'peft', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_schema_follows_the_conventions(name):
    doc = schema(name)
    jsonschema.Draft202012Validator.check_schema(doc)
    assert doc["additionalProperties"] is False and doc["properties"]["type"]["const"] == name
    for key, prop in doc["properties"].items():
        assert {"type", "default", "description", "x-peft"} <= set(prop), f"{name}.{key}"
    assert not COMMON_KEYS & set(doc["properties"])
    assert not set(doc.get("x-fw-hints", {})) & set(doc["properties"])
    jsonschema.validate(defaults(name), doc)


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_every_x_peft_field_exists_in_the_installed_peft(name):
    fields = {field.name for field in dataclasses.fields(getattr(peft, ADAPTERS[name]))}
    mapped = {key: prop["x-peft"] for key, prop in schema(name)["properties"].items() if prop["x-peft"]}
    assert {key: f for key, f in mapped.items() if f not in fields} == {}


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_defaults_build_the_expected_peft_config(name):
    config = build(name)
    assert type(config) is getattr(peft, ADAPTERS[name])
    assert config.task_type == "CAUSAL_LM"


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_every_enum_value_builds(name):
    for key, prop in schema(name)["properties"].items():
        for value in prop.get("enum", []):
            assert isinstance(build(name, **{key: value}), getattr(peft, ADAPTERS[name])), (key, value)


@pytest.mark.parametrize("name, keys", [("waveft", {"r", "alpha"}), ("tinylora", {"alpha"}), ("c3a", {"r"})])
def test_spec_keys_the_method_lacks_have_a_hint_saying_what_to_use(name, keys):
    doc = schema(name)
    assert not keys & set(doc["properties"])
    for key in keys:
        assert "use `" in doc["x-fw-hints"][key]
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"type": name, key: 8}, doc)


# -- parameter mapping ---------------------------------------------------------------------------------------
def test_lora_maps_spec_names_to_peft_fields():
    config = build("lora", r=4, alpha=None, dropout=0.1, bias_type="lora_only", use_rslora=True,
                   use_dora=True, loraplus_lr_ratio=16, rank_pattern={"q_proj": 2},
                   alpha_pattern={"q_proj": 3.0}, layer_replication=[[0, 1], [0, 2]], target_modules=".*q_proj")
    assert (config.r, config.lora_alpha, config.lora_dropout, config.bias) == (4, 8, 0.1, "lora_only")
    assert config.use_rslora and config.use_dora and config.init_lora_weights is True
    # the spec's substring keys, as the regex PEFT matches against the end of module names
    assert config.rank_pattern == {".*q_proj.*": 2} and config.alpha_pattern == {".*q_proj.*": 3.0}
    assert config.layer_replication == [[0, 1], [0, 2]] and config.target_modules == ".*q_proj"
    assert build("lora").lora_alpha == 16 and build("lora").lora_dropout == 0.05


def test_lora_initializer_values_and_sub_configs():
    from peft.tuners.lora.config import CordaConfig, EvaConfig, LoftQConfig

    from fw.plugins.adapters.lora import lora_overrides

    assert build("lora", init_lora_weights="pissa").init_lora_weights == "pissa"
    assert build("lora", init_lora_weights=False).init_lora_weights is False
    eva = build("lora", init_lora_weights="eva", eva_config={"n_samples": 128, "rho": 1.5}).eva_config
    assert isinstance(eva, EvaConfig) and eva.rho == 1.5  # n_samples is fw-level (the data pass), not PEFT's
    corda = build("lora", init_lora_weights="corda", corda_config={"corda_method": "kpm"}).corda_config
    assert isinstance(corda, CordaConfig) and corda.corda_method == "kpm"
    overrides = lora_overrides({**defaults("lora"), "loftq_config": {"loftq_bits": 4, "loftq_iter": 2}})
    assert overrides["loftq_config"] == LoftQConfig(loftq_bits=4, loftq_iter=2)


@pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="PEFT's LoftQ needs scipy")
def test_lora_loftq_config_reaches_peft():
    config = build("lora", init_lora_weights="loftq", loftq_config={"loftq_bits": 4, "loftq_iter": 1})
    assert config.loftq_config == {"loftq_bits": 4, "loftq_iter": 1}


def test_adalora_maps_its_schedule():
    config = build("adalora", delta_t=5, total_step=200, tinit=10, tfinal=20, target_r=4, init_r=6)
    assert (config.deltaT, config.total_step, config.tinit, config.tfinal) == (5, 200, 10, 20)
    assert (config.target_r, config.init_r, config.lora_alpha) == (4, 6, 16)


def test_waveft_haar_is_passed_as_db1():
    assert build("waveft", wavelet_family="haar").wavelet_family == "db1"


# -- cross-field rules ---------------------------------------------------------------------------------------
def check_params(name, explicit=None, **params):
    return resolve(descriptor(name).check_params)({**defaults(name), **params}, explicit)


def test_oft_spec_defaults_and_r_only_are_both_valid():
    # adapter_oft_defaults.yaml writes r: 0 and oft_block_size: 32; adv_oft_r8.yaml writes only r: 8
    written = {"type", "r", "oft_block_size", "module_dropout", "target_modules", "coft", "eps"}
    assert check_params("oft", written, r=0, oft_block_size=32) == []
    assert check_params("oft", {"type", "r", "module_dropout"}, r=8) == []
    assert check_params("oft", None, r=8) == []
    config = build("oft", r=8)
    assert (config.r, config.oft_block_size) == (8, 0)
    assert (build("oft").r, build("oft").oft_block_size) == (0, 32)


def test_oft_r_with_an_explicit_block_size_is_an_error():
    (problem,) = check_params("oft", {"type", "r", "oft_block_size"}, r=8, oft_block_size=32)
    assert problem[0] == "oft_block_size" and "set either r or oft_block_size, not both" in problem[1]
    (problem,) = check_params("oft", None, r=8, oft_block_size=16)
    assert problem[0] == "oft_block_size" and "not both" in problem[1]
    (problem,) = check_params("oft", {"r", "oft_block_size"}, r=0, oft_block_size=0)
    assert problem[0] == "r"


def test_other_cross_field_rules():
    assert check_params("adalora") == [] and check_params("ia3") == [] and check_params("vblora") == []
    assert [key for key, _ in check_params("adalora", use_dora=True, tinit=9000, tfinal=2000, total_step=10000)] == \
        ["use_dora", "tinit"]
    assert check_params("ia3", target_modules=["k_proj"], feedforward_modules=["down_proj"])[0][0] == \
        "feedforward_modules"
    assert check_params("vblora", topk=300)[0][0] == "topk"


# -- wrapping tiny models ------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_adapter_trains_one_step_on_a_tiny_model(name, arch, request):
    model = load(request.getfixturevalue(f"tiny_{arch}_dir"))
    params = {**defaults(name), **TINY_OVERRIDES.get(name, {})}
    if arch == "gpt2" and name in NO_CONV1D:
        message = wrap_error(model, params)
        assert f"'{name}'" in message and "Conv1D" in message and "adapter.type" in message
        return
    peft_model = wrap_model(model, params)
    assert type(peft_model.peft_config["default"]) is getattr(peft, ADAPTERS[name])
    peft_model.train()
    ids = batch(model)
    loss = peft_model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    assert 0 < sum(p.numel() for p in trainable) < sum(p.numel() for p in peft_model.parameters())


@pytest.mark.parametrize("name", sorted(set(LAYER_ADAPTERS) - NO_CONV1D - {"ln_tuning"}))
def test_gpt2_conv1d_layers_get_fan_in_fan_out(name, tiny_gpt2_dir):
    config = wrap_model(load(tiny_gpt2_dir), {**defaults(name), **TINY_OVERRIDES.get(name, {})}).peft_config
    assert config["default"].fan_in_fan_out is True


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_mergeable_flag_matches_peft(name, tiny_llama_dir):
    """mergeable=True must mean merge_and_unload gives the same outputs as the unmerged adapter."""
    torch.manual_seed(0)
    peft_model = wrap_model(load(tiny_llama_dir), {**defaults(name), **TINY_OVERRIDES.get(name, {})})
    ids = batch(peft_model)
    with torch.no_grad():
        for parameter in peft_model.parameters():
            if parameter.requires_grad:  # move away from the no-op initialization
                parameter.add_(torch.randn_like(parameter) * 0.05)
        peft_model.eval()
        adapted = peft_model(input_ids=ids).logits
        try:
            merged = peft_model.merge_and_unload()(input_ids=ids).logits
            merges = torch.allclose(adapted, merged, atol=1e-4)
        except Exception:
            merges = False
    assert descriptor(name).mergeable == merges


def test_default_targets_when_peft_has_none_for_the_architecture(tiny_llama_dir):
    model = load(tiny_llama_dir)
    model.config.model_type = "tiny-unknown-arch"
    lora = wrap_model(model, defaults("lora")).peft_config["default"]
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                        "down_proj"}
    model = load(tiny_llama_dir)
    model.config.model_type = "tiny-unknown-arch"
    ln = wrap_model(model, defaults("ln_tuning")).peft_config["default"]
    assert set(ln.target_modules) == {"input_layernorm", "post_attention_layernorm", "norm"}
    model = load(tiny_llama_dir)
    model.config.model_type = "tiny-unknown-arch"
    ia3 = wrap_model(model, defaults("ia3"))
    ids = batch(model)
    assert torch.isfinite(ia3(input_ids=ids, labels=ids).loss)


def test_explicit_regex_target_modules(tiny_llama_dir):
    params = {**defaults("lora"), "target_modules": r".*\.mlp\.(up|down)_proj"}
    peft_model = wrap_model(load(tiny_llama_dir), params)
    adapted = {name.rsplit(".", 1)[-1] for name, module in peft_model.named_modules()
               if hasattr(module, "lora_A")}
    assert adapted == {"up_proj", "down_proj"}


# -- model checks --------------------------------------------------------------------------------------------
def test_c3a_default_block_size_is_refused_naming_sizes_and_the_fit(tiny_llama_dir, tiny_gpt2_dir):
    message = wrap_error(load(tiny_llama_dir), defaults("c3a"))
    assert "adapter.block_size: 256" in message
    assert "self_attn.q_proj (64x64)" in message and "self_attn.v_proj (64x32)" in message
    assert "largest block_size that fits every targeted layer is 32" in message
    problems = resolve(descriptor("c3a").check_model)(defaults("c3a"), load(tiny_gpt2_dir))
    assert problems == ["block_size: 256 must divide the input and output size of every targeted layer, "
                        "but not of mlp.c_proj (128x64); the largest block_size that fits every targeted "
                        "layer is 64"]


def test_vblora_default_vector_length_is_refused_naming_sizes_and_the_fit(tiny_llama_dir):
    with pytest.raises(ConfigError) as info:
        wrap_model(load(tiny_llama_dir), defaults("vblora"))
    (issue,) = info.value.issues
    assert issue.path == "adapter.vector_length"
    assert "(64x64)" in issue.message and "(64x32)" in issue.message and "is 32" in issue.message


@pytest.mark.parametrize("name, value", [("waveft", 2592), ("fourierft", 4000)])
def test_n_frequency_larger_than_a_layer_is_refused(name, value, tiny_llama_dir):
    message = wrap_error(load(tiny_llama_dir), {**defaults(name), "n_frequency": value})
    assert f"adapter.n_frequency: {value} exceeds" in message
    assert "(64x32)" in message and "is 2048" in message


@pytest.mark.parametrize("name", ["c3a", "vblora", "waveft", "fourierft"])
def test_fitting_values_pass_the_model_check(name, tiny_llama_dir):
    params = {**defaults(name), **TINY_OVERRIDES.get(name, {})}
    assert resolve(descriptor(name).check_model)(params, load(tiny_llama_dir)) == []


# -- tiny builders -------------------------------------------------------------------------------------------
def test_tiny_builders_are_deterministic(tmp_path, tiny_llama_dir, tiny_gpt2_dir):
    for builder, built in ((build_tiny_llama, tiny_llama_dir), (build_tiny_gpt2, tiny_gpt2_dir)):
        again = builder(tmp_path / builder.__name__)
        for file in ("model.safetensors", "tokenizer.json", "config.json"):
            assert (again / file).read_bytes() == (built / file).read_bytes(), file
    other = build_tiny_llama(tmp_path / "seed1", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_llama_dir / "model.safetensors").read_bytes()


def test_tiny_models_load_with_auto_classes(tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    for path, class_name in ((tiny_llama_dir, "LlamaForCausalLM"), (tiny_gpt2_dir, "GPT2LMHeadModel")):
        model = load(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        assert type(model).__name__ == class_name and model.config.vocab_size == len(tokenizer)
        assert None not in (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id,
                            tokenizer.unk_token_id)
        assert 512 <= len(tokenizer) <= 1024
        text = "Question: what is 2 + 2? Answer: 4."
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    tokenizer = build_tokenizer(tmp_path / "tok", corpus=["abc abd abe"] * 3)
    assert tokenizer.eos_token == "</s>"
