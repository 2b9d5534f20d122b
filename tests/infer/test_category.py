"""Category outputs for in-context learning (trainer none): match entries in config order, fallback_label,
tolerant JSON, safe regexes, label scoring with probabilities, the category metrics, and the spec's
category snippets running fw evaluate end to end on the tiny model."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

import fw
from fw import pipeline
from fw.cli.main import main as fw_main
from fw.plugins.decoders.category_extractor import extract_labels
from fw.config.load import load_config
from fw.infer.label_scoring import candidate_log_probs, candidates, score_labels, whole_sequence_log_probs, \
    written_after
from fw.infer.metrics import category_metrics

from spec_location import SNIPPETS as SNIPPET_DIR
from spec_location import needs_snippets

SNIPPETS = sorted(SNIPPET_DIR.glob("category_*.yaml"))


def category_config(match: dict, fallback="neutral", base="unused", **decoder) -> dict:
    return load_config({
        "base_model": str(base), "input_features": [{"name": "input"}],
        "output_features": [{"name": "label", "type": "category", "preprocessing": {"fallback_label": fallback},
                             "decoder": {"type": "category_extractor", "match": match, **decoder}}],
        "prompt": {"template": "Review: {input}\nSentiment:"},
        "trainer": {"type": "none", "batch_size": 4, "seed": 0},
        "generation": {"max_new_tokens": 4, "do_sample": False}}).data


def contains(*labels) -> dict:
    return {label: {"type": "contains", "value": label} for label in labels}


def reviews(rows: int = 8) -> pd.DataFrame:
    labels = ["positive", "negative", "neutral", "positive"]
    return pd.DataFrame({"input": [f"the movie number {i} was {['good', 'bad', 'ok', 'great'][i % 4]}"
                                   for i in range(rows)],
                         "label": [labels[i % 4] for i in range(rows)]})


# -- matching ----------------------------------------------------------------------------------------------------
def test_match_entries_are_tried_in_config_order_first_match_wins():
    text = ["positive, not negative"]
    assert extract_labels(text, category_config(contains("positive", "negative"))).values == ["positive"]
    assert extract_labels(text, category_config(contains("negative", "positive"))).values == ["negative"]


def test_unmatched_generations_get_the_fallback_label_and_count_as_fallbacks():
    outputs = extract_labels(["I cannot say", "NEGATIVE!"], category_config(contains("positive", "negative")))
    assert outputs.values == ["neutral", "negative"] and outputs.matched == [False, True]


def test_missing_labels_in_the_data_get_the_fallback_label(tmp_path, tiny_llama_dir):
    data = category_config(contains("positive", "negative"), base=tiny_llama_dir)
    frame = reviews(4)
    frame.loc[1, "label"] = None
    result = pipeline.evaluate(config=data, dataset=frame, output_directory=tmp_path, show_progress=False)
    assert result.predictions["label"].tolist()[1] == "neutral" and result.statistics["rows"] == 4


def test_json_schema_tolerates_prose_and_code_fences():
    match = {"positive": {"type": "json_schema", "value": {"sentiment": "positive"}},
             "negative": {"type": "json_schema", "value": {"sentiment": "negative"}}}
    texts = ['{"sentiment": "negative"}', 'Sure! ```json\n{"sentiment": "positive", "score": 0.9}\n```',
             'Here it is: {"sentiment": "negative"} hope that helps', "{broken json", '{"sentiment": "meh"}']
    outputs = extract_labels(texts, category_config(match))
    assert outputs.values == ["negative", "positive", "negative", "neutral", "neutral"]


def test_a_bad_regex_is_a_config_error_naming_the_label():
    with pytest.raises(fw.ConfigError) as error:
        category_config({"positive": {"type": "regex", "value": "(unclosed"}})
    assert "output_features[0].decoder.match.positive.value: label 'positive': invalid regular expression" \
        in str(error.value)


def test_regexes_are_compiled_once_not_per_row(monkeypatch):
    import fw.plugins.matchers.regex as regex_matcher

    calls = []
    original = regex_matcher.compile
    monkeypatch.setattr(regex_matcher, "compile", lambda *args: calls.append(args) or original(*args))
    data = category_config({"positive": {"type": "regex", "value": r"(?i)\bpos"},
                            "negative": {"type": "regex", "value": r"(?i)\bneg"}})
    calls.clear()
    assert extract_labels(["pos", "neg", "x"] * 100, data).values[:3] == ["positive", "negative", "neutral"]
    assert len(calls) == 2


def test_a_catastrophic_regex_cannot_hang_on_hostile_output():
    data = category_config({"positive": {"type": "regex", "value": r"(x+x+)+y"}})
    start = time.perf_counter()
    outputs = extract_labels(["x" * 5000], data)
    assert outputs.values == ["neutral"] and outputs.timeouts == {"positive": 1}  # counted, and reported by fw
    assert time.perf_counter() - start < 30  # a hang guard, not a speed test: unguarded, this runs for years


# -- metrics -----------------------------------------------------------------------------------------------------
def test_category_metrics():
    scores = category_metrics(["a", "a", "b", "c"], ["a", "b", "b", "b"], matched=[True, True, True, False],
                              labels=["a", "b", "c"])
    assert scores["accuracy"] == 0.5 and scores["fallback_rate"] == 0.25
    assert scores["confusion_matrix"] == {"labels": ["a", "b", "c"], "matrix": [[1, 0, 0], [1, 1, 1], [0, 0, 0]]}
    assert scores["per_class"]["a"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert scores["per_class"]["b"]["precision"] == 1.0 and scores["per_class"]["b"]["recall"] == pytest.approx(1 / 3)
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)


# -- label scoring -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval(), AutoTokenizer.from_pretrained(tiny_llama_dir)


def test_label_scoring_gives_normalised_probabilities_and_is_batch_independent(tiny, tiny_llama_dir):
    model, tokenizer = tiny
    data = category_config(contains("positive", "negative", "neutral"), label_scoring=True, base=tiny_llama_dir)
    ids = [tokenizer(f"Review: film {i}\nSentiment:").input_ids for i in range(6)]
    batched = score_labels(model, tokenizer, ids, data)
    one_by_one = score_labels(model, tokenizer, ids, {**data, "trainer": {**data["trainer"], "batch_size": 1}})
    for row, single in zip(batched.columns["label_probabilities"], one_by_one.columns["label_probabilities"]):
        assert sum(row.values()) == pytest.approx(1.0)
        assert row == pytest.approx(single, abs=1e-5)
    assert batched.values == one_by_one.values
    assert batched.columns["label_probability"] == [max(r.values()) for r in batched.columns["label_probabilities"]]


def test_label_scores_are_the_summed_token_log_likelihoods(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer("Review: fine\nSentiment:").input_ids,
               tokenizer("Review: a film that was longer than it needed to be\nSentiment:").input_ids]
    options = candidates(tokenizer, ["positive", "negative"])
    assert any(len(option.ids) > 1 for option in options), "the continuation path is exercised"
    with torch.no_grad():
        cached = candidate_log_probs(model, prompts, options, tokenizer.pad_token_id)
        whole = whole_sequence_log_probs(model, prompts, options, tokenizer.pad_token_id)
        for row, prompt in enumerate(prompts):
            for column, option in enumerate(options):
                logits = model(torch.tensor([prompt + list(option.ids)])).logits.log_softmax(-1)[0]
                expected = sum(logits[len(prompt) - 1 + i, token] for i, token in enumerate(option.ids))
                assert float(cached[row, column]) == pytest.approx(float(expected), abs=1e-4)
                assert float(whole[row, column]) == pytest.approx(float(expected), abs=1e-4)


def test_each_label_is_scored_as_written_and_after_a_space(tiny):
    """After a prompt ending in a newline (a chat template's assistant header) a model writes "negative", after
    "Answer:" it writes " negative": both tokenizations count, not a blind leading space."""
    _, tokenizer = tiny
    options = candidates(tokenizer, ["negative"])
    assert [list(option.ids) for option in options] == [tokenizer.encode("negative", add_special_tokens=False),
                                                        tokenizer.encode(" negative", add_special_tokens=False)]


def test_a_tokenization_that_would_merge_with_the_prompt_is_left_out(tiny):
    _, tokenizer = tiny
    [the] = tokenizer.encode("The", add_special_tokens=False)  # one token in the tiny vocabulary
    first, rest = tokenizer.encode("T", add_special_tokens=False), tokenizer.encode("he", add_special_tokens=False)
    assert not written_after(tokenizer, first[-1], candidates_of(rest), {})
    colon = tokenizer.encode(":", add_special_tokens=False)[-1]
    assert written_after(tokenizer, colon, candidates_of(tokenizer.encode(" positive", add_special_tokens=False)), {})


def candidates_of(ids):
    from fw.infer.label_scoring import Candidate

    return Candidate(0, tuple(ids))


def test_label_scoring_predictions_have_probability_columns(tmp_path, tiny_llama_dir):
    data = category_config(contains("positive", "negative", "neutral"), label_scoring=True, base=tiny_llama_dir)
    result = pipeline.predict(config=data, dataset=reviews(), output_directory=tmp_path, show_progress=False)
    table = pd.read_parquet(tmp_path / "predictions.parquet")
    assert {"label_predictions", "label_probabilities", "label_probability"} <= set(table.columns)
    assert set(result.predictions["label_predictions"]) <= {"positive", "negative", "neutral"}


def test_label_scoring_with_constrained_decoding_is_a_config_error():
    with pytest.raises(fw.ConfigError, match="label_scoring: label scoring does not generate"):
        category_config(contains("positive"), label_scoring=True, constrain_to_vocabulary=True)


# -- in-context learning end to end ------------------------------------------------------------------------------
def test_fw_predict_writes_labels_and_raw_generations(tmp_path, tiny_llama_dir):
    data = category_config(contains("positive", "negative"), base=tiny_llama_dir)
    pipeline.predict(config=data, dataset=reviews(), output_directory=tmp_path, show_progress=False)
    table = pd.read_csv(tmp_path / "predictions.csv")
    assert {"raw_generation", "label_predictions"} <= set(table.columns)
    assert set(table["label_predictions"]) <= {"positive", "negative", "neutral"}


@needs_snippets
@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda path: path.stem)
def test_spec_category_snippets_run_fw_evaluate_end_to_end(tmp_path, tiny_llama_dir, snippet):
    raw = yaml.safe_load(snippet.read_text())
    raw["base_model"] = str(tiny_llama_dir)
    raw["generation"] = {"max_new_tokens": 4}
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    dataset = tmp_path / "data.csv"
    reviews(8).to_csv(dataset, index=False)
    assert fw_main(["evaluate", "--config", str(config_file), "--dataset", str(dataset),
                        "--output_directory", str(tmp_path / "out"), "--no_progress"]) == 0
    stats = json.loads((tmp_path / "out" / "test_statistics.json").read_text())["label"]
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix", "fallback_rate", "loss"} <= set(stats)
    assert sum(map(sum, stats["confusion_matrix"]["matrix"])) == 8


def test_evaluate_warns_when_most_generations_fall_back(tmp_path, tiny_llama_dir, capsys):
    data = category_config(contains("positive", "negative"), fallback="unknown", base=tiny_llama_dir)
    result = pipeline.evaluate(config=data, dataset=reviews(), output_directory=tmp_path, show_progress=False)
    rate = result.statistics["label"]["fallback_rate"]
    assert rate >= 0.2, "the random tiny model names no label"
    assert (f"evaluate: {round(rate * 8)} of 8 generations ({rate:.0%}) named no label and got the fallback_label "
            "'unknown'; look at raw_generation") in capsys.readouterr().err


def test_no_fallback_warning_below_the_threshold():
    from fw.infer.metrics import category_metrics, fallback_warning

    scores = category_metrics(["a", "b", "a", "a", "b"], ["a", "b", "a", "b", "b"], matched=[True] * 4 + [False])
    assert scores["fallback_rate"] == 0.2 and fallback_warning(scores, "b").startswith("evaluate: 1 of 5 generations")
    scores = category_metrics(["a"] * 10, ["a"] * 10, matched=[True] * 9 + [False])
    assert fallback_warning(scores, "a") is None


def test_validate_notes_a_fallback_label_that_is_one_of_the_labels():
    from fw.config.load import validate_config

    raw = {"base_model": "x", "input_features": [{"name": "input"}], "trainer": {"type": "none"},
           "output_features": [{"name": "label", "type": "category", "preprocessing": {"fallback_label": "neutral"},
                                "decoder": {"type": "category_extractor", "match": contains("positive", "neutral")}}]}
    warnings = [str(warning) for warning in validate_config(raw).warnings]
    assert any(warning.startswith("output_features[0].preprocessing.fallback_label: 'neutral' is one of the labels,"
                                  " so a generation that names no label counts as 'neutral'") for warning in warnings)
    raw["output_features"][0]["preprocessing"]["fallback_label"] = "none of them"
    assert not [w for w in validate_config(raw).warnings if "fallback_label" in str(w)]
    if raw["output_features"][0]["decoder"].get("constrain_to_vocabulary"):
        assert stats["fallback_rate"] == 0.0
