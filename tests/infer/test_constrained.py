"""constrain_to_vocabulary: a label-trie LogitsProcessor makes every generation exactly one label, even from a
random-init model and with sampling or beams."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fw.config.load import load_config
from fw.infer.constrained import LabelTrie, LabelTrieLogitsProcessor, build_trie, label_token_variants
from fw.infer.generation import generate

LABELS = ["positive", "negative", "neutral", "mixed feelings"]


def config(base, constrained: bool, generation=None) -> dict:
    match = {label: {"type": "contains", "value": label} for label in LABELS}
    return load_config({
        "base_model": str(base), "input_features": [{"name": "review"}],
        "output_features": [{"name": "label", "type": "category", "preprocessing": {"fallback_label": "neutral"},
                             "decoder": {"type": "category_extractor", "constrain_to_vocabulary": constrained,
                                         "match": match}}],
        "prompt": {"template": "Review: {review}\nSentiment:"},
        "trainer": {"type": "none", "batch_size": 32, "seed": 0},
        "generation": {"max_new_tokens": 4, **(generation or {})}}).data


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval(), AutoTokenizer.from_pretrained(tiny_llama_dir)


def prompts(tokenizer, rows: int):
    words = ["good", "bad", "movie", "food", "slow", "wonderful", "cold", "fox", "quick", "lazy"]
    texts = [f"Review: the {words[i % 10]} {words[(i * 7) % 10]} {i}\nSentiment:" for i in range(rows)]
    return [tokenizer(text).input_ids for text in texts]


def test_constrained_random_model_yields_only_valid_labels_over_200_rows(tiny, tiny_llama_dir):
    model, tokenizer = tiny
    ids = prompts(tokenizer, 200)
    constrained = generate(model, tokenizer, ids, config(tiny_llama_dir, True, {"do_sample": True, "temperature": 1.0}))
    free = generate(model, tokenizer, ids, config(tiny_llama_dir, False, {"do_sample": True, "temperature": 1.0}))
    assert sum(g.text in LABELS for g in constrained) == 200
    assert sum(g.text in LABELS for g in free) < 20
    assert len({g.text for g in constrained}) > 1  # the model still chooses


@pytest.mark.parametrize("generation", [{"do_sample": False}, {"num_beams": 3, "do_sample": False},
                                        {"num_beams": 2, "do_sample": True},
                                        {"penalty_alpha": 0.5, "top_k": 4},
                                        {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 1.0}])
def test_every_strategy_stays_on_the_labels(tiny, tiny_llama_dir, generation):
    model, tokenizer = tiny
    outputs = generate(model, tokenizer, prompts(tokenizer, 12), config(tiny_llama_dir, True, generation))
    assert all(g.text in LABELS for g in outputs), [g.text for g in outputs]


def test_the_trie_allows_label_prefixes_then_eos():
    trie = LabelTrie([[1, 2], [1, 3, 4], [5]])
    assert sorted(trie.allowed([], [0])) == [1, 5]
    assert sorted(trie.allowed([1], [0])) == [2, 3]
    assert trie.allowed([1, 2], [0]) == [0]           # complete: only EOS
    assert trie.allowed([9], [0]) is None             # off the trie


def test_a_label_that_prefixes_another_may_end_or_continue(tiny):
    _, tokenizer = tiny
    trie = build_trie(tokenizer, ["pos", "positive"])
    pos = label_token_variants(tokenizer, "pos")[0]
    allowed = trie.allowed(pos, [tokenizer.eos_token_id])
    if label_token_variants(tokenizer, "positive")[0][:len(pos)] == pos:
        assert tokenizer.eos_token_id in allowed and len(allowed) > 1


def test_finished_rows_only_get_eos_or_padding_never_all_minus_infinity():
    trie = LabelTrie([[1, 2]])
    processor = LabelTrieLogitsProcessor(trie, prompt_width=1, eos=[0], pad=3)
    scores = processor(torch.tensor([[9, 1, 2, 0]]), torch.zeros((1, 6)))
    assert torch.isfinite(scores).tolist() == [[True, False, False, True, False, False]]


def test_the_constrained_generation_length_is_the_longest_label_plus_eos(tiny, tiny_llama_dir):
    from fw.infer.generation import constrained_processors

    _, tokenizer = tiny
    factories, depth = constrained_processors(config(tiny_llama_dir, True), tokenizer)
    assert len(factories) == 1 and depth == max(len(v) for label in LABELS
                                                for v in label_token_variants(tokenizer, label))


def test_constrain_with_min_new_tokens_is_a_config_error(tiny_llama_dir):
    import fw

    with pytest.raises(fw.ConfigError, match="generation.min_new_tokens: with constrain_to_vocabulary"):
        config(tiny_llama_dir, True, {"min_new_tokens": 2})
