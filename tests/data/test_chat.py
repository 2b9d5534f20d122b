"""Chat templates and conversations: golden tests of the exact tokens that carry loss, one per template family
(templates as text, no download), conversation formats, system messages, last-turn-only loss, turn-wise
truncation, generation prompts and stop tokens."""
from __future__ import annotations

import pytest

from chat_templates import END_OF_TURN, NO_SYSTEM, PLAIN_TOKENS, SPECIAL_TOKENS, TEMPLATES
from fw.config.load import load_config
from fw.data.chat import ChatFormat, as_conversation
from fw.data.tokens import IGNORE_INDEX, encode, encode_prompts
from fw.errors import FwError

CONVERSATION = [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "It is 4."},
                {"role": "user", "content": "And 3 plus 3?"}, {"role": "assistant", "content": "It is 6."}]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from fw.model.tiny import build_tokenizer

    built = build_tokenizer(tmp_path_factory.mktemp("chat-tokenizer"))
    built.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    built.add_tokens(PLAIN_TOKENS)
    return built


def config(chat_template=True, **prompt) -> dict:
    return load_config({"base_model": "some/model", "input_features": [{"name": "question"}],
                        "output_features": [{"name": "answer"}],
                        "prompt": {"chat_template": chat_template, **prompt}}).data


def loss_runs(row) -> list[list[int]]:
    """The ids of each run of consecutive loss-carrying tokens."""
    runs, current = [], []
    for token, label in zip(row.input_ids, row.labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs, current = runs + [current], []
    return runs + ([current] if current else [])


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_golden_loss_tokens_are_each_assistant_content_and_its_end_of_turn(tokenizer, family):
    data = config(TEMPLATES[family])
    rows, _ = encode([as_json(CONVERSATION[:3])], ["It is 6."], tokenizer, data)
    end = ids(tokenizer, END_OF_TURN[family])
    assert len(end) == 1, "the end-of-turn token is one special token"
    assert loss_runs(rows[0]) == [ids(tokenizer, "It is 4.") + end, ids(tokenizer, "It is 6.") + end]
    chat = ChatFormat.of(data, tokenizer)
    rendered = chat.render(CONVERSATION)
    assert rows[0].input_ids == ids(tokenizer, rendered), "the tokens are the rendered text, tokenized as one"
    prompt = ids(tokenizer, chat.generation_prompt(CONVERSATION[:3]))
    assert rows[0].input_ids[:len(prompt)] == prompt, "generation continues exactly where the last turn trained"
    assert rows[0].labels[len(prompt)] != IGNORE_INDEX and rows[0].labels[len(prompt) - 1] == IGNORE_INDEX
    assert chat.stop_token_ids()[0] == end[0]


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_last_assistant_turn_only(tokenizer, family):
    rows, _ = encode([as_json(CONVERSATION[:3])], ["It is 6."], tokenizer,
                     config(TEMPLATES[family], train_on="last_assistant_turn"))
    assert loss_runs(rows[0]) == [ids(tokenizer, "It is 6.") + ids(tokenizer, END_OF_TURN[family])]


def test_a_reasoning_template_never_trains_the_empty_think_block_it_inserts(tokenizer):
    data = config(TEMPLATES["qwen-3"])
    rows, _ = encode([as_json(CONVERSATION[:3])], ["It is 6."], tokenizer, data)
    chat = ChatFormat.of(data, tokenizer)
    text = chat.render(CONVERSATION)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nIt is 6.<|im_end|>\n")
    think = tokenizer.convert_tokens_to_ids("<think>")
    assert think in rows[0].input_ids
    assert think not in [label for label in rows[0].labels if label != IGNORE_INDEX]
    assert chat.generation_prompt(CONVERSATION[:3]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_a_reasoning_turn_trains_its_reasoning(tokenizer):
    data = config(TEMPLATES["qwen-3"])
    final = {"role": "assistant", "content": "It is 6.", "reasoning_content": "3 and 3 make 6."}
    rows, _ = encode([as_json(CONVERSATION[:3] + [final])], [""], tokenizer, data)
    trained = tokenizer.decode([label for label in rows[0].labels if label != IGNORE_INDEX])
    assert trained.endswith("<think>\n3 and 3 make 6.\n</think>\n\nIt is 6.<|im_end|>")


def test_a_single_turn_row_puts_the_prompt_in_the_user_message_after_the_system_message(tokenizer):
    data = config(TEMPLATES["llama-3"], system_message="Answer briefly.")
    rows, _ = encode(["What is 2 plus 2?"], ["4"], tokenizer, data)
    text = tokenizer.decode(rows[0].input_ids)
    assert text == ("<s><|start_header_id|>system<|end_header_id|>\n\nAnswer briefly.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2 plus 2?<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>")
    assert loss_runs(rows[0]) == [ids(tokenizer, "4<|eot_id|>")]
    prompts, _ = encode_prompts(["What is 2 plus 2?"], tokenizer, data)
    assert tokenizer.decode(prompts[0].input_ids) == text[:-len("4<|eot_id|>")]


def test_without_a_system_message_the_templates_default_applies(tokenizer):
    rows, _ = encode(["Hi"], ["Hello"], tokenizer, config(TEMPLATES["smollm2"]))
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(rows[0].input_ids)


def test_sharegpt_and_openai_conversations_are_the_same_conversation():
    sharegpt = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello"}]
    assert as_conversation(sharegpt) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                         {"role": "assistant", "content": "Hello"}]
    assert as_conversation(as_json(sharegpt)) == as_conversation(sharegpt)
    assert as_conversation("[not json") is None and as_conversation("plain text") is None
    assert as_conversation([{"role": "narrator", "content": "x"}]) is None


def test_a_template_that_refuses_the_conversation_is_one_line(tokenizer):
    with pytest.raises(FwError, match=r"prompt.chat_template: the chat template cannot render a conversation of "
                                      r"system/user/assistant messages: System role not supported"):
        encode(["Hi"], ["Hello"], tokenizer, config(TEMPLATES["gemma"], system_message="Be brief."))


def test_true_needs_a_tokenizer_with_a_chat_template(tokenizer, tmp_path):
    from fw.model.tiny import build_tokenizer

    plain = build_tokenizer(tmp_path)
    with pytest.raises(FwError, match=r"prompt.chat_template: true, but the base model's tokenizer has no chat "
                                      r"template"):
        encode(["Hi"], ["Hello"], plain, config(True))


# -- truncation ----------------------------------------------------------------------------------------------------
def long_conversation(exchanges: int) -> list[dict]:
    turns = []
    for number in range(exchanges):
        turns += [{"role": "user", "content": f"Question {number}: what comes after {number}?"},
                  {"role": "assistant", "content": f"After {number} comes {number + 1}."}]
    return [{"role": "system", "content": "Count."}] + turns


def test_a_long_conversation_drops_whole_earliest_exchanges_never_the_system_or_final_turns(tokenizer):
    conversation = long_conversation(6)
    data = config(TEMPLATES["qwen-2.5"])
    data["preprocessing"]["global_max_sequence_length"] = 10_000
    full, _ = encode([as_json(conversation)], [""], tokenizer, data)
    limit = len(full[0].input_ids) - 10
    data["preprocessing"]["global_max_sequence_length"] = limit
    rows, report = encode([as_json(conversation)], [""], tokenizer, data)
    text = tokenizer.decode(rows[0].input_ids)
    assert len(rows[0].input_ids) <= limit
    assert "Question 0" not in text and "After 0 comes 1." not in text  # the earliest exchange went as a whole
    assert "<|im_start|>system\nCount.<|im_end|>" in text
    assert text.endswith("After 5 comes 6.<|im_end|>\n") and "Question 5" in text
    assert report.rows_with_turns_dropped == 1 and report.turns_dropped == 1
    assert "earliest exchanges dropped in 1 conversation(s) (1 in all)" in report.summary()
    assert loss_runs(rows[0])[-1] == ids(tokenizer, "After 5 comes 6.<|im_end|>")


def test_a_single_exchange_over_the_limit_cuts_the_response_tail_then_the_user_message(tokenizer):
    data = config(TEMPLATES["qwen-2.5"], system_message="S")
    data["preprocessing"]["global_max_sequence_length"] = 10_000
    question = " ".join(["word"] * 40)
    full, _ = encode([question], ["the answer is long and has many words in it"], tokenizer, data)
    data["preprocessing"]["global_max_sequence_length"] = len(full[0].input_ids) - 5
    rows, report = encode([question], ["the answer is long and has many words in it"], tokenizer, data)
    text = tokenizer.decode(rows[0].input_ids)
    assert len(rows[0].input_ids) <= len(full[0].input_ids) - 5
    assert text.startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n" + question)
    assert text.endswith("<|im_end|>\n") and "many words" not in text
    assert report.global_truncated == 1

    data["preprocessing"]["global_max_sequence_length"] = None
    data["input_features"][0]["preprocessing"]["max_sequence_length"] = 40
    prompts, report = encode_prompts([question], tokenizer, data)
    text = tokenizer.decode(prompts[0].input_ids)
    assert len(prompts[0].input_ids) <= 40 and "word word" in text
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert report.input_truncated == 1


def test_the_output_limit_keeps_the_end_of_turn_token(tokenizer):
    data = config(TEMPLATES["llama-3"])
    data["output_features"][0]["preprocessing"]["max_sequence_length"] = 4
    rows, report = encode(["Q"], ["one two three four five six"], tokenizer, data)
    trained = [label for label in rows[0].labels if label != IGNORE_INDEX]
    assert len(trained) <= 4 and trained[-1] == tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert report.output_truncated == 1


def as_json(messages) -> str:
    import json

    return json.dumps(messages)


# -- end to end on the tiny model ------------------------------------------------------------------------------------
TINY_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant: {% endif %}")


def chat_rows() -> list[dict]:
    rows = []
    for number in range(8):
        short = number % 2 == 0
        rows.append({"messages": [{"role": "system", "content": "Reply."},
                                  {"role": "user", "content": f"{'short' if short else 'long'} {number}"},
                                  {"role": "assistant", "content": "positive" if short else "the quick brown fox"}]})
    return rows


def test_generated_part_ends_at_the_first_stop_token():
    from fw.infer.generation import generated_part

    assert generated_part([5, 6, 2, 0, 0], [2, 7]) == [5, 6, 2]
    assert generated_part([5, 6, 2, 2, 2], 2) == [5, 6, 2]  # pad = eos: the repeats are padding
    assert generated_part([5, 6, 8], 2) == [5, 6, 8]


def test_a_conversation_dataset_trains_saves_and_predicts_through_the_chat_template(tmp_path, tiny_llama_dir):
    import json

    import pandas as pd
    from transformers import AutoTokenizer, GenerationConfig

    from fw import pipeline

    dataset = tmp_path / "chats.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in chat_rows()))
    config = {"base_model": str(tiny_llama_dir), "input_features": [{"name": "messages"}],
              "output_features": [{"name": "reply"}], "prompt": {"chat_template": TINY_TEMPLATE},
              "adapter": {"type": "lora", "r": 8}, "preprocessing": {"split": {"probabilities": [1.0, 0.0, 0.0]}},
              "trainer": {"type": "finetune", "epochs": 3, "batch_size": 4, "learning_rate": 0.01, "seed": 1},
              "generation": {"max_new_tokens": 8, "do_sample": False}}
    run = pipeline.train(config, dataset=str(dataset), output_directory=tmp_path / "runs", show_progress=False)
    losses = run.statistics["train_loss_per_step"]
    assert losses[-1] < losses[0]
    saved = AutoTokenizer.from_pretrained(run.model_dir)
    assert saved.chat_template == TINY_TEMPLATE  # the template trained with, not fw's prompt template
    assert saved.eos_token_id in GenerationConfig.from_pretrained(run.model_dir).eos_token_id
    pipeline.predict(model_path=run.model_dir, dataset=str(dataset), output_directory=tmp_path / "out",
                     show_progress=False)
    table = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert table["prompt"][0] == "<s>system: Reply.</s><s>user: short 0</s><s>assistant: "
    assert all("<pad>" not in raw and raw.count("</s>") <= 1 for raw in table["raw_generation"])


def test_packing_trains_on_conversations(tmp_path, tiny_llama_dir):
    import json

    from fw import pipeline

    dataset = tmp_path / "chats.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in chat_rows()))
    config = {"base_model": str(tiny_llama_dir), "input_features": [{"name": "messages"}],
              "output_features": [{"name": "reply"}], "prompt": {"chat_template": TINY_TEMPLATE},
              "adapter": {"type": "lora", "r": 8}, "preprocessing": {"split": {"probabilities": [1.0, 0.0, 0.0]}},
              "trainer": {"type": "finetune", "epochs": 2, "batch_size": 4, "learning_rate": 0.01, "packing": True,
                          "seed": 1}}
    run = pipeline.train(config, dataset=str(dataset), output_directory=tmp_path, show_progress=False)
    losses = run.statistics["train_loss_per_step"]
    assert losses and losses[-1] < losses[0]


def test_a_conversation_column_gives_its_final_assistant_turn_as_the_target():
    import json

    import pandas as pd

    from fw.data.tables import clean

    frame = pd.DataFrame({"messages": [json.dumps(row["messages"]) for row in chat_rows()[:2]]})
    data = load_config({"base_model": "x", "input_features": [{"name": "messages"}],
                        "output_features": [{"name": "reply"}], "prompt": {"chat_template": True}}).data
    cleaned = clean(frame, data, "train")
    assert cleaned["reply"].tolist() == ["positive", "the quick brown fox"]
    assert json.loads(cleaned["messages"][0]) == chat_rows()[0]["messages"][:2]


def test_conversation_columns_one_line_errors_and_note(capsys):
    import json

    import pandas as pd

    from fw.data.tables import clean

    conversation = json.dumps(chat_rows()[0]["messages"])
    chat = load_config({"base_model": "x", "input_features": [{"name": "messages"}],
                        "output_features": [{"name": "reply"}], "prompt": {"chat_template": True}}).data
    with pytest.raises(FwError, match=r"column 'messages' holds conversations, but row 2 hold\(s\) none"):
        clean(pd.DataFrame({"messages": [conversation, "plain text"], "reply": ["a", "b"]}), chat, "train")
    with pytest.raises(FwError, match=r"row 1: the conversation in 'messages' ends with an assistant turn and column "
                                      r"'reply' holds a response too"):
        clean(pd.DataFrame({"messages": [conversation], "reply": ["also"]}), chat, "train")
    plain = load_config({"base_model": "x", "input_features": [{"name": "messages"}],
                         "output_features": [{"name": "reply"}]}).data
    clean(pd.DataFrame({"messages": [conversation], "reply": ["r"]}), plain, "train")
    assert ("column 'messages' holds conversations; without prompt.chat_template they reach the model as JSON text"
            in capsys.readouterr().err)


def test_a_template_whose_markup_alone_exceeds_the_limit_is_one_line(tokenizer):
    data = config(TEMPLATES["qwen-2.5"], system_message="A long system message that takes many tokens.")
    data["preprocessing"]["global_max_sequence_length"] = 10
    with pytest.raises(FwError, match=r"row 1: the chat template's own text \(system message, headers\) does not "
                                      r"fit the length limits"):
        encode(["Hi"], ["Hello"], tokenizer, data)


def test_chat_keys_without_a_chat_template_are_reported():
    import fw

    with pytest.raises(fw.ConfigError, match=r"prompt.system_message: is a chat message, but prompt.chat_template "
                                             r"is off"):
        config(False, system_message="Be brief.")
    assert any(str(warning).startswith("prompt.train_on: applies to conversations")
               for warning in load_config({"base_model": "x", "input_features": [{"name": "q"}],
                                           "output_features": [{"name": "a"}],
                                           "prompt": {"train_on": "last_assistant_turn"}}).warnings)
