"""LoRA options through fw train (DoRA, rsLoRA, bias_type, rank/alpha patterns with the spec's substring keys,
layer replication, target_modules as list or regex, LoRA+) and AdaLoRA's rank allocation every optimizer step."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from fw import pipeline
from fw.model.adapters import wrap_model
from fw.artifacts import load_trained
from fw.config.load import load_config
from fw.errors import FwError
from fw.model.loading import load_base_model

PROBE = torch.tensor([[1, 5, 9, 20, 30, 41]])


def table(rows: int = 16) -> pd.DataFrame:
    return pd.DataFrame({"question": [f"what is {i} plus one" for i in range(rows)],
                         "answer": [f"it is {i + 1}" for i in range(rows)]})


def config(base, adapter: dict, **trainer) -> dict:
    return {"base_model": str(base), "input_features": [{"name": "question"}],
            "output_features": [{"name": "answer"}], "prompt": {"template": "Q: {question}\nA:"},
            "adapter": adapter,
            "trainer": {"type": "finetune", "epochs": 2, "batch_size": 4, "learning_rate": 0.01, "seed": 1, **trainer},
            "generation": {"max_new_tokens": 4, "do_sample": False}}


def wrapped(base, adapter: dict):
    data = load_config(config(base, adapter)).data
    model, _ = load_base_model(data, for_training=True)
    return wrap_model(model, data["adapter"])


def train(tmp_path, base, adapter: dict, **trainer):
    return pipeline.train(config(base, adapter, **trainer), training_set=table(), output_directory=tmp_path,
                          show_progress=False)


def logits(model):
    model.eval()
    with torch.no_grad():
        return model(PROBE).logits


def lora_modules(model) -> dict:
    return {name.replace("base_model.model.", ""): module for name, module in model.named_modules()
            if hasattr(module, "lora_A") and "default" in module.lora_A}


def assert_trains_and_reloads(result) -> None:
    losses = result.statistics["train_loss_per_step"]
    assert losses[-1] < losses[0]
    _, reloaded, _ = load_trained(result.model_dir)
    assert torch.allclose(logits(reloaded), logits(result.model), atol=1e-4)


# -- LoRA options -------------------------------------------------------------------------------------------------
def test_dora_adds_a_trained_magnitude_vector(tmp_path, tiny_llama_dir):
    result = train(tmp_path, tiny_llama_dir, {"type": "lora", "r": 4, "use_dora": True})
    magnitudes = {n: p for n, p in result.model.named_parameters() if "lora_magnitude_vector" in n}
    assert magnitudes and all(p.requires_grad for p in magnitudes.values())
    layer = lora_modules(result.model)["model.layers.0.self_attn.q_proj"]
    initial_norm = layer.base_layer.weight.norm(dim=1)  # DoRA starts the magnitude at the weight's row norms
    assert not torch.allclose(layer.lora_magnitude_vector["default"].weight, initial_norm)  # and trained it
    assert_trains_and_reloads(result)


def test_rslora_scales_by_alpha_over_sqrt_r(tiny_llama_dir):
    plain = lora_modules(wrapped(tiny_llama_dir, {"type": "lora", "r": 16, "alpha": 8}))
    rs = lora_modules(wrapped(tiny_llama_dir, {"type": "lora", "r": 16, "alpha": 8, "use_rslora": True}))
    assert {m.scaling["default"] for m in plain.values()} == {0.5}
    assert {m.scaling["default"] for m in rs.values()} == {2.0}


@pytest.mark.parametrize("bias_type, trainable", [
    ("none", set()),
    ("lora_only", {"c_attn"}),  # GPT-2's default LoRA target
    ("all", {"c_attn", "c_proj", "c_fc", "ln_1", "ln_2", "ln_f"}),
])
def test_bias_type_chooses_which_biases_train(tiny_gpt2_dir, bias_type, trainable):
    model = wrapped(tiny_gpt2_dir, {"type": "lora", "r": 4, "bias_type": bias_type})
    biases = {name.replace(".base_layer", "").split(".")[-2] for name, p in model.named_parameters()
              if name.endswith(".bias") and p.requires_grad}
    assert biases == trainable


def test_rank_and_alpha_patterns_match_by_substring(tmp_path, tiny_llama_dir):
    adapter = {"type": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "o_proj"],
               "rank_pattern": {"layers.0": 2, "v_proj": 6}, "alpha_pattern": {"self_attn.o": 32}}
    result = train(tmp_path, tiny_llama_dir, adapter)
    layers = lora_modules(result.model)
    ranks = {name: module.r["default"] for name, module in layers.items()}
    assert ranks == {  # first matching key wins: layers.0 before v_proj
        "model.layers.0.self_attn.q_proj": 2, "model.layers.0.self_attn.v_proj": 2,
        "model.layers.0.self_attn.o_proj": 2, "model.layers.1.self_attn.q_proj": 4,
        "model.layers.1.self_attn.v_proj": 6, "model.layers.1.self_attn.o_proj": 4}
    assert layers["model.layers.1.self_attn.o_proj"].scaling["default"] == 32 / 4
    assert layers["model.layers.1.self_attn.q_proj"].scaling["default"] == 8 / 4
    assert_trains_and_reloads(result)


def test_a_regex_pattern_key_is_passed_to_peft_unchanged(tiny_llama_dir):
    model = wrapped(tiny_llama_dir, {"type": "lora", "r": 4, "rank_pattern": {r"layers\.1\.self_attn\.q_proj": 8}})
    ranks = {name: module.r["default"] for name, module in lora_modules(model).items()}
    assert ranks["model.layers.1.self_attn.q_proj"] == 8 and ranks["model.layers.0.self_attn.q_proj"] == 4


def test_layer_replication_stacks_layers_with_their_own_adapters(tmp_path, tiny_llama_dir):
    result = train(tmp_path, tiny_llama_dir, {"type": "lora", "r": 4, "layer_replication": [[0, 2], [1, 2]]})
    layers = result.model.get_base_model().model.layers
    assert len(layers) == 3
    assert layers[2].self_attn.q_proj.base_layer.weight is layers[1].self_attn.q_proj.base_layer.weight  # shared
    a1, a2 = (layers[i].self_attn.q_proj.lora_A["default"].weight for i in (1, 2))
    assert a1 is not a2 and not torch.equal(a1, a2)  # each copy has its own LoRA weights
    assert_trains_and_reloads(result)


@pytest.mark.parametrize("target_modules, expected", [
    (["k_proj", "down_proj"], {f"model.layers.{i}.{m}" for i in (0, 1) for m in ("self_attn.k_proj", "mlp.down_proj")}),
    (r".*layers\.0\.self_attn\.(q|v)_proj", {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"}),
])
def test_target_modules_as_list_or_regex(tiny_llama_dir, target_modules, expected):
    model = wrapped(tiny_llama_dir, {"type": "lora", "r": 4, "target_modules": target_modules})
    assert set(lora_modules(model)) == expected


def test_loraplus_through_fw_train_gives_b_the_ratio(tmp_path, tiny_llama_dir, monkeypatch):
    from fw.train import trainer

    seen = []
    real = trainer.build_optimizer
    monkeypatch.setattr(trainer, "build_optimizer", lambda *a: seen.append(real(*a)) or seen[-1])
    train(tmp_path, tiny_llama_dir, {"type": "lora", "r": 4, "loraplus_lr_ratio": 8}, learning_rate=0.001)
    (optimizer,) = seen
    assert len(optimizer.param_groups) == 2
    assert optimizer.param_groups[1]["initial_lr"] == 8 * optimizer.param_groups[0]["initial_lr"]


# -- AdaLoRA ------------------------------------------------------------------------------------------------------
ADALORA = {"type": "adalora", "init_r": 6, "target_r": 2, "tinit": 0, "tfinal": 0, "delta_t": 1}


def test_adalora_reallocates_ranks_every_step_over_the_planned_steps(tmp_path, tiny_llama_dir, monkeypatch):
    from peft.tuners.adalora import AdaLoraModel

    steps = []
    real = AdaLoraModel.update_and_allocate
    monkeypatch.setattr(AdaLoraModel, "update_and_allocate", lambda self, step: steps.append(step) or real(self, step))
    result = train(tmp_path, tiny_llama_dir, dict(ADALORA), epochs=4)
    planned = result.statistics["total_steps"]
    assert steps == list(range(planned))  # once per optimizer step, global step 0-based
    config = result.model.peft_config["default"]
    assert config.total_step == planned  # total_step: null -> the planned step count
    assert json.loads((result.model_dir / "adapter_config.json").read_text())["total_step"] == planned
    kept = {name: int(sum(mask)) for name, mask in config.rank_pattern.items()}
    assert kept and all(rank <= 6 for rank in kept.values())
    assert sum(kept.values()) < 6 * len(kept)  # the budget shrank from init_r towards target_r
    masked = [m.lora_E["default"] for m in lora_modules(result.model).values()]
    assert any((e == 0).any() for e in masked)  # pruned singular values are zeroed


def test_adalora_explicit_total_step_is_kept(tiny_llama_dir):
    from fw.model.initialization import TrainingData
    from fw.model.loading import apply_adapter

    data = load_config(config(tiny_llama_dir, {**ADALORA, "total_step": 500})).data
    model, _ = load_base_model(data, for_training=True)
    model = apply_adapter(model, data, TrainingData([], None, 4, planned_steps=8))
    assert model.peft_config["default"].total_step == 500


def test_adalora_tinit_longer_than_the_run_names_the_fix(tmp_path, tiny_llama_dir):
    with pytest.raises(FwError) as info:
        train(tmp_path, tiny_llama_dir, {**ADALORA, "tinit": 50})
    assert str(info.value).startswith("adapter.tinit: the run has 8 optimizer steps, so tinit (50) must be smaller")
