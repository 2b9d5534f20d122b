"""Config validation: every problem reported at once, with its path, the bad value and a way out."""
from __future__ import annotations

import copy

import pytest

import fw
from fw.config.load import read_yaml

BASE = {
    "base_model": "meta-llama/Llama-2-7b-hf",
    "input_features": [{"name": "input", "type": "text"}],
    "output_features": [{"name": "response", "type": "text"}],
}


def config(**sections):
    data = copy.deepcopy(BASE)
    data.update(sections)
    return data


def messages(data):
    report = fw.validate_config(data)
    return [str(issue) for issue in report.issues]


def one_message(data):
    found = messages(data)
    assert len(found) == 1, found
    return found[0]


# -- unknown keys and plugin names (the reference accepted these silently) ---------------------------
def test_unknown_adapter_key_is_an_error_with_did_you_mean():
    assert one_message(config(adapter={"type": "lora", "rank": 8})) == \
        "adapter.rank: unknown key 'rank' for adapter 'lora'. The LoRA rank is `r`: use r."


def test_peft_spelling_is_translated():
    assert one_message(config(adapter={"type": "lora", "lora_dropout": 0.1})).endswith(
        "PEFT's `lora_dropout` is called `dropout` in fw: use dropout.")


def test_unknown_trainer_key():
    message = one_message(config(trainer={"type": "finetune", "epoch": 2}))
    assert "trainer.epoch: unknown key 'epoch'. Did you mean 'epochs'?" in message


def test_unknown_top_level_section():
    assert one_message(config(trainr={"epochs": 1})).startswith("trainr: unknown key 'trainr'. Did you mean 'trainer'?")


def test_misspelled_adapter_type():
    message = one_message(config(adapter={"type": "lorra"}))
    assert message.startswith("adapter.type: Unknown adapter 'lorra'.") and "Did you mean 'lora'?" in message


def test_out_of_range_value_names_path_and_value():
    assert one_message(config(adapter={"type": "lora", "r": -1})) == "adapter.r: -1 is less than the minimum of 1."


def test_wrong_type_says_what_was_expected():
    assert one_message(config(trainer={"type": "finetune", "batch_size": "eight"})) == \
        "trainer.batch_size: expected integer or 'auto', got 'eight'."


def test_every_problem_is_reported_at_once():
    data = config(adapter={"type": "lora", "r": 0, "dropuot": 0.1}, trainer={"type": "finetune", "epoch": 1},
                  generation={"num_beams": 0})
    paths = sorted(issue.split(":")[0] for issue in messages(data))
    assert paths == ["adapter.dropuot", "adapter.r", "generation.num_beams", "trainer.epoch"]


def test_missing_required_section():
    data = config()
    del data["base_model"]
    assert one_message(data).startswith("base_model: required key is missing.")


# -- cross-field rules of the spec ---------------------------------------------------------------------
@pytest.mark.parametrize("sections, path, words", [
    ({"input_features": [{"name": "a"}, {"name": "b"}]}, "input_features", "exactly one text input"),
    ({"output_features": [{"name": "a"}, {"name": "b"}]}, "output_features", "exactly one output"),
    ({"output_features": [{"name": "label", "type": "category",
                           "decoder": {"match": {"a": {"type": "contains", "value": "a"}}}}],
      "trainer": {"type": "finetune"}}, "output_features[0].type", "finetune needs a text output"),
    ({"output_features": [{"name": "label", "type": "category"}], "trainer": {"type": "none"}},
     "output_features[0].decoder.match", "needs match entries"),
    ({"prompt": {"template": "no placeholders here"}}, "prompt.template", "at least one dataset column"),
    ({"prompt": {"template": "{question}", "task": "Answer."}}, "prompt.template", "{__task__}"),
    ({"prompt": {"task": "Answer.", "template": "{__task__} {q}", "retrieval": {"type": "random", "k": 2}}},
     "prompt.template", "{__context__}"),
    ({"prompt": {"retrieval": {"type": "random", "k": 2}}}, "prompt", "prompt.task or prompt.template"),
    ({"prompt": {"task": "Answer.", "retrieval": {"type": None, "k": 2}}}, "prompt.retrieval.k",
     "prompt.retrieval.type is null"),
    ({"prompt": {"template": "{question"}}, "prompt.template", "not a valid template"),
    ({"adapter": {"type": "lora"}, "adapters": {"adapters": {"a": {"type": "lora"}}}}, "adapters",
     "mutually exclusive"),
    ({"adapters": {"adapters": {"a": {"type": "lora"}}, "active": "b"}}, "adapters.active", "names no adapter"),
    ({"adapters": {"adapters": {"a": {"type": "lora"}, "b": {"type": "lora"}},
                   "merge": {"name": "m", "sources": ["a", "c"], "weights": [1, 1]}}},
     "adapters.merge.sources[1]", "names no adapter: 'c'"),
    ({"adapters": {"adapters": {"a": {"type": "lora"}, "b": {"type": "lora"}},
                   "merge": {"name": "m", "sources": ["a", "b"], "weights": [1]}}},
     "adapters.merge.weights", "one weight per source"),
    ({"adapters": {"adapters": {"a": {"type": "lora", "r": 8}, "b": {"type": "lora", "r": 16}},
                   "merge": {"name": "m", "sources": ["a", "b"], "weights": [1, 1], "combination_type": "ties"}}},
     "adapters.merge.combination_type", "equal rank"),
    ({"quantization": {"bits": 4}, "trainer": {"type": "finetune"}}, "quantization", "needs a LoRA-family adapter"),
    ({"quantization": {"bits": 4}, "adapter": {"type": "ia3"}, "trainer": {"type": "finetune"}}, "adapter.type",
     "LoRA-family"),
    ({"quantization": {"backend": "bitsandbytes", "qat": True}, "adapter": {"type": "lora"}}, "quantization.qat",
     "torchao"),
    ({"quantization": {"backend": "torchao"}, "adapter": {"type": "lora"}}, "quantization.mode", "needs a value"),
    ({"generation": {"num_beams": 2, "num_beam_groups": 3, "do_sample": False}}, "generation.num_beam_groups",
     "must divide num_beams"),
    ({"generation": {"num_beams": 2, "num_beam_groups": 2, "do_sample": True}}, "generation.do_sample",
     "cannot sample"),
    ({"generation": {"penalty_alpha": 0.5, "top_k": 1}}, "generation.top_k", "top_k > 1"),
    ({"model_parameters": {"rope_scaling": {"rope_type": "linear"}}}, "model_parameters.rope_scaling.factor",
     "needs a factor"),
    ({"model_parameters": {"rope_scaling": {"type": "linear", "factor": 2}}},
     "model_parameters.rope_scaling.type", "rope_type"),
    ({"backend": {"type": "ray"}}, "backend.type", "local"),
    ({"preprocessing": {"split": {"probabilities": [0.5, 0.1, 0.1]}}}, "preprocessing.split.probabilities",
     "sum to 1"),
    ({"output_features": [{"name": "label", "type": "category", "decoder": {"match": {
        "pos": {"type": "regex", "value": "(unclosed"}}}}], "trainer": {"type": "none"}},
     "output_features[0].decoder.match.pos.value", "label 'pos'"),
    ({"adapter": {"type": "ia3", "init_lora_weights": "pissa"}}, "adapter.init_lora_weights", "unknown key"),
    ({"adapter": {"type": "lora", "init_lora_weights": "pisa"}}, "adapter.init_lora_weights", "Did you mean 'pissa'"),
    ({"adapter": {"type": "lora", "init_lora_weights": "eva", "eva_config": {"n_samples": 0}}},
     "adapter.eva_config.n_samples", "minimum"),
])
def test_cross_field_rule(sections, path, words):
    found = messages(config(**sections))
    assert any(m.startswith(path + ":") and words in m for m in found), found


def test_valid_category_config_keeps_fallback_label():
    data = config(output_features=[{"name": "label", "type": "category", "preprocessing": {"fallback_label": "neutral"},
                                    "decoder": {"type": "category_extractor",
                                                "match": {"neutral": {"type": "contains", "value": "neutral"}}}}],
                  trainer={"type": "none"})
    resolved = fw.load_config(data).data
    assert resolved["output_features"][0]["preprocessing"]["fallback_label"] == "neutral"


def test_ignored_key_is_a_warning_not_an_error():
    loaded = fw.load_config(config(adapter={"type": "lora"},
                                   quantization={"backend": "bitsandbytes", "mode": "int4_weight_only"}))
    assert any(w.path == "quantization.mode" for w in loaded.warnings)


# -- defaults and round trips ----------------------------------------------------------------------------
def test_resolved_config_has_every_default():
    resolved = fw.load_config(config(adapter={"type": "lora"}, trainer={"type": "finetune"},
                                     generation={"max_new_tokens": 32})).data
    assert resolved["adapter"]["r"] == 8 and resolved["adapter"]["alpha"] == 16
    assert resolved["adapter"]["postprocessor"] == {"merge_adapter_into_base_model": False, "progressbar": False}
    assert resolved["trainer"]["type"] == "finetune" and resolved["generation"]["max_new_tokens"] == 32
    assert resolved["output_features"][0]["decoder"]["type"] == "text_extractor"
    assert resolved["prompt"] == {"template": None, "task": None, "retrieval": None, "chat_template": False,
                                  "system_message": None, "train_on": "all_assistant_turns"}


@pytest.mark.parametrize("sections", [
    {"adapter": {"type": "lora", "init_lora_weights": "eva"}},
    {"adapters": {"adapters": {"a": {"type": "lora"}, "b": {"type": "lora"}},
                  "merge": {"name": "m", "sources": ["a", "b"], "weights": [0.5, 0.5]}, "active": "m"}},
    {"adapter": None},
    {"quantization": {"backend": "torchao", "mode": "int8_weight_only"}, "adapter": {"type": "lora"}},
])
def test_resolved_config_validates_again_unchanged(sections):
    """The trap of the reference: its own saved config did not load back."""
    resolved = fw.load_config(config(**sections)).data
    again = fw.load_config(copy.deepcopy(resolved)).data
    assert again == resolved


def test_yaml_scientific_notation_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  learning_rate: 1e-4\n  epochs: 3\n")
    assert read_yaml(path) == {"trainer": {"learning_rate": 1e-4, "epochs": 3}}


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base_model: x\ninput_features:\n  - name: [unclosed\n")
    with pytest.raises(fw.ConfigError, match="line 4"):
        fw.load_config(path)


# -- rules: a bug fails loudly; a value the schema reported stops a rule quietly ----------------------
def broken_rule(data, registry):
    yield from ()
    raise KeyError("a key the rule's author misspelled")


def test_a_rule_that_crashes_on_a_valid_config_fails_loudly_with_its_name(monkeypatch):
    from fw.config import rules

    monkeypatch.setattr(rules, "RULES", [*rules.RULES, rules.Rule(broken_rule, reads=("trainer",))])
    with pytest.raises(rules.RuleFailure, match="the validation rule 'broken_rule' crashed .KeyError: .*a bug in fw"):
        fw.validate_config(config())
    with pytest.raises(rules.RuleFailure, match="broken_rule"):  # a problem elsewhere does not excuse it
        fw.validate_config(config(generation={"num_beams": "two"}))


def test_a_rule_meeting_a_value_the_schema_reported_stops_quietly():
    found = messages(config(preprocessing={"split": {"probabilities": "0.8, 0.1, 0.1"}}))
    assert found == ["preprocessing.split.probabilities: expected array, got string '0.8, 0.1, 0.1'."]


def test_every_rule_declares_what_it_reads_and_is_registered_once():
    from fw.config import rules

    names = [each.name for each in rules.RULES]
    assert len(names) == len(set(names)) and "split_probabilities_sum" in names
    assert all(isinstance(read, str) and read for each in rules.RULES for read in each.reads)


@pytest.mark.parametrize("sections, path", [
    ({"output_features": 7}, "output_features"),
    ({"output_features": [{"name": "a", "type": ["category"]}]}, "output_features[0].type"),
    ({"generation": {"num_beam_groups": "two"}}, "generation.num_beam_groups"),
    ({"generation": {"penalty_alpha": [0.5]}}, "generation.penalty_alpha"),
])
def test_a_wrong_typed_value_that_defaults_derive_from_is_left_to_the_schema(sections, path):
    found = messages(config(**sections))
    assert found[0].startswith(path + ": "), found
