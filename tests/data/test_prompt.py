"""Prompts render exactly: the spec's three input modes, prompt.task's default template, __sample__, braces."""
from __future__ import annotations

import math

import pytest

from fw.config.load import load_config
from fw.errors import FwError
from fw.data.prompt import DEFAULT_TASK_TEMPLATE, few_shot_template, PromptRenderer, as_text, target_text


def config(prompt=None, input_name="prompt", output=None, **extra) -> dict:
    data = {"base_model": "some/model", "input_features": [{"name": input_name, "type": "text"}],
            "output_features": [output or {"name": "response", "type": "text"}], **extra}
    if prompt is not None:
        data["prompt"] = prompt
    return load_config(data).data


def test_single_column_is_passed_as_is():
    renderer = PromptRenderer(config(input_name="input"))
    assert renderer.mode == "column" and renderer.columns == {"input"}
    assert renderer.render({"input": "  Hello {world}\n", "response": "hi"}) == "  Hello {world}\n"


def test_input_feature_column_overrides_its_name():
    data = config()
    data["input_features"][0]["column"] = "text"
    assert PromptRenderer(data).render({"text": "abc"}) == "abc"


def test_template_with_one_column():
    template = "Translate into French\nInput: {english_input}\nTranslation:\n"
    renderer = PromptRenderer(config({"template": template}))
    assert renderer.columns == {"english_input"}
    assert renderer.render({"english_input": "good morning", "response": "bonjour"}) == \
        "Translate into French\nInput: good morning\nTranslation:\n"


def test_template_with_many_columns():
    template = ("[INST] <<SYS>>\nAnswer the question using only the provided context.\n<</SYS>>\n"
                "### Context:\n{context}\n### Question:\n{question}\n### Response:\n[/INST]\n")
    renderer = PromptRenderer(config({"template": template}))
    assert renderer.columns == {"context", "question"}
    row = {"context": "Paris is in France.", "question": "Where is Paris?", "response": "France"}
    assert renderer.render(row) == (
        "[INST] <<SYS>>\nAnswer the question using only the provided context.\n<</SYS>>\n"
        "### Context:\nParis is in France.\n### Question:\nWhere is Paris?\n### Response:\n[/INST]\n")


def test_task_without_template_uses_the_default_template():
    renderer = PromptRenderer(config({"task": "Classify the sentiment"}, output={"name": "label"}))
    assert renderer.mode == "task" and renderer.template == DEFAULT_TASK_TEMPLATE
    row = {"review": "great film", "stars": 5, "label": "positive"}
    assert renderer.render(row) == ('SAMPLE INPUT: {"review": "great film", "stars": 5}\n\n'
                                    "USER: Complete the following task: Classify the sentiment\n\n"
                                    "ASSISTANT:\n")


def test_task_with_retrieval_uses_the_few_shot_default_and_the_context():
    data = config({"task": "Classify", "retrieval": {"type": "random", "k": 2}})
    renderer = PromptRenderer(data)
    assert renderer.template == few_shot_template("random")
    prompt = renderer.render({"text": "ok"}, context="text: fine -> positive")
    assert "labeled samples chosen at random from the training data." in prompt
    assert prompt.startswith("Below is relevant context:\n\nCONTEXT: text: fine -> positive\n\n")
    assert prompt.endswith('SAMPLE INPUT: {"text": "ok"}\n\nUSER: Complete the following task: Classify\n\n'
                           "ASSISTANT:\n")


def test_the_few_shot_default_says_how_the_examples_were_chosen():
    assert "whose embeddings were similar to that of the sample input" in few_shot_template("semantic")
    assert "chosen at random" not in few_shot_template("semantic")
    assert "chosen by the bm25 retriever" in few_shot_template("bm25")


def test_sample_is_the_whole_row_as_json_without_output_and_split_columns():
    renderer = PromptRenderer(config({"template": "Row: {__sample__}"}))
    assert renderer.columns == set() and renderer.uses_sample
    row = {"name": "Zoë", "age": 7, "score": math.nan, "tags": ["a", "b"], "response": "x", "split": 0}
    assert renderer.render(row) == 'Row: {"name": "Zoë", "age": 7, "score": null, "tags": ["a", "b"]}'


def test_task_and_context_placeholders_in_a_custom_template():
    data = config({"template": "{__task__}\n{__context__}\n{question}", "task": "Answer briefly"})
    assert PromptRenderer(data).render({"question": "Why?"}, context=None) == "Answer briefly\n\nWhy?"


def test_escaped_braces_stay_literal_and_values_are_not_reformatted():
    renderer = PromptRenderer(config({"template": 'Return JSON {{"answer": "{question}"}} {{}}'}))
    assert renderer.render({"question": "a {b} c"}) == 'Return JSON {"answer": "a {b} c"} {}'


def test_format_spec_formats_numbers_even_when_read_as_text():
    renderer = PromptRenderer(config({"template": "{price:.2f} / {count:03d}"}))
    assert renderer.render({"price": "3.5", "count": "7"}) == "3.50 / 007"


def test_format_spec_on_text_that_is_no_number_is_an_error():
    renderer = PromptRenderer(config({"template": "{price:.2f}"}))
    with pytest.raises(FwError, match=r"cannot format 'cheap' of column 'price' with format spec '.2f'"):
        renderer.render({"price": "cheap"})


def test_column_names_with_dots_and_spaces_are_plain_column_names():
    renderer = PromptRenderer(config({"template": "{user.name} said {first line}"}))
    assert renderer.columns == {"user.name", "first line"}
    assert renderer.render({"user.name": "Ann", "first line": "hi"}) == "Ann said hi"


def test_missing_values_render_empty():
    renderer = PromptRenderer(config({"template": "[{a}][{b}]"}))
    assert renderer.render({"a": None, "b": math.nan}) == "[][]"
    assert as_text(3) == "3" and as_text(1.5) == "1.5" and as_text({"k": [1]}) == '{"k": [1]}'


def test_unknown_template_column_names_the_column_and_lists_the_columns():
    renderer = PromptRenderer(config({"template": "Q: {questoin}"}))
    with pytest.raises(FwError) as caught:
        renderer.check_columns(["question", "answer", "response"])
    assert str(caught.value) == ("prompt.template names column 'questoin' that the dataset does not have. "
                                 "Columns: question, answer, response. Did you mean 'question'?")


def test_several_unknown_template_columns_are_all_named():
    renderer = PromptRenderer(config({"template": "{a} {b} {c}"}))
    with pytest.raises(FwError, match=r"names columns 'b', 'c' that the dataset does not have. Columns: a, x\.$"):
        renderer.render({"a": 1, "x": 2})


def test_unknown_input_column_without_template_suggests_a_template():
    renderer = PromptRenderer(config(input_name="input"))
    with pytest.raises(FwError) as caught:
        renderer.check_columns(["inputs", "response"])
    assert str(caught.value) == ("input_features[0] reads column 'input' that the dataset does not have. "
                                 "Columns: inputs, response. Did you mean 'inputs'? To build the input from "
                                 "other columns, set prompt.template, e.g. '{question}'.")


def test_empty_placeholder_is_an_error():
    data = config({"template": "{question}"})
    data["prompt"]["template"] = "Q: {} {question}"
    with pytest.raises(FwError, match=r"prompt.template has an empty \{\} placeholder"):
        PromptRenderer(data)


def test_unbalanced_brace_is_an_error():
    data = config({"template": "{question}"})
    data["prompt"]["template"] = "Q: {question"
    with pytest.raises(FwError, match=r"prompt.template is not a valid template: .*Write literal braces as \{\{"):
        PromptRenderer(data)


def test_target_text():
    data = config(output={"name": "label", "column": "gold"})
    assert target_text({"gold": "positive"}, data) == "positive"
    assert target_text({"gold": None}, data) == "" and target_text({"other": 1}, data) == ""
    assert target_text({"gold": 1}, data) == "1"
