"""The generation section on the tiny Llama: the spec's six decoding strategies (contrastive and diverse beam
search through fw's local implementations), every key reaching transformers, max_new_tokens fallbacks, and
invalid combinations rejected by validation."""
from __future__ import annotations

import pytest
from spec_location import SNIPPETS, needs_snippets
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

import fw
from fw.config.load import load_config
from fw.infer.settings import plan, resolve_max_new_tokens
from fw.infer.strategies import strategy_name
from fw.infer.strategies.contrastive import contrastive_search
from fw.infer.strategies.group_beam import group_beam_search
from fw.infer.generation import generate, left_pad
from fw.config.validate import validate

PROMPTS = ["Classify the sentiment of the review: the movie", "Question: what is", "the food was cold"]

#: the spec's generation strategies (snippets generation_*.yaml)
STRATEGIES = {
    "greedy": {"num_beams": 1, "do_sample": False},
    "multinomial": {"num_beams": 1, "do_sample": True},
    "beam": {"num_beams": 2, "do_sample": False},
    "contrastive": {"penalty_alpha": 0.1, "top_k": 2},
    "beam_multinomial": {"num_beams": 2, "do_sample": True},
    "diverse_beam": {"num_beams": 2, "num_beam_groups": 2, "diversity_penalty": 0.5},
}


def config(base, generation=None, **overrides) -> dict:
    data = {"base_model": str(base), "input_features": [{"name": "question"}],
            "output_features": [{"name": "answer"}], "prompt": {"template": "{question}"},
            "trainer": {"type": "none", "batch_size": 2, "seed": 3},
            "generation": {"max_new_tokens": 6, **(generation or {})}}
    data.update(overrides)
    return load_config(data).data


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_llama_dir)


def prompt_ids(tokenizer):
    return [tokenizer(prompt).input_ids for prompt in PROMPTS]


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_each_spec_strategy_generates_on_the_tiny_model(tiny, tiny_llama_dir, name):
    model, tokenizer = tiny
    data = config(tiny_llama_dir, STRATEGIES[name])
    first = generate(model, tokenizer, prompt_ids(tokenizer), data)
    assert len(first) == len(PROMPTS) and all(g.raw for g in first)
    assert first == generate(model, tokenizer, prompt_ids(tokenizer), data)  # seeded: repeatable


def test_contrastive_and_diverse_beam_use_the_local_strategies_not_the_hub(tiny_llama_dir):
    assert strategy_name(config(tiny_llama_dir, STRATEGIES["contrastive"])["generation"]) == "contrastive_search"
    assert strategy_name(config(tiny_llama_dir, STRATEGIES["diverse_beam"])["generation"]) == "group_beam_search"
    for name in ("greedy", "multinomial", "beam", "beam_multinomial"):
        assert strategy_name(config(tiny_llama_dir, STRATEGIES[name])["generation"]) is None


def run(model, tokenizer, custom, **settings):
    ids, mask = left_pad(prompt_ids(tokenizer), tokenizer.pad_token_id)
    generation = GenerationConfig(max_new_tokens=6, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id, **settings)
    return model.generate(input_ids=ids, attention_mask=mask, generation_config=generation, custom_generate=custom)


def test_contrastive_search_without_penalty_is_greedy_search(tiny):
    model, tokenizer = tiny
    greedy = run(model, tokenizer, None, do_sample=False)
    assert torch.equal(run(model, tokenizer, contrastive_search, penalty_alpha=0.0, top_k=4), greedy)


def test_contrastive_penalty_changes_the_choice(tiny):
    model, tokenizer = tiny
    greedy = run(model, tokenizer, None, do_sample=False)
    assert not torch.equal(run(model, tokenizer, contrastive_search, penalty_alpha=0.9, top_k=8), greedy)


def test_group_beam_search_with_one_beam_per_group_and_no_penalty_is_greedy(tiny):
    model, tokenizer = tiny
    greedy = run(model, tokenizer, None, do_sample=False)
    grouped = run(model, tokenizer, group_beam_search, num_beams=2, num_beam_groups=2, diversity_penalty=0.0)
    assert torch.equal(grouped[:, :greedy.shape[1]], greedy)


def test_diversity_penalty_makes_groups_differ(tiny):
    model, tokenizer = tiny
    from fw.infer.strategies import group_beam

    seen = []
    original = group_beam._State.best

    def capture(state, input_ids, prompt_length, pad):
        result = original(state, input_ids, prompt_length, pad)  # adds the open beams
        seen.append([[item[1] for item in group.found] for group in state.hypotheses[0]])
        return result

    group_beam._State.best = capture
    try:
        run(model, tokenizer, group_beam_search, num_beams=4, num_beam_groups=2, diversity_penalty=5.0)
    finally:
        group_beam._State.best = original
    first_group, second_group = seen[0]
    assert first_group[0] != second_group[0]


# -- every key reaches transformers ------------------------------------------------------------------------------
EVERY_KEY = {"temperature": 0.7, "min_new_tokens": 1, "min_length": 2, "do_sample": True, "use_cache": True,
             "top_k": 10, "top_p": 0.9, "typical_p": 0.95, "epsilon_cutoff": 0.0003, "eta_cutoff": 0.0005,
             "repetition_penalty": 1.2, "encoder_repetition_penalty": 1.1, "length_penalty": 1.0,
             "no_repeat_ngram_size": 2, "bad_words_ids": [[7]], "renormalize_logits": True,
             "forced_bos_token_id": 5, "forced_eos_token_id": 2, "remove_invalid_values": True,
             "exponential_decay_length_penalty": [3, 1.5], "suppress_tokens": [8, 9], "begin_suppress_tokens": [10],
             "sequence_bias": {"11 12": -3.0}, "max_time": 30.0, "early_stopping": False}


def test_every_generation_key_maps_onto_the_generation_config(tiny, tiny_llama_dir):
    model, tokenizer = tiny
    data = config(tiny_llama_dir, EVERY_KEY)
    generation = plan(data, tokenizer, model).config
    for key, value in EVERY_KEY.items():
        if key == "forced_bos_token_id":  # fw forces it itself (transformers only does for encoder-decoders)
            continue
        expected = [[[11, 12], -3.0]] if key == "sequence_bias" else value
        assert getattr(generation, key) == expected, key
    assert all(g.text is not None for g in generate(model, tokenizer, prompt_ids(tokenizer), data))


def new_tokens(model, tokenizer, data):
    settings = plan(data, tokenizer, model)
    ids, mask = left_pad(prompt_ids(tokenizer), tokenizer.pad_token_id)
    output = model.generate(input_ids=ids, attention_mask=mask, **settings.generate_kwargs(ids.shape[1]))
    return output[:, ids.shape[1]:]


def test_forced_bos_and_suppressed_tokens_take_effect(tiny, tiny_llama_dir):
    model, tokenizer = tiny
    unforced = new_tokens(model, tokenizer, config(tiny_llama_dir, {"do_sample": False}))
    suppressed = int(unforced[0, 1])
    new = new_tokens(model, tokenizer, config(tiny_llama_dir, {"do_sample": False, "forced_bos_token_id": 42,
                                                               "suppress_tokens": [suppressed]}))
    assert new[:, 0].tolist() == [42] * 3 and suppressed not in new.tolist()[0]


def test_forced_decoder_ids_are_applied_by_fw(tiny, tiny_llama_dir):
    model, tokenizer = tiny
    new = new_tokens(model, tokenizer, config(tiny_llama_dir, {"do_sample": False,
                                                               "forced_decoder_ids": [[1, 30], [3, 31]]}))
    assert new[:, 0].tolist() == [30] * 3 and new[:, 2].tolist() == [31] * 3


def test_guidance_scale_and_prompt_lookup_generate(tiny, tiny_llama_dir):
    model, tokenizer = tiny
    for extra in ({"guidance_scale": 1.5, "do_sample": False}, {"prompt_lookup_num_tokens": 2, "do_sample": False}):
        data = config(tiny_llama_dir, extra)
        assert len(generate(model, tokenizer, prompt_ids(tokenizer), data)) == 3
    assert plan(config(tiny_llama_dir, {"prompt_lookup_num_tokens": 2}), tokenizer, model).batch_size == 1
    assert plan(config(tiny_llama_dir, {"prompt_lookup_num_tokens": 0}), tokenizer, model).batch_size is None


# -- max_new_tokens fallback -------------------------------------------------------------------------------------
def test_max_new_tokens_falls_back_output_then_global_then_context(tiny, tiny_llama_dir):
    model, _ = tiny
    base = config(tiny_llama_dir, {"max_new_tokens": None})
    assert resolve_max_new_tokens(config(tiny_llama_dir, {"max_new_tokens": 7}), model, 10) == 7
    output = config(tiny_llama_dir, {"max_new_tokens": None},
                    output_features=[{"name": "answer", "preprocessing": {"max_sequence_length": 12}}])
    assert resolve_max_new_tokens(output, model, 10) == 12
    global_limit = config(tiny_llama_dir, {"max_new_tokens": None},
                          preprocessing={"global_max_sequence_length": 20})
    assert resolve_max_new_tokens(global_limit, model, 10) == 20
    assert resolve_max_new_tokens(base, model, 10) == 256 // 2  # half the tiny model's context, as Ludwig
    assert resolve_max_new_tokens(base, model, 200) == 256 - 200  # never past the context
    assert plan(base, AutoTokenizer.from_pretrained(tiny_llama_dir), model, 10).config.max_new_tokens == 128


def test_max_new_tokens_wins_over_max_length(tiny, tiny_llama_dir):
    model, tokenizer = tiny
    generation = plan(config(tiny_llama_dir, {"max_new_tokens": 5, "max_length": 3}), tokenizer, model).config
    assert generation.max_new_tokens == 5 and generation.max_length is None


def test_without_sampling_the_sampling_knobs_are_dropped(tiny, tiny_llama_dir):
    model, tokenizer = tiny
    generation = plan(config(tiny_llama_dir, {"do_sample": False, "temperature": 0.3, "top_p": 0.5}),
                      tokenizer, model).config
    assert generation.temperature is None and generation.top_p is None
    contrastive = plan(config(tiny_llama_dir, STRATEGIES["contrastive"]), tokenizer, model)
    assert contrastive.config.top_k == 2 and contrastive.custom_generate is contrastive_search


# -- invalid combinations are config errors ----------------------------------------------------------------------
def issues(generation: dict, **overrides) -> list[str]:
    data = {"base_model": "x", "input_features": [{"name": "q"}], "output_features": [{"name": "a"}],
            "generation": generation, **overrides}
    return [str(issue) for issue in validate(data).issues]


@pytest.mark.parametrize("generation, expected", [
    ({"num_beams": 3, "num_beam_groups": 2}, "generation.num_beam_groups: 2 group(s) must divide num_beams (3)"),
    ({"num_beams": 2, "num_beam_groups": 2, "do_sample": True}, "generation.do_sample: diverse beam search"),
    ({"penalty_alpha": 0.5, "top_k": 1}, "generation.top_k: contrastive search (penalty_alpha) needs top_k > 1"),
    ({"penalty_alpha": 0.5, "do_sample": True}, "generation.do_sample: contrastive search"),
    ({"penalty_alpha": 0.5, "top_k": 4, "num_beams": 2}, "generation.penalty_alpha: contrastive search decodes one"),
    ({"force_words_ids": [[5]]}, "generation.force_words_ids: needs constrained beam search"),
    ({"forced_decoder_ids": [[0, 5]]}, "generation.forced_decoder_ids[0]: expected [position >= 1, token_id]"),
    ({"sequence_bias": {"a b": 1.0}}, "generation.sequence_bias.a b: keys are token ids"),
    ({"prompt_lookup_num_tokens": 3, "num_beams": 2}, "generation.prompt_lookup_num_tokens: prompt-lookup"),
    ({"min_new_tokens": 9, "max_new_tokens": 4}, "generation.min_new_tokens: 9 exceeds max_new_tokens (4)"),
])
def test_invalid_generation_combinations_are_config_errors(generation, expected):
    found = issues(generation)
    assert any(text.startswith(expected) for text in found), found


@needs_snippets
def test_the_spec_generation_snippets_validate():
    import yaml

    paths = sorted(SNIPPETS.glob("generation_*.yaml"))
    assert paths
    for path in paths:
        report = validate(yaml.safe_load(path.read_text()))
        assert report.ok, (path.name, [str(i) for i in report.issues])


def test_config_error_type():
    with pytest.raises(fw.ConfigError, match="force_words_ids"):
        load_config({"base_model": "x", "input_features": [{"name": "q"}], "output_features": [{"name": "a"}],
                     "generation": {"force_words_ids": [[5]]}})
