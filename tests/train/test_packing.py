"""trainer.packing (fw.train.packing): padding-free packed micro-batches give the same per-row loss and gradients as
unpacked ones, training with packing follows the same loss curve, the config errors, trainer.compile."""
from __future__ import annotations

import os

import pandas as pd
import pytest
import torch

import fw
from fw.train import loss, packing, trainer
from fw import pipeline
from fw.data.tokens import EncodedRow, collate
from fw.errors import FwError

LENGTHS_AND_PROMPTS = [(12, 5), (7, 3), (20, 9), (4, 1)]


def rows(seed: int = 0) -> list[EncodedRow]:
    generator = torch.Generator().manual_seed(seed)
    made = []
    for length, prompt in LENGTHS_AND_PROMPTS:
        ids = torch.randint(5, 500, (length,), generator=generator).tolist()
        made.append(EncodedRow(ids, [-100] * prompt + ids[prompt:]))
    return made


@pytest.fixture()
def llama(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="sdpa", dtype=torch.float32)


# -- layout ------------------------------------------------------------------------------------------------------
def test_pack_keeps_every_row_once_within_the_budget():
    lengths = [9, 3, 7, 1, 5, 5, 2, 8, 4]
    bins = packing.pack(lengths, 10)
    assert sorted(i for group in bins for i in group) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in group) <= 10 for group in bins)
    assert len(bins) == 5  # 44 tokens, best-fit decreasing fills 4 bins to 10 and one to 4
    assert packing.pack(lengths, 10) == bins  # deterministic


def test_a_row_longer_than_the_budget_gets_a_batch_of_its_own():
    assert packing.pack([30, 4, 4], 10) == [[0], [1, 2]]


def test_budget_defaults_to_batch_size_times_mean_length_and_never_below_the_longest_row():
    assert packing.token_budget([10, 20, 30], {"batch_size": 2}) == 40
    assert packing.token_budget([10, 20, 30], {"batch_size": 2, "max_tokens_per_batch": 64}) == 64
    assert packing.token_budget([10, 20, 90], {"batch_size": 1, "max_tokens_per_batch": 50}) == 90


def test_packed_batch_restarts_positions_and_hides_each_rows_first_label():
    batch = packing.collate_packed(rows()[:2])
    assert batch["input_ids"].shape == (1, 19) and "attention_mask" not in batch
    assert batch["position_ids"][0].tolist() == list(range(12)) + list(range(7))
    assert batch["labels"][0, 12] == -100  # nothing predicts the second row's first token from the first row
    assert loss.response_tokens(batch["labels"]) == sum(row.trained_tokens for row in rows()[:2])


# -- equivalence -------------------------------------------------------------------------------------------------
def per_row_losses_unpacked(model, data):
    return [packing._row_loss(model, packing.collate_packed([row])) for row in data]


def test_packed_and_unpacked_give_the_same_per_row_loss(llama):
    data = rows()
    with torch.no_grad():
        separate = per_row_losses_unpacked(llama, data)
        padded = [float(v) for v in per_row_padded_losses(llama, data)]
        together = packing._per_row_losses(llama, packing.collate_packed(data), [len(r) for r in data])
    assert torch.allclose(torch.tensor(together), torch.tensor(separate), atol=1e-5)
    assert torch.allclose(torch.tensor(together), torch.tensor(padded), atol=1e-5)


def per_row_padded_losses(model, data):
    batch = collate(data, pad_token_id=3)
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits.float()
    token = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:],
                                              reduction="none")
    mask = batch["labels"][:, 1:] != -100
    return (token * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("chunked", [False, True])
def test_packed_and_unpacked_give_the_same_gradients(llama, chunked):
    compute = loss.chunked_loss_sum if chunked else loss.standard_loss_sum
    data = rows()

    def gradients(batch):
        llama.zero_grad(set_to_none=True)
        total, tokens = compute(llama, batch)
        (total / tokens).backward()
        return {name: p.grad.clone() for name, p in llama.named_parameters()}

    padded = gradients(collate(data, pad_token_id=3))
    packed = gradients(packing.collate_packed(data))
    for name, grad in padded.items():
        assert torch.allclose(packed[name], grad, atol=1e-6, rtol=1e-4), name


def test_rows_that_leak_into_each_other_are_refused(llama, monkeypatch):
    import transformers.masking_utils as masking

    monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda position_ids: None)
    with pytest.raises(FwError, match=r"trainer.packing: LlamaForCausalLM does not keep packed rows apart .*"
                                      r"set trainer.packing: false"):
        packing.check_rows_separated(llama, rows())


def test_cpu_keeps_the_loaded_attention(llama):
    assert packing.choose_attention(llama) == "sdpa" and not packing.uses_flash_kwargs(llama)


# -- training ----------------------------------------------------------------------------------------------------
def table(count: int = 10) -> pd.DataFrame:
    return pd.DataFrame({"question": [f"what is {i} plus {i * 7} {'and more ' * (i % 4)}" for i in range(count)],
                         "answer": [f"it is {i + i * 7}" + " really" * (i % 3) for i in range(count)]})


def config(base, **trainer_keys) -> dict:
    # accumulation covers the whole epoch, so every optimizer step sees the same rows packed or not
    return {"base_model": str(base), "input_features": [{"name": "question"}], "output_features": [{"name": "answer"}],
            "prompt": {"template": "Q: {question}\nA:"}, "adapter": {"type": "lora", "r": 4, "dropout": 0.0},
            "preprocessing": {"split": {"probabilities": [1.0, 0.0, 0.0]}},
            "trainer": {"type": "finetune", "epochs": 3, "batch_size": 2, "gradient_accumulation_steps": 16,
                        "learning_rate": 0.01,
                        "seed": 3, **trainer_keys}}


def test_training_with_packing_follows_the_same_loss_curve(tmp_path, tiny_llama_dir):
    curves, plans = {}, {}
    for packed in (False, True):
        data = config(tiny_llama_dir, packing=packed)
        result = pipeline.train(data, training_set=table(), output_directory=tmp_path / str(packed),
                                show_progress=False)
        curves[packed] = result.statistics["train_loss_per_step"]
        plans[packed] = trainer.plan(pipeline_rows(result), result.config["trainer"])
    assert len(curves[True]) == len(curves[False]) == 3
    assert curves[True] == pytest.approx(curves[False], rel=1e-4)
    assert curves[True][-1] < curves[True][0]
    assert plans[True].packed and len(plans[True].batches) <= len(plans[False].batches)


def pipeline_rows(result):
    from fw.data.tokens import encode

    frame = table()
    return encode([f"Q: {q}\nA:" for q in frame["question"]], list(frame["answer"]), result.tokenizer,
                  result.config)[0]


def test_max_tokens_per_batch_needs_packing():
    data = {"base_model": "x", "input_features": [{"name": "q", "type": "text"}],
            "output_features": [{"name": "a", "type": "text"}],
            "trainer": {"type": "finetune", "max_tokens_per_batch": 512}}
    assert [str(issue) for issue in fw.validate_config(data).issues] == [
        "trainer.max_tokens_per_batch: is the budget of a packed micro-batch, but trainer.packing is false. "
        "(set trainer.packing: true, or remove max_tokens_per_batch (batch_size counts rows))"]
    data["trainer"]["packing"] = True
    assert fw.validate_config(data).ok


def test_speed_keys_are_type_checked():
    data = {"base_model": "x", "input_features": [{"name": "q", "type": "text"}],
            "output_features": [{"name": "a", "type": "text"}],
            "trainer": {"type": "finetune", "packing": "yes", "compile": 1, "max_tokens_per_batch": 0}}
    found = " ".join(str(issue) for issue in fw.validate_config(data).issues)
    for key in ("trainer.packing", "trainer.compile", "trainer.max_tokens_per_batch"):
        assert key in found, found


# -- trainer.compile ---------------------------------------------------------------------------------------------
def test_compile_flag_compiles_the_decoder_and_trains(tmp_path, tiny_llama_dir, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    data = config(tiny_llama_dir, compile=True, train_steps=1, epochs=1)
    result = pipeline.train(data, training_set=table(4), output_directory=tmp_path, show_progress=False)
    assert compiled == ["LlamaModel"] and result.statistics["steps"] == 1


def test_a_compile_failure_names_the_key(llama, monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch.nn.Module, "compile", broken)
    with pytest.raises(FwError, match=r"^trainer.compile: torch.compile failed \(RuntimeError: no C\+\+ compiler\); "
                                      r"set trainer.compile: false\.$"):
        trainer.compile_model(llama)


def test_compile_really_trains_one_step_on_cpu(tmp_path, tiny_llama_dir, monkeypatch):
    """torch.compile for real: dynamo captures the decoder (packed position_ids, both loss paths) and the
    compiled model trains. The suite compiles with dynamo's ``eager`` backend (graph capture, no code
    generation: seconds); ``make bench`` runs this test with ``FW_TEST_COMPILE_BACKEND=inductor`` (torch's
    default, generated C++ kernels: about a minute on 2 cores)."""
    backend = os.environ.get("FW_TEST_COMPILE_BACKEND", "eager")
    real_compile, compiled = torch.nn.Module.compile, []

    def compile_with_backend(self, *args, **kwargs):
        compiled.append(type(self).__name__)
        return real_compile(self, *args, **{**kwargs, "backend": backend})

    monkeypatch.setattr(torch.nn.Module, "compile", compile_with_backend)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    data = config(tiny_llama_dir, compile=True, packing=True, train_steps=1, epochs=1)
    result = pipeline.train(data, training_set=table(4), output_directory=tmp_path, show_progress=False)
    assert result.statistics["steps"] == 1 and result.statistics["train_loss_per_step"][0] > 0
    assert compiled == ["LlamaModel"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # dynamo really captured the decoder
