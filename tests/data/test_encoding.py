"""Tokenization: loss on the response only, EOS on every target, the three length limits, batches."""
from __future__ import annotations

import pytest
import torch

from fw.config.load import load_config
from fw.data.tokens import IGNORE_INDEX, EncodedRow, collate, encode, encode_prompts, length_sorted_batches
from fw.errors import FwError


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from fw.model.tiny import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def bos_tokenizer(tokenizer, tmp_path_factory):
    """The tiny tokenizer, made to put BOS in front of every text (as Llama's does)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("bos-tokenizer")
    tokenizer.save_pretrained(str(path))
    with_bos = AutoTokenizer.from_pretrained(str(path))
    with_bos.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", with_bos.bos_token_id)])
    return with_bos


def config(input_max=None, output_max=None, global_max=None) -> dict:
    return load_config({
        "base_model": "some/model",
        "input_features": [{"name": "prompt", "preprocessing": {"max_sequence_length": input_max}}],
        "output_features": [{"name": "response", "preprocessing": {"max_sequence_length": output_max}}],
        "preprocessing": {"global_max_sequence_length": global_max},
    }).data


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


PROMPT, TARGET = "Question: what is the capital of France? Answer:", " Paris."


def test_labels_mask_the_prompt_and_train_on_target_plus_eos(tokenizer):
    rows, report = encode([PROMPT], [TARGET], tokenizer, config())
    prompt, target, eos = ids(tokenizer, PROMPT), ids(tokenizer, TARGET), tokenizer.eos_token_id
    assert rows[0].input_ids == prompt + target + [eos]
    assert rows[0].labels == [IGNORE_INDEX] * len(prompt) + target + [eos]
    assert rows[0].prompt_length == len(prompt) and len(rows[0]) == len(prompt) + len(target) + 1
    assert report.rows == 1 and report.truncated_rows == []


def test_bos_goes_on_the_prompt_only_when_the_tokenizer_adds_one(bos_tokenizer):
    rows, _ = encode([PROMPT], [TARGET], bos_tokenizer, config())
    prompt, target = ids(bos_tokenizer, PROMPT), ids(bos_tokenizer, TARGET)
    assert rows[0].input_ids == [bos_tokenizer.bos_token_id] + prompt + target + [bos_tokenizer.eos_token_id]
    assert rows[0].labels[:len(prompt) + 1] == [IGNORE_INDEX] * (len(prompt) + 1)


def test_input_limit_keeps_the_beginning_of_the_prompt(tokenizer):
    rows, report = encode([PROMPT, "Hi"], [TARGET, TARGET], tokenizer, config(input_max=4))
    target = ids(tokenizer, TARGET) + [tokenizer.eos_token_id]
    assert rows[0].input_ids == ids(tokenizer, PROMPT)[:4] + target
    assert rows[1].input_ids == ids(tokenizer, "Hi") + target
    assert (report.input_truncated, report.output_truncated, report.global_truncated) == (1, 0, 0)
    assert report.truncated_rows == [0]


def test_output_limit_counts_the_eos(tokenizer):
    long_target = " the quick brown fox jumps over the lazy dog"
    rows, report = encode(["Q:"] * 2, [long_target, ""], tokenizer, config(output_max=3))
    assert rows[0].labels[rows[0].prompt_length:] == ids(tokenizer, long_target)[:2] + [tokenizer.eos_token_id]
    assert rows[1].labels[rows[1].prompt_length:] == [tokenizer.eos_token_id]  # an empty target still ends
    assert (report.input_truncated, report.output_truncated, report.global_truncated) == (0, 1, 0)


def test_global_limit_cuts_the_response_tail_first(tokenizer):
    prompt, target = ids(tokenizer, PROMPT), ids(tokenizer, TARGET)
    limit = len(prompt) + 1
    rows, report = encode([PROMPT], [TARGET], tokenizer, config(global_max=limit))
    assert rows[0].input_ids == prompt + target[:1] and len(rows[0]) == limit
    assert report.global_truncated == 1 and report.output_truncated == 0


def test_global_limit_keeps_one_response_token_when_the_prompt_is_too_long(tokenizer):
    prompt, target = ids(tokenizer, PROMPT), ids(tokenizer, TARGET)
    rows, _ = encode([PROMPT], [TARGET], tokenizer, config(global_max=4))
    assert rows[0].input_ids == prompt[:3] + target[:1]
    assert rows[0].labels == [IGNORE_INDEX] * 3 + target[:1]


def test_global_limit_defaults_to_the_context_length(tokenizer):
    long_prompt = " ".join(["fox"] * 300)
    rows, report = encode([long_prompt], ["x"], tokenizer, config())
    assert len(rows[0]) == tokenizer.model_max_length == 256 and report.limits.total == 256
    rows, report = encode([long_prompt], ["x"], tokenizer, config(), context_length=100)
    assert len(rows[0]) == 100 and report.global_truncated == 1


def test_truncation_summary_is_one_line_with_every_side(tokenizer):
    prompts = [PROMPT, "Hi", PROMPT]
    targets = [TARGET, " the quick brown fox jumps", "x"]
    _, report = encode(prompts, targets, tokenizer, config(input_max=6, output_max=4, global_max=8))
    assert report.summary() == ("truncation: 3 of 3 rows truncated; input 2 (max 6 tokens), "
                                "output 1 (max 4 tokens), global 1 (max 8 tokens)")
    _, none = encode(["Hi"], ["x"], tokenizer, config())
    assert none.summary() == ("truncation: 0 of 1 rows truncated; input 0 (no limit), output 0 (no limit), "
                              "global 0 (max 256 tokens)")


def test_encode_prompts_for_inference(tokenizer):
    rows, report = encode_prompts([PROMPT, "Hi"], tokenizer, config(input_max=3, global_max=2))
    assert rows[0].input_ids == ids(tokenizer, PROMPT)[:3] and rows[1].input_ids == ids(tokenizer, "Hi")
    assert all(label == IGNORE_INDEX for row in rows for label in row.labels)
    assert report.input_truncated == 1 and report.limits.total is None  # the global limit is for training


def test_tokenizer_without_eos_is_an_error(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(str(tmp_path))
    no_eos = AutoTokenizer.from_pretrained(str(tmp_path))
    no_eos.eos_token = None
    with pytest.raises(FwError, match=r"^the tokenizer has no EOS token"):
        encode(["a"], ["b"], no_eos, config())


def test_collate_pads_right_for_training_and_left_for_generation():
    rows = [EncodedRow([5, 6, 7], [-100, 6, 7]), EncodedRow([8], [8])]
    right = collate(rows, pad_token_id=0)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert right["input_ids"].dtype == torch.long
    left = collate(rows, pad_token_id=0, padding_side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert left["labels"].tolist() == [[-100, 6, 7], [-100, -100, 8]]


def test_length_sorted_batches():
    assert length_sorted_batches([3, 9, 1, 9, 4], 2) == [[1, 3], [4, 0], [2]]
    assert length_sorted_batches([], 4) == []
    with pytest.raises(ValueError):
        length_sorted_batches([1], 0)
