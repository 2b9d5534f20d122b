"""fw.config.view: the one place the config is read; where a config is silent, the schema's default answers."""
from __future__ import annotations

import pytest

import fw
from fw.config import view
from fw.config.store import core_schema
from fw.config.walk import schema_at

MINIMAL = {"base_model": "m/x", "input_features": [{"name": "question"}], "output_features": [{"name": "answer"}]}


def schema_default(*path):
    return schema_at(core_schema(), path)["default"]


def test_a_key_the_config_lacks_reads_as_the_schema_default():
    assert view.seed({}) == schema_default("trainer", "seed")
    assert view.seed({"trainer": {"type": "finetune", "seed": 7}}) == 7
    assert view.output_type({"output_features": [{"name": "a"}]}) == schema_default("output_features", 0, "type")
    assert view.split_settings({"preprocessing": {"split": {"type": "fixed"}}}) == {
        "type": "fixed", "probabilities": schema_default("preprocessing", "split", "probabilities"),
        "column": schema_default("preprocessing", "split", "column")}


def test_a_null_section_reads_as_absent_and_a_null_value_as_written():
    assert view.sample_ratio({"preprocessing": None}) == schema_default("preprocessing", "sample_ratio")
    assert view.input_max_sequence_length({"input_features": [{"name": "q", "preprocessing": None}]}) is None
    assert view.generation({"generation": None}) == {}


def test_the_eval_batch_size_is_worked_out_in_one_place():
    from fw.train.batch_size import CPU_BATCH_SIZE, inference_batch_size

    lengths = [5] * 40
    assert inference_batch_size({"trainer": {"batch_size": 4, "eval_batch_size": None}}, None, lengths) == 4
    assert inference_batch_size({"trainer": {"batch_size": 4, "eval_batch_size": 16}}, None, lengths) == 16
    assert inference_batch_size({}, None, lengths) == schema_default("trainer", "eval_batch_size")
    assert inference_batch_size({"trainer": {"eval_batch_size": "auto"}}, None, lengths) == CPU_BATCH_SIZE


def test_adapter_sections_are_named_by_their_config_path():
    assert view.adapter_sections({"adapter": {"type": "lora"}}) == {"adapter": {"type": "lora"}}
    named = {"adapters": {"adapters": {"a": {"type": "lora"}, "b": {"type": "lora"}}}}
    assert list(view.adapter_sections(named)) == ["adapters.adapters.a", "adapters.adapters.b"]
    assert view.adapter_sections({}) == {}


def test_a_resolved_config_reads_the_same_through_the_view():
    config = fw.load_config({**MINIMAL, "trainer": {"type": "finetune", "batch_size": 2, "eval_batch_size": 8,
                                                    "seed": 3}})
    assert view.trainer(config) == config.data["trainer"]
    assert (view.seed(config), view.split_column(config)) == (3, "split")
    assert (view.input_column(config), view.output_column(config), view.output_name(config)) == \
        ("question", "answer", "answer")


def test_a_path_the_schema_gives_no_default_is_a_programming_error():
    with pytest.raises(KeyError, match="no default for base_model"):
        view.setting({}, "base_model")
