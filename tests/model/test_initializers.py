"""LoRA initializers (adapter.init_lora_weights) on the tiny Llama: each starts the adapter the way its method
defines, training proceeds through fw.pipeline.train, the saved adapter reloads onto the original base model, and
combinations PEFT cannot initialize are validation errors."""
from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

import fw
from fw import pipeline
from fw.artifacts import load_trained
from fw.config.load import load_config
from fw.errors import FwError
from fw.model.initialization import TrainingData, wrap_with_initializer
from fw.model.loading import load_base_model

PROBE = torch.tensor([[1, 5, 9, 20, 30, 41, 7, 12]])
LAYER = "base_model.model.model.layers.0.self_attn.q_proj"


def table(rows: int = 16) -> pd.DataFrame:
    return pd.DataFrame({"question": [f"what is {i} plus one" for i in range(rows)],
                         "answer": [f"it is {i + 1} and that is all" for i in range(rows)]})


def config(base, adapter: dict, **overrides) -> dict:
    data = {"base_model": str(base), "input_features": [{"name": "question"}],
            "output_features": [{"name": "answer"}], "prompt": {"template": "Q: {question}\nA:"},
            "adapter": {"type": "lora", "r": 4, **adapter},
            "trainer": {"type": "finetune", "epochs": 2, "batch_size": 4, "learning_rate": 0.01, "seed": 1},
            "generation": {"max_new_tokens": 4, "do_sample": False}}
    data.update(overrides)
    return data


def logits(model, probe=PROBE):
    model.eval()  # no LoRA dropout
    with torch.no_grad():
        return model(probe).logits.float()


def wrapped(base, init: str, training: TrainingData | None = None, **adapter):
    """(base model before wrapping, its logits, the wrapped model) for ``init_lora_weights: init``."""
    data = load_config(config(base, {"init_lora_weights": init, **adapter})).data
    torch.manual_seed(0)
    model, _ = load_base_model(data)
    before = logits(model)
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    return original, before, wrap_with_initializer(model, data["adapter"], training)


def training_rows(base, rows: int = 16, batch_size: int = 8) -> TrainingData:
    from fw.data.tokens import encode
    from fw.model.loading import load_tokenizer
    from fw.data.prompt import PromptRenderer, target_text

    data = load_config(config(base, {})).data
    tokenizer = load_tokenizer(str(base))
    records = table(rows).to_dict("records")
    encoded, _ = encode([PromptRenderer(data).render(r) for r in records], [target_text(r, data) for r in records],
                        tokenizer, data)
    return TrainingData(encoded, tokenizer, batch_size, show_progress=False)


def lora_layer(model, name: str = LAYER):
    return model.get_submodule(name)


def delta(layer) -> torch.Tensor:
    """scaling * B @ A of the default adapter (the update the adapter adds to the base weight)."""
    return layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight


# -- each initializer starts the adapter as its method defines --------------------------------------------------
def test_default_is_kaiming_uniform_a_and_zero_b(tiny_llama_dir):
    _, before, model = wrapped(tiny_llama_dir, "default")
    layer = lora_layer(model)
    a = layer.lora_A["default"].weight
    assert a.abs().max() <= 1 / a.shape[1] ** 0.5  # kaiming_uniform(a=sqrt(5)) bound = 1 / sqrt(fan_in)
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
    assert torch.allclose(logits(model), before)


def test_gaussian_draws_a_from_a_normal_scaled_by_the_rank(tiny_llama_dir):
    _, before, model = wrapped(tiny_llama_dir, "gaussian", r=4)
    a = lora_layer(model).lora_A["default"].weight
    assert abs(float(a.detach().std()) - 1 / 4) < 0.03  # PEFT: normal(std = 1 / r), not kaiming-uniform
    assert a.abs().max() > 1 / a.shape[1] ** 0.5  # outside the kaiming-uniform bound: a different law
    assert torch.count_nonzero(lora_layer(model).lora_B["default"].weight) == 0
    assert torch.allclose(logits(model), before)  # still a no-op at the start


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_keep_the_residual_so_the_output_is_unchanged(tiny_llama_dir, init):
    original, before, model = wrapped(tiny_llama_dir, init, r=4)
    layer = lora_layer(model)
    w = original["model.layers.0.self_attn.q_proj.weight"]
    residual = layer.base_layer.weight
    assert not torch.allclose(residual, w)  # the base now holds W - B0 A0
    assert torch.allclose(residual + delta(layer), w, atol=1e-5)
    assert torch.count_nonzero(layer.lora_B["default"].weight) > 0
    assert torch.allclose(logits(model), before, atol=1e-4)


def test_pissa_adapter_is_the_top_r_singular_approximation(tiny_llama_dir):
    original, _, model = wrapped(tiny_llama_dir, "pissa", r=4)
    w = original["model.layers.0.self_attn.q_proj.weight"]
    u, s, vh = torch.linalg.svd(w)
    best = u[:, :4] @ torch.diag(s[:4]) @ vh[:4]
    assert torch.allclose(delta(lora_layer(model)), best, atol=1e-4)


def test_olora_b_has_orthonormal_columns(tiny_llama_dir):
    _, _, model = wrapped(tiny_llama_dir, "olora", r=4)
    b = lora_layer(model).lora_B["default"].weight
    assert torch.allclose(b.T @ b, torch.eye(4), atol=1e-5)  # Q of the QR decomposition of W


def test_orthogonal_makes_b_orthogonal_to_a_so_the_adapter_starts_as_a_no_op(tiny_llama_dir):
    _, before, model = wrapped(tiny_llama_dir, "orthogonal", r=4)
    layer = lora_layer(model)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert torch.count_nonzero(a) and torch.count_nonzero(b)  # both random, unlike default / gaussian
    assert torch.allclose(b @ a, torch.zeros(b.shape[0], a.shape[1]), atol=1e-6)
    assert torch.linalg.matrix_rank(a) == 2  # A spans r/2 rows of a random orthogonal matrix, B the other r/2
    assert torch.allclose(logits(model), before, atol=1e-5)


def test_eva_sets_a_to_the_top_singular_directions_of_the_layer_inputs(tiny_llama_dir):
    training = training_rows(tiny_llama_dir)
    _, before, model = wrapped(tiny_llama_dir, "eva", training, r=4,
                               eva_config={"n_samples": 16, "rho": 1.0, "use_label_mask": False})
    layer = lora_layer(model)
    a = layer.lora_A["default"].weight
    assert torch.allclose(a @ a.T, torch.eye(a.shape[0]), atol=1e-4)  # right-singular vectors: orthonormal rows
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
    assert torch.allclose(logits(model), before, atol=1e-5)
    inputs = layer_inputs(model, layer, training)
    centered = inputs - inputs.mean(0)
    explained = (centered @ a.T).pow(2).sum() / a.shape[0]
    random_rows = torch.linalg.qr(torch.randn(a.shape[1], a.shape[0]))[0].T
    assert explained > 3 * (centered @ random_rows.T).pow(2).sum() / a.shape[0]
    top = torch.linalg.svd(centered, full_matrices=False)[2][:a.shape[0]]
    assert torch.linalg.svdvals(top @ a.T).min() > 0.9  # the same subspace as the top-r singular vectors


def layer_inputs(model, layer, training: TrainingData) -> torch.Tensor:
    captured = []
    handle = layer.base_layer.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    try:
        with model.disable_adapter(), torch.no_grad():
            for batch in training.batches(16, "cpu"):
                model(**batch)
                mask = batch["attention_mask"].bool()
                captured[-1] = captured[-1][mask]
    finally:
        handle.remove()
    return torch.cat(captured)


def test_corda_keeps_the_residual_after_its_covariance_pass(tiny_llama_dir):
    original, before, model = wrapped(tiny_llama_dir, "corda", training_rows(tiny_llama_dir),
                                      corda_config={"n_samples": 16})
    layer = lora_layer(model)
    w = original["model.layers.0.self_attn.q_proj.weight"]
    assert torch.allclose(layer.base_layer.weight + delta(layer), w, atol=1e-4)
    assert not torch.allclose(delta(layer), torch.zeros_like(w))
    assert torch.allclose(logits(model), before, atol=1e-3)
    pissa = wrapped(tiny_llama_dir, "pissa")[2]
    assert not torch.allclose(delta(layer), delta(lora_layer(pissa)), atol=1e-3)  # data changed the subspace


# -- training proceeds through fw train, and the saved adapter reloads ------------------------------------------
INIT_CASES = {
    "gaussian": {}, "pissa": {}, "olora": {}, "orthogonal": {},
    "eva": {"eva_config": {"n_samples": 16}}, "corda": {"corda_config": {"n_samples": 16}},
}


@pytest.mark.parametrize("init", sorted(INIT_CASES))
def test_training_proceeds_and_the_saved_adapter_reloads_onto_the_original_base(tmp_path, tiny_llama_dir, init):
    data = config(tiny_llama_dir, {"init_lora_weights": init, **INIT_CASES[init]})
    result = pipeline.train(data, training_set=table(), output_directory=tmp_path, show_progress=False)
    losses = result.statistics["train_loss_per_step"]
    assert len(losses) == 8 and losses[-1] < losses[0]
    _, reloaded, _ = load_trained(result.model_dir)
    assert torch.allclose(logits(reloaded), logits(result.model), atol=1e-4)


def test_pissa_is_saved_as_a_plain_lora_adapter_for_the_original_base(tmp_path, tiny_llama_dir):
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = pipeline.train(config(tiny_llama_dir, {"init_lora_weights": "pissa"}), training_set=table(),
                            output_directory=tmp_path, show_progress=False)
    saved = json.loads((result.model_dir / "adapter_config.json").read_text())
    assert saved["init_lora_weights"] is True and saved["r"] == 8  # PEFT's PiSSA -> LoRA conversion (rank 2r)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), result.model_dir)
    assert torch.allclose(logits(plain.eval()), logits(result.model), atol=1e-4)


def test_eva_calibration_really_runs_before_training(tmp_path, tiny_llama_dir, monkeypatch):
    import peft

    calls = []
    real = peft.initialize_lora_eva_weights
    monkeypatch.setattr(peft, "initialize_lora_eva_weights", lambda *a, **k: calls.append(1) or real(*a, **k))
    data = config(tiny_llama_dir, {"init_lora_weights": "eva", "eva_config": {"n_samples": 8}})
    pipeline.train(data, training_set=table(), output_directory=tmp_path, show_progress=False)
    assert calls == [1]


# -- errors ------------------------------------------------------------------------------------------------------
def test_data_driven_initializer_without_rows_is_a_clear_error(tiny_llama_dir):
    with pytest.raises(FwError, match=r"adapter.init_lora_weights: 'eva' runs a calibration pass over training rows"):
        wrapped(tiny_llama_dir, "eva")


def test_eva_that_cannot_converge_names_the_fix(tiny_llama_dir):
    training = training_rows(tiny_llama_dir, rows=1, batch_size=1)
    with pytest.raises(FwError) as info:
        wrapped(tiny_llama_dir, "eva", training, r=16, eva_config={"n_samples": 1})
    message = str(info.value)
    assert message.startswith("adapter.eva_config: EVA's SVD did not converge") and "r * rho = 32" in message
    assert "use_label_mask: false" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error")
def test_loftq_on_cpu_says_what_is_missing(tiny_llama_dir):
    with pytest.raises(FwError) as info:
        wrapped(tiny_llama_dir, "loftq", loftq_config={"loftq_bits": 4})
    message = str(info.value)
    assert message.startswith("adapter.init_lora_weights: loftq needs") and "a CUDA GPU" in message


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="LoftQ quantizes with bitsandbytes: needs a CUDA GPU")
def test_loftq_trains_on_a_gpu(tmp_path, tiny_llama_dir):
    original, _, model = wrapped(tiny_llama_dir, "loftq", loftq_config={"loftq_bits": 4, "loftq_iter": 2})
    layer = lora_layer(model)
    w = original["model.layers.0.self_attn.q_proj.weight"].to(layer.base_layer.weight.device)
    quantized_error = (layer.base_layer.weight - w).norm()
    assert (layer.base_layer.weight + delta(layer) - w).norm() < quantized_error  # A/B cancel part of the error
    data = config(tiny_llama_dir, {"init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 4}})
    result = pipeline.train(data, training_set=table(), output_directory=tmp_path, show_progress=False)
    assert result.statistics["train_loss_per_step"][-1] < result.statistics["train_loss_per_step"][0]


def messages(data: dict) -> list[str]:
    return [str(issue) for issue in fw.validate_config(copy.deepcopy(data)).issues]


@pytest.mark.parametrize("adapter, extra, expected", [
    ({"init_lora_weights": "orthogonal", "r": 5}, {}, "adapter.r: init_lora_weights: orthogonal needs an even rank, "
                                                      "got 5; use r: 6 or 4"),
    ({"init_lora_weights": "orthogonal", "rank_pattern": {"q_proj": 3}}, {},
     "adapter.rank_pattern: init_lora_weights: orthogonal needs even ranks, got q_proj: 3"),
    ({"init_lora_weights": "pissa"}, {"quantization": {"bits": 4}},
     "adapter.init_lora_weights: 'pissa' decomposes the pretrained weights, which PEFT can only do on unquantized"),
    ({"init_lora_weights": "corda"}, {"quantization": {"backend": "torchao", "mode": "int8_weight_only"}},
     "adapter.init_lora_weights: 'corda' decomposes the pretrained weights"),
    ({"init_lora_weights": "olora"}, {"quantization": {"backend": "torchao", "mode": "int8_weight_only"}},
     "adapter.init_lora_weights: 'olora' decomposes the pretrained weights, which PEFT can do on float or "
     "bitsandbytes weights but not on 'torchao'"),
    ({"init_lora_weights": "orthogonal"}, {"quantization": {"bits": 8}},
     "adapter.init_lora_weights: 'orthogonal' builds A and B in the dtype of the base weight"),
    ({"init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 4}},
     {"quantization": {"backend": "torchao", "mode": "int4_weight_only"}},
     "adapter.init_lora_weights: 'loftq' on a quantized model needs bitsandbytes 4-bit quantization"),
    ({"init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 8}}, {"quantization": {"bits": 4}},
     "adapter.loftq_config.loftq_bits: must be 4 to match the 4-bit quantized model, got 8"),
    ({"type": "adalora", "init_lora_weights": "eva"}, {},
     "adapter.init_lora_weights: initializer 'eva' does not work with adapter 'adalora'"),
])
def test_initializer_combinations_peft_cannot_do_are_validation_errors(adapter, extra, expected):
    data = config("some/model", adapter, **extra)
    found = messages(data)
    assert any(message.startswith(expected) for message in found), found


@pytest.mark.parametrize("adapter, extra", [
    ({"init_lora_weights": "orthogonal", "r": 4}, {}),
    ({"init_lora_weights": "olora"}, {"quantization": {"bits": 4}}),
    ({"init_lora_weights": "eva"}, {"quantization": {"bits": 4}}),
    ({"init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 4}}, {"quantization": {"bits": 4}}),
    ({"init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 4}}, {}),
])
def test_combinations_peft_supports_validate(adapter, extra):
    assert messages(config("some/model", adapter, **extra)) == []
