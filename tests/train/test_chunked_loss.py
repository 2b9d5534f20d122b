"""trainer.chunked_loss (fw.train.loss): the output head + cross-entropy on response tokens only, in chunks, gives the
same loss and gradients as ``model(**batch).loss`` — full fine-tune and LoRA, with and without ``lm_head`` in
the targets — and falls back to the model's own loss where it would not."""
from __future__ import annotations

import pytest
import torch

from fw.train import loss, packing
from fw.data.tokens import EncodedRow, collate


def rows() -> list[EncodedRow]:
    generator = torch.Generator().manual_seed(1)
    made = []
    for length, prompt in [(15, 6), (9, 4), (22, 10)]:
        ids = torch.randint(5, 500, (length,), generator=generator).tolist()
        made.append(EncodedRow(ids, [-100] * prompt + ids[prompt:]))
    return made


def base_model(directory):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(directory, attn_implementation="sdpa", dtype=torch.float32)


def lora_model(directory, targets):
    import peft

    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, init_lora_weights=False)
    return peft.get_peft_model(base_model(directory), config)


MODELS = {
    "full fine-tune": lambda d: base_model(d),
    "lora": lambda d: lora_model(d, ["q_proj", "v_proj", "down_proj"]),
    "lora on lm_head": lambda d: lora_model(d, ["q_proj", "v_proj", "lm_head"]),
}


def loss_and_gradients(model, compute, batch):
    model.zero_grad(set_to_none=True)
    total, tokens = compute(model, batch)
    mean = total / tokens
    mean.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return float(mean.detach()), grads


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("packed", [False, True])
def test_chunked_loss_equals_the_models_own_loss_and_gradients(tiny_llama_dir, kind, packed):
    model = MODELS[kind](tiny_llama_dir)
    batch = packing.collate_packed(rows()) if packed else collate(rows(), pad_token_id=3)
    expected = model(**batch, use_cache=False).loss
    standard, standard_grads = loss_and_gradients(model, loss.standard_loss_sum, batch)
    chunked, chunked_grads = loss_and_gradients(model, loss.chunked_loss_sum, batch)
    assert standard == pytest.approx(float(expected), rel=1e-6)
    assert chunked == pytest.approx(standard, rel=1e-5)
    assert chunked_grads.keys() == standard_grads.keys()
    if kind == "lora on lm_head":
        assert any("lm_head.lora_A" in name for name in chunked_grads)
        assert all(chunked_grads[name].abs().sum() > 0 for name in chunked_grads if "lm_head.lora" in name)
    for name, grad in standard_grads.items():
        assert torch.allclose(chunked_grads[name], grad, atol=1e-6, rtol=1e-4), name


def test_several_chunks_under_checkpointing_give_the_same_gradients(tiny_llama_dir, monkeypatch):
    model = lora_model(tiny_llama_dir, ["q_proj", "lm_head"])
    batch = collate(rows(), pad_token_id=3)
    standard, standard_grads = loss_and_gradients(model, loss.standard_loss_sum, batch)
    calls = []
    original = loss.head_cross_entropy
    monkeypatch.setattr(loss, "head_cross_entropy", lambda *a: calls.append(len(a[2])) or original(*a))
    monkeypatch.setattr(loss, "CHUNK_ELEMENTS", 512 * 8)  # 8 tokens of the 512-word vocabulary per chunk
    chunked, chunked_grads = loss_and_gradients(model, loss.chunked_loss_sum, batch)
    assert calls[:4] == [8, 8, 8, 2]  # 26 trained tokens in 4 chunks (then recomputed in the backward pass)
    assert len(calls) == 8
    assert chunked == pytest.approx(standard, rel=1e-5)
    for name, grad in standard_grads.items():
        assert torch.allclose(chunked_grads[name], grad, atol=1e-6, rtol=1e-4), name


def test_a_batch_without_trained_tokens_gives_zero(tiny_llama_dir):
    model = base_model(tiny_llama_dir)
    batch = collate([EncodedRow([1, 5, 6], [-100, -100, -100])], pad_token_id=3)
    total, tokens = loss.chunked_loss_sum(model, batch)
    assert tokens == 0 and float(total) == 0.0


def test_the_chunked_path_is_chosen_for_lora_and_full_fine_tuning(tiny_llama_dir):
    batch = collate(rows(), pad_token_id=3)
    for make in MODELS.values():
        assert loss.choose(make(tiny_llama_dir), batch, True) is loss.chunked_loss_sum
    assert loss.choose(base_model(tiny_llama_dir), batch, False) is loss.standard_loss_sum


def test_adalora_and_logit_softcapping_keep_the_models_own_loss(tiny_llama_dir):
    import peft

    adalora = peft.get_peft_model(base_model(tiny_llama_dir),
                                  peft.AdaLoraConfig(target_modules=["q_proj"], total_step=10, init_r=4))
    assert loss.unsupported_reason(adalora) == "AdaLoraModel adds its own term to the loss"
    assert loss.choose(adalora, collate(rows(), pad_token_id=3), True) is loss.standard_loss_sum
    capped = base_model(tiny_llama_dir)
    capped.config.final_logit_softcapping = 30.0
    assert loss.unsupported_reason(capped) == "LlamaForCausalLM transforms its logits (final_logit_softcapping)"


def test_a_model_whose_loss_differs_falls_back(tiny_llama_dir, monkeypatch):
    model = base_model(tiny_llama_dir)
    monkeypatch.setattr(loss, "head_cross_entropy", lambda head, states, targets: head(states).sum() * 0.0)
    assert loss.choose(model, collate(rows(), pad_token_id=3), True) is loss.standard_loss_sum


def test_the_probe_runs_the_model_once_and_catches_a_head_input_the_decoder_does_not_give(tiny_llama_dir,
                                                                                          monkeypatch):
    from transformers.modeling_outputs import CausalLMOutputWithPast

    model = lora_model(tiny_llama_dir, ["q_proj", "v_proj"])
    decoder_calls = []
    loss.transformers_model(model).get_decoder().register_forward_hook(lambda *args: decoder_calls.append(1))
    batch = collate(rows(), pad_token_id=3)
    assert loss.choose(model, batch, True) is loss.chunked_loss_sum and len(decoder_calls) == 1

    def scaled_forward(self, input_ids=None, labels=None, **kwargs):  # as MiniCPM: hidden states scaled first
        hidden = self.model(input_ids=input_ids, **kwargs).last_hidden_state
        logits = self.lm_head(hidden * 0.5)
        return CausalLMOutputWithPast(loss=self.loss_function(logits, labels, self.config.vocab_size), logits=logits)

    monkeypatch.setattr(type(loss.transformers_model(model)), "forward", scaled_forward)
    assert loss.choose(model, batch, True) is loss.standard_loss_sum and len(decoder_calls) == 2
