"""model_parameters: RoPE scaling applied the way the installed transformers expects (rope_parameters in 5.x,
rope_scaling in 4.x) and changing the positions the model sees; NEFTune noise on the input embeddings during
training only."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from fw import pipeline
from fw.errors import FwError
from fw.model.loading import load_base_model
from fw.model.rope import apply_rope_scaling
from fw.train.trainer import add_neftune


def data(base, rope: dict | None = None, **extra) -> dict:
    return {"base_model": str(base), "model_parameters": {"rope_scaling": rope or {}}, **extra}


def rotary(model, positions: list[int]):
    """(cos, sin) of the model's rotary embedding at ``positions``."""
    x = torch.zeros(1, len(positions), model.config.hidden_size)
    return model.model.rotary_emb(x, torch.tensor([positions]))


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def long_ids(length: int) -> torch.Tensor:
    return torch.randint(4, 500, (1, length), generator=torch.Generator().manual_seed(0))


# -- RoPE scaling -------------------------------------------------------------------------------------------------
def test_linear_scaling_is_set_in_rope_parameters_and_keeps_rope_theta(tmp_path, tiny_llama_dir):
    base = tmp_path / "theta"
    shutil.copytree(tiny_llama_dir, base)
    config = json.loads((base / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    (base / "config.json").write_text(json.dumps(config))
    model, _ = load_base_model(data(base, {"rope_type": "linear", "factor": 2.0}))
    assert model.config.rope_parameters == {"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}
    plain, _ = load_base_model(data(base))
    assert torch.allclose(model.model.rotary_emb.inv_freq, plain.model.rotary_emb.inv_freq / 2)


def test_linear_scaling_interpolates_positions(tiny_llama_dir):
    """Position interpolation: with factor 2, position 2p looks like position p did (context x 2)."""
    plain, _ = load_base_model(data(tiny_llama_dir))
    scaled, _ = load_base_model(data(tiny_llama_dir, {"rope_type": "linear", "factor": 2.0}))
    cos_scaled, sin_scaled = rotary(scaled, [0, 100, 400])
    cos_plain, sin_plain = rotary(plain, [0, 50, 200])
    assert torch.allclose(cos_scaled, cos_plain, atol=1e-5) and torch.allclose(sin_scaled, sin_plain, atol=1e-5)
    ids = long_ids(32)
    assert not torch.allclose(logits(scaled, ids), logits(plain, ids), atol=1e-4)


def test_dynamic_scaling_changes_only_positions_past_the_trained_context(tiny_llama_dir):
    plain, _ = load_base_model(data(tiny_llama_dir))
    dynamic, _ = load_base_model(data(tiny_llama_dir, {"rope_type": "dynamic", "factor": 2.0}))
    assert dynamic.config.rope_parameters["rope_type"] == "dynamic"
    assert dynamic.config.rope_parameters["factor"] == 2.0
    short = long_ids(64)
    assert torch.allclose(logits(dynamic, short), logits(plain, short), atol=1e-5)
    context = plain.config.max_position_embeddings
    long = long_ids(context + 64)  # past max_position_embeddings: NTK-aware rescaling kicks in
    assert not torch.allclose(logits(dynamic, long)[:, context:], logits(plain, long)[:, context:], atol=1e-3)


def test_transformers_4_configs_get_rope_scaling():
    config = SimpleNamespace(model_type="llama", rope_scaling=None, rope_theta=10000.0)
    apply_rope_scaling(config, {"rope_type": "linear", "factor": 4.0})
    assert config.rope_scaling == {"rope_type": "linear", "type": "linear", "factor": 4.0}


def test_nested_rope_parameters_are_scaled_per_layer_type():
    class Nested(SimpleNamespace):
        rope_parameters = None

        def nested_rope_parameter_keys(self, parameters):
            return [key for key in parameters if key in ("full_attention", "sliding_attention")]

    config = Nested(model_type="gemma3", rope_parameters={
        "full_attention": {"rope_type": "default", "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    apply_rope_scaling(config, {"rope_type": "linear", "factor": 8.0})
    assert config.rope_parameters["full_attention"] == {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}
    assert config.rope_parameters["sliding_attention"]["rope_theta"] == 1e4


def test_a_model_without_rotary_embeddings_is_a_clear_error(tiny_gpt2_dir):
    with pytest.raises(FwError, match=r"^model_parameters.rope_scaling: the base model \(gpt2\) has no rotary"):
        load_base_model(data(tiny_gpt2_dir, {"rope_type": "linear", "factor": 2.0}))


def test_rope_scaling_is_trained_with_and_reloaded(tmp_path, tiny_llama_dir):
    from fw.artifacts import load_trained

    config = {"base_model": str(tiny_llama_dir), "input_features": [{"name": "q"}], "output_features": [{"name": "a"}],
              "adapter": {"type": "lora", "r": 4}, "trainer": {"type": "finetune", "epochs": 1, "batch_size": 4},
              "model_parameters": {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}}
    rows = pd.DataFrame({"q": [f"q {i}" for i in range(8)], "a": [f"a {i}" for i in range(8)]})
    result = pipeline.train(config, training_set=rows, output_directory=tmp_path, show_progress=False)
    assert result.model.config.rope_parameters["rope_type"] == "linear"
    _, reloaded, _ = load_trained(result.model_dir)
    assert reloaded.config.rope_parameters["factor"] == 2.0
    ids = long_ids(16)
    assert torch.allclose(logits(reloaded, ids), logits(result.model, ids), atol=1e-5)


# -- NEFTune ------------------------------------------------------------------------------------------------------
def test_neftune_noise_in_training_mode_only(tiny_llama_dir):
    model, _ = load_base_model(data(tiny_llama_dir))
    embeddings = model.get_input_embeddings()
    ids = long_ids(10)
    clean = embeddings(ids).detach()
    handle = add_neftune(model, alpha=5.0)
    try:
        model.train()
        noisy = [embeddings(ids).detach() for _ in range(2)]
        assert not torch.allclose(noisy[0], clean) and not torch.allclose(noisy[0], noisy[1])
        bound = 5.0 / (10 * model.config.hidden_size) ** 0.5  # alpha / sqrt(length * dim)
        assert (noisy[0] - clean).abs().max() <= bound + 1e-6
        model.eval()
        assert torch.equal(embeddings(ids), clean)
    finally:
        handle.remove()
    model.train()
    assert torch.equal(embeddings(ids), clean)  # the hook is gone


def test_neftune_acts_during_fw_train_and_is_removed_afterwards(tmp_path, tiny_llama_dir):
    config = {"base_model": str(tiny_llama_dir), "input_features": [{"name": "q"}], "output_features": [{"name": "a"}],
              "adapter": {"type": "lora", "r": 4, "dropout": 0.0},
              "trainer": {"type": "finetune", "epochs": 1, "batch_size": 4}}
    rows = pd.DataFrame({"q": [f"q {i}" for i in range(8)], "a": [f"a {i}" for i in range(8)]})
    plain = pipeline.train(config, training_set=rows, output_directory=tmp_path / "plain", show_progress=False)
    noisy = pipeline.train({**config, "model_parameters": {"neftune_noise_alpha": 50}}, training_set=rows,
                           output_directory=tmp_path / "noisy", show_progress=False)
    assert noisy.statistics["train_loss_per_step"][0] != plain.statistics["train_loss_per_step"][0]
    model = noisy.model.train()
    embeddings = model.get_input_embeddings()
    ids = long_ids(6)
    assert torch.equal(embeddings(ids), embeddings(ids))
