"""Quantization on the tiny Llama: torchao PTQ modes on CPU, LoRA on a quantized base, QAT (full and with LoRA)
converted at save time and reloaded by fw predict, bitsandbytes QLoRA (CPU when bitsandbytes is installed, a
`gpu` test on CUDA), and the errors a user can cause (validation messages and one-line FwErrors)."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from fw import pipeline
from fw.artifacts import load_trained
from fw.errors import FwError
from fw.model.loading import load_base_model

PROBE = torch.tensor([[1, 5, 9, 20, 30, 41]])
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def table(rows: int = 12) -> pd.DataFrame:
    return pd.DataFrame({"question": [f"what is {i} plus one" for i in range(rows)],
                         "answer": [f"it is {i + 1}" for i in range(rows)]})


def config(base, quantization, adapter=None, **overrides) -> dict:
    data = {"base_model": str(base), "input_features": [{"name": "question"}],
            "output_features": [{"name": "answer"}], "prompt": {"template": "Q: {question}\nA:"},
            "quantization": quantization,
            "trainer": {"type": "finetune", "epochs": 1, "batch_size": 4, "learning_rate": 0.01, "seed": 1},
            "generation": {"max_new_tokens": 3, "do_sample": False}}
    if adapter is not None:
        data["adapter"] = adapter
    data.update(overrides)
    return data


def torchao(mode: str, qat: bool = False) -> dict:
    return {"backend": "torchao", "mode": mode, "qat": qat}


def logits(model):
    with torch.no_grad():
        return model(PROBE.to(next(model.parameters()).device)).logits.float().cpu()


def weight_type(model) -> str:
    """The class of the first attention projection's weight (a torchao tensor subclass when quantized)."""
    for name, parameter in model.named_parameters():
        if name.endswith("q_proj.weight") or name.endswith("q_proj.base_layer.weight"):
            return type(parameter.data).__name__
    raise AssertionError("no q_proj weight")


def train(tmp_path, data, rows: int = 12):
    return pipeline.train(data, dataset=table(rows), output_directory=tmp_path / "results", show_progress=False)


def validation_messages(data) -> str:
    from fw.config.load import load_config

    with pytest.raises(FwError) as caught:
        load_config(data)
    return str(caught.value)


# -- torchao post-training quantization --------------------------------------------------------------------------
@pytest.mark.parametrize("mode, tolerance", [("int4_weight_only", 0.5), ("int8_weight_only", 0.05),
                                             ("int8_dynamic", 0.05)])
def test_torchao_modes_quantize_the_tiny_model_on_cpu(tiny_llama_dir, mode, tolerance):
    plain, _ = load_base_model(config(tiny_llama_dir, None))
    quantized, _ = load_base_model(config(tiny_llama_dir, torchao(mode)))
    assert weight_type(plain) == "Tensor"
    assert weight_type(quantized) in ("IntxUnpackedToInt8Tensor",)
    assert type(quantized.lm_head.weight.data).__name__ == "Tensor"  # the output head stays in full precision
    difference = (logits(plain) - logits(quantized)).abs().max().item()
    assert 0 < difference < tolerance


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a CUDA GPU")
def test_float8_without_an_h100_class_gpu_is_one_clear_error(tiny_llama_dir):
    with pytest.raises(FwError, match=r"^quantization.mode: float8 needs a CUDA GPU with compute capability >= 8.9 "
                                      r"\(H100, L4, RTX 40xx\) and this machine has no CUDA GPU. Use mode "
                                      r"int8_weight_only or int4_weight_only here.$"):
        load_base_model(config(tiny_llama_dir, torchao("float8")))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a CUDA GPU")
def test_fw_train_fails_on_float8_before_creating_a_run(tmp_path, tiny_llama_dir):
    with pytest.raises(FwError, match="^quantization.mode: float8 needs a CUDA GPU"):
        train(tmp_path, config(tiny_llama_dir, torchao("float8"), {"type": "lora"}))
    assert not (tmp_path / "results").exists()


def test_torchao_not_installed_says_how_to_install(tiny_llama_dir, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    with pytest.raises(FwError, match=r"^quantization.backend: torchao is not installed. Install it with "
                                      r"`pip install torchao` \(or `pip install 'fw\[train\]'`\).$"):
        load_base_model(config(tiny_llama_dir, torchao("int8_weight_only")))


def test_lora_trains_on_a_torchao_int4_base_and_reloads_quantized(tmp_path, tiny_llama_dir):
    result = train(tmp_path, config(tiny_llama_dir, torchao("int4_weight_only"), {"type": "lora", "r": 4}))
    losses = result.statistics["train_loss_per_step"]
    assert losses[-1] < losses[0]
    assert (result.model_dir / "adapter_model.safetensors").is_file()
    _, reloaded, _ = load_trained(result.model_dir)
    assert weight_type(reloaded) == "IntxUnpackedToInt8Tensor"
    assert torch.allclose(logits(result.model), logits(reloaded), atol=1e-5)


def test_lora_trains_through_int8_dynamic_on_fake_quantization_and_runs_on_the_real_kernels(tmp_path, tiny_llama_dir):
    """Real int8 activations carry no gradient; training uses fake quantization with the same numerics."""
    result = train(tmp_path, config(tiny_llama_dir, torchao("int8_dynamic"), {"type": "lora", "r": 4}))
    assert type(result.model.base_model.model.model.layers[0].self_attn.o_proj).__name__ == "FakeQuantizedLinear"
    _, reloaded, _ = load_trained(result.model_dir)
    assert weight_type(reloaded) == "IntxUnpackedToInt8Tensor"
    assert torch.allclose(logits(result.model), logits(reloaded), atol=1e-3)


def test_merged_lora_on_a_torchao_base_saves_a_quantized_model(tmp_path, tiny_llama_dir):
    adapter = {"type": "lora", "r": 4, "postprocessor": {"merge_adapter_into_base_model": True}}
    result = train(tmp_path, config(tiny_llama_dir, torchao("int8_weight_only"), adapter))
    saved = json.loads((result.model_dir / "config.json").read_text())
    assert saved["quantization_config"]["quant_method"] == "torchao"
    _, reloaded, _ = load_trained(result.model_dir)
    assert weight_type(reloaded) == "IntxUnpackedToInt8Tensor"
    assert torch.allclose(logits(result.model), logits(reloaded), atol=1e-5)


# -- quantization-aware training ---------------------------------------------------------------------------------
def test_qat_full_fine_tune_converts_to_real_int4_weights_at_save(tmp_path, tiny_llama_dir):
    result = train(tmp_path, config(tiny_llama_dir, torchao("int4_weight_only", qat=True)))
    assert weight_type(result.model) == "IntxUnpackedToInt8Tensor"  # converted before saving
    saved = json.loads((result.model_dir / "config.json").read_text())
    assert saved["quantization_config"]["quant_type"]["default"]["_type"] == "IntxWeightOnlyConfig"
    _, reloaded, _ = load_trained(result.model_dir)
    assert weight_type(reloaded) == "IntxUnpackedToInt8Tensor"
    assert torch.allclose(logits(result.model), logits(reloaded), atol=1e-5)
    predictions = pipeline.predict(model_path=result.model_dir, dataset=table(4), show_progress=False)
    assert len(predictions.predictions) == 4


def test_qat_inserts_fake_quantization_before_training(tiny_llama_dir):
    model, _ = load_base_model(config(tiny_llama_dir, torchao("int8_weight_only", qat=True)), for_training=True)
    projection = model.model.layers[0].self_attn.q_proj
    assert type(projection).__name__ == "FakeQuantizedLinear" and projection.weight_fake_quantizer is not None
    assert type(model.lm_head).__name__ == "Linear"
    inference, _ = load_base_model(config(tiny_llama_dir, torchao("int8_weight_only", qat=True)))
    assert weight_type(inference) == "IntxUnpackedToInt8Tensor"  # loaded for inference: quantized for real


def test_qat_lora_adapter_reloads_on_the_real_quantized_base_with_the_trained_outputs(tmp_path, tiny_llama_dir):
    result = train(tmp_path, config(tiny_llama_dir, torchao("int4_weight_only", qat=True), {"type": "lora", "r": 4}))
    assert (result.model_dir / "adapter_model.safetensors").is_file()
    _, reloaded, _ = load_trained(result.model_dir)
    assert weight_type(reloaded) == "IntxUnpackedToInt8Tensor"
    # fake quantization of the weights is exactly the real quantization: the adapter sees the base it trained on
    assert torch.allclose(logits(result.model), logits(reloaded), atol=1e-4)


# -- bitsandbytes ------------------------------------------------------------------------------------------------
def test_bitsandbytes_not_installed_says_what_is_missing(tiny_llama_dir, monkeypatch):
    from fw.plugins.quantizers import bitsandbytes

    monkeypatch.setattr(bitsandbytes, "_installed_version", lambda: None)
    with pytest.raises(FwError, match=r"^quantization: backend 'bitsandbytes' cannot run here: the bitsandbytes "
                                      r"package is not installed \(pip install bitsandbytes, or pip install "
                                      r"'fw\[bitsandbytes\]'; bitsandbytes >= 0.50.0 also runs without a "
                                      r"CUDA GPU\).$"):
        load_base_model(config(tiny_llama_dir, {"bits": 4}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a CUDA GPU")
def test_old_bitsandbytes_on_cpu_says_a_gpu_or_an_upgrade_is_needed(tiny_llama_dir, monkeypatch):
    from fw.plugins.quantizers import bitsandbytes

    monkeypatch.setattr(bitsandbytes, "_installed_version", lambda: "0.43.1")
    with pytest.raises(FwError, match=r"no CUDA GPU is available and bitsandbytes 0.43.1 runs only on one "
                                      r"\(bitsandbytes >= 0.50.0 also runs on CPU: pip install -U bitsandbytes\)"):
        load_base_model(config(tiny_llama_dir, {"bits": 8}))


def qlora_round_trip(tmp_path, tiny_llama_dir, quantization: dict, tolerance: float = 1e-2):
    """Train LoRA on the bitsandbytes-quantized tiny model, reload it, and check both give the same logits
    (``tolerance``: prepare_model_for_kbit_training keeps norms and head in fp32 while training, a reloaded
    bf16 model on a GPU does not)."""
    result = train(tmp_path, config(tiny_llama_dir, quantization, {"type": "lora", "r": 4}))
    losses = result.statistics["train_loss_per_step"]
    assert losses[-1] < losses[0]
    _, reloaded, _ = load_trained(result.model_dir)
    linear = reloaded.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(linear).__name__ == ("Linear4bit" if quantization["bits"] == 4 else "Linear8bitLt")
    assert torch.allclose(logits(result.model), logits(reloaded), atol=tolerance, rtol=tolerance)
    return result


@pytest.mark.parametrize("quantization", [
    {"bits": 4, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float32"},
    {"bits": 4, "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False, "bnb_4bit_compute_dtype": "float32"},
    {"bits": 8, "llm_int8_threshold": 6.0},
])
def test_qlora_with_bitsandbytes_trains_and_reloads(tmp_path, tiny_llama_dir, quantization):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install 'fw[bitsandbytes]')")
    if not torch.cuda.is_available():
        from fw.plugins.quantizers.bitsandbytes import CPU_MIN_VERSION, _installed_version, _version_tuple

        if _version_tuple(_installed_version()) < _version_tuple(CPU_MIN_VERSION):
            pytest.skip(f"bitsandbytes < {CPU_MIN_VERSION} needs a CUDA GPU")
    qlora_round_trip(tmp_path, tiny_llama_dir, quantization)


@pytest.mark.gpu
@needs_cuda
def test_qlora_nf4_on_the_gpu(tmp_path, tiny_llama_dir):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install 'fw[bitsandbytes]')")
    result = qlora_round_trip(tmp_path, tiny_llama_dir, {"bits": 4, "bnb_4bit_compute_dtype": "bfloat16"},
                              tolerance=0.1)
    assert next(result.model.parameters()).device.type == "cuda"


@pytest.mark.gpu
@needs_cuda
def test_float8_lora_on_an_h100_class_gpu(tmp_path, tiny_llama_dir):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 needs compute capability >= 8.9")
    result = train(tmp_path, config(tiny_llama_dir, torchao("float8"), {"type": "lora", "r": 4}))
    _, reloaded, _ = load_trained(result.model_dir)
    assert weight_type(reloaded) == "Float8Tensor"


# -- validation --------------------------------------------------------------------------------------------------
def test_qat_with_bitsandbytes_is_a_config_error(tiny_llama_dir):
    message = validation_messages(config(tiny_llama_dir, {"bits": 4, "qat": True}, {"type": "lora"}))
    assert "quantization.qat: QAT is not supported by backend 'bitsandbytes'." in message
    assert "QAT requires backend: torchao" in message


def test_torchao_without_a_mode_is_a_config_error(tiny_llama_dir):
    message = validation_messages(config(tiny_llama_dir, {"backend": "torchao"}, {"type": "lora"}))
    assert "quantization.mode" in message


def test_full_fine_tune_of_quantized_weights_needs_qat(tiny_llama_dir):
    from fw.config.load import load_config

    message = validation_messages(config(tiny_llama_dir, torchao("int8_weight_only")))
    assert "quantized fine-tuning needs a LoRA-family adapter" in message
    load_config(config(tiny_llama_dir, torchao("int8_weight_only", qat=True)))  # QAT trains the full weights


def test_a_bitsandbytes_model_goes_through_prepare_model_for_kbit_training(monkeypatch):
    import peft

    from fw.model import quantization

    calls = []
    monkeypatch.setattr(peft, "prepare_model_for_kbit_training",
                        lambda model, **kwargs: calls.append(kwargs) or model)
    model = torch.nn.Linear(2, 2)
    assert quantization.prepare_for_training(model, {"trainer": {}}) is model and not calls  # not quantized
    model.is_loaded_in_4bit = True
    quantization.prepare_for_training(model, {"trainer": {"type": "finetune", "enable_gradient_checkpointing": True}})
    assert calls == [{"use_gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}]


def test_qat_lora_trains_exactly_like_lora_on_the_real_quantized_base(tmp_path, tiny_llama_dir):
    """Weight-only fake quantization computes what the real quantized weights compute, and the QAT swap keeps
    the adapter's random initialization: the two runs have the same losses."""
    adapter = {"type": "lora", "r": 4}
    real = train(tmp_path / "real", config(tiny_llama_dir, torchao("int8_weight_only"), adapter))
    fake = train(tmp_path / "fake", config(tiny_llama_dir, torchao("int8_weight_only", qat=True), adapter))
    assert fake.statistics["train_loss_per_step"] == pytest.approx(real.statistics["train_loss_per_step"], abs=1e-4)
